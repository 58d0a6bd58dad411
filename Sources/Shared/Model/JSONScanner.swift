import Foundation

/// Finds values inside JSON text without building a whole object graph: the byte
/// range of each member of an object, or of each element of an array. For hot
/// paths that need a few fields of an already validated document (audit events),
/// where a full parse per event would dominate.
public struct JSONScanner {
    let bytes: UnsafeBufferPointer<UInt8>
    var i: Int

    public struct Malformed: Error {}

    /// Calls `body` with a scanner over `data`.
    public static func with<R>(_ data: Data, _ body: (inout JSONScanner) throws -> R) rethrows -> R {
        try data.withUnsafeBytes { raw in
            var scanner = JSONScanner(bytes: raw.bindMemory(to: UInt8.self), i: 0)
            return try body(&scanner)
        }
    }

    mutating func skipSpace() {
        while i < bytes.count, bytes[i] == 32 || bytes[i] == 9 || bytes[i] == 10 || bytes[i] == 13 { i += 1 }
    }

    mutating func skipString() throws {
        guard i < bytes.count, bytes[i] == 34 else { throw Malformed() }
        i += 1
        while i < bytes.count {
            if bytes[i] == 92 { i += 2; continue }
            if bytes[i] == 34 { i += 1; return }
            i += 1
        }
        throw Malformed()
    }

    /// Skips one value and returns its byte range.
    mutating func skipValue() throws -> Range<Int> {
        skipSpace()
        let start = i
        guard i < bytes.count else { throw Malformed() }
        switch bytes[i] {
        case 34:
            try skipString()
        case 123, 91:
            var depth = 0
            repeat {
                guard i < bytes.count else { throw Malformed() }
                switch bytes[i] {
                case 34: try skipString(); continue
                case 123, 91: depth += 1
                case 125, 93: depth -= 1
                default: break
                }
                i += 1
            } while depth > 0
        default:
            while i < bytes.count, bytes[i] != 44, bytes[i] != 125, bytes[i] != 93, bytes[i] != 32, bytes[i] != 10, bytes[i] != 13, bytes[i] != 9 { i += 1 }
            guard i > start else { throw Malformed() }
        }
        return start..<i
    }

    /// The members of the object at the current position: key (unescaped only if it
    /// has no escapes, which object keys here never do) to value range.
    public mutating func members() throws -> [(key: Substring.UTF8View.SubSequence, range: Range<Int>)] {
        skipSpace()
        guard i < bytes.count, bytes[i] == 123 else { throw Malformed() }
        i += 1
        var result: [(Substring.UTF8View.SubSequence, Range<Int>)] = []
        skipSpace()
        if i < bytes.count, bytes[i] == 125 { i += 1; return [] }
        while true {
            skipSpace()
            let keyStart = i + 1
            try skipString()
            let key = Substring(decoding: UnsafeBufferPointer(rebasing: bytes[keyStart..<(i - 1)]), as: UTF8.self).utf8[...]
            skipSpace()
            guard i < bytes.count, bytes[i] == 58 else { throw Malformed() }
            i += 1
            result.append((key, try skipValue()))
            skipSpace()
            guard i < bytes.count else { throw Malformed() }
            if bytes[i] == 44 { i += 1; continue }
            if bytes[i] == 125 { i += 1; return result }
            throw Malformed()
        }
    }

    /// The elements of the array at the current position.
    public mutating func elements() throws -> [Range<Int>] {
        skipSpace()
        guard i < bytes.count, bytes[i] == 91 else { throw Malformed() }
        i += 1
        var result: [Range<Int>] = []
        skipSpace()
        if i < bytes.count, bytes[i] == 93 { i += 1; return [] }
        while true {
            result.append(try skipValue())
            skipSpace()
            guard i < bytes.count else { throw Malformed() }
            if bytes[i] == 44 { i += 1; continue }
            if bytes[i] == 93 { i += 1; return result }
            throw Malformed()
        }
    }

    /// A scanner positioned at the start of `range`.
    public func at(_ range: Range<Int>) -> JSONScanner { JSONScanner(bytes: bytes, i: range.lowerBound) }

    /// The JSON string at `range`, decoded; nil if it is not a string.
    public func string(_ range: Range<Int>) -> String? {
        guard range.count >= 2, bytes[range.lowerBound] == 34 else { return nil }
        let inner = UnsafeBufferPointer(rebasing: bytes[(range.lowerBound + 1)..<(range.upperBound - 1)])
        if !inner.contains(92) { return String(decoding: inner, as: UTF8.self) }
        let fragment = Data(UnsafeBufferPointer(rebasing: bytes[range]))
        return (try? JSONSerialization.jsonObject(with: Data("[".utf8) + fragment + Data("]".utf8))) .flatMap { ($0 as? [Any])?.first as? String }
    }

    /// Whether the value at `range` (of a validated document) is a string, an object, an array.
    public func isString(_ range: Range<Int>) -> Bool { !range.isEmpty && bytes[range.lowerBound] == 34 }
    public func isObject(_ range: Range<Int>) -> Bool { !range.isEmpty && bytes[range.lowerBound] == 123 }
    public func isArray(_ range: Range<Int>) -> Bool { !range.isEmpty && bytes[range.lowerBound] == 91 }

    /// The JSON text at `range`, as it is.
    public func text(_ range: Range<Int>) -> String { String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self) }

    /// The integer at `range`, if it is one.
    public func int(_ range: Range<Int>) -> Int? {
        Int(String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self))
    }
}
