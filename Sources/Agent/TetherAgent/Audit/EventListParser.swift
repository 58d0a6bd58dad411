import Foundation
import Shared

/// Checks an audit webhook body (an `audit.k8s.io/v1` `EventList`) and returns each
/// event's bytes exactly as the API server sent them.
///
/// One strict pass (`JSONScanner.outline`) validates the whole body, finds duplicate
/// keys and notes the fields checked here, without building any Foundation objects: a
/// full parse (`JSONSerialization`) and scans after it were most of the agent's CPU
/// under audit load.
enum EventListParser {
    struct Invalid: Error, CustomStringConvertible {
        var description: String
    }

    static let requiredFields = ["auditID", "stage", "stageTimestamp"]

    static func events(in body: Data) throws -> [Data] {
        let outline: JSONScanner.Outline
        do {
            outline = try JSONScanner.outline(body, array: "items", fields: requiredFields)
        } catch {
            throw Invalid(description: "body is not a JSON object (truncated or malformed: \(error))")
        }
        // Checked against one occurrence and stored from another, a duplicated key
        // would let a body say two things.
        if let duplicate = outline.duplicate { throw Invalid(description: "duplicate key \(duplicate)") }
        guard outline.isObject else { throw Invalid(description: "body is not a JSON object") }
        try JSONScanner.with(body) { scanner in
            func member(_ name: String) -> Range<Int>? { outline.members.first { $0.key == name }?.range }
            for (field, expected) in [("kind", "EventList"), ("apiVersion", "audit.k8s.io/v1")] {
                let value = member(field)
                guard let value, scanner.string(value) == expected else {
                    throw Invalid(description: "\(field) must be \(expected), got \(value.map { scanner.string($0) ?? String(scanner.text($0).prefix(100)) } ?? "none")")
                }
            }
            guard let items = member("items"), scanner.isArray(items) else {
                throw Invalid(description: "items must be a list of audit events")
            }
            for (i, (item, fields)) in zip(outline.elements, outline.elementFields).enumerated() {
                guard scanner.isObject(item) else { throw Invalid(description: "items[\(i)] is not an object") }
                for (k, field) in requiredFields.enumerated() where fields & (1 << UInt64(k)) == 0 {
                    throw Invalid(description: "items[\(i)] has no \(field)")
                }
            }
        }
        return outline.elements.map { body.subdata(in: $0) }
    }
}
