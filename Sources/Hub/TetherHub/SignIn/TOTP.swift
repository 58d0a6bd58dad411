import Crypto
import Foundation

/// Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP): HMAC-SHA1, six
/// digits, 30-second steps, the form every authenticator app reads from an
/// `otpauth://` URI.
struct TOTP: Sendable, Equatable {
    static let digits = 6
    static let period: Int64 = 30
    /// Steps either side of now that are still accepted (clock skew between the
    /// hub and a phone, and the seconds it takes to type the code).
    static let window: Int64 = 1

    /// The shared secret (20 random bytes, as RFC 4226 recommends for SHA-1).
    let secret: [UInt8]

    init(secret: [UInt8]) { self.secret = secret }

    static func generate() -> TOTP {
        var rng = SystemRandomNumberGenerator()
        return TOTP(secret: (0..<20).map { _ in UInt8.random(in: 0...255, using: &rng) })
    }

    static func step(at date: Date) -> Int64 { Int64(floor(date.timeIntervalSince1970)) / period }

    /// The code for one time step.
    func code(step: Int64) -> String {
        let counter = withUnsafeBytes(of: UInt64(bitPattern: step).bigEndian) { Array($0) }
        let mac = Array(HMAC<Insecure.SHA1>.authenticationCode(for: counter, using: SymmetricKey(data: secret)))
        let offset = Int(mac[mac.count - 1] & 0x0f)
        let value = (UInt32(mac[offset] & 0x7f) << 24) | (UInt32(mac[offset + 1]) << 16) | (UInt32(mac[offset + 2]) << 8) | UInt32(mac[offset + 3])
        let text = String(value % 1_000_000)
        return String(repeating: "0", count: Self.digits - text.count) + text
    }

    func code(at date: Date) -> String { code(step: Self.step(at: date)) }

    /// The step a code belongs to, within the window around `date`, or nil. A step
    /// at or before `after` (the last one used) is refused: a code works once.
    func match(_ code: String, at date: Date, after used: Int64?) -> Int64? {
        let code = code.filter { !$0.isWhitespace }
        guard code.count == Self.digits, code.allSatisfy(\.isASCII), code.allSatisfy(\.isNumber) else { return nil }
        let now = Self.step(at: date)
        for step in (now - Self.window)...(now + Self.window) where step > (used ?? Int64.min) {
            // Constant-time comparison of the six digits.
            let expected = Array(self.code(step: step).utf8), given = Array(code.utf8)
            if zip(expected, given).reduce(UInt8(0), { $0 | ($1.0 ^ $1.1) }) == 0 { return step }
        }
        return nil
    }

    /// What an authenticator app scans (Google's Key URI format).
    func uri(issuer: String, account: String) -> String {
        func escape(_ text: String) -> String {
            text.addingPercentEncoding(withAllowedCharacters: CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~@"))) ?? text
        }
        return "otpauth://totp/\(escape(issuer)):\(escape(account))?secret=\(Base32.encode(secret))&issuer=\(escape(issuer))"
            + "&algorithm=SHA1&digits=\(Self.digits)&period=\(Self.period)"
    }
}

/// RFC 4648 base32 without padding, as `otpauth://` secrets are written.
enum Base32 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        var buffer: UInt32 = 0, bits = 0
        for byte in bytes {
            buffer = (buffer << 8) | UInt32(byte)
            bits += 8
            while bits >= 5 {
                out.append(alphabet[Int((buffer >> UInt32(bits - 5)) & 31)])
                bits -= 5
            }
        }
        if bits > 0 { out.append(alphabet[Int((buffer << UInt32(5 - bits)) & 31)]) }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        var out: [UInt8] = []
        var buffer: UInt32 = 0, bits = 0
        for char in text.uppercased().utf8 where char != UInt8(ascii: "=") {
            guard let value = alphabet.firstIndex(of: char) else { return nil }
            buffer = (buffer << 5) | UInt32(value)
            bits += 5
            if bits >= 8 {
                out.append(UInt8((buffer >> UInt32(bits - 8)) & 0xff))
                bits -= 8
            }
        }
        return out
    }
}

extension QRCode {
    /// The symbol as an SVG image (with a 4-module quiet zone), for the browser's
    /// enrollment page: one path, no script, no external reference.
    func svg(moduleSize: Int) -> String {
        let quiet = 4, side = (size + 2 * quiet) * moduleSize
        var path = ""
        for y in 0..<size {
            for x in 0..<size where self[x, y] {
                path += "M\((x + quiet) * moduleSize) \((y + quiet) * moduleSize)h\(moduleSize)v\(moduleSize)h-\(moduleSize)z"
            }
        }
        return """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(side)" height="\(side)" viewBox="0 0 \(side) \(side)" role="img" aria-label="QR code">\
            <rect width="\(side)" height="\(side)" fill="#fff"/><path d="\(path)" fill="#000"/></svg>
            """
    }
}
