import Foundation
import KubeEmulator
import Testing
import TestSupport

/// The real kubectl against the emulator.
@Suite(.serialized) struct KubectlTests {

    static func run(_ kubeconfig: String, _ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
        let verbose = ProcessInfo.processInfo.environment["KUBECTL_TRACE"] != nil ? ["-v=6"] : []
        let result = try await runCommand(try Tools.kubectl(), ["--kubeconfig", kubeconfig] + verbose + arguments, environment: ["HOME": FileManager.default.temporaryDirectory.path])
        if !verbose.isEmpty { print("kubectl \(arguments.joined(separator: " ")):\n\(result.stderr)") }
        return result
    }

    static let manifests = """
        apiVersion: rbac.authorization.k8s.io/v1
        kind: ClusterRole
        metadata:
          name: tether-reader
          labels:
            app.kubernetes.io/managed-by: tether
        rules:
        - apiGroups: [""]
          resources: ["configmaps"]
          verbs: ["get", "list", "watch"]
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: RoleBinding
        metadata:
          name: tether-reader
          namespace: default
        roleRef:
          apiGroup: rbac.authorization.k8s.io
          kind: ClusterRole
          name: tether-reader
        subjects:
        - kind: User
          name: alice
        ---
        apiVersion: admissionregistration.k8s.io/v1
        kind: ValidatingAdmissionPolicy
        metadata:
          name: tether-no-big-configmaps
        spec:
          matchConstraints:
            resourceRules:
            - apiGroups: [""]
              apiVersions: ["v1"]
              operations: ["CREATE", "UPDATE"]
              resources: ["configmaps"]
          validations:
          - expression: "size(object.data) < 100"

        """

    @Test func applyGetDelete() async throws {
        let dir = try TemporaryDirectory("kubectl")
        defer { dir.remove() }
        try await withEmulator { emulator, _ in
            let config = dir.sub("kubeconfig")
            try emulator.writeKubeconfig(to: config)
            try Self.manifests.write(toFile: dir.sub("m.yaml"), atomically: true, encoding: .utf8)

            let apply = try await Self.run(config, ["apply", "--server-side", "-f", dir.sub("m.yaml")])
            #expect(apply.status == 0, "\(apply.stderr)")
            #expect(apply.stdout.contains("clusterrole.rbac.authorization.k8s.io/tether-reader serverside-applied"), "\(apply.stdout)")
            #expect(apply.stdout.contains("rolebinding.rbac.authorization.k8s.io/tether-reader serverside-applied"), "\(apply.stdout)")
            #expect(apply.stdout.contains("validatingadmissionpolicy.admissionregistration.k8s.io/tether-no-big-configmaps serverside-applied"), "\(apply.stdout)")

            let binding = emulator.object(.roleBindings, namespace: "default", name: "tether-reader")
            #expect(binding?[path: ["subjects"]]?.arrayValue?.first?["apiGroup"] == "rbac.authorization.k8s.io")
            let policy = emulator.object(.validatingAdmissionPolicies, name: "tether-no-big-configmaps")
            #expect(policy?[path: ["metadata", "generation"]] == 1)
            #expect(policy?[path: ["spec", "failurePolicy"]] == "Fail")

            let get = try await Self.run(config, ["get", "clusterrole", "tether-reader", "-o", "json", "--show-managed-fields"])
            #expect(get.status == 0, "\(get.stderr)")
            let role = try JSON.parse(Data(get.stdout.utf8))
            let entries = role[path: ["metadata", "managedFields"]]?.arrayValue ?? []
            #expect(entries.count == 1)
            #expect(entries.first?["manager"] == "kubectl")
            #expect(entries.first?["operation"] == "Apply")
            #expect(entries.first?["fieldsV1"] == ["f:metadata": ["f:labels": ["f:app.kubernetes.io/managed-by": [:]]], "f:rules": [:]])

            // Applying the same file again changes nothing.
            let rv = emulator.resourceVersion
            #expect(try await Self.run(config, ["apply", "--server-side", "-f", dir.sub("m.yaml")]).status == 0)
            #expect(emulator.resourceVersion == rv)

            let delete = try await Self.run(config, ["delete", "clusterrole", "tether-reader"])
            #expect(delete.status == 0, "\(delete.stderr)")
            #expect(delete.stdout.contains("clusterrole.rbac.authorization.k8s.io \"tether-reader\" deleted"), "\(delete.stdout)")
            #expect(emulator.object(.clusterRoles, name: "tether-reader") == nil)

            let missing = try await Self.run(config, ["get", "clusterrole", "tether-reader", "-o", "json"])
            #expect(missing.status != 0)
            #expect(missing.stderr.contains("clusterroles.rbac.authorization.k8s.io \"tether-reader\" not found"), "\(missing.stderr)")
        }
    }

    @Test func applyConflictAndForce() async throws {
        let dir = try TemporaryDirectory("kubectl")
        defer { dir.remove() }
        try await withEmulator { emulator, _ in
            let config = dir.sub("kubeconfig")
            try emulator.writeKubeconfig(to: config)
            try emulator.put(["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "settings", "namespace": "default"], "data": ["mode": "hand"]])
            try "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: applied\n".write(toFile: dir.sub("cm.yaml"), atomically: true, encoding: .utf8)
            let conflict = try await Self.run(config, ["apply", "--server-side", "-f", dir.sub("cm.yaml")])
            #expect(conflict.status != 0)
            #expect(conflict.stderr.contains("conflict with \"kubectl-edit\" using v1: .data.mode"), "\(conflict.stderr)")
            let forced = try await Self.run(config, ["apply", "--server-side", "--force-conflicts", "-f", dir.sub("cm.yaml")])
            #expect(forced.status == 0, "\(forced.stderr)")
            #expect(emulator.object(.configMaps, namespace: "default", name: "settings")?[path: ["data", "mode"]] == "applied")
        }
    }

    @Test func watchSeesChanges() async throws {
        let dir = try TemporaryDirectory("kubectl")
        defer { dir.remove() }
        try await withEmulator { emulator, _ in
            let config = dir.sub("kubeconfig")
            try emulator.writeKubeconfig(to: config)
            try emulator.put(["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "before", "namespace": "default"]])
            let watch = try ChildProcess(try Tools.kubectl(), ["--kubeconfig", config, "get", "configmaps", "--watch", "-o", "json"],
                                         environment: ["HOME": FileManager.default.temporaryDirectory.path])
            try await watch.waitForOutput(containing: "\"name\": \"before\"")
            try emulator.put(["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "during", "namespace": "default"], "data": ["k": "v"]])
            try await watch.waitForOutput(containing: "\"name\": \"during\"")
            try emulator.delete(.configMaps, namespace: "default", name: "before")
            try await eventually("a second 'before' object for the deletion in:\n\(watch.output)") {
                watch.output.components(separatedBy: "\"name\": \"before\"").count == 3
            }
            watch.signal(SIGKILL)
            _ = await watch.waitForExit()
        }
    }
}
