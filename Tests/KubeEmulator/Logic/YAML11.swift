import Foundation

/// What kube-apiserver's YAML decoder (sigs.k8s.io/yaml over go-yaml v2, a YAML 1.1
/// parser) makes of an `application/apply-patch+yaml` body that is JSON text. JSON is
/// not quite YAML 1.1: the escape `\/` (which Foundation's JSON writers emit) does not
/// exist there, non-printable characters are refused outright, and a raw NEL inside a
/// string is a line break that gets folded. The real server then answers 400
/// BadRequest (`Tests/Fixtures/kube/status/ssa-yaml-escape-badrequest.json`).
enum YAML11 {
    /// The message prefix apiserver puts before go-yaml's error (endpoints/handlers/patch.go).
    static let prefix = "error decoding YAML: error converting YAML to JSON: yaml: "

    /// Checks a JSON body as go-yaml v2 scans it and returns the JSON text with the
    /// content go-yaml would have read (NEL in strings folded to a space), or throws
    /// the server's 400.
    static func readJSONBody(_ data: Data) throws(EmulatorError) -> Data {
        guard let text = String(data: data, encoding: .utf8) else {
            throw .badRequest(prefix + "invalid leading UTF-8 octet")
        }
        var out = String.UnicodeScalarView()
        var line = 0
        var inString = false
        let scalars = Array(text.unicodeScalars)
        var i = 0
        func fail(_ problem: String) -> EmulatorError {
            // go-yaml names the line (1-based) only when it is not the first.
            .badRequest(prefix + (line == 0 ? "" : "line \(line + 1): ") + problem)
        }
        while i < scalars.count {
            let c = scalars[i]
            guard isPrintable(c) else {
                // go-yaml's reader refuses these anywhere in the stream (reader.go).
                throw fail("control characters are not allowed")
            }
            if c == "\n" { line += 1 }
            guard inString else {
                if c == "\"" { inString = true }
                out.append(c)
                i += 1
                continue
            }
            switch c {
            case "\"":
                inString = false
                out.append(c)
                i += 1
            case "\u{85}":
                // A line break in a double-quoted scalar: folded to one space, blanks around it dropped.
                while let last = out.last, last == " " || last == "\t" { out.removeLast() }
                out.append(" ")
                i += 1
                while i < scalars.count, scalars[i] == " " || scalars[i] == "\t" { i += 1 }
            case "\\":
                guard i + 1 < scalars.count else { throw fail("found unexpected end of stream") }
                let e = scalars[i + 1]
                switch e {
                case "0", "a", "b", "t", "\t", "n", "v", "f", "r", "e", " ", "\"", "'", "\\", "N", "_", "L", "P":
                    // Valid in both: JSON's subset passes through; the rest are turned into what YAML means.
                    switch e {
                    case "b", "t", "n", "f", "r", "\"", "\\": out.append(c); out.append(e)
                    case "0": out.append(contentsOf: "\\u0000".unicodeScalars)
                    case "a": out.append(contentsOf: "\\u0007".unicodeScalars)
                    case "\t": out.append(contentsOf: "\\t".unicodeScalars)
                    case "v": out.append(contentsOf: "\\u000b".unicodeScalars)
                    case "e": out.append(contentsOf: "\\u001b".unicodeScalars)
                    case " ": out.append(" ")
                    case "'": out.append("'")
                    case "N": out.append(contentsOf: "\\u0085".unicodeScalars)
                    case "_": out.append(contentsOf: "\\u00a0".unicodeScalars)
                    case "L": out.append(contentsOf: "\\u2028".unicodeScalars)
                    default: out.append(contentsOf: "\\u2029".unicodeScalars)
                    }
                    i += 2
                case "x", "u", "U":
                    let width = e == "x" ? 2 : e == "u" ? 4 : 8
                    guard i + 1 + width < scalars.count,
                          let value = UInt32(String(String.UnicodeScalarView(scalars[(i + 2)..<(i + 2 + width)])), radix: 16)
                    else { throw fail("did not find expected hexdecimal number") }
                    guard !(0xD800...0xDFFF).contains(value), value <= 0x10FFFF, let scalar = Unicode.Scalar(value) else {
                        throw fail("found invalid Unicode character escape code")
                    }
                    out.append(contentsOf: jsonEscaped(scalar).unicodeScalars)
                    i += 2 + width
                default:
                    // `\/` among them: YAML 1.2 added it, YAML 1.1 (go-yaml v2) never had it.
                    throw fail("found unknown escape character")
                }
            default:
                out.append(c)
                i += 1
            }
        }
        return Data(String(out).utf8)
    }

    /// YAML 1.1's printable set, as go-yaml's `is_printable`.
    static func isPrintable(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x9, 0xA, 0xD, 0x20...0x7E, 0x85, 0xA0...0xD7FF, 0x10000...0x10FFFF: return true
        case 0xE000...0xFFFD: return c.value != 0xFEFF
        default: return false
        }
    }

    private static func jsonEscaped(_ scalar: Unicode.Scalar) -> String {
        switch scalar {
        case "\"": return "\\\""
        case "\\": return "\\\\"
        default:
            if scalar.value < 0x20 { return String(format: "\\u%04x", scalar.value) }
            return String(scalar)
        }
    }
}
