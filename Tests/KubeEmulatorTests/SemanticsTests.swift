import Foundation
import KubeEmulator
import Testing

@Suite struct SemanticsTests {
    let cmPath = "/api/v1/namespaces/default/configmaps"

    @Test func resourceVersionUidAndNoOpUpdates() async throws {
        try await withEmulator { emulator, client in
            let created = try await client.json("POST", cmPath, body: #"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"1"}}"#)
            #expect(created.code == 201)
            let rv = created.json[path: ["metadata", "resourceVersion"]]?.string
            #expect(rv == String(emulator.resourceVersion))
            #expect(created.json[path: ["metadata", "uid"]]?.string?.count == 36)
            #expect(created.json[path: ["metadata", "generation"]] == nil)
            // Same object again: no write, same resourceVersion.
            let same = try await client.json("PUT", cmPath + "/c", body: created.json.text)
            #expect(same.code == 200)
            #expect(same.json[path: ["metadata", "resourceVersion"]]?.string == rv)
            let missing = try await client.json("PUT", cmPath + "/nope", body: #"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"nope"}}"#)
            #expect(missing.code == 404)
            #expect(missing.json["message"] == "configmaps \"nope\" not found")
        }
    }

    @Test func mergePatchAndHandEditOwnership() async throws {
        try await withEmulator { emulator, client in
            let apply = #"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"1"}}"#
            #expect(try await client.json("PATCH", cmPath + "/c?fieldManager=tether", contentType: "application/apply-patch+yaml", body: apply).code == 201)
            let patched = try await client.json("PATCH", cmPath + "/c", contentType: "application/merge-patch+json",
                                                body: #"{"data":{"a":"2","b":"x"}}"#, userAgent: "kubectl-edit/v1.32")
            #expect(patched.code == 200)
            #expect(patched.json["data"] == ["a": "2", "b": "x"])
            let managers = patched.json[path: ["metadata", "managedFields"]]?.arrayValue?.compactMap { $0["manager"]?.string }
            #expect(managers == ["kubectl-edit"])
            let conflict = try await client.json("PATCH", cmPath + "/c?fieldManager=tether", contentType: "application/apply-patch+yaml", body: apply)
            #expect(conflict.code == 409)
            #expect(conflict.json["message"] == "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .data.a")
        }
    }

    @Test func applyNeedsFieldManager() async throws {
        try await withEmulator { _, client in
            let got = try await client.json("PATCH", cmPath + "/c", contentType: "application/apply-patch+yaml", body: "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n")
            #expect(got.code == 422)
            #expect(got.json["message"] == "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
        }
    }

    @Test func invalidNamesAndMissingNamespace() async throws {
        try await withEmulator { _, client in
            let bad = try await client.json("POST", cmPath, body: #"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#)
            #expect(bad.code == 422)
            #expect(bad.json["reason"] == "Invalid")
            #expect(bad.json[path: ["details", "causes"]]?.arrayValue?.first?["field"] == "metadata.name")
            let noName = try await client.json("POST", cmPath, body: #"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#)
            #expect(noName.json["message"] == "ConfigMap \"\" is invalid: metadata.name: Required value: name or generateName is required")
            let noNamespace = try await client.json("POST", "/api/v1/namespaces/ghost/configmaps", body: #"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#)
            #expect(noNamespace.code == 404)
            #expect(noNamespace.json["message"] == "namespaces \"ghost\" not found")
        }
    }

    @Test func finalizersDelayDeletion() async throws {
        try await withEmulator { emulator, client in
            try emulator.put(["apiVersion": "v1", "kind": "Secret", "metadata": ["name": "s", "namespace": "default", "finalizers": ["example.com/hold"]],
                              "stringData": ["p": "w"]])
            #expect(emulator.object(.secrets, namespace: "default", name: "s")?["data"] == ["p": "dw=="])
            #expect(emulator.object(.secrets, namespace: "default", name: "s")?["type"] == "Opaque")
            let deleted = try await client.json("DELETE", "/api/v1/namespaces/default/secrets/s")
            #expect(deleted.code == 200)
            #expect(deleted.json["kind"] == "Secret")
            #expect(deleted.json[path: ["metadata", "deletionTimestamp"]] != nil)
            var held = emulator.object(.secrets, namespace: "default", name: "s")!
            held[path: ["metadata", "finalizers"]] = nil
            try emulator.put(held)
            #expect(emulator.object(.secrets, namespace: "default", name: "s") == nil)
        }
    }

    @Test func namespaceDeletionRemovesContents() async throws {
        try await withEmulator { emulator, client in
            try emulator.put(["apiVersion": "v1", "kind": "Namespace", "metadata": ["name": "team"]])
            #expect(emulator.object(.namespaces, name: "team")?[path: ["metadata", "labels", "kubernetes.io/metadata.name"]] == "team")
            try emulator.put(["apiVersion": "v1", "kind": "ServiceAccount", "metadata": ["name": "bot", "namespace": "team"]])
            let token = try await client.json("POST", "/api/v1/namespaces/team/serviceaccounts/bot/token",
                                              body: #"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":600}}"#)
            #expect(token.code == 201)
            let issued = token.json[path: ["status", "token"]]?.string ?? ""
            #expect(try await client.send("GET", "/api/v1/namespaces", token: issued).code == 200)
            let deleted = try await client.json("DELETE", "/api/v1/namespaces/team")
            #expect(deleted.code == 200)
            #expect(deleted.json[path: ["status", "phase"]] == "Terminating")
            #expect(emulator.objects(.serviceAccounts, namespace: "team").isEmpty)
            #expect(emulator.object(.namespaces, name: "team") == nil)
        }
    }

    @Test func roleRefIsImmutableAndListsPage() async throws {
        try await withEmulator { emulator, client in
            let binding: JSON = ["apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": ["name": "b", "namespace": "default"],
                                 "roleRef": ["apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"]]
            try emulator.put(binding)
            var changed = binding
            changed[path: ["roleRef", "name"]] = "edit"
            let got = try await client.json("PUT", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/b", body: changed.text)
            #expect(got.code == 422)
            #expect(got.json[path: ["details", "causes"]]?.arrayValue?.first?["field"] == "roleRef")

            for name in ["a", "b", "c"] { try emulator.put(["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": .string(name), "namespace": "default"]]) }
            let page1 = try await client.json("GET", cmPath + "?limit=2")
            #expect(page1.json["items"]?.arrayValue?.count == 2)
            let token = page1.json[path: ["metadata", "continue"]]?.string ?? ""
            #expect(page1.json[path: ["metadata", "remainingItemCount"]] == 1)
            let page2 = try await client.json("GET", cmPath + "?limit=2&continue=\(token.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")")
            #expect(page2.json["items"]?.arrayValue?.map { $0[path: ["metadata", "name"]] } == ["c"])
        }
    }
}
