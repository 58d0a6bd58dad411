import Foundation

/// A failed API call: the HTTP code and the `Status` body the real server sends for it.
public struct EmulatorError: Error, Sendable, CustomStringConvertible {
    public let code: Int
    public let status: JSON

    public var description: String { "\(code): \(status["message"]?.string ?? "")" }

    init(code: Int, reason: String, message: String, details: JSON? = nil) {
        self.code = code
        var body: JSON = [
            "kind": "Status", "apiVersion": "v1", "metadata": [:], "status": "Failure",
            "message": .string(message), "reason": .string(reason), "code": .int(code),
        ]
        if let details { body["details"] = details }
        status = body
    }

    private static func details(_ type: ResourceType, _ name: String) -> JSON {
        var d: JSON = ["name": .string(name), "kind": .string(type.plural)]
        if !type.group.isEmpty { d["group"] = .string(type.group) }
        return d
    }

    static func notFound(_ type: ResourceType, _ name: String) -> EmulatorError {
        EmulatorError(code: 404, reason: "NotFound", message: "\(type.qualifiedName) \"\(name)\" not found", details: details(type, name))
    }

    static func alreadyExists(_ type: ResourceType, _ name: String) -> EmulatorError {
        EmulatorError(code: 409, reason: "AlreadyExists", message: "\(type.qualifiedName) \"\(name)\" already exists", details: details(type, name))
    }

    static func conflict(_ type: ResourceType, _ name: String) -> EmulatorError {
        EmulatorError(
            code: 409, reason: "Conflict",
            message: "Operation cannot be fulfilled on \(type.qualifiedName) \"\(name)\": the object has been modified; please apply your changes to the latest version and try again",
            details: details(type, name))
    }

    /// 422 with one cause per field error, worded as the real server words them.
    static func invalid(_ type: ResourceType, _ name: String, _ causes: [FieldError]) -> EmulatorError {
        invalid(qualifiedKind: type.qualifiedKind, group: type.group, kind: type.kind, name, causes)
    }

    static func invalid(qualifiedKind: String, group: String, kind: String, _ name: String, _ causes: [FieldError]) -> EmulatorError {
        let parts = causes.map { "\($0.field): \($0.message)" }
        let summary = parts.count == 1 ? parts[0] : "[\(parts.joined(separator: ", "))]"
        var d: JSON = ["kind": .string(kind), "causes": .array(causes.map { ["reason": .string($0.reason), "message": .string($0.message), "field": .string($0.field)] })]
        if !name.isEmpty { d["name"] = .string(name) }
        if !group.isEmpty { d["group"] = .string(group) }
        return EmulatorError(code: 422, reason: "Invalid", message: "\(qualifiedKind) \"\(name)\" is invalid: \(summary)", details: d)
    }

    /// 409 from server-side apply: fields another manager owns would change. Worded as
    /// k8s.io/apiserver's fieldmanager words it.
    static func applyConflict(_ conflicts: [ApplyConflict]) -> EmulatorError {
        let causes: [JSON] = conflicts.map {
            ["reason": "FieldManagerConflict", "message": .string("conflict with \($0.conflictName)"), "field": .string($0.path.description)]
        }
        let message: String
        if conflicts.count == 1 {
            message = "Apply failed with 1 conflict: conflict with \(conflicts[0].conflictName): \(conflicts[0].path)"
        } else {
            var lines: [String] = []
            for name in Set(conflicts.map(\.conflictName)).sorted() {
                lines.append("conflicts with \(name):")
                lines += conflicts.filter { $0.conflictName == name }.map { "- \($0.path)" }
            }
            message = "Apply failed with \(conflicts.count) conflicts: \(lines.joined(separator: "\n"))"
        }
        return EmulatorError(code: 409, reason: "Conflict", message: message, details: ["causes": .array(causes)])
    }

    static func badRequest(_ message: String) -> EmulatorError {
        EmulatorError(code: 400, reason: "BadRequest", message: message)
    }

    static let unauthorized = EmulatorError(code: 401, reason: "Unauthorized", message: "Unauthorized")

    static let pathNotFound = EmulatorError(code: 404, reason: "NotFound", message: "the server could not find the requested resource", details: [:])

    static func methodNotAllowed(_ method: String) -> EmulatorError {
        EmulatorError(code: 405, reason: "MethodNotAllowed", message: "the server does not allow this method on the requested resource", details: [:])
    }

    static func expired(_ message: String) -> EmulatorError {
        EmulatorError(code: 410, reason: "Expired", message: message)
    }
}

/// One field error in a 422 `Status`.
struct FieldError: Sendable, Equatable {
    let reason: String
    let message: String
    let field: String

    static func required(_ field: String, _ detail: String = "") -> FieldError {
        FieldError(reason: "FieldValueRequired", message: detail.isEmpty ? "Required value" : "Required value: \(detail)", field: field)
    }
    static func invalid(_ field: String, _ value: String, _ detail: String) -> FieldError {
        FieldError(reason: "FieldValueInvalid", message: "Invalid value: \"\(value)\": \(detail)", field: field)
    }
    static func notSupported(_ field: String, _ value: String, _ supported: [String]) -> FieldError {
        FieldError(reason: "FieldValueNotSupported", message: "Unsupported value: \"\(value)\": supported values: \(supported.map { "\"\($0)\"" }.joined(separator: ", "))", field: field)
    }
}
