import Foundation
import Shared

/// A POSIX ustar archive of regular files, enough for hub backups: `tar -tvf` and
/// `tar -xf` read it, and `entries(in:)` takes back what `write` made (and refuses
/// anything else with a clear error rather than guessing). Contents are streamed in
/// 1 MiB chunks, so a database of any size is never held in memory.
enum TarArchive {
    enum Source {
        case data(Data)
        case file(String)
    }

    /// One entry as found in an archive: where its contents start, and how long.
    struct Entry: Equatable {
        var name: String
        var mode: Int
        var size: Int
        var offset: UInt64
    }

    static let chunk = 1 << 20

    /// Writes `entries` to `path` atomically (a temporary file, fsynced, renamed).
    static func write(_ entries: [(name: String, mode: Int, source: Source)], to path: String, mode: mode_t, modified: Date = Date()) throws {
        try AtomicFile.write(to: path, mode: mode) { out in
            for entry in entries {
                switch entry.source {
                case .data(let data):
                    try out.write(contentsOf: try header(name: entry.name, mode: entry.mode, size: data.count, modified: modified))
                    try out.write(contentsOf: data)
                    try out.write(contentsOf: padding(data.count))
                case .file(let source):
                    guard let size = (try? FileManager.default.attributesOfItem(atPath: source))?[.size] as? Int,
                          let input = FileHandle(forReadingAtPath: source) else {
                        throw TetherError(.storage, "cannot read \(source)")
                    }
                    defer { try? input.close() }
                    try out.write(contentsOf: try header(name: entry.name, mode: entry.mode, size: size, modified: modified))
                    try copy(size, from: input, to: out, shortRead: TetherError(.storage, "\(source) shrank while it was archived"))
                    try out.write(contentsOf: padding(size))
                }
            }
            try out.write(contentsOf: Data(count: 1024))
        }
    }

    /// The entries of the archive at `path`, each checked against the file's length.
    static func entries(in path: String) throws -> [Entry] {
        func bad(_ why: String) -> TetherError { TetherError(.invalidArgument, "\(path) is not a Tether hub backup: \(why)") }
        guard let input = FileHandle(forReadingAtPath: path) else { throw TetherError(.notFound, "cannot read \(path)") }
        defer { try? input.close() }
        let length = try input.seekToEnd()
        var entries: [Entry] = []
        var offset: UInt64 = 0
        while true {
            try input.seek(toOffset: offset)
            guard offset + 512 <= length, let block = try input.read(upToCount: 512), block.count == 512 else {
                throw bad("it ends in the middle of an entry (truncated?)")
            }
            let header = [UInt8](block)
            if header.allSatisfy({ $0 == 0 }) { return entries }
            func field(_ start: Int, _ width: Int) -> String {
                String(decoding: header[start..<start + width].prefix { $0 != 0 }, as: UTF8.self)
            }
            func number(_ start: Int, _ width: Int) throws -> Int {
                guard let value = Int(field(start, width).trimmingCharacters(in: .whitespaces), radix: 8) else { throw bad("a header field is not a number") }
                return value
            }
            guard field(257, 5) == "ustar" else { throw bad("not a tar archive") }
            var unsummed = header
            for i in 148..<156 { unsummed[i] = UInt8(ascii: " ") }
            guard try number(148, 8) == unsummed.reduce(0, { $0 + Int($1) }) else { throw bad("a header checksum does not match (damaged?)") }
            let size: Int
            if header[124] & 0x80 != 0 {
                size = header[128..<136].reduce(0) { $0 << 8 | Int($1) }
            } else {
                size = try number(124, 12)
            }
            let name = field(0, 100), mode = try number(100, 8)
            guard header[156] == UInt8(ascii: "0") || header[156] == 0 else { throw bad("'\(name)' is not a regular file") }
            guard !name.isEmpty, !name.contains("/") else { throw bad("unexpected entry '\(name)'") }
            let start = offset + 512
            // A crafted header can carry a negative size (octal "-1", or base-256 with
            // the sign bit set) or one past the file: refused before any arithmetic.
            guard size >= 0 else { throw bad("'\(name)' has a negative size (damaged or crafted)") }
            guard start <= length, UInt64(size) <= length - start else { throw bad("'\(name)' is cut short (truncated?)") }
            entries.append(Entry(name: name, mode: mode, size: size, offset: start))
            offset = start + UInt64((size + 511) / 512 * 512)
        }
    }

    /// A small entry's contents.
    static func contents(of entry: Entry, in path: String) throws -> Data {
        guard let input = FileHandle(forReadingAtPath: path) else { throw TetherError(.notFound, "cannot read \(path)") }
        defer { try? input.close() }
        try input.seek(toOffset: entry.offset)
        return try input.read(upToCount: entry.size) ?? Data()
    }

    /// Copies an entry to `destination` atomically, in chunks, fsynced.
    static func extract(_ entry: Entry, from path: String, to destination: String, mode: mode_t) throws {
        guard let input = FileHandle(forReadingAtPath: path) else { throw TetherError(.notFound, "cannot read \(path)") }
        defer { try? input.close() }
        try input.seek(toOffset: entry.offset)
        try AtomicFile.write(to: destination, mode: mode) { out in
            try copy(entry.size, from: input, to: out, shortRead: TetherError(.invalidArgument, "\(path): '\(entry.name)' is cut short (truncated?)"))
        }
    }

    /// Copies `count` bytes in chunks of at most 1 MiB.
    private static func copy(_ count: Int, from input: FileHandle, to output: FileHandle, shortRead: TetherError) throws {
        var left = count
        while left > 0 {
            let data = try input.read(upToCount: min(chunk, left)) ?? Data()
            guard !data.isEmpty else { throw shortRead }
            try output.write(contentsOf: data)
            left -= data.count
        }
    }

    static func header(name: String, mode: Int, size: Int, modified: Date) throws -> Data {
        guard !name.isEmpty, name.utf8.count < 100, !name.contains("/") else {
            throw TetherError(.invalidArgument, "cannot archive '\(name)': names must be plain file names under 100 bytes")
        }
        var header = [UInt8](repeating: 0, count: 512)
        func put(_ text: String, at offset: Int) {
            for (i, byte) in text.utf8.enumerated() { header[offset + i] = byte }
        }
        func octal(_ value: Int, at offset: Int, width: Int) {
            let digits = String(value, radix: 8)
            put(String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits, at: offset)
        }
        put(name, at: 0)
        octal(mode, at: 100, width: 8)
        octal(0, at: 108, width: 8)
        octal(0, at: 116, width: 8)
        if size < 0o77777777777 {
            octal(size, at: 124, width: 12)
        } else {
            // Over 8 GiB: the base-256 size field GNU tar and bsdtar read.
            header[124] = 0x80
            for i in 0..<8 { header[135 - i] = UInt8(truncatingIfNeeded: size >> (8 * i)) }
        }
        octal(Int(modified.timeIntervalSince1970), at: 136, width: 12)
        header[156] = UInt8(ascii: "0")
        put("ustar\0", at: 257)
        put("00", at: 263)
        // The checksum is summed with its own field as spaces.
        for i in 148..<156 { header[i] = UInt8(ascii: " ") }
        let sum = String(header.reduce(0) { $0 + Int($1) }, radix: 8)
        put(String(repeating: "0", count: 6 - sum.count) + sum + "\0 ", at: 148)
        return Data(header)
    }

    static func padding(_ size: Int) -> Data { Data(count: (512 - size % 512) % 512) }
}
