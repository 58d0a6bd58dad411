import Foundation
import KubeEmulator
import Shared
import TestSupport
import Testing
@testable import TetherAgent
@testable import HubStore
@testable import TetherHub

/// The agent writes only objects it proves are Tether's, on every path: the first
/// apply, the drift watcher's relists (after an agent restart, a 410, a watch the
/// server ended, an API server restart) and its watch events. A foreign object named
/// in a bundle is reported failed each time and never changed, not even its
/// resourceVersion.
@Suite struct OwnershipTests {
    /// The admin role of a real cluster: not Tether's.
    static let clusterAdmin: JSON = [
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": [
            "name": "cluster-admin", "labels": ["kubernetes.io/bootstrapping": "rbac-defaults"],
            "annotations": ["rbac.authorization.kubernetes.io/autoupdate": "true"],
        ],
        "rules": [["apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]], ["nonResourceURLs": ["*"], "verbs": ["*"]]],
    ]

    /// What a bundle that (wrongly or maliciously) names `cluster-admin` asks for.
    static func desiredRole(_ name: String) throws -> DesiredObjectSpec {
        try ReconcileTests.spec("b", [
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": ["name": name],
            "rules": [["apiGroups": [""], "resources": ["pods"], "verbs": ["get"]]],
        ])
    }

    /// A drift watcher (and the applier sharing its state) against `emulator`, with
    /// every report it sends to the hub collected.
    final class Reconciler: Sendable {
        let client: KubeClient
        let state = ReconcileState()
        let reports = Locked<[AppliedResult]>([])
        let watcher = Locked<Task<Void, Never>?>(nil)
        let collector: Task<Void, Never>

        init(kubeconfig: String) throws {
            client = try KubeClient(connection: try KubeConnection.kubeconfig(path: kubeconfig))
            let (stream, reports) = (state.driftReports, reports)
            collector = Task {
                while !Task.isCancelled {
                    let batch = await stream.next()
                    reports.withLock { $0 += batch }
                }
            }
        }

        /// Applies the desired state, then starts the drift watcher (which so lists
        /// with the desired state known, as after an agent restart).
        func start(_ desired: [DesiredObjectSpec]) async -> [AppliedResult] {
            let results = await applier.apply(revision: 1, objects: desired)
            let drift = DriftWatcher(client: client, state: state, logger: testLogger, retryDelay: .milliseconds(100))
            watcher.value = Task { try? await drift.run() }
            return results
        }

        var applier: KubernetesApplier { KubernetesApplier(client: client, logger: testLogger, state: state) }

        func failures(of key: String) -> [AppliedResult] { reports.value.filter { $0.object == key && $0.state == .failed } }

        /// Waits for one more refusal of `key` than there was before `action` (or for
        /// the object to change, which fails the caller's next check); every failure
        /// reported says why.
        func expectAnotherFailure(of key: String, _ what: String, untouched: () -> Bool, after action: () async throws -> Void) async throws {
            func refusals() -> Int { failures(of: key).filter { $0.message?.contains("is not managed by Tether") == true }.count }
            let before = refusals()
            try await action()
            try await eventually("\(key) reported failed again after \(what)") { refusals() > before || !untouched() }
            #expect(failures(of: key).allSatisfy { $0.message?.contains("is not managed by Tether") == true }, "\(failures(of: key))")
        }

        func stop() async throws {
            let task = watcher.value
            task?.cancel()
            await task?.value
            collector.cancel()
            await collector.value
            try await client.shutdown()
        }
    }

    /// The decision itself, without a server: only a live object carrying the label
    /// (and a resourceVersion to pin the write to) is Tether's.
    @Test func ownershipIsReadFromTheLiveObject() {
        #expect(Ownership(live: nil) == .absent)
        #expect(Ownership(live: ["metadata": ["name": "x", "resourceVersion": "7", "labels": ["app.kubernetes.io/managed-by": "tether"]]]) == .owned(resourceVersion: "7"))
        #expect(Ownership(live: ["metadata": ["name": "x", "resourceVersion": "7"]]) == .foreign)
        #expect(Ownership(live: ["metadata": ["name": "x", "resourceVersion": "7", "labels": ["app.kubernetes.io/managed-by": "helm"]]]) == .foreign)
        #expect(Ownership(live: ["metadata": ["name": "x", "labels": ["app.kubernetes.io/managed-by": "tether"]]]) == .foreign, "no version to pin the write to")
    }

    /// The write is pinned to the version that was seen labelled: if the object
    /// changed hands between the read and the write, the server refuses the write
    /// (409) and the writer decides again from what is there now.
    @Test func aWriteLandsOnlyOnTheVersionSeenLabelled() async throws {
        try await ReconcileTests().withEmulator { emulator, client, _ in
            let writer = OwnedWriter(client: client)
            let spec = try Self.desiredRole("view-pods")
            #expect(try await writer.write(spec, resource: .clusterRole) == .created)
            let seen = try #require(try await client.get(.clusterRole, name: "view-pods"))

            // Edited (still labelled) after it was read: the stale write is refused, the
            // fresh one puts it back.
            var edited = try #require(emulator.object(.clusterRoles, name: "view-pods"))
            edited[path: ["rules"]] = [["apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]]]
            try emulator.put(edited)
            #expect(try await writer.write(spec, resource: .clusterRole, seen: seen) == .changed)
            #expect(emulator.object(.clusterRoles, name: "view-pods")?["rules"]?.arrayValue?.first?["resources"] == ["pods"])

            // Taken over (label removed) after it was read: refused, nothing written.
            let stale = try #require(try await client.get(.clusterRole, name: "view-pods"))
            var taken = try #require(emulator.object(.clusterRoles, name: "view-pods"))
            taken[path: ["metadata", "labels"]] = nil
            taken[path: ["rules"]] = [["apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]]]
            let theirs = try emulator.put(taken)
            #expect(try await writer.write(spec, resource: .clusterRole, seen: stale) == .refused(OwnedWriter.foreignMessage("ClusterRole/view-pods")))
            #expect(emulator.object(.clusterRoles, name: "view-pods") == theirs)
        }
    }

    @Test func aForeignClusterAdminSurvivesRestartsExpiredAndRestartedWatches() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let emulator = try await KubeEmulator.start()
        try emulator.writeKubeconfig(to: dir.sub("kubeconfig"))
        let original = try emulator.put(Self.clusterAdmin, manager: "kube-apiserver")
        func untouched() -> Bool { emulator.object(.clusterRoles, name: "cluster-admin") == original }
        func expectUntouched(_ when: String, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(emulator.object(.clusterRoles, name: "cluster-admin") == original, "cluster-admin changed \(when)", sourceLocation: sourceLocation)
        }

        let desired = [try Self.desiredRole("cluster-admin"), try Self.desiredRole("view-pods")]
        var reconciler = try Reconciler(kubeconfig: dir.sub("kubeconfig"))
        // The desired state arrives; the applier refuses the foreign role and applies the other.
        let results = await reconciler.start(desired)
        #expect(results.map(\.state) == [.failed, .applied], "\(results)")
        #expect(results.first?.message?.contains("ClusterRole/cluster-admin already exists and is not managed by Tether") == true)
        expectUntouched("by the apply")
        // The watcher lists with the desired state known: the foreign role is missing
        // from Tether's labelled list, and is refused again, not "re-created".
        try await eventually("first relist reported") { reconciler.failures(of: "ClusterRole/cluster-admin").count >= 1 || !untouched() }
        try await eventually("watching every kind") { emulator.openWatchCount == KubeResource.managed.count }
        expectUntouched("by the first relist")

        // 410: the API server expires the watches (an etcd compaction passed them).
        try await reconciler.expectAnotherFailure(of: "ClusterRole/cluster-admin", "a 410", untouched: untouched) { emulator.expireOpenWatches() }
        expectUntouched("after a 410")

        // The API server restarts: every watch ends, connections are refused for a moment.
        try await eventually("watching again") { emulator.openWatchCount == KubeResource.managed.count }
        try await reconciler.expectAnotherFailure(of: "ClusterRole/cluster-admin", "an API server restart", untouched: untouched) { try await emulator.restart() }
        expectUntouched("after an API server restart")

        // The agent restarts: fresh state, the desired state arrives again.
        try await reconciler.stop()
        reconciler = try Reconciler(kubeconfig: dir.sub("kubeconfig"))
        let again = await reconciler.start(desired)
        #expect(again.map(\.state) == [.failed, .applied], "\(again)")
        try await eventually("relist after the agent restart reported") { reconciler.failures(of: "ClusterRole/cluster-admin").count >= 1 || !untouched() }
        expectUntouched("after an agent restart")

        // Throughout, Tether's own role kept being Tether's, and no report ever called
        // the foreign role drift.
        #expect(emulator.object(.clusterRoles, name: "view-pods")?[path: ["metadata", "labels", "app.kubernetes.io/managed-by"]] == "tether")
        #expect(!reconciler.reports.value.contains { $0.object == "ClusterRole/cluster-admin" && $0.state != .failed })
        let writes = emulator.authorizationChecks(userAgentPrefix: "tether-agent/").filter { $0.name == "cluster-admin" && $0.verb != "get" }
        #expect(writes.isEmpty, "the agent only ever read cluster-admin: \(writes)")
        try await reconciler.stop()
        await emulator.stop()
    }

    @Test func aForeignRoleSurvivesWatchesTheServerEnds() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // kube-apiserver ends every watch after --min-request-timeout (x1 to x2) when the
        // client sets no timeoutSeconds; here after 1-2 s.
        let emulator = try await KubeEmulator.start(watchTimeout: .seconds(1))
        try emulator.writeKubeconfig(to: dir.sub("kubeconfig"))
        let original = try emulator.put(Self.clusterAdmin, manager: "kube-apiserver")
        let reconciler = try Reconciler(kubeconfig: dir.sub("kubeconfig"))
        _ = await reconciler.start([try Self.desiredRole("cluster-admin")])
        // Each server-ended watch is followed by a relist, which refuses the role again.
        try await eventually("three relists") {
            reconciler.failures(of: "ClusterRole/cluster-admin").count >= 3 || emulator.object(.clusterRoles, name: "cluster-admin") != original
        }
        #expect(emulator.object(.clusterRoles, name: "cluster-admin") == original)
        try await reconciler.stop()
        await emulator.stop()
    }

    @Test func tetherRolesAreRepairedButOneWhoseLabelWasTakenOffIsLeftAlone() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let emulator = try await KubeEmulator.start()
        try emulator.writeKubeconfig(to: dir.sub("kubeconfig"))
        let reconciler = try Reconciler(kubeconfig: dir.sub("kubeconfig"))
        let results = await reconciler.start([try Self.desiredRole("view-pods")])
        #expect(results.map(\.state) == [.applied])
        try await eventually("watching every kind") { emulator.openWatchCount == KubeResource.managed.count }

        // Deleted by hand: really absent, so re-created (without force).
        try emulator.delete(.clusterRoles, name: "view-pods")
        try await eventually("re-created") { emulator.object(.clusterRoles, name: "view-pods") != nil }
        try await eventually("reported as drift") { reconciler.reports.value.contains { $0.state == .drifted && $0.message?.contains("re-created") == true } }

        // Its label taken off by hand (and its rules changed): no longer provably
        // Tether's, so left alone and reported, not "repaired".
        let failuresBefore = reconciler.failures(of: "ClusterRole/view-pods").count
        var unlabelled = try #require(emulator.object(.clusterRoles, name: "view-pods"))
        unlabelled[path: ["metadata", "labels"]] = nil
        unlabelled[path: ["rules"]] = [["apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]]]
        let taken = try emulator.put(unlabelled)
        try await eventually("refused once unlabelled") {
            reconciler.failures(of: "ClusterRole/view-pods").count > failuresBefore || emulator.object(.clusterRoles, name: "view-pods") != taken
        }
        #expect(emulator.object(.clusterRoles, name: "view-pods") == taken)
        try await reconciler.stop()
        await emulator.stop()
    }

    /// The whole system: a bundle at the hub names a role that exists in the cluster
    /// without Tether's label. Through agent restarts and API server disruptions it
    /// stays as it was, and the hub shows it failed with the reason.
    @Test func aForeignRoleNamedInABundleIsReportedFailedThroughHubAndAgent() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let emulator = try await KubeEmulator.start()
        try emulator.writeKubeconfig(to: dir.sub("kubeconfig"))
        var foreign = Self.clusterAdmin
        foreign[path: ["metadata", "name"]] = "platform-admin"
        let original = try emulator.put(foreign, manager: "helm")
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: ["env": "prod"])
        let join = try await hub.join("prod-eu")
        func startAgent() throws -> (AgentRuntime, Task<Void, any Error>) {
            var config = AgentConfiguration(stateDirectory: dir.sub("agent"), joinString: join)
            config.healthListen = nil
            config.auditListen = nil
            config.kubernetes = try KubeConnection.kubeconfig(path: dir.sub("kubeconfig"))
            let runtime = try AgentRuntime(configuration: config, logger: testLogger)
            return (runtime, Task { try await runtime.run() })
        }
        // Reads of the foreign role by the agent: each relist that considers it does one.
        func reads() -> Int {
            emulator.authorizationChecks(userAgentPrefix: "tether-agent/").filter { $0.verb == "get" && $0.name == "platform-admin" }.count
        }
        func expectFailedAtHub(sourceLocation: SourceLocation = #_sourceLocation) async throws {
            try await eventually("failed at the hub") {
                try await hub.core.policyStatus(bundle: "platform").first?.results.first { $0.object == "ClusterRole/platform-admin" }?.state == .failed
            }
            let row = try #require(try await hub.core.policyStatus(bundle: "platform").first, sourceLocation: sourceLocation)
            #expect(row.state == "failed", sourceLocation: sourceLocation)
            #expect(row.message?.contains("ClusterRole/platform-admin already exists and is not managed by Tether") == true, "\(row.message ?? "")",
                    sourceLocation: sourceLocation)
            #expect(emulator.object(.clusterRoles, name: "platform-admin") == original, "untouched", sourceLocation: sourceLocation)
        }

        var (runtime, task) = try startAgent()
        let yaml = PolicyDistributionTests.bundle("platform", selector: "{matchLabels: {env: prod}}", roles: ["view-pods", "platform-admin"])
        _ = try await hub.core.applyBundles(try PolicyParser.parse(yaml: yaml, file: "b.yaml"))
        try await eventually("view-pods applied") { emulator.object(.clusterRoles, name: "view-pods") != nil }
        try await expectFailedAtHub()

        for (what, disrupt) in [
            ("a 410", { emulator.expireOpenWatches() }),
            ("an API server restart", { try await emulator.restart() }),
        ] as [(String, () async throws -> Void)] {
            try await eventually("watching every kind") { emulator.openWatchCount == KubeResource.managed.count }
            let before = reads()
            try await disrupt()
            try await eventually("relisted after \(what)") { reads() > before || emulator.object(.clusterRoles, name: "platform-admin") != original }
            try await expectFailedAtHub()
        }

        // The agent restarts (same identity); the hub sends the desired state again.
        await runtime.shutdown()
        try await task.value
        let before = reads()
        (runtime, task) = try startAgent()
        try await eventually("connected again") { runtime.link.status.value.connected }
        try await eventually("the restarted agent read it") { reads() > before || emulator.object(.clusterRoles, name: "platform-admin") != original }
        try await expectFailedAtHub()

        await runtime.shutdown()
        try await task.value
        try await hub.stop()
        let writes = emulator.authorizationChecks(userAgentPrefix: "tether-agent/").filter { $0.name == "platform-admin" && $0.verb != "get" }
        #expect(writes.isEmpty, "\(writes)")
        await emulator.stop()
    }
}
