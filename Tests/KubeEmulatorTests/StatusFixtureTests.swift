import Foundation
import KubeEmulator
import Testing

/// Replays each request captured from a real kube-apiserver (fixtures/kube/status) against
/// the emulator, after setting up the state the case needs, and compares the answers.
@Suite struct StatusFixtureTests {
    /// Fields that differ between runs and servers.
    static func stable(_ value: JSON) -> JSON {
        var v = value
        for field in ["uid", "resourceVersion", "creationTimestamp"] { v[path: ["metadata", field]] = nil }
        v[path: ["details", "uid"]] = nil
        if let entries = v[path: ["metadata", "managedFields"]]?.arrayValue {
            v[path: ["metadata", "managedFields"]] = .array(entries.map { var e = $0; e["time"] = nil; return e })
        }
        if let message = v["message"]?.string {
            v["message"] = .string(message.replacingOccurrences(of: "[0-9]+", with: "N", options: .regularExpression))
        }
        return v
    }

    static func expectMatches(_ fixture: FixtureFiles.Case, _ got: (code: Int, json: JSON), sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(got.code == fixture.status, sourceLocation: sourceLocation)
        #expect(stable(got.json) == stable(fixture.response), "\(got.json.text)", sourceLocation: sourceLocation)
    }

    static func replay(_ client: EmulatorClient, _ fixture: FixtureFiles.Case, body: String? = nil) async throws -> (code: Int, json: JSON) {
        try await client.json(fixture.method, fixture.path, contentType: fixture.contentType, body: body ?? fixture.body)
    }

    @Test func createdThenAlreadyExists() async throws {
        try await withEmulator { _, client in
            let created = try FixtureFiles.status("create-created")
            Self.expectMatches(created, try await Self.replay(client, created))
            let exists = try FixtureFiles.status("create-alreadyexists")
            Self.expectMatches(exists, try await Self.replay(client, exists))
        }
    }

    @Test func invalidRoleBinding() async throws {
        try await withEmulator { _, client in
            let fixture = try FixtureFiles.status("create-invalid")
            Self.expectMatches(fixture, try await Self.replay(client, fixture))
        }
    }

    @Test func getNotFound() async throws {
        try await withEmulator { _, client in
            let fixture = try FixtureFiles.status("get-notfound")
            Self.expectMatches(fixture, try await Self.replay(client, fixture))
        }
    }

    @Test func tokenRequestForMissingServiceAccount() async throws {
        try await withEmulator { _, client in
            let fixture = try FixtureFiles.status("tokenrequest-notfound")
            Self.expectMatches(fixture, try await Self.replay(client, fixture))
        }
    }

    @Test func updateWithStaleResourceVersion() async throws {
        try await withEmulator { _, client in
            let created = try await Self.replay(client, try FixtureFiles.status("create-created"))
            let staleRV = created.json[path: ["metadata", "resourceVersion"]]!.string!
            var changed = created.json
            changed[path: ["metadata", "labels"]] = ["touched": "yes"]
            #expect(try await client.json("PUT", "/apis/rbac.authorization.k8s.io/v1/clusterroles/fixture-reader", body: changed.text).code == 200)
            let fixture = try FixtureFiles.status("update-conflict")
            let body = fixture.body.replacingOccurrences(of: "\"resourceVersion\":\"251\"", with: "\"resourceVersion\":\"\(staleRV)\"")
            Self.expectMatches(fixture, try await Self.replay(client, fixture, body: body))
        }
    }

    @Test func serverSideApplyCreatesThenDelete() async throws {
        try await withEmulator { emulator, client in
            let fixture = try FixtureFiles.status("ssa-create")
            Self.expectMatches(fixture, try await Self.replay(client, fixture))
            let uid = emulator.object(.clusterRoles, name: "fixture-ssa-new")?[path: ["metadata", "uid"]]
            let delete = try FixtureFiles.status("delete-ok")
            let got = try await Self.replay(client, delete)
            Self.expectMatches(delete, got)
            #expect(got.json[path: ["details", "uid"]] == uid)
            #expect(emulator.object(.clusterRoles, name: "fixture-ssa-new") == nil)
        }
    }

    @Test func serverSideApplyConflictThenForce() async throws {
        try await withEmulator { _, client in
            #expect(try await Self.replay(client, try FixtureFiles.status("create-created")).code == 201)
            let conflict = try FixtureFiles.status("ssa-conflict")
            Self.expectMatches(conflict, try await Self.replay(client, conflict))
            let force = try FixtureFiles.status("ssa-force")
            Self.expectMatches(force, try await Self.replay(client, force))
        }
    }

    @Test func listWithLabelSelector() async throws {
        try await withEmulator { emulator, client in
            let fixture = try FixtureFiles.status("list-labelselector")
            Self.expectMatches(fixture, try await Self.replay(client, fixture))
            // The selector really filters: one labelled object shows, an unlabelled one does not.
            try emulator.put(["apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": ["name": "plain"]])
            try emulator.put(["apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                              "metadata": ["name": "ours", "labels": ["app.kubernetes.io/managed-by": "tether"]]])
            let list = try await Self.replay(client, fixture)
            #expect(list.json["items"]?.arrayValue?.map { $0[path: ["metadata", "name"]] } == ["ours"])
            #expect(list.json["items"]?.arrayValue?.first?["kind"] == nil)
        }
    }

    @Test func watchFromCompactedResourceVersion() async throws {
        try await withEmulator { emulator, client in
            try emulator.put(["apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": ["name": "a"]])
            emulator.compactHistory()
            let fixture = try FixtureFiles.status("watch-gone")
            let (code, data) = try await client.send(fixture.method, fixture.path)
            #expect(code == 200)
            let lines = String(decoding: data, as: UTF8.self).split(separator: "\n")
            #expect(lines.count == 1)
            let event = try JSON.parse(Data(lines[0].utf8))
            #expect(event["type"] == "ERROR")
            #expect(Self.stable(event["object"]!) == Self.stable(fixture.response["object"]!))
            #expect(event[path: ["object", "message"]] == .string("too old resource version: 1 (\(emulator.resourceVersion))"))
        }
    }

    /// `\/` (Foundation's JSON escape for `/`) in an apply body: the real server reads
    /// apply bodies as YAML 1.1, where it is no escape, and refuses the request.
    @Test func applyBodyWithAnEscapedSlashIsNotYAML11() async throws {
        try await withEmulator { emulator, client in
            let fixture = try FixtureFiles.status("ssa-yaml-escape-badrequest")
            Self.expectMatches(fixture, try await Self.replay(client, fixture))
            #expect(emulator.object(.secrets, namespace: "default", name: "fixture-escape") == nil)
            // The same body without the escape is applied.
            let plain = try await Self.replay(client, fixture, body: fixture.body.replacingOccurrences(of: "\\/", with: "/"))
            #expect(plain.code == 201, "\(plain.json.text)")
            #expect(emulator.object(.secrets, namespace: "default", name: "fixture-escape")?[path: ["data", "ca.crt"]] == "LS0t/Q==")
        }
    }
}
