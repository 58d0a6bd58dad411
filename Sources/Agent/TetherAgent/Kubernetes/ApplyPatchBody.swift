import Foundation
import Shared

/// The body of a server-side apply request (`application/apply-patch+yaml`), the only
/// way one is made. The API server reads it with a YAML 1.1 parser (go-yaml v2 under
/// sigs.k8s.io/yaml) even when it is JSON, and JSON is not quite YAML 1.1:
/// - `\/`, which Foundation's JSON writers emit for every `/` (in every apiVersion,
///   label key and base64 value), is no escape there: 400 "found unknown escape character";
/// - characters outside YAML 1.1's printable set (DEL, the C1 controls, U+FEFF,
///   U+FFFE, U+FFFF) are refused anywhere in the stream, even inside a string;
/// - NEL (U+0085), LS (U+2028) and PS (U+2029) are line breaks, which a quoted
///   string folds, so the server would store something else than was sent.
/// So the JSON is written without slash escapes, and those characters as `\uXXXX`,
/// which both JSON and YAML 1.1 read as the character itself.
struct ApplyPatchBody: Sendable, Equatable {
    let data: Data

    init(object: [String: Any]) throws {
        guard JSONSerialization.isValidJSONObject(object) else {
            throw TetherError(.invalidArgument, "an object to apply is not representable as JSON")
        }
        let json = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        var text = String.UnicodeScalarView()
        for scalar in String(decoding: json, as: UTF8.self).unicodeScalars {
            if Self.needsEscape(scalar) {
                // Only possible inside a JSON string: JSON's own syntax is printable ASCII.
                text.append(contentsOf: String(format: "\\u%04x", scalar.value).unicodeScalars)
            } else {
                text.append(scalar)
            }
        }
        data = Data(String(text).utf8)
    }

    /// Re-encodes JSON from elsewhere (the hub's desired objects) the same way.
    init(json: Data) throws {
        guard let object = try JSONSerialization.jsonObject(with: json) as? [String: Any] else {
            throw TetherError(.invalidArgument, "an object to apply is not a JSON object")
        }
        try self.init(object: object)
    }

    /// Characters YAML 1.1 would refuse or fold, written as escapes. Everything below
    /// U+0020 is already escaped by the JSON writer.
    static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x7F...0x9F, 0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF: return true
        default: return false
        }
    }
}
