import Foundation
import Shared

/// Checks an audit webhook body (an `audit.k8s.io/v1` `EventList`) and returns each
/// event's bytes exactly as the API server sent them.
///
/// One strict pass validates the whole body (and finds duplicate keys); the fields it
/// needs are then read by byte range, without building any Foundation objects. That
/// full parse (`JSONSerialization`) was most of the agent's CPU under audit load.
enum EventListParser {
    struct Invalid: Error, CustomStringConvertible {
        var description: String
    }

    static func events(in body: Data) throws -> [Data] {
        let duplicate: String?
        do {
            duplicate = try JSONScanner.validate(body)
        } catch {
            throw Invalid(description: "body is not a JSON object (truncated or malformed: \(error))")
        }
        // Checked against one occurrence and stored from another, a duplicated key
        // would let a body say two things.
        if let duplicate { throw Invalid(description: "duplicate key \(duplicate)") }
        let ranges: [Range<Int>] = try JSONScanner.with(body) { scanner in
            guard let top = try? scanner.members() else { throw Invalid(description: "body is not a JSON object") }
            func member(_ name: String) -> Range<Int>? { top.first { Self.key($0.key) == name }?.range }
            for (field, expected) in [("kind", "EventList"), ("apiVersion", "audit.k8s.io/v1")] {
                let value = member(field)
                guard let value, scanner.string(value) == expected else {
                    throw Invalid(description: "\(field) must be \(expected), got \(value.map { Self.shown(scanner, $0) } ?? "none")")
                }
            }
            var itemsScanner = member("items").map { scanner.at($0) }
            guard let items = try? itemsScanner?.elements() else {
                throw Invalid(description: "items must be a list of audit events")
            }
            for (i, item) in items.enumerated() {
                var itemScanner = scanner.at(item)
                guard let fields = try? itemScanner.members() else { throw Invalid(description: "items[\(i)] is not an object") }
                for field in ["auditID", "stage", "stageTimestamp"] {
                    // A string with anything in it (the range holds its quotes).
                    guard let value = fields.first(where: { Self.key($0.key) == field })?.range,
                          scanner.isString(value), value.count > 2 else {
                        throw Invalid(description: "items[\(i)] has no \(field)")
                    }
                }
            }
            return items
        }
        return ranges.map { body.subdata(in: $0) }
    }

    /// A key as its object means it: raw bytes, unescaped when it has escapes.
    private static func key(_ raw: Substring.UTF8View.SubSequence) -> String {
        guard raw.contains(UInt8(ascii: "\\")) else { return String(Substring(raw)) }
        let quoted = Data("[\"".utf8) + Data(raw) + Data("\"]".utf8)
        return ((try? JSONSerialization.jsonObject(with: quoted)) as? [Any])?.first as? String ?? String(Substring(raw))
    }

    /// A value for an error message: a string as its text, anything else as its JSON (cut at 100 bytes).
    private static func shown(_ scanner: JSONScanner, _ range: Range<Int>) -> String {
        scanner.string(range) ?? String(scanner.text(range).prefix(100))
    }
}
