import Testing
@testable import KubeEmulator

@Suite struct LabelSelectorTests {
    let labels = ["app": "web", "tier": "front", "app.kubernetes.io/managed-by": "tether"]

    @Test(arguments: [
        ("app=web", true), ("app==web", true), ("app=db", false), ("app!=db", true), ("app!=web", false),
        ("missing!=x", true), ("app in (web,db)", true), ("app in (db)", false), ("app notin (db)", true),
        ("app notin (web)", false), ("missing notin (x)", true), ("missing in (x)", false),
        ("tier", true), ("missing", false), ("!missing", true), ("!tier", false),
        ("app=web,tier=front", true), ("app=web,tier=back", false), ("app in (web, db),!missing", true),
        ("app.kubernetes.io/managed-by=tether", true), ("", true),
    ])
    func matches(selector: String, expected: Bool) throws {
        #expect(try LabelSelector(parsing: selector).matches(labels) == expected, "\(selector)")
    }

    @Test func numericComparisons() throws {
        #expect(try LabelSelector(parsing: "n>3").matches(["n": "4"]))
        #expect(try !LabelSelector(parsing: "n>3").matches(["n": "3"]))
        #expect(try LabelSelector(parsing: "n<3").matches(["n": "2"]))
    }

    @Test(arguments: ["app in web", "app=(x)", "=x", "app notin", "a b c"])
    func rejectsMalformed(selector: String) {
        #expect(throws: EmulatorError.self) { try LabelSelector(parsing: selector) }
    }

    @Test func malformedIsA400Status() {
        do {
            _ = try LabelSelector(parsing: "app in web")
            Issue.record("expected an error")
        } catch {
            #expect(error.code == 400)
            #expect(error.status["reason"] == "BadRequest")
        }
    }
}
