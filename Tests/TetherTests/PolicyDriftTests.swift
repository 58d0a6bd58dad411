import Foundation
import GRDB
import KubeEmulator
import Shared
import TestSupport
import Testing
@testable import TetherAgent
@testable import HubStore
@testable import TetherHub

/// `policy status` after the agent repairs drift: the object is in sync again, the
/// row keeps the last drift (object, when, what was done), and the hub's audit log
/// keeps every repair.
@Suite struct PolicyDriftTests {
    static let yaml = PolicyDistributionTests.bundle("readonly", selector: "{matchLabels: {env: prod}}", roles: ["view-pods"])

    @Test func aRepairedDriftIsHistoryNotAState() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: ["env": "prod"])
        _ = try await hub.core.applyBundles(try PolicyParser.parse(yaml: Self.yaml, file: "b.yaml"))
        let database = hub.core.database
        func row() async throws -> PolicyStatusRow { try #require(try await hub.core.policyStatus(bundle: "readonly").first) }

        try await database.recordPolicyReport(cluster: "prod-eu", revision: 1, results: [
            ObjectResult(bundle: "readonly", object: "ClusterRole/view-pods", state: .applied),
        ], now: Date())
        let first = try await row()
        #expect(first.state == "in-sync" && first.lastDrift == nil)

        // The agent put back a change made in the cluster.
        let repairedAt = Date(timeIntervalSince1970: 1_800_000_000)
        try await database.recordPolicyReport(cluster: "prod-eu", revision: 1, results: [
            ObjectResult(bundle: "readonly", object: "ClusterRole/view-pods", state: .drifted, message: "reverted a change made in the cluster"),
        ], now: repairedAt)
        var status = try await row()
        #expect(status.state == "in-sync", "repaired: the cluster matches again")
        #expect(status.lastDrift == LastDrift(object: "ClusterRole/view-pods", at: repairedAt, action: "reverted a change made in the cluster"))
        #expect(status.results.first?.state == .applied)

        // Later reports keep it; a newer drift replaces it.
        try await database.recordPolicyReport(cluster: "prod-eu", revision: 1, results: [
            ObjectResult(bundle: "readonly", object: "ClusterRole/view-pods", state: .applied),
        ], now: repairedAt.addingTimeInterval(60))
        #expect(try await row().lastDrift?.at == repairedAt)
        try await database.recordPolicyReport(cluster: "prod-eu", revision: 1, results: [
            ObjectResult(bundle: "readonly", object: "ClusterRole/view-pods", state: .drifted, message: "re-created after it was deleted in the cluster"),
        ], now: repairedAt.addingTimeInterval(120))
        status = try await row()
        #expect(status.lastDrift?.action == "re-created after it was deleted in the cluster")

        // While the cluster still differs (the repair failed) the row says so.
        try await database.recordPolicyReport(cluster: "prod-eu", revision: 1, results: [
            ObjectResult(bundle: "readonly", object: "ClusterRole/view-pods", state: .failed, message: "drift repair failed: forbidden"),
        ], now: repairedAt.addingTimeInterval(180))
        status = try await row()
        #expect(status.state == "failed" && status.message?.contains("drift repair failed") == true)
        #expect(status.lastDrift != nil)

        // `policy status` shows it, in the table and in json.
        let cli = try ChildProcess.binary("tether-hub")
        let credentials = dir.sub("hub") + "/admin-credentials.json"
        try await database.recordPolicyReport(cluster: "prod-eu", revision: 1, results: [
            ObjectResult(bundle: "readonly", object: "ClusterRole/view-pods", state: .applied),
        ], now: repairedAt.addingTimeInterval(240))
        let table = try await runCommand(cli, ["policy", "status", "readonly", "--credentials", credentials])
        #expect(table.status == 0, "\(table.stderr)")
        #expect(table.stdout.contains("LAST DRIFT"), "\(table.stdout)")
        let line = try #require(table.stdout.split(separator: "\n").first { $0.hasPrefix("prod-eu") })
        #expect(line.contains("in-sync") && line.contains("ClusterRole/view-pods at \(Table.date(repairedAt.addingTimeInterval(120))): re-created after it was deleted"),
                "\(table.stdout)")
        let json = try await runCommand(cli, ["policy", "status", "readonly", "--output", "json", "--credentials", credentials])
        let rows = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]] ?? []
        #expect((rows.first?["lastDrift"] as? [String: Any])?["object"] as? String == "ClusterRole/view-pods", "\(json.stdout)")
        try await hub.stop()
    }

    @Test func rowsStoredAsDriftedBeforeTheUpgradeBecomeLastDrift() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.sub("hub.db")
        // A database as the previous release left it.
        let queue = try DatabaseQueue(path: path)
        try HubDatabase.migrator.migrate(queue, upTo: "v3-policy")
        let then = Date(timeIntervalSince1970: 1_700_000_000)
        try await queue.write { db in
            try db.execute(sql: "INSERT INTO clusters (name, labels, createdAt) VALUES ('prod-eu', '{}', ?)", arguments: [then])
            try db.execute(sql: """
                INSERT INTO objectStatuses (cluster, object, bundle, revision, state, message, updatedAt)
                VALUES ('prod-eu', 'ClusterRole/a', 'b', 3, 'drifted', 'reverted a change made in the cluster', ?),
                       ('prod-eu', 'ClusterRole/c', 'b', 3, 'failed', 'forbidden', ?)
                """, arguments: [then, then])
        }
        try queue.close()

        let database = try HubDatabase(path: path)
        let results = try await database.objectStatuses(cluster: "prod-eu", bundle: "b")
        #expect(results.map(\.state) == [.applied, .failed])
        #expect(results[0].message == nil)
        #expect(results[0].lastDrift == LastDrift(object: "ClusterRole/a", at: then, action: "reverted a change made in the cluster"))
        #expect(results[1].lastDrift == nil && results[1].message == "forbidden")
    }

    @Test func theAgentsRepairReachesStatusAndTheAuditLog() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let emulator = try await KubeEmulator.start()
        try emulator.writeKubeconfig(to: dir.sub("kubeconfig"))
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: ["env": "prod"])
        var config = await AgentConfiguration(stateDirectory: dir.sub("agent"), joinString: try hub.join("prod-eu"))
        config.healthListen = nil
        config.auditListen = nil
        config.kubernetes = try KubeConnection.kubeconfig(path: dir.sub("kubeconfig"))
        let runtime = try AgentRuntime(configuration: config, logger: testLogger)
        let task = Task { try await runtime.run() }
        _ = try await hub.core.applyBundles(try PolicyParser.parse(yaml: Self.yaml, file: "b.yaml"))
        try await eventually("in sync") { try await hub.core.policyStatus(bundle: "readonly").first?.state == "in-sync" }

        try emulator.delete(.clusterRoles, name: "view-pods")
        try await eventually("repair recorded") { try await hub.core.policyStatus(bundle: "readonly").first?.lastDrift != nil }
        let row = try #require(try await hub.core.policyStatus(bundle: "readonly").first)
        #expect(row.state == "in-sync", "\(row)")
        #expect(row.lastDrift?.object == "ClusterRole/view-pods")
        #expect(row.lastDrift?.action.contains("re-created") == true, "\(row.lastDrift?.action ?? "")")
        #expect(emulator.object(.clusterRoles, name: "view-pods") != nil)

        var query = AuditQuery()
        query.cluster = "hub"
        query.verb = "repair"
        let events = try await hub.core.database.auditEvents(query)
        #expect(events.count == 1)
        let event = try JSONSerialization.jsonObject(with: try #require(events.first).event) as? [String: Any] ?? [:]
        #expect((event["objectRef"] as? [String: Any])?["name"] as? String == "ClusterRole/view-pods")
        #expect((event["user"] as? [String: Any])?["username"] as? String == "agent:prod-eu")
        #expect(((event["annotations"] as? [String: Any])?["tether.dev/message"] as? String)?.contains("cluster prod-eu, bundle readonly") == true)

        await runtime.shutdown()
        try await task.value
        try await hub.stop()
        await emulator.stop()
    }
}
