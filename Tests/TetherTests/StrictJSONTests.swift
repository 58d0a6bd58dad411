import Foundation
import Shared
import TestSupport
import Testing
@testable import TetherAgent

/// `JSONScanner.validate`, the one-pass check of every audit webhook body: it must
/// accept exactly the JSON documents a real parser accepts, and find duplicate keys
/// as `firstDuplicateKey` does.
@Suite struct StrictJSONTests {
    private static func valid(_ text: String) -> Bool { valid(Data(text.utf8)) }
    private static func valid(_ data: Data) -> Bool {
        do {
            _ = try JSONScanner.validate(data)
            return true
        } catch {
            return false
        }
    }
    private static func foundationAccepts(_ data: Data) -> Bool {
        (try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])) != nil
    }

    @Test func acceptsAndRefusesWhatAJSONParserDoes() {
        let accepted = [
            #"{}"#, #"[]"#, #" {"a": [1, -0, 0.5, -1.25e+10, 3E-2, 1e5, true, false, null, "x"]} "#,
            #"{"s": "tab\tnew\nquote\"slash\/back\\uni\u00e9pair\ud83d\ude00"}"#, "\"plain\"", "0", "-12.5", "[[[]]]",
            "{\"é\": \"ü✓😀\"}",
        ]
        let refused = [
            "", " ", "{", "}", "[,1]", #"{,}"#, #"{"a"}"#, #"{"a":}"#, #"{a: 1}"#, "[01]", "[1.]", "[.5]",
            "[-]", "[1e]", "[1e+]", "[+1]", "[tru]", "[nul]", "[True]", "[falsey]", #"["unterminated]"#, #"["bad \x escape"]"#,
            #"["\u12G4"]"#, #"["\ud800"]"#, #"["\udc00"]"#, #"["\ud800\u0041"]"#, "[\"tab\tinside\"]", "[1] [2]", "{} x", "[1 2]",
            #"{"a" 1}"#, "[NaN]", "[Infinity]", "['single']",
        ]
        for text in accepted {
            #expect(throws: Never.self, "\(text)") { try JSONScanner.validate(Data(text.utf8)) }
            #expect(Self.foundationAccepts(Data(text.utf8)), "control: Foundation accepts \(text)")
        }
        for text in refused {
            #expect(!Self.valid(text), "\(text)")
            #expect(!Self.foundationAccepts(Data(text.utf8)), "control: Foundation refuses \(text)")
        }
        // Stricter than Foundation, as RFC 8259 is: no trailing commas (Foundation takes them).
        for text in ["[1,]", #"{"a":1,}"#, #"{"a": [1, 2, ], "b": 1}"#] {
            #expect(!Self.valid(text), "\(text)")
            #expect(Self.foundationAccepts(Data(text.utf8)), "control: Foundation takes \(text)")
        }
    }

    @Test func refusesMalformedUTF8AndSaysWhere() throws {
        for bytes: [UInt8] in [[0xC0, 0x80], [0xED, 0xA0, 0x80], [0xE2, 0x82], [0xF5, 0x80, 0x80, 0x80], [0x80], [0xF0, 0x8F, 0xBF, 0xBF]] {
            let body = Data(#"{"s": ""#.utf8) + Data(bytes) + Data(#""}"#.utf8)
            #expect(throws: JSONScanner.Invalid.self, "\(bytes)") { try JSONScanner.validate(body) }
        }
        do {
            _ = try JSONScanner.validate(Data(#"{"a": tru}"#.utf8))
            Issue.record("accepted a bad literal")
        } catch let error as JSONScanner.Invalid {
            #expect(error.reason == "invalid literal")
            #expect(error.offset == 6)
        }
    }

    @Test func limitsNesting() {
        let deepest = String(repeating: "[", count: JSONScanner.maxDepth) + String(repeating: "]", count: JSONScanner.maxDepth)
        #expect(Self.valid(deepest))
        let tooDeep = "[" + deepest + "]"
        #expect(throws: JSONScanner.Invalid.self) { try JSONScanner.validate(Data(tooDeep.utf8)) }
    }

    @Test func findsTheSameDuplicatesAsTheScanner() throws {
        let keys = (0..<40).map { #""k\#($0)": \#($0)"# }.joined(separator: ", ")
        let cases: [(String, String?)] = DuplicateKeyTests.cases + [
            (#"[{"k": 1}, [{"x": 1, "x": 2}]]"#, "[1][0].x"),
            // Past 16 keys an object keeps a set of them: the same answers.
            ("{" + keys + "}", nil),
            ("{" + keys + #", "k7": 0}"#, "k7"),
            ("{" + keys + #", "k\u0033\u0039": 0}"#, "k39"),
            (#"{"a": {"x": 1}, "b": {"x": 1}, "a": 2}"#, "a"),
        ]
        for (json, expected) in cases {
            #expect(try JSONScanner.validate(Data(json.utf8)) == expected, "\(json)")
            #expect(try JSONScanner.firstDuplicateKey(in: Data(json.utf8)) == expected, "control: \(json)")
        }
        for url in try Fixtures.files(in: "audit/webhook") {
            #expect(try JSONScanner.validate(Data(contentsOf: url)) == nil, "\(url.lastPathComponent)")
        }
    }

    /// Thousands of small edits of a real event (characters JSON gives meaning to,
    /// put in, taken out or swapped): the validator and Foundation agree on each,
    /// but for trailing commas, which only Foundation takes.
    @Test func agreesWithFoundationOnEditsOfARealEvent() throws {
        let body = try Data(contentsOf: try #require(try Fixtures.files(in: "audit/webhook").first))
        let item = try JSONScanner.with(body) { scanner -> Range<Int> in
            var items = scanner.at(try #require(try scanner.members().first { String(Substring($0.key)) == "items" }).range)
            return try #require(try items.elements().first)
        }
        let event = Array(body[item])
        let alphabet = Array(#"{}[]:," \0123456789.-+eEtrufalsn"#.utf8)
        var rng = SplitMix(seed: 11)
        var disagreements: [String] = []
        var refusedCount = 0
        for _ in 0..<3_000 {
            var edited = event
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                let at = Int(rng.next() % UInt64(edited.count))
                guard edited[at] < 0x80 else { continue }  // keep the UTF-8 whole
                switch rng.next() % 3 {
                case 0: edited.remove(at: at)
                case 1: edited.insert(alphabet[Int(rng.next() % UInt64(alphabet.count))], at: at)
                default: edited[at] = alphabet[Int(rng.next() % UInt64(alphabet.count))]
                }
            }
            let data = Data(edited)
            let ours = Self.valid(data)
            let text = String(decoding: edited, as: UTF8.self)
            // The one difference by design: a trailing comma (Foundation takes it).
            let trailingComma = text.range(of: #",\s*[\]}]"#, options: .regularExpression) != nil
            if ours != Self.foundationAccepts(data), !(trailingComma && !ours) { disagreements.append(text) }
            if !ours { refusedCount += 1 }
        }
        #expect(disagreements.isEmpty, "\(disagreements.count) disagreements, first: \(disagreements.first ?? "")")
        #expect(refusedCount > 1_000, "the edits break most documents (\(refusedCount) refused)")
    }

    @Test func theOutlineNotesTopLevelMembersAndTheWatchedArraysFields() throws {
        let doc = #"{"k\u0069nd": "EventList", "items": [{"a": "x", "b": ""}, {"b": "y", "c": {"a": "nested"}}, 3], "other": [{"a": "z"}]}"#
        let data = Data(doc.utf8)
        let outline = try JSONScanner.outline(data, array: "items", fields: ["a", "b"])
        #expect(outline.isObject && outline.duplicate == nil)
        #expect(outline.members.map(\.key) == ["kind", "items", "other"])
        #expect(outline.elements.map { String(decoding: data[$0], as: UTF8.self) } == [#"{"a": "x", "b": ""}"#, #"{"b": "y", "c": {"a": "nested"}}"#, "3"])
        // a non-empty string only, and only the element's own members
        #expect(outline.elementFields == [0b01, 0b10, 0])
        let array = try JSONScanner.outline(Data(#"[{"a": "x"}]"#.utf8), array: "items", fields: ["a"])
        #expect(!array.isObject && array.elements.isEmpty && array.members.isEmpty)
    }

    @Test func theEventListParserReadsEscapedKeysAsTheirMeaning() throws {
        let event = #"{"auditID": "a1", "stage": "ResponseComplete", "stageTimestamp": "2026-12-04T10:00:00Z"}"#
        let escaped = #"{"\u006bind": "EventList", "apiVersion": "audit.k8s.io\/v1", "items": [\#(event)]}"#
        #expect(try EventListParser.events(in: Data(escaped.utf8)) == [Data(event.utf8)])
        let numberStage = #"{"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [{"auditID": "a", "stage": 3, "stageTimestamp": "t"}]}"#
        #expect(throws: EventListParser.Invalid.self) { try EventListParser.events(in: Data(numberStage.utf8)) }
        let notList = #"{"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": {"a": 1}}"#
        do {
            _ = try EventListParser.events(in: Data(notList.utf8))
            Issue.record("accepted items that are not a list")
        } catch {
            #expect("\(error)" == "items must be a list of audit events")
        }
        do {
            _ = try EventListParser.events(in: Data(#"{"kind": 7}"#.utf8))
            Issue.record("accepted a kind that is a number")
        } catch {
            #expect("\(error)" == "kind must be EventList, got 7")
        }
    }
}

/// A small deterministic generator (SplitMix64), so a failure repeats.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
