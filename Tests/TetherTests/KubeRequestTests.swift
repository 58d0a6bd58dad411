import Foundation
import KubeEmulator
import Shared
import TestSupport
import Testing
@testable import TetherAgent

/// What the agent's Kubernetes client puts on the wire, against the emulator (which
/// reads requests as kube-apiserver does): apply bodies that YAML 1.1 reads as sent,
/// and names that reach the server whole.
@Suite struct KubeRequestTests {
    static let clusterRolesPath = "/apis/rbac.authorization.k8s.io/v1/clusterroles"

    static func role(_ name: String, annotations: [String: String] = [:]) -> [String: Any] {
        [
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": ["name": name, "labels": ["app.kubernetes.io/managed-by": "tether"], "annotations": annotations],
            "rules": [["apiGroups": [""], "resources": ["pods"], "verbs": ["get"]]],
        ]
    }

    @Test func applyBodiesReadTheSameUnderYAML11() async throws {
        try await ReconcileTests().withEmulator { emulator, client, _ in
            // Slashes everywhere (apiVersion, label keys, URLs, base64), and the characters
            // YAML 1.1 refuses (DEL, C1, BOM) or folds (NEL) or treats as line breaks (LS, PS).
            let awkward = "del\u{7F} c1\u{9B} nel\u{85} ls\u{2028} ps\u{2029} bom\u{FEFF} nonchar\u{FFFF} tab\t quote\" back\\slash é 😀"
            let annotations = ["example.test/url": "https://example.test/a/b?c=d", "example.test/awkward": awkward, "example.test/base64": "LS0t/Q=="]
            let body = try ApplyPatchBody(object: Self.role("yaml-safe", annotations: annotations))
            let text = String(decoding: body.data, as: UTF8.self)
            #expect(!text.contains("\\/"), "\(text)")
            #expect(text.contains("\"apiVersion\":\"rbac.authorization.k8s.io/v1\""), "\(text)")
            _ = try await client.apply(body, resource: .clusterRole, namespace: nil, name: "yaml-safe", force: false)
            let stored = try #require(emulator.object(.clusterRoles, name: "yaml-safe"))
            for (key, value) in annotations {
                #expect(stored[path: ["metadata", "annotations", key]]?.string == value, "\(key)")
            }

            // Control: what Foundation's JSON writer makes of the same object is refused
            // as the real server refuses it, so the encoder is what makes the difference.
            let plain = try JSONSerialization.data(withJSONObject: Self.role("plain-json", annotations: ["example.test/url": "https://example.test/"]))
            let error = await #expect(throws: KubeAPIError.self) {
                _ = try await client.json(.PATCH, Self.clusterRolesPath + "/plain-json?fieldManager=tether", body: plain, contentType: "application/apply-patch+yaml")
            }
            #expect(error?.code == 400 && error?.message == "error decoding YAML: error converting YAML to JSON: yaml: found unknown escape character")
            // ... and raw DEL is refused, raw NEL silently becomes a space.
            let del = Data(#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"raw","annotations":{"a":"x\#u{7F}y"}}}"#.utf8)
            let refused = await #expect(throws: KubeAPIError.self) {
                _ = try await client.json(.PATCH, Self.clusterRolesPath + "/raw?fieldManager=tether", body: del, contentType: "application/apply-patch+yaml")
            }
            #expect(refused?.code == 400 && refused?.message.contains("control characters are not allowed") == true)
            let nel = Data(#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"raw","annotations":{"a":"x\#u{85}y"}}}"#.utf8)
            _ = try await client.json(.PATCH, Self.clusterRolesPath + "/raw?fieldManager=tether", body: nel, contentType: "application/apply-patch+yaml")
            #expect(emulator.object(.clusterRoles, name: "raw")?[path: ["metadata", "annotations", "a"]] == "x y")
        }
    }

    @Test func namesAndNamespacesReachTheServerWhole() async throws {
        try await ReconcileTests().withEmulator { emulator, client, _ in
            // A valid ClusterRole name (RBAC names are path segments: anything but `/`, `%`, `.`, `..`).
            let name = #"a\b?c#d e"#
            #expect(try await client.get(.clusterRole, name: name) == nil)
            let spec = try ReconcileTests.spec("b", Self.role(name))
            #expect(try await OwnedWriter(client: client).write(spec, resource: .clusterRole) == .created)
            let stored = try #require(emulator.object(.clusterRoles, name: name), "created under its full name")
            // The query survived: applied as field manager tether.
            let managers = stored[path: ["metadata", "managedFields"]]?.arrayValue?.map { "\($0["manager"]?.string ?? "")/\($0["operation"]?.string ?? "")" }
            #expect(managers == ["tether/Apply"])
            #expect(try await OwnedWriter(client: client).write(spec, resource: .clusterRole) == .unchanged)
            #expect(try await client.delete(.clusterRole, name: name))
            let checks = emulator.authorizationChecks(userAgentPrefix: "tether-agent/")
            #expect(Set(checks.map(\.name)) == [name], "\(checks)")
            #expect(Set(checks.map(\.verb)) == ["get", "patch", "create", "delete"])

            // `/` cannot be in a name: encoded, it still splits the server's path (Go
            // decodes it), which the server answers 404, as kube-apiserver does.
            let slashed = await #expect(throws: KubeAPIError.self) {
                _ = try await OwnedWriter(client: client).write(try ReconcileTests.spec("b", Self.role("x/y")), resource: .clusterRole)
            }
            #expect(slashed?.code == 404)
            #expect(emulator.objects(.clusterRoles).allSatisfy { $0[path: ["metadata", "name"]]?.string?.hasPrefix("x") != true })

            // A namespace is a segment too.
            #expect(try await client.get(.role, namespace: "team a?x", name: "r") == nil)
            #expect(emulator.authorizationChecks(userAgentPrefix: "tether-agent/").last?.namespace == "team a?x")
        }
    }
}
