import Foundation
import Yams

/// A JSON value as the API server sees it: objects, lists and scalars, compared structurally.
public enum JSON: Sendable, Hashable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([String: JSON])

    /// The member `key` of an object, or nil for a missing key or a non-object.
    public subscript(key: String) -> JSON? {
        get { if case .object(let o) = self { return o[key] } else { return nil } }
        set {
            guard case .object(var o) = self else {
                if let newValue { self = .object([key: newValue]) }
                return
            }
            o[key] = newValue
            self = .object(o)
        }
    }

    /// The value at a dotted path of object keys, e.g. `["metadata", "name"]`.
    public subscript(path path: [String]) -> JSON? {
        get {
            var node: JSON? = self
            for key in path { node = node?[key] }
            return node
        }
        set {
            guard let first = path.first else { if let newValue { self = newValue }; return }
            if path.count == 1 { self[first] = newValue; return }
            var child = self[first] ?? .object([:])
            child[path: Array(path.dropFirst())] = newValue
            if case .object(let o) = child, o.isEmpty, newValue == nil { self[first] = nil } else { self[first] = child }
        }
    }

    public var string: String? { if case .string(let s) = self { return s } else { return nil } }
    public var objectValue: [String: JSON]? { if case .object(let o) = self { return o } else { return nil } }
    public var arrayValue: [JSON]? { if case .array(let a) = self { return a } else { return nil } }
    public var intValue: Int? {
        switch self {
        case .int(let i): return i
        case .double(let d) where d == d.rounded(): return Int(d)
        default: return nil
        }
    }

    /// Parses JSON bytes.
    public static func parse(_ data: Data) throws -> JSON {
        try JSONDecoder().decode(JSON.self, from: data)
    }

    /// Parses a body that may be JSON or YAML (apply bodies are either).
    public static func parseJSONOrYAML(_ data: Data) throws -> JSON {
        if let json = try? parse(data) { return json }
        guard let text = String(data: data, encoding: .utf8), let any = try Yams.load(yaml: text) else {
            throw EmulatorError.badRequest("the body is neither JSON nor YAML")
        }
        return try JSON(yamlValue: any)
    }

    init(yamlValue value: Any) throws {
        switch value {
        case is NSNull: self = .null
        case let b as Bool: self = .bool(b)
        case let i as Int: self = .int(i)
        case let d as Double: self = .double(d)
        case let s as String: self = .string(s)
        case let a as [Any]: self = .array(try a.map { try JSON(yamlValue: $0) })
        case let o as [String: Any]: self = .object(try o.mapValues { try JSON(yamlValue: $0) })
        case let o as [AnyHashable: Any]:
            var result: [String: JSON] = [:]
            for (k, v) in o { result["\(k.base)"] = try JSON(yamlValue: v) }
            self = .object(result)
        default: throw EmulatorError.badRequest("unsupported YAML value \(value)")
        }
    }

    /// Compact JSON bytes (keys sorted, for stable output).
    public func data() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(self)) ?? Data("null".utf8)
    }

    /// Compact JSON text.
    public var text: String { String(decoding: data(), as: UTF8.self) }
}

extension JSON: Codable {
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSON].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSON].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .int(let i): try c.encode(i)
        case .double(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }
}

extension JSON: ExpressibleByStringLiteral, ExpressibleByDictionaryLiteral, ExpressibleByArrayLiteral,
    ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(dictionaryLiteral elements: (String, JSON)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { $1 }))
    }
    public init(arrayLiteral elements: JSON...) { self = .array(elements) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}
