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
        // Checked against one occurrence and stored from another, a duplicated key
        // would let a body say two things.
        if let duplicate = try? JSONScanner.firstDuplicateKey(in: body) {
            throw Invalid(description: "duplicate key \(duplicate)")
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

/// The byte ranges of the elements of a top-level object's array member.
enum RawJSON {
    static func elements(ofArray key: String, in data: Data) throws -> [Range<Int>] {
        do {
            return try JSONScanner.with(data) { scanner in
                guard let member = try scanner.members().first(where: { String(Substring($0.key)) == key }) else {
                    throw EventListParser.Invalid(description: "no \(key) array")
                }
                var items = scanner.at(member.range)
                return try items.elements()
            }
        } catch is JSONScanner.Malformed {
            throw EventListParser.Invalid(description: "malformed JSON")
        }
    }
}
