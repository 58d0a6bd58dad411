import Foundation

/// JSON for the hub's own audit events, written directly: keys sorted by their
/// UTF-8 bytes, `/` not escaped, no whitespace. Foundation's writer with
/// `.sortedKeys` sorts with locale-aware string comparison and bridges every value,
/// which made it the largest single cost of a proxied request at the hub.
///
/// Takes what `JSONSerialization` takes for these events: `String`, `Bool`, integers,
/// `Double`, `NSNull`, arrays and `[String: …]` dictionaries of them.
public enum CanonicalJSON {
    public struct UnsupportedValue: Error, CustomStringConvertible {
        public let description: String
    }

    public static func data(_ value: Any) throws -> Data {
        var out: [UInt8] = []
        out.reserveCapacity(1024)
        try write(value, to: &out)
        return Data(out)
    }

    static func write(_ value: Any, to out: inout [UInt8]) throws {
        switch value {
        case let string as String: writeString(string, to: &out)
        case let bool as Bool: out.append(contentsOf: bool ? Array("true".utf8) : Array("false".utf8))
        case let int as Int: out.append(contentsOf: String(int).utf8)
        case let int as Int64: out.append(contentsOf: String(int).utf8)
        case let int as UInt64: out.append(contentsOf: String(int).utf8)
        case let int as Int32: out.append(contentsOf: String(int).utf8)
        case let double as Double:
            guard double.isFinite else { throw UnsupportedValue(description: "a JSON number must be finite, not \(double)") }
            out.append(contentsOf: (double == double.rounded() && abs(double) < 1e15 ? String(Int64(double)) : String(double)).utf8)
        case is NSNull: out.append(contentsOf: "null".utf8)
        case let strings as [String: String]:
            try writeObject(strings.map { ($0.key, $0.value as Any) }, to: &out)
        case let object as [String: Any]:
            try writeObject(object.map { ($0.key, $0.value) }, to: &out)
        case let array as [Any]:
            out.append(UInt8(ascii: "["))
            for (index, element) in array.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                try write(element, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        default:
            throw UnsupportedValue(description: "cannot write a \(type(of: value)) as JSON")
        }
    }

    static func writeObject(_ pairs: [(String, Any)], to out: inout [UInt8]) throws {
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
