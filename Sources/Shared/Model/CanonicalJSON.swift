import Foundation

/// JSON for the hub's own audit events, written directly: keys sorted by their
/// UTF-8 bytes, `/` not escaped, no whitespace. Foundation's writer with
/// `.sortedKeys` sorts with locale-aware string comparison and bridges every value,
/// which made it the largest single cost of a proxied request at the hub; the
/// values are typed (`Value`), so writing one needs no dynamic casts either.
public enum CanonicalJSON {
    public struct UnsupportedValue: Error, CustomStringConvertible {
        public let description: String
    }

    /// A JSON value. An object's members are written sorted by key; its keys must
    /// be distinct.
    public enum Value: Sendable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
        ExpressibleByBooleanLiteral, ExpressibleByNilLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral {
        case string(String)
        case int(Int)
        case double(Double)
        case bool(Bool)
        case null
        case array([Value])
        case object([(String, Value)])

        public init(stringLiteral value: String) { self = .string(value) }
        public init(integerLiteral value: Int) { self = .int(value) }
        public init(floatLiteral value: Double) { self = .double(value) }
        public init(booleanLiteral value: Bool) { self = .bool(value) }
        public init(nilLiteral: ()) { self = .null }
        public init(arrayLiteral elements: Value...) { self = .array(elements) }
        public init(dictionaryLiteral elements: (String, Value)...) { self = .object(elements) }

        /// An object of strings (annotations, labels).
        public static func strings(_ object: [String: String]) -> Value { .object(object.map { ($0.key, .string($0.value)) }) }
    }

    public static func data(_ value: Value) throws -> Data {
        var out: [UInt8] = []
        out.reserveCapacity(1024)
        try write(value, to: &out)
        return Data(out)
    }

    static func write(_ value: Value, to out: inout [UInt8]) throws {
        switch value {
        case .string(let string): writeString(string, to: &out)
        case .bool(let bool): out.append(contentsOf: bool ? Array("true".utf8) : Array("false".utf8))
        case .int(let int): out.append(contentsOf: String(int).utf8)
        case .double(let double):
            guard double.isFinite else { throw UnsupportedValue(description: "a JSON number must be finite, not \(double)") }
            out.append(contentsOf: (double == double.rounded() && abs(double) < 1e15 ? String(Int64(double)) : String(double)).utf8)
        case .null: out.append(contentsOf: "null".utf8)
        case .object(let pairs): try writeObject(pairs, to: &out)
        case .array(let array):
            out.append(UInt8(ascii: "["))
            for (index, element) in array.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                try write(element, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        }
    }

    static func writeObject(_ pairs: [(String, Value)], to out: inout [UInt8]) throws {
        out.append(UInt8(ascii: "{"))
        for (index, pair) in pairs.sorted(by: { $0.0.utf8.lexicographicallyPrecedes($1.0.utf8) }).enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            writeString(pair.0, to: &out)
            out.append(UInt8(ascii: ":"))
            try write(pair.1, to: &out)
        }
        out.append(UInt8(ascii: "}"))
    }

    static func writeString(_ string: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in string.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x0A: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
