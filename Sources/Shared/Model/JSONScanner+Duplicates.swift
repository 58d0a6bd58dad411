import Foundation

extension JSONScanner {
    /// The path (`items`, `items[3].auditID`) of the first key that appears twice
    /// in one object anywhere in `data`, or nil if there is none; `Malformed` when
    /// `data` is not one JSON document. The check is `validate`'s one strict pass.
    ///
    /// JSON parsers disagree on such documents: Foundation keeps one occurrence,
    /// Go's encoding/json the last, this scanner the first. A body checked
    /// through one and stored or indexed through another can say two things, so
    /// Tether refuses duplicates wherever it reads JSON from a client. Keys are
    /// compared after unescaping (`"\u0069tems"` is `items`).
    public static func firstDuplicateKey(in data: Data) throws -> String? {
        do {
            return try validate(data)
        } catch is Invalid {
            throw Malformed()
        }
    }
}
