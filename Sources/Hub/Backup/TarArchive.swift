import Foundation
import Shared

/// A POSIX ustar archive of regular files, enough for hub backups: `tar -tvf` and
/// `tar -xf` read it, and `read` takes back what `write` made (and refuses anything
/// else with a clear error rather than guessing).
enum TarArchive {
    struct Entry: Equatable {
        var name: String
        var mode: Int
        var contents: Data
    }

    static func write(_ entries: [Entry], modified: Date = Date()) throws -> Data {
        var out = Data()
        for entry in entries {
            guard !entry.name.isEmpty, entry.name.utf8.count < 100, !entry.name.hasPrefix("/"), !entry.name.contains("..") else {
                throw TetherError(.invalidArgument, "cannot archive '\(entry.name)': names must be relative and under 100 bytes")
            }
            var header = [UInt8](repeating: 0, count: 512)
            func put(_ text: String, at offset: Int, width: Int) {
                for (i, byte) in text.utf8.prefix(width).enumerated() { header[offset + i] = byte }
            }
            func octal(_ value: Int, at offset: Int, width: Int) {
                put(String(repeating: "0", count: max(0, width - 1 - String(value, radix: 8).count)) + String(value, radix: 8), at: offset, width: width - 1)
            }
            put(entry.name, at: 0, width: 100)
            octal(entry.mode, at: 100, width: 8)
            octal(0, at: 108, width: 8)
            octal(0, at: 116, width: 8)
            octal(entry.contents.count, at: 124, width: 12)
            octal(Int(modified.timeIntervalSince1970), at: 136, width: 12)
            header[156] = UInt8(ascii: "0")
            put("ustar\0", at: 257, width: 6)
            put("00", at: 263, width: 2)
            // The checksum is computed with its own field as spaces.
            for i in 148..<156 { header[i] = UInt8(ascii: " ") }
            let sum = header.reduce(0) { $0 + Int($1) }
            put(String(repeating: "0", count: 6 - String(sum, radix: 8).count) + String(sum, radix: 8) + "\0 ", at: 148, width: 8)
            out.append(contentsOf: header)
            out.append(entry.contents)
            out.append(Data(count: (512 - entry.contents.count % 512) % 512))
        }
        out.append(Data(count: 1024))
        return out
    }

    static func read(_ data: Data, source: String) throws -> [Entry] {
        func bad(_ why: String) -> TetherError { TetherError(.invalidArgument, "\(source) is not a Tether hub backup: \(why)") }
        let bytes = [UInt8](data)
        var entries: [Entry] = []
        var offset = 0
        while true {
            guard offset + 512 <= bytes.count else { throw bad("it ends in the middle of an entry (truncated?)") }
            let header = Array(bytes[offset..<offset + 512])
            if header.allSatisfy({ $0 == 0 }) { return entries }
            func field(_ start: Int, _ width: Int) -> String {
                String(decoding: header[start..<start + width].prefix { $0 != 0 }, as: UTF8.self)
            }
            func number(_ start: Int, _ width: Int) throws -> Int {
                let text = field(start, width).trimmingCharacters(in: .whitespaces)
                guard let value = Int(text, radix: 8) else { throw bad("a header field is not a number") }
                return value
            }
            guard field(257, 5) == "ustar" else { throw bad("not a tar archive") }
            var checkHeader = header
            for i in 148..<156 { checkHeader[i] = UInt8(ascii: " ") }
            guard try number(148, 8) == checkHeader.reduce(0, { $0 + Int($1) }) else { throw bad("a header checksum does not match (damaged?)") }
            let name = field(0, 100), size = try number(124, 12), mode = try number(100, 8)
            guard header[156] == UInt8(ascii: "0") || header[156] == 0 else { throw bad("'\(name)' is not a regular file") }
            guard !name.hasPrefix("/"), !name.split(separator: "/").contains(".."), !name.contains("/") else { throw bad("unexpected entry '\(name)'") }
            let start = offset + 512
            guard start + size <= bytes.count else { throw bad("'\(name)' is cut short (truncated?)") }
            entries.append(Entry(name: name, mode: mode, contents: Data(bytes[start..<start + size])))
            offset = start + (size + 511) / 512 * 512
        }
    }
}
