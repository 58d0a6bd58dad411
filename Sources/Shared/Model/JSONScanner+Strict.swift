import Foundation

extension JSONScanner {
    /// Why a document is not JSON, with the byte offset where that was found.
    public struct Invalid: Error, CustomStringConvertible {
        public var reason: String
        public var offset: Int
        public var description: String { "\(reason) at byte \(offset)" }
    }

    /// Objects and arrays nested deeper than this are refused (as Foundation's parser does).
    public static let maxDepth = 512

    /// Checks that `data` is exactly one JSON document as RFC 8259 defines it (UTF-8,
    /// strict literals, numbers, escapes and surrogate pairs, no control characters in
    /// strings, nothing after it but white space), in one pass and without building any
    /// value, and returns the path (`items`, `items[3].auditID`) of the first key that
    /// appears twice in one object, or nil. Keys are compared after unescaping.
    public static func validate(_ data: Data) throws -> String? {
        try outline(data, array: nil, fields: []).duplicate
    }

    /// What `outline` notes on its way through a document.
    public struct Outline: Sendable {
        /// The path of the first key that appears twice in one object, or nil.
        public var duplicate: String?
        /// The document is an object; then `members` are its keys (unescaped) and value ranges.
        public var isObject = false
        public var members: [(key: String, range: Range<Int>)] = []
        /// The elements of the array under the top-level key asked for, and for each,
        /// which of the fields asked for it has as a non-empty string (bit k: fields[k]).
        public var elements: [Range<Int>] = []
        public var elementFields: [UInt64] = []
    }

    /// `validate`, noting also what a caller needs of the document in the same pass:
    /// the top-level members, and for the top-level array `array`, its elements and
    /// which of `fields` (at most 64) each element has as a non-empty string.
    ///
    /// This is the audit webhook's one pass over every body: a full parse into
    /// Foundation objects and then scans for the fields cost the agent more than
    /// everything else on that path together.
    public static func outline(_ data: Data, array: String?, fields: [String]) throws -> Outline {
        precondition(fields.count <= 64)
        var validator = StrictValidator(watch: array.map { Array($0.utf8) }, fields: fields.map { Array($0.utf8) })
        return try data.withUnsafeBytes { raw in try validator.run(raw.bindMemory(to: UInt8.self)) }
    }
}

/// The state of one `JSONScanner.validate` pass: where it is, the keys of every open
/// object (their unescaped bytes, to find duplicates), and the path to the value it is in.
private struct StrictValidator {
    private var bytes = UnsafeBufferPointer<UInt8>(start: nil, count: 0)
    private var i = 0
    /// Unescaped bytes of the keys of all open objects, back to back.
    private var keyBytes: [UInt8] = []
    /// The keys of all open objects (ranges in `keyBytes`); each open object's start in it.
    private var keys: [Range<Int>] = []
    /// Per open container: where its keys start in `keys` (objects), the index of the
    /// current element (arrays), and for large objects a set of their keys.
    private struct Level {
        var isObject: Bool
        var firstKey: Int
        var index = 0
        var set: Set<[UInt8]>? = nil
        /// The top-level array whose elements the outline notes.
        var watched = false
    }
    private var levels: [Level] = []
    private var duplicate: String?
    private let watch: [UInt8]?
    private let fields: [[UInt8]]
    private var outline = JSONScanner.Outline()

    init(watch: [UInt8]?, fields: [[UInt8]]) {
        self.watch = watch
        self.fields = fields
    }

    private func fail(_ reason: String) -> JSONScanner.Invalid { JSONScanner.Invalid(reason: reason, offset: i) }

    mutating func run(_ buffer: UnsafeBufferPointer<UInt8>) throws -> JSONScanner.Outline {
        bytes = buffer
        i = 0
        skipSpace()
        outline.isObject = i < bytes.count && bytes[i] == UInt8(ascii: "{")
        try value()
        skipSpace()
        guard i == bytes.count else { throw fail(i < bytes.count ? "unexpected data after the document" : "unexpected end") }
        outline.duplicate = duplicate
        return outline
    }

    private mutating func skipSpace() {
        while i < bytes.count {
            let b = bytes[i]
            guard b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 else { return }
            i += 1
        }
    }

    /// One value, with the white space before it already skipped.
    private mutating func value() throws {
        guard i < bytes.count else { throw fail("unexpected end") }
        switch bytes[i] {
        case UInt8(ascii: "{"): try object()
        case UInt8(ascii: "["): try array()
        case UInt8(ascii: "\""): try string(key: false)
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        case UInt8(ascii: "n"): try literal("null")
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): try number()
        default: throw fail("unexpected character")
        }
    }

    private mutating func literal(_ word: StaticString) throws {
        let count = word.utf8CodeUnitCount
        guard bytes.count - i >= count else { throw fail("unexpected end") }
        for k in 0..<count where bytes[i + k] != word.utf8Start[k] { throw fail("invalid literal") }
        i += count
    }

    private mutating func digits() throws {
        let start = i
        while i < bytes.count, bytes[i] &- UInt8(ascii: "0") < 10 { i += 1 }
        guard i > start else { throw fail("invalid number") }
    }

    private mutating func number() throws {
        if bytes[i] == UInt8(ascii: "-") { i += 1 }
        guard i < bytes.count else { throw fail("unexpected end") }
        if bytes[i] == UInt8(ascii: "0") {
            i += 1
        } else {
            try digits()
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            try digits()
        }
        if i < bytes.count, bytes[i] | 0x20 == UInt8(ascii: "e") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            try digits()
        }
    }

    private mutating func hex4() throws -> UInt32 {
        guard bytes.count - i >= 4 else { throw fail("unexpected end") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[i]
            let digit: UInt8
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = b - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = b - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = b - UInt8(ascii: "A") + 10
            default: throw fail("invalid \\u escape")
            }
            value = value << 4 | UInt32(digit)
            i += 1
        }
        return value
    }

    /// A string; as a key, its unescaped bytes are appended to `keyBytes`.
    private mutating func string(key: Bool) throws {
        i += 1  // the opening quote
        var runStart = i
        while i < bytes.count {
            let b = bytes[i]
            if b == UInt8(ascii: "\"") {
                if key { keyBytes.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<i])) }
                i += 1
                return
            }
            if b < 0x20 { throw fail("control character in a string") }
            if b == UInt8(ascii: "\\") {
                if key { keyBytes.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<i])) }
                try escape(key: key)
                runStart = i
                continue
            }
            if b < 0x80 {
                i += 1
            } else {
                try utf8Sequence()
            }
        }
        throw fail("unterminated string")
    }

    /// One escape sequence at `i` (the backslash).
    private mutating func escape(key: Bool) throws {
        i += 1
        guard i < bytes.count else { throw fail("unterminated string") }
        let b = bytes[i]
        i += 1
        let scalar: UInt32
        switch b {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): scalar = UInt32(b)
        case UInt8(ascii: "b"): scalar = 0x08
        case UInt8(ascii: "f"): scalar = 0x0C
        case UInt8(ascii: "n"): scalar = 0x0A
        case UInt8(ascii: "r"): scalar = 0x0D
        case UInt8(ascii: "t"): scalar = 0x09
        case UInt8(ascii: "u"):
            let unit = try hex4()
            switch unit {
            case 0xD800...0xDBFF:
                guard bytes.count - i >= 6, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                    throw fail("unpaired surrogate in a \\u escape")
                }
                i += 2
                let low = try hex4()
                guard (0xDC00...0xDFFF).contains(low) else { throw fail("unpaired surrogate in a \\u escape") }
                scalar = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
            case 0xDC00...0xDFFF:
                throw fail("unpaired surrogate in a \\u escape")
            default:
                scalar = unit
            }
        default:
            throw fail("invalid escape")
        }
        if key { keyBytes.append(contentsOf: String(Character(Unicode.Scalar(scalar)!)).utf8) }
    }

    /// One multi-byte UTF-8 sequence at `i`: well-formed, shortest form, no surrogates.
    private mutating func utf8Sequence() throws {
        let b = bytes[i]
        let count: Int
        var low: UInt8 = 0x80, high: UInt8 = 0xBF  // allowed range of the second byte
        switch b {
        case 0xC2...0xDF: count = 2
        case 0xE0: count = 3; low = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: count = 3
        case 0xED: count = 3; high = 0x9F
        case 0xF0: count = 4; low = 0x90
        case 0xF1...0xF3: count = 4
        case 0xF4: count = 4; high = 0x8F
        default: throw fail("invalid UTF-8")
        }
        guard bytes.count - i >= count else { throw fail("invalid UTF-8") }
        guard (low...high).contains(bytes[i + 1]) else { throw fail("invalid UTF-8") }
        for k in 2..<max(count, 2) where bytes[i + k] & 0xC0 != 0x80 { throw fail("invalid UTF-8") }
        i += count
    }

    private mutating func open(object: Bool) throws {
        guard levels.count < JSONScanner.maxDepth else { throw fail("nested more than \(JSONScanner.maxDepth) levels deep") }
        levels.append(Level(isObject: object, firstKey: keys.count))
        i += 1
    }

    private mutating func close() {
        let level = levels.removeLast()
        if level.isObject {
            if level.firstKey < keys.count {
                keyBytes.removeSubrange(keys[level.firstKey].lowerBound...)
                keys.removeSubrange(level.firstKey...)
            }
        }
        i += 1
    }

    private mutating func object() throws {
        try open(object: true)
        skipSpace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") { close(); return }
        while true {
            skipSpace()
            guard i < bytes.count else { throw fail("unexpected end") }
            guard bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a key") }
            let keyStart = keyBytes.count
            try string(key: true)
            let key = keyStart..<keyBytes.count
            noteKey(key)
            skipSpace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
            i += 1
            skipSpace()
            let valueStart = i
            try value()
            note(key: key, value: valueStart..<i)
            skipSpace()
            guard i < bytes.count else { throw fail("unexpected end") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
            if bytes[i] == UInt8(ascii: "}") { close(); return }
            throw fail("expected ',' or '}'")
        }
    }

    private mutating func array() throws {
        try open(object: false)
        // The array asked for: a value of the top-level object, under the key watched.
        if let watch, levels.count == 2, levels[0].isObject, keyBytes[keys[keys.count - 1]].elementsEqual(watch) {
            levels[1].watched = true
        }
        let watched = levels[levels.count - 1].watched
        skipSpace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "]") { close(); return }
        while true {
            skipSpace()
            let start = i
            if watched { outline.elementFields.append(0) }
            try value()
            if watched { outline.elements.append(start..<i) }
            skipSpace()
            guard i < bytes.count else { throw fail("unexpected end") }
            if bytes[i] == UInt8(ascii: ",") { levels[levels.count - 1].index += 1; i += 1; continue }
            if bytes[i] == UInt8(ascii: "]") { close(); return }
            throw fail("expected ',' or ']'")
        }
    }

    /// Notes a member for the outline: one of the top-level object's, or one of the
    /// fields asked for in an element of the watched array.
    private mutating func note(key: Range<Int>, value: Range<Int>) {
        if levels.count == 1 {
            outline.members.append((String(decoding: keyBytes[key], as: UTF8.self), value))
        } else if levels.count == 3, levels[1].watched, !fields.isEmpty {
            guard bytes[value.lowerBound] == UInt8(ascii: "\""), value.count > 2 else { return }
            for (k, field) in fields.enumerated() where field.count == key.count && keyBytes[key].elementsEqual(field) {
                outline.elementFields[outline.elementFields.count - 1] |= 1 << UInt64(k)
            }
        }
    }

    /// Records the key just read (at `range` of `keyBytes`) in its object; the first
    /// duplicate found anywhere is kept. Small objects compare keys directly; past 16
    /// keys a set keeps a huge object from costing a quadratic number of comparisons.
    private mutating func noteKey(_ range: Range<Int>) {
        let depth = levels.count - 1
        let first = levels[depth].firstKey
        var seen = false
        if levels[depth].set != nil {
            seen = !levels[depth].set!.insert(Array(keyBytes[range])).inserted
        } else {
            for other in keys[first...] where other.count == range.count && keyBytes[other].elementsEqual(keyBytes[range]) {
                seen = true
                break
            }
            if keys.count - first >= 16 {
                levels[depth].set = Set(keys[first...].map { Array(keyBytes[$0]) } + [Array(keyBytes[range])])
            }
        }
        keys.append(range)
        if seen, duplicate == nil { duplicate = path() }
    }

    /// The path to the key just noted: object keys joined by `.`, array elements as `[i]`.
    private func path() -> String {
        var result = ""
        for (d, level) in levels.enumerated() {
            if level.isObject {
                // An open object's current key is the last one before the next level opened.
                let end = d + 1 < levels.count ? levels[d + 1].firstKey : keys.count
                let key = String(decoding: keyBytes[keys[end - 1]], as: UTF8.self)
                result += result.isEmpty ? key : "." + key
            } else {
                result += "[\(level.index)]"
            }
        }
        return result
    }
}
