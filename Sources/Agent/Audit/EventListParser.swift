import Foundation
import Shared

/// Checks an audit webhook body (an `audit.k8s.io/v1` `EventList`) and returns each
/// event's bytes exactly as the API server sent them.
enum EventListParser {
    struct Invalid: Error, CustomStringConvertible {
        var description: String
    }

    static func events(in body: Data) throws -> [Data] {
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else {
            throw Invalid(description: "body is not a JSON object (truncated or malformed)")
        }
        guard object["kind"] as? String == "EventList" else {
            throw Invalid(description: "kind must be EventList, got \(object["kind"].map { "\($0)" } ?? "none")")
        }
        guard object["apiVersion"] as? String == "audit.k8s.io/v1" else {
            throw Invalid(description: "apiVersion must be audit.k8s.io/v1, got \(object["apiVersion"].map { "\($0)" } ?? "none")")
        }
        guard let items = object["items"] as? [Any] else {
            throw Invalid(description: "items must be a list of audit events")
        }
        for (i, item) in items.enumerated() {
            guard let event = item as? [String: Any] else { throw Invalid(description: "items[\(i)] is not an object") }
            for field in ["auditID", "stage", "stageTimestamp"] {
                guard let value = event[field] as? String, !value.isEmpty else {
                    throw Invalid(description: "items[\(i)] has no \(field)")
                }
            }
        }
        let ranges = try RawJSON.elements(ofArray: "items", in: body)
        guard ranges.count == items.count else {
            throw Invalid(description: "items could not be split (\(ranges.count) of \(items.count))")
        }
        return ranges.map { body.subdata(in: $0) }
    }
}

/// Finds the byte ranges of the elements of a top-level object's array member,
/// without re-encoding them. The body has already been validated as JSON.
enum RawJSON {
    static func elements(ofArray key: String, in data: Data) throws -> [Range<Int>] {
        try data.withUnsafeBytes { raw -> [Range<Int>] in
            let b = raw.bindMemory(to: UInt8.self)
            var i = 0
            func skipSpace() { while i < b.count, b[i] == 32 || b[i] == 9 || b[i] == 10 || b[i] == 13 { i += 1 } }
            func skipString() { // at opening quote
                i += 1
                while i < b.count {
                    if b[i] == 92 { i += 2; continue }
                    if b[i] == 34 { i += 1; return }
                    i += 1
                }
            }
            /// Skips one value; returns its range.
            func skipValue() -> Range<Int> {
                skipSpace()
                let start = i
                if i < b.count, b[i] == 34 { skipString(); return start..<i }
                if i < b.count, b[i] == 123 || b[i] == 91 {
                    var depth = 0
                    while i < b.count {
                        switch b[i] {
                        case 34: skipString(); continue
                        case 123, 91: depth += 1
                        case 125, 93:
                            depth -= 1
                            if depth == 0 { i += 1; return start..<i }
                        default: break
                        }
                        i += 1
                    }
                    return start..<i
                }
                while i < b.count, b[i] != 44, b[i] != 125, b[i] != 93 { i += 1 }
                return start..<i
            }
            skipSpace()
            guard i < b.count, b[i] == 123 else { throw EventListParser.Invalid(description: "not an object") }
            i += 1
            let wanted = Array(key.utf8)
            while true {
                skipSpace()
                guard i < b.count, b[i] == 34 else { break }
                let keyStart = i + 1
                skipString()
                let name = Array(b[keyStart..<(i - 1)])
                skipSpace()
                i += 1 // colon
                skipSpace()
                if name == wanted, i < b.count, b[i] == 91 {
                    i += 1
                    var ranges: [Range<Int>] = []
                    while true {
                        skipSpace()
                        if i < b.count, b[i] == 93 { return ranges }
                        ranges.append(skipValue())
                        skipSpace()
                        if i < b.count, b[i] == 44 { i += 1 }
                        guard i < b.count else { break }
                    }
                    return ranges
                }
                _ = skipValue()
                skipSpace()
                if i < b.count, b[i] == 44 { i += 1 }
            }
            throw EventListParser.Invalid(description: "no \(key) array")
        }
    }
}
