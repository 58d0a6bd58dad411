import Foundation

extension JSONScanner {
    /// The path (`items`, `items[3].auditID`) of the first key that appears twice
    /// in one object anywhere in `data`, or nil if there is none.
    ///
    /// JSON parsers disagree on such documents: Foundation keeps one occurrence,
    /// Go's encoding/json the last, this scanner the first. A body checked
    /// through one and stored or indexed through another can say two things, so
    /// Tether refuses duplicates wherever it reads JSON from a client. Keys are
    /// compared after unescaping (`"\u0069tems"` is `items`).
    public static func firstDuplicateKey(in data: Data) throws -> String? {
        try with(data) { scanner in
            let found = try scanner.duplicateKey(path: "")
            scanner.skipSpace()
            guard scanner.i == scanner.bytes.count else { throw Malformed() }
            return found
        }
    }

    private mutating func duplicateKey(path: String) throws -> String? {
        skipSpace()
        guard i < bytes.count else { throw Malformed() }
        switch bytes[i] {
        case 123:  // {
            i += 1
            var seen = Set<String>()
            skipSpace()
            if i < bytes.count, bytes[i] == 125 { i += 1; return nil }
            var found: String?
            while true {
                skipSpace()
                let keyRange = i..<(try skipStringReturningEnd())
                guard let key = string(keyRange) else { throw Malformed() }
                let child = path.isEmpty ? key : path + "." + key
                if found == nil, !seen.insert(key).inserted { found = child }
                skipSpace()
                guard i < bytes.count, bytes[i] == 58 else { throw Malformed() }
                i += 1
                let inner = try duplicateKey(path: child)
                if found == nil { found = inner }
                skipSpace()
                guard i < bytes.count else { throw Malformed() }
                if bytes[i] == 44 { i += 1; continue }
                if bytes[i] == 125 { i += 1; return found }
                throw Malformed()
            }
        case 91:  // [
            i += 1
            skipSpace()
            if i < bytes.count, bytes[i] == 93 { i += 1; return nil }
            var found: String?
            var index = 0
            while true {
                let inner = try duplicateKey(path: "\(path)[\(index)]")
                if found == nil { found = inner }
                index += 1
                skipSpace()
                guard i < bytes.count else { throw Malformed() }
                if bytes[i] == 44 { i += 1; continue }
                if bytes[i] == 93 { i += 1; return found }
                throw Malformed()
            }
        default:
            _ = try skipValue()
            return nil
        }
    }

    private mutating func skipStringReturningEnd() throws -> Int {
        try skipString()
        return i
    }
}
