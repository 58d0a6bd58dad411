import Foundation
import Shared
import Testing

@Suite struct ModelTests {
    @Test(arguments: ["prod-eu", "a", "x1-2-3", String(repeating: "a", count: 63)])
    func acceptsDNSLabels(_ name: String) throws {
        #expect(try ClusterName(name).rawValue == name)
    }

    @Test(arguments: ["", "Prod", "-a", "a-", "a_b", "a.b", String(repeating: "a", count: 64), "hub"])
    func refusesBadClusterNames(_ name: String) {
        #expect(throws: TetherError.self) { try ClusterName(name) }
    }

    @Test func joinStringRoundTrips() throws {
        let join = JoinString(
            hub: HostPort(host: "hub.example.com", port: 8443), tokenID: "abcd1234",
            secret: Base64URL.encode([UInt8](repeating: 7, count: 32)), caHash: "sha256:" + String(repeating: "ab", count: 32))
        let parsed = try JoinString(parsing: "  " + join.encoded + "\n")
        #expect(parsed == join)
    }

    @Test func joinStringRefusesEachMalformedPart() throws {
        let good = JoinString(
            hub: HostPort(host: "10.0.0.1", port: 8443), tokenID: "abcd1234",
            secret: Base64URL.encode([UInt8](repeating: 1, count: 32)), caHash: "sha256:" + String(repeating: "0", count: 64))
        var badHash = good
        badHash.caHash = "sha256:xyz"
        var badID = good
        badID.tokenID = "ABC"
        var badSecret = good
        badSecret.secret = "short"
        let cases: [(String, String)] = [
            ("", "must start with"),
            ("kubeadm.abc", "must start with"),
            ("tether1.!!!", "base64url"),
            (String(good.encoded.dropLast(10)), "base64url"),
            (badHash.encoded, "CA hash"),
            (badID.encoded, "token id"),
            (badSecret.encoded, "token secret"),
        ]
        for (text, fragment) in cases {
            let error = #expect(throws: TetherError.self) { try JoinString(parsing: text) }
            #expect(error?.code == .malformedJoinString)
            #expect(error?.message.contains(fragment) == true, "\(error?.message ?? "") should mention \(fragment)")
            #expect(error?.message.contains(good.secret) == false)
        }
    }

    @Test func durations() throws {
        #expect(try DurationParser.parse("24h") == .seconds(86_400))
        #expect(try DurationParser.parse("1h30m") == .seconds(5400))
        #expect(try DurationParser.parse("7d") == .seconds(604_800))
        #expect(try DurationParser.parse("1.5s") == .milliseconds(1500))
        for bad in ["", "10", "h", "5x", "-1h", "0s"] {
            #expect(throws: TetherError.self, "\(bad)") { try DurationParser.parse(bad) }
        }
        #expect(DurationParser.format(.seconds(90_061)) == "1d1h1m1s")
    }

    @Test func backoffGrowsWithJitterUpToTheCapAndResets() {
        var backoff = Backoff(initial: .milliseconds(500), cap: .seconds(30))
        var rng = SystemRandomNumberGenerator()
        var ceilings: [Duration] = []
        for _ in 0..<10 {
            let ceiling = backoff.ceiling
            let delay = backoff.next(using: &rng)
            #expect(delay <= ceiling && delay >= ceiling / 2)
            ceilings.append(ceiling)
        }
        #expect(ceilings.prefix(4) == [.milliseconds(500), .seconds(1), .seconds(2), .seconds(4)])
        #expect(ceilings.last == .seconds(30))
        backoff.reset()
        #expect(backoff.ceiling == .milliseconds(500))
        backoff.exhaust()
        #expect(backoff.ceiling == .seconds(30))
    }

    @Test func hostPorts() throws {
        #expect(try HostPort(parsing: "0.0.0.0:8443") == HostPort(host: "0.0.0.0", port: 8443))
        #expect(try HostPort(parsing: "[::1]:9443") == HostPort(host: "::1", port: 9443))
        #expect(HostPort(host: "::1", port: 1).description == "[::1]:1")
        for bad in ["8443", "host:", ":80", "h:99999", "::1:80"] {
            #expect(throws: TetherError.self, "\(bad)") { try HostPort(parsing: bad) }
        }
    }

    @Test func labels() throws {
        #expect(try LabelRules.parseAssignment("env=prod") == ("env", "prod"))
        #expect(try LabelRules.parseAssignment("tether.dev/region=eu-1").key == "tether.dev/region")
        #expect(try LabelRules.parseAssignment("empty=").value == "")
        for bad in ["noequals", "=v", "k=-bad", "Bad Key=v", "k=" + String(repeating: "v", count: 64)] {
            #expect(throws: TetherError.self, "\(bad)") { try LabelRules.parseAssignment(bad) }
        }
    }
}

/// The hub's audit events are written by `CanonicalJSON`: what Foundation reads back
/// must be exactly what went in, with keys in byte order and nothing escaped that
/// need not be (the real API server's YAML 1.1 parser refuses `\/`).
@Suite struct CanonicalJSONTests {
    @Test func roundTripsThroughFoundationWithSortedKeys() throws {
        let message = "GET /api/v1?watch=true \"quoted\" back\\slash\ttab\nline\u{1}\u{1f}"
        let value: CanonicalJSON.Value = [
            "kind": "Event", "zeta": 1, "Alpha": -42, "user": ["username": "alice", "groups": ["dev", "ops"]],
            "annotations": .strings(["tether.dev/cluster": "prod-eu", "tether.dev/message": message]),
            "unicode": "Zoë ☃ 🚀", "flags": [true, false], "nothing": nil, "ratio": 0.25, "whole": 3.0, "empty": [:], "list": [],
        ]
        let data = try CanonicalJSON.data(value)
        let text = String(decoding: data, as: UTF8.self)
        #expect(!text.contains("\\/"), "a slash is written as it is: \(text)")
        #expect(text == #"{"Alpha":-42,"annotations":{"tether.dev/cluster":"prod-eu","tether.dev/message":"GET /api/v1?watch=true \"quoted\" back\\slash\ttab\nline\u0001\u001f"},"empty":{},"flags":[true,false],"kind":"Event","list":[],"nothing":null,"ratio":0.25,"unicode":"Zoë ☃ 🚀","user":{"groups":["dev","ops"],"username":"alice"},"whole":3,"zeta":1}"#, "\(text)")
        let back = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect((back["annotations"] as? [String: String])?["tether.dev/message"] == message)
        #expect((back["user"] as? [String: Any])?["groups"] as? [String] == ["dev", "ops"])
        #expect(back["unicode"] as? String == "Zoë ☃ 🚀")
        #expect(back["whole"] as? Int == 3 && back["zeta"] as? Int == 1 && back["Alpha"] as? Int == -42)
        #expect(back["nothing"] is NSNull)
    }

    @Test func refusesWhatJSONCannotHold() {
        #expect(throws: CanonicalJSON.UnsupportedValue.self) { try CanonicalJSON.data(["n": .double(.nan)]) }
    }
}
