import Foundation
import Shared
import TestSupport
import Testing
@testable import TetherAgent
@testable import HubStore
@testable import TetherHub

/// Bundles compiled per cluster and carried to agents over their channels (these
/// agents have no Kubernetes API: each object comes back failed with the reason).
@Suite struct PolicyDistributionTests {
    static func bundle(_ name: String, selector: String, roles: [String]) -> String {
        """
        apiVersion: tether.dev/v1
        kind: PolicyBundle
        metadata: {name: \(name)}
        spec:
          clusterSelector: \(selector)
          resources:
        \(roles.map { """
            - apiVersion: rbac.authorization.k8s.io/v1
              kind: ClusterRole
              metadata: {name: \($0)}
              rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
        """ }.joined(separator: "\n"))
        """
    }

    func apply(_ hub: TestHub, _ yaml: String) async throws -> [DesiredState] {
        try await hub.core.applyBundles(try PolicyParser.parse(yaml: yaml, file: "test.yaml"))
    }

    @Test func bundlesFollowLabelsAndReachAgentsOnlineAndOffline() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: ["env": "prod", "region": "eu"])
        _ = try await hub.core.addCluster(ClusterName("dev"), labels: ["env": "dev"])
        let prod = try await TestAgent.start(stateDir: dir.sub("prod"), join: try hub.join("prod-eu"))
        let dev = try await TestAgent.start(stateDir: dir.sub("dev"), join: try hub.join("dev"))
        try await prod.waitUntilConnected()
        try await dev.waitUntilConnected()

        let changed = try await apply(hub, Self.bundle("readonly", selector: "{matchLabels: {env: prod}}", roles: ["view-pods"]))
        #expect(changed.map(\.cluster) == ["prod-eu"])
        try await eventually("prod applied revision 1") { prod.link.status.value.observedRevision == 1 }
        #expect(dev.link.status.value.observedRevision == 0)
        try await eventually("status reported") { try await hub.core.policyStatus(bundle: "readonly").first?.observedRevision == 1 }
        let row = try #require(try await hub.core.policyStatus(bundle: "readonly").first)
        #expect(row.cluster == "prod-eu" && row.desiredRevision == 1 && row.state == "failed")
        #expect(row.message?.contains("no Kubernetes API configured") == true)

        // The same content again makes no new revision.
        #expect(try await apply(hub, Self.bundle("readonly", selector: "{matchLabels: {env: prod}}", roles: ["view-pods"])).isEmpty)

        // Relabelling moves clusters in and out.
        _ = try await hub.core.relabelCluster(ClusterName("dev"), changes: ["env": "prod"])
        try await eventually("dev now gets it") { dev.link.status.value.observedRevision == 1 }
        _ = try await hub.core.relabelCluster(ClusterName("prod-eu"), changes: ["env": nil])
        try await eventually("prod-eu gets an empty state") { prod.link.status.value.observedRevision == 2 }
        #expect(try await hub.core.database.desiredState("prod-eu")?.objects.isEmpty == true)
        #expect(try await hub.core.policyStatus(bundle: "readonly").map(\.cluster) == ["dev"])

        // An offline agent catches up when it reconnects.
        try await dev.stop()
        _ = try await apply(hub, Self.bundle("readonly", selector: "{matchLabels: {env: prod}}", roles: ["view-pods", "view-logs"]))
        let devAgain = try TestAgent.start(stateDir: dir.sub("dev"), join: nil)
        try await eventually("dev catches up") { try await hub.core.database.observedRevision("dev") == 2 }
        #expect(try await hub.core.database.desiredState("dev")?.objects.count == 2)

        // Deleting the bundle empties every cluster it reached.
        _ = try await hub.core.deleteBundle("readonly")
        try await eventually("dev emptied") { try await hub.core.database.observedRevision("dev") == 3 }
        await #expect(throws: TetherError.self) { try await hub.core.policyStatus(bundle: "readonly") }
        try await devAgain.stop()
        try await prod.stop()
        try await hub.stop()
    }

    @Test func overlappingBundlesAreRefusedAndNothingIsStored() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: ["env": "prod", "region": "eu"])
        _ = try await hub.core.addCluster(ClusterName("prod-us"), labels: ["env": "prod", "region": "us"])
        _ = try await apply(hub, Self.bundle("eu", selector: "{matchLabels: {region: eu}}", roles: ["shared"]))
        let error = await #expect(throws: TetherError.self) {
            try await apply(hub, Self.bundle("prod", selector: "{matchLabels: {env: prod}}", roles: ["shared"]))
        }
        #expect(error?.message.contains("bundles eu and prod would both put ClusterRole/shared on cluster prod-eu") == true, "\(error?.message ?? "")")
        #expect(try await hub.core.database.bundleDocuments().map(\.name) == ["eu"])
        #expect(try await hub.core.database.desiredState("prod-us") == nil)
        // A relabel that would create the overlap is refused too.
        _ = try await apply(hub, Self.bundle("team-a", selector: "{matchLabels: {team: a}}", roles: ["shared"]))
        await #expect(throws: TetherError.self) { try await hub.core.relabelCluster(ClusterName("prod-eu"), changes: ["team": "a"]) }
        #expect(try await hub.core.database.cluster(ClusterName("prod-eu"))?.labels["team"] == nil)
        try await hub.stop()
    }

    @Test func aHubRestartKeepsBundlesAndRevisions() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let first = try await TestHub.start(dataDir: dir.sub("hub"))
        let port = first.agentPort
        _ = try await first.core.addCluster(ClusterName("prod-eu"), labels: ["env": "prod"])
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try first.join("prod-eu"))
        _ = try await apply(first, Self.bundle("readonly", selector: "{matchLabels: {env: prod}}", roles: ["a", "b"]))
        try await eventually("applied") { agent.link.status.value.observedRevision == 1 }
        try await first.stop()

        let second = try await TestHub.start(dataDir: dir.sub("hub"), listenPort: port)
        await #expect(try second.core.database.desiredState("prod-eu")?.revision == 1)
        await #expect(try second.core.database.desiredState("prod-eu")?.objects.map(\.name) == ["a", "b"])
        try await eventually("reconnected") { try await second.status("prod-eu") == .online }
        _ = try await apply(second, Self.bundle("readonly", selector: "{matchLabels: {env: prod}}", roles: ["a"]))
        try await eventually("revision 2 after restart") { agent.link.status.value.observedRevision == 2 }
        try await agent.stop()
        try await second.stop()
    }
}
