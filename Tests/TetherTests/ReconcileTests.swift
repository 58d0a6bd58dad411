import Foundation
import KubeEmulator
import Shared
import TestSupport
import Testing
@testable import TetherAgent
@testable import HubStore
@testable import TetherHub

/// The agent's Kubernetes client and reconciler against the Kubernetes API emulator.
@Suite struct ReconcileTests {
    static func spec(_ bundle: String, _ object: [String: Any]) throws -> DesiredObjectSpec {
        var object = object
        var metadata = object["metadata"] as? [String: Any] ?? [:]
        metadata["labels"] = ["app.kubernetes.io/managed-by": "tether"]
        metadata["annotations"] = ["tether.dev/bundle": bundle]
        object["metadata"] = metadata
        return DesiredObjectSpec(bundle: bundle, json: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
    }

    static var namespace: [String: Any] { ["apiVersion": "v1", "kind": "Namespace", "metadata": ["name": "team-a"]] }
    static var role: [String: Any] {
        [
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": ["name": "view-pods"],
            "rules": [["apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]]],
        ]
    }
    static var binding: [String: Any] {
        [
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": ["name": "devs", "namespace": "team-a"],
            "roleRef": ["apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view-pods"],
            "subjects": [["kind": "Group", "name": "devs", "apiGroup": "rbac.authorization.k8s.io"]],
        ]
    }

    func withEmulator(_ body: (KubeEmulator, KubeClient, TemporaryDirectory) async throws -> Void) async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let emulator = try await KubeEmulator.start()
        try emulator.writeKubeconfig(to: dir.sub("kubeconfig"))
        let client = try KubeClient(connection: try KubeConnection.kubeconfig(path: dir.sub("kubeconfig")))
        do {
            try await body(emulator, client, dir)
        } catch {
            try? await client.shutdown()
            await emulator.stop()
            throw error
        }
        try await client.shutdown()
        await emulator.stop()
    }

    @Test func clientReadsKubeconfigAndDecodesStatusErrors() async throws {
        try await withEmulator { emulator, client, _ in
            #expect(try await client.get(.clusterRole, name: "absent") == nil)
            let created = try await client.apply(try ApplyPatchBody(json: Self.spec("b", Self.role).json), resource: .clusterRole, namespace: nil, name: "view-pods", force: false)
            #expect((created["metadata"] as? [String: Any])?["name"] as? String == "view-pods")
            let managers = emulator.object(.clusterRoles, name: "view-pods")?[path: ["metadata", "managedFields"]]?.arrayValue?.compactMap { $0["manager"]?.string }
            #expect(managers == ["tether"])
            // A create in a namespace that does not exist: the API's 404 Status, typed.
            let error = await #expect(throws: KubeAPIError.self) {
                _ = try await client.apply(try ApplyPatchBody(json: Self.spec("b", Self.binding).json), resource: .roleBinding, namespace: "team-a", name: "devs", force: false)
            }
            #expect(error?.code == 404 && error?.reason == "NotFound")
            #expect(try await client.delete(.clusterRole, name: "view-pods"))
            #expect(try await !client.delete(.clusterRole, name: "view-pods"))
        }
    }

    /// Every authorization check the agent's requests caused is allowed by the rules
    /// the agent declares (and the chart grants): no missing permission. Returns the
    /// verbs seen.
    @discardableResult
    static func expectAgentRequestsAllowed(_ emulator: KubeEmulator, identitySecret: String?, auditSecret: String? = nil,
                                           sourceLocation: SourceLocation = #_sourceLocation) -> Set<String> {
        let rules = KubeAccess.required(identitySecret: identitySecret, auditSecret: auditSecret)
        let checks = emulator.authorizationChecks(userAgentPrefix: "tether-agent/")
        #expect(!checks.isEmpty, sourceLocation: sourceLocation)
        // As the API server's RBAC authorizer decides: a ClusterRole rule anywhere, a
        // Role rule in the agent's namespace; resourceNames limit by name.
        func allowed(_ check: AuthorizationCheck) -> Bool {
            let resource = check.resource + (check.subresource.map { "/" + $0 } ?? "")
            return rules.contains { rule in
                if rule.scope == .ownNamespace, check.namespace != "default" { return false }
                guard rule.apiGroups.contains(check.group), rule.resources.contains(resource), rule.verbs.contains(check.verb) else { return false }
                guard let names = rule.resourceNames else { return true }
                return check.name.map(names.contains) ?? false
            }
        }
        for check in Set(checks) where !allowed(check) {
            Issue.record("the agent made a request its RBAC does not allow: \(check)", sourceLocation: sourceLocation)
        }
        return Set(checks.map(\.verb))
    }

    @Test func appliesInOrderPrunesWhatItOwnsAndLeavesOthersAlone() async throws {
        try await withEmulator { emulator, client, _ in
            let applier = KubernetesApplier(client: client, logger: testLogger, state: ReconcileState())
            // Someone else's ClusterRole with a name a bundle also wants.
            _ = try emulator.put(try JSON.parse(JSONSerialization.data(withJSONObject: [
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": ["name": "admin-ish"], "rules": [] as [Any],
            ])))
            let foreign: [String: Any] = ["apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": ["name": "admin-ish"], "rules": [] as [Any]]

            let first = await applier.apply(revision: 1, objects: [
                try Self.spec("b", Self.namespace), try Self.spec("b", Self.role), try Self.spec("b", Self.binding), try Self.spec("b", foreign),
            ])
            #expect(first.filter { $0.state == .applied }.map(\.object) == ["Namespace/team-a", "ClusterRole/view-pods", "RoleBinding/team-a/devs"])
            let refused = try #require(first.first { $0.object == "ClusterRole/admin-ish" })
            #expect(refused.state == .failed && refused.message?.contains("not managed by Tether") == true)
            #expect(emulator.object(.clusterRoles, name: "admin-ish")?[path: ["metadata", "labels"]] == nil, "untouched")
            #expect(emulator.object(.roleBindings, namespace: "team-a", name: "devs")?[path: ["metadata", "annotations", "tether.dev/bundle"]]?.string == "b")

            // Revision 2 no longer wants the binding and the role: both pruned, the foreign role stays.
            let second = await applier.apply(revision: 2, objects: [try Self.spec("b", Self.namespace)])
            #expect(Set(second.filter { $0.state == .pruned }.map(\.object)) == ["ClusterRole/view-pods", "RoleBinding/team-a/devs"])
            #expect(emulator.object(.clusterRoles, name: "view-pods") == nil)
            #expect(emulator.object(.clusterRoles, name: "admin-ish") != nil)
            #expect(emulator.object(.namespaces, name: "team-a") != nil)
        }
    }

    @Test func aBundleReachesTheClusterThroughHubAndAgent() async throws {
        try await withEmulator { emulator, _, dir in
            let hub = try await TestHub.start(dataDir: dir.sub("hub"))
            _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: ["env": "prod"])
            var config = await AgentConfiguration(stateDirectory: dir.sub("agent"), joinString: try hub.join("prod-eu"))
            config.healthListen = nil
            config.auditListen = nil
            config.kubernetes = try KubeConnection.kubeconfig(path: dir.sub("kubeconfig"))
            let runtime = try AgentRuntime(configuration: config, logger: testLogger)
            let task = Task { try await runtime.run() }
            let yaml = PolicyDistributionTests.bundle("readonly", selector: "{matchLabels: {env: prod}}", roles: ["view-pods"])
            _ = try await hub.core.applyBundles(try PolicyParser.parse(yaml: yaml, file: "b.yaml"))
            try await eventually("in sync") { try await hub.core.policyStatus(bundle: "readonly").first?.state == "in-sync" }
            #expect(emulator.object(.clusterRoles, name: "view-pods")?[path: ["metadata", "labels", "app.kubernetes.io/managed-by"]]?.string == "tether")

            // A hand edit with the real kubectl is put back and reported.
            let patch = try await runCommand(try Tools.kubectl(), [
                "--kubeconfig", dir.sub("kubeconfig"), "patch", "clusterrole", "view-pods", "--type=merge",
                "-p", #"{"rules":[{"apiGroups":[""],"resources":["secrets"],"verbs":["*"]}]}"#,
            ], environment: ["HOME": dir.path])
            #expect(patch.status == 0, "\(patch.stderr)")
            try await eventually("edit reverted") {
                emulator.object(.clusterRoles, name: "view-pods")?[path: ["rules"]]?.arrayValue?.first?["resources"]?.arrayValue?.first?.string == "pods"
            }
            // Repaired: in sync again, with the repair kept as the last drift.
            try await eventually("drift reported") { try await hub.core.policyStatus(bundle: "readonly").first?.lastDrift != nil }
            #expect(try await hub.core.policyStatus(bundle: "readonly").first?.state == "in-sync")
            #expect(try await hub.core.policyStatus(bundle: "readonly").first?.lastDrift?.object == "ClusterRole/view-pods")

            // A hand delete is re-created.
            try emulator.delete(.clusterRoles, name: "view-pods")
            try await eventually("re-created") { emulator.object(.clusterRoles, name: "view-pods") != nil }

            _ = try await hub.core.deleteBundle("readonly")
            try await eventually("pruned") { emulator.object(.clusterRoles, name: "view-pods") == nil }
            await runtime.shutdown()
            try await task.value
            try await hub.stop()
            let verbs = Self.expectAgentRequestsAllowed(emulator, identitySecret: nil)
            #expect(verbs.isSuperset(of: ["get", "list", "watch", "create", "patch", "delete"]), "the run exercised every verb: \(verbs)")
        }
    }

    @Test func identityAndWebhookCredentialsInSecretsSurviveALostStateDir() async throws {
        try await withEmulator { emulator, _, dir in
            let hub = try await TestHub.start(dataDir: dir.sub("hub"))
            func runtime(stateDir: String, join: JoinString?) async throws -> AgentRuntime {
                var config = AgentConfiguration(stateDirectory: stateDir, joinString: join)
                config.healthListen = nil
                config.auditListen = HostPort(host: "127.0.0.1", port: 0)
                config.kubernetes = try KubeConnection.kubeconfig(path: dir.sub("kubeconfig"))
                config.identitySecret = "tether-agent-identity"
                config.auditSecret = "tether-agent-audit-webhook"
                try await AgentRuntime.prepare(config, logger: testLogger)
                return try AgentRuntime(configuration: config, logger: testLogger)
            }
            let first = try await runtime(stateDir: dir.sub("pod-1"), join: try hub.join("prod-eu"))
            let task = Task { try await first.run() }
            try await eventually("online") { try await hub.status("prod-eu") == .online }
            let secret = try #require(emulator.object(.secrets, namespace: "default", name: "tether-agent-identity"))
            #expect(secret[path: ["data", "identity.json"]]?.string != nil)
            #expect(!FileManager.default.fileExists(atPath: dir.sub("pod-1") + "/identity.json"), "not on the pod's disk")
            let webhook = try #require(emulator.object(.secrets, namespace: "default", name: "tether-agent-audit-webhook"))
            for key in ["audit-webhook-token", "audit-ca.crt", "audit-ca.key"] {
                #expect(webhook[path: ["data", key]]?.string != nil, "\(key)")
            }
            // The label key holds a `/`: the apply bodies carried it as the emulator, like the
            // real server (YAML 1.1), accepts it: unescaped (`\/` gets 400 BadRequest).
            #expect(webhook[path: ["metadata", "labels", "app.kubernetes.io/name"]] == "tether-agent")
            #expect(secret[path: ["metadata", "labels", "app.kubernetes.io/name"]] == "tether-agent")
            let firstEndpoint = try #require(first.endpoint)
            await first.shutdown()
            try await task.value

            // A rescheduled pod: new empty state dir, no join token. Same identity, and the
            // same webhook token and CA, which the API server's kubeconfig holds.
            let second = try await runtime(stateDir: dir.sub("pod-2"), join: nil)
            let task2 = Task { try await second.run() }
            try await eventually("online again without a token") { second.link.status.value.connected }
            #expect(try await hub.core.database.certificates(of: ClusterName("prod-eu")).filter { $0.purpose == "enroll" }.count == 1)
            let secondEndpoint = try #require(second.endpoint)
            #expect(secondEndpoint.token == firstEndpoint.token && secondEndpoint.caPEM == firstEndpoint.caPEM)
            let rv = emulator.object(.secrets, namespace: "default", name: "tether-agent-audit-webhook")?[path: ["metadata", "resourceVersion"]]?.string
            await second.shutdown()
            try await task2.value
            #expect(emulator.object(.secrets, namespace: "default", name: "tether-agent-audit-webhook")?[path: ["metadata", "resourceVersion"]]?.string == rv,
                    "unchanged credentials are not written again")
            try await hub.stop()

            let secretChecks = emulator.authorizationChecks(userAgentPrefix: "tether-agent/").filter { $0.resource == "secrets" }
            #expect(Set(secretChecks.map(\.verb)) == ["get", "patch", "create"], "\(secretChecks)")
            #expect(Set(secretChecks.compactMap(\.name)) == ["tether-agent-identity", "tether-agent-audit-webhook"])
            _ = Self.expectAgentRequestsAllowed(emulator, identitySecret: "tether-agent-identity", auditSecret: "tether-agent-audit-webhook")

            // A Secret that lost a key is refused with what to do, not silently replaced.
            _ = try emulator.put(try JSON.parse(JSONSerialization.data(withJSONObject: [
                "apiVersion": "v1", "kind": "Secret", "metadata": ["name": "broken", "namespace": "default"],
                "data": ["audit-webhook-token": Data("x".utf8).base64EncodedString()],
            ])))
            var config = AgentConfiguration(stateDirectory: dir.sub("pod-3"), joinString: nil)
            config.kubernetes = try KubeConnection.kubeconfig(path: dir.sub("kubeconfig"))
            config.auditSecret = "broken"
            let error = await #expect(throws: TetherError.self) { try await AgentRuntime.prepare(config, logger: testLogger) }
            #expect(error?.message.contains("secret default/broken exists but has no audit-ca.crt") == true)
        }
    }

    @Test func bundlesReachOnlyMatchingClustersAndEditsFollow() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let prodAPI = try await KubeEmulator.start()
        let devAPI = try await KubeEmulator.start()
        try prodAPI.writeKubeconfig(to: dir.sub("prod.kubeconfig"))
        try devAPI.writeKubeconfig(to: dir.sub("dev.kubeconfig"))
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: ["env": "prod"])
        _ = try await hub.core.addCluster(ClusterName("dev"), labels: ["env": "dev"])
        var runtimes: [AgentRuntime] = []
        var tasks: [Task<Void, any Error>] = []
        for (cluster, kubeconfig) in [("prod-eu", "prod.kubeconfig"), ("dev", "dev.kubeconfig")] {
            var config = await AgentConfiguration(stateDirectory: dir.sub(cluster), joinString: try hub.join(cluster))
            config.healthListen = nil
            config.auditListen = nil
            config.kubernetes = try KubeConnection.kubeconfig(path: dir.sub(kubeconfig))
            let runtime = try AgentRuntime(configuration: config, logger: testLogger)
            runtimes.append(runtime)
            tasks.append(Task { try await runtime.run() })
        }
        func apply(_ roles: [String]) async throws {
            let yaml = PolicyDistributionTests.bundle("readonly", selector: "{matchLabels: {env: prod}}", roles: roles)
            _ = try await hub.core.applyBundles(try PolicyParser.parse(yaml: yaml, file: "b.yaml"))
        }
        try await apply(["view-pods"])
        try await eventually("prod has it") { prodAPI.object(.clusterRoles, name: "view-pods") != nil }
        // Editing the bundle updates the matching cluster; the other never sees it.
        try await apply(["view-pods", "view-logs"])
        try await eventually("edit reached prod") { prodAPI.object(.clusterRoles, name: "view-logs") != nil }
        try await eventually("in sync") { try await hub.core.policyStatus(bundle: "readonly").map(\.state) == ["in-sync"] }
        #expect(devAPI.object(.clusterRoles, name: "view-pods") == nil && devAPI.object(.clusterRoles, name: "view-logs") == nil)
        // Relabel: dev moves in, prod moves out (its copies are pruned).
        _ = try await hub.core.relabelCluster(ClusterName("dev"), changes: ["env": "prod"])
        _ = try await hub.core.relabelCluster(ClusterName("prod-eu"), changes: ["env": "staging"])
        try await eventually("dev has both") { devAPI.object(.clusterRoles, name: "view-logs") != nil && devAPI.object(.clusterRoles, name: "view-pods") != nil }
        try await eventually("prod pruned") { prodAPI.object(.clusterRoles, name: "view-pods") == nil && prodAPI.object(.clusterRoles, name: "view-logs") == nil }
        for runtime in runtimes { await runtime.shutdown() }
        for task in tasks { try await task.value }
        try await hub.stop()
        await prodAPI.stop()
        await devAPI.stop()
    }
}
