import Foundation

/// What an agent needs to enroll, as one string an operator can paste:
/// `tether1.` followed by base64url(JSON) with the hub address, the token id and
/// secret, and the SHA-256 of the hub's CA certificate that the agent pins before it
/// sends anything (as `kubeadm join --discovery-token-ca-cert-hash` does).
public struct JoinString: Hashable, Sendable {
    public static let prefix = "tether1."

    public var hub: HostPort
    public var tokenID: String
    public var secret: String
    /// `sha256:` followed by 64 lowercase hex digits.
    public var caHash: String

    public init(hub: HostPort, tokenID: String, secret: String, caHash: String) {
        self.hub = hub
        self.tokenID = tokenID
        self.secret = secret
        self.caHash = caHash
    }

    private struct Payload: Codable {
        var hub: String
        var id: String
        var secret: String
        var ca: String
    }

    public var encoded: String {
        let payload = Payload(hub: hub.description, id: tokenID, secret: secret, ca: caHash)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let data = try! encoder.encode(payload)
        return Self.prefix + Base64URL.encode(data)
    }

    /// Parses a join string, with an error that says which part is wrong and never
    /// echoes the secret.
    public init(parsing raw: String) throws {
        let text = raw.trimmingCharacters(in: .whitespacesAndNewlines)
        func malformed(_ why: String) -> TetherError {
            TetherError(.malformedJoinString, "malformed join string: \(why); copy it again from `tether-hub token create`")
        }
        guard text.hasPrefix(Self.prefix) else {
            throw malformed("it must start with '\(Self.prefix)'")
        }
        guard let data = Base64URL.decode(String(text.dropFirst(Self.prefix.count))),
              let payload = try? JSONDecoder().decode(Payload.self, from: data)
        else {
            throw malformed("it is truncated or not valid base64url JSON")
        }
        guard let hub = try? HostPort(parsing: payload.hub), hub.port > 0 else {
            throw malformed("the hub address is not HOST:PORT")
        }
        guard TokenFormat.isValidID(payload.id) else { throw malformed("the token id is invalid") }
        guard TokenFormat.isValidSecret(payload.secret) else { throw malformed("the token secret is invalid") }
        guard Self.isValidCAHash(payload.ca) else {
            throw malformed("the CA hash must be 'sha256:' and 64 hex digits")
        }
        self.init(hub: hub, tokenID: payload.id, secret: payload.secret, caHash: payload.ca)
    }

    static func isValidCAHash(_ s: String) -> Bool {
        guard s.hasPrefix("sha256:") else { return false }
        let hex = s.dropFirst(7)
        return hex.count == 64 && hex.allSatisfy { $0.isHexDigit && !$0.isUppercase }
    }
}

/// Shapes of join-token ids and secrets: ids are 8 lowercase alphanumerics (safe to
/// show and log), secrets 43 base64url characters (256 bits, never logged).
public enum TokenFormat {
    public static func isValidID(_ s: String) -> Bool {
        s.utf8.count == 8 && s.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) }
    }

    public static func isValidSecret(_ s: String) -> Bool {
        s.utf8.count == 43 && Base64URL.decode(s)?.count == 32
    }
}

/// base64url without padding (RFC 4648 §5).
public enum Base64URL {
    public static func encode(_ data: some Sequence<UInt8>) -> String {
        Data(data).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    public static func decode(_ text: String) -> Data? {
        guard text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else { return nil }
        var s = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while s.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s)
    }
}
