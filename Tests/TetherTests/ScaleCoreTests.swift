import Foundation
import GRDB
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherHub

/// What keeps the hub's cost flat as clusters grow: the pure policy compiler and
/// presence written in batches, each tested on its own.
@Suite struct ScaleCoreTests {
    static func role(_ name: String) -> [String: Any] {
        ["apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": ["name": name],
         "rules": [["apiGroups": [""], "resources": ["pods"], "verbs": ["get"]]]]
    }

    static func cluster(_ name: String, _ labels: [String: String], current: (UInt64, String)? = nil) -> PolicyCompiler.Cluster {
        PolicyCompiler.Cluster(name: name, labels: labels, current: current.map { (revision: $0.0, hash: $0.1) })
    }

    @Test func clustersThatSelectTheSameBundlesShareOneCompiledState() throws {
        let bundles = [
            PolicyCompiler.Bundle(name: "all", selector: LabelSelector(), resources: [Self.role("view")]),
            PolicyCompiler.Bundle(name: "prod", selector: LabelSelector(matchLabels: ["env": "prod"]), resources: [Self.role("prod-view")]),
        ]
        let clusters = (0..<1_000).map { Self.cluster("c\($0)", ["env": $0 % 2 == 0 ? "prod" : "dev"]) }
        let changed = try PolicyCompiler.compile(bundles: bundles, clusters: clusters)
        #expect(changed.count == 1_000)
        #expect(Set(changed.map(\.hash)).count == 2, "two distinct bundle sets, two compiled states")
        let prod = try #require(changed.first { $0.cluster == "c0" })
        #expect(prod.objects.map(\.key) == ["ClusterRole/prod-view", "ClusterRole/view"])
        #expect(prod.revision == 1)
        #expect(changed.first { $0.cluster == "c1" }?.objects.map(\.key) == ["ClusterRole/view"])
        // The hash is the content hash the store always used: bundle and JSON of each object.
        #expect(prod.hash == PolicyCompiler.hash(prod.objects))
    }

    @Test func theRevisionMovesOnlyWhereTheContentChanged() throws {
        let bundles = [PolicyCompiler.Bundle(name: "all", selector: LabelSelector(), resources: [Self.role("view")])]
        let first = try PolicyCompiler.compile(bundles: bundles, clusters: [Self.cluster("a", [:]), Self.cluster("b", [:])])
        let hash = first[0].hash
        // a is up to date at revision 4; b has an older state at revision 7.
        let again = try PolicyCompiler.compile(bundles: bundles, clusters: [Self.cluster("a", [:], current: (4, hash)), Self.cluster("b", [:], current: (7, "old"))])
        #expect(again.map(\.cluster) == ["b"])
        #expect(again.first?.revision == 8)
        // A cluster no bundle ever selected gets no state; one that had objects gets an empty one.
        let none = try PolicyCompiler.compile(bundles: [], clusters: [Self.cluster("never", [:]), Self.cluster("had", [:], current: (2, hash))])
        #expect(none.map(\.cluster) == ["had"])
        #expect(none.first?.objects.isEmpty == true)
        #expect(none.first?.revision == 3)
    }

    @Test func twoBundlesPuttingOneObjectOnAClusterAreRefusedNamingBoth() {
        let bundles = [
            PolicyCompiler.Bundle(name: "eu", selector: LabelSelector(matchLabels: ["region": "eu"]), resources: [Self.role("shared")]),
            PolicyCompiler.Bundle(name: "prod", selector: LabelSelector(matchLabels: ["env": "prod"]), resources: [Self.role("shared")]),
        ]
        // Apart they are fine; on a cluster both select, refused.
        #expect(throws: Never.self) {
            try PolicyCompiler.compile(bundles: bundles, clusters: [Self.cluster("eu-dev", ["region": "eu"]), Self.cluster("us-prod", ["env": "prod"])])
        }
        let error = #expect(throws: TetherError.self) {
            try PolicyCompiler.compile(bundles: bundles, clusters: [Self.cluster("eu-prod", ["region": "eu", "env": "prod"])])
        }
        #expect(error?.message == "bundles eu and prod would both put ClusterRole/shared on cluster eu-prod; an object may come from one bundle only")
    }

    @Test func presenceIsWrittenInOneTransactionPerFlushAndReadFromMemoryMeanwhile() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let database = try HubDatabase(path: dir.sub("hub.db"))
        let names = try (0..<200).map { try ClusterName("edge-\($0)") }
        for name in names { _ = try await database.addCluster(name, labels: [:], now: Date()) }
        let commits = Locked<[Int]>([])
        let presence = PresenceRecorder(database: database, interval: .seconds(3600), logger: testLogger, commits: { n in commits.withLock { $0.append(n) } })
        let start = Date(timeIntervalSince1970: 1_800_000_000)
        // Ten heartbeats from each of 200 agents: 2,000 sightings.
        for round in 0..<10 {
            for name in names { presence.saw(name, agentVersion: "0.1.\(round)", at: start.addingTimeInterval(Double(round))) }
        }
        #expect(presence.pendingCount == 200, "one pending write per cluster, however many heartbeats")
        #expect(try await database.cluster(names[0])?.lastSeen == nil, "nothing written before the flush")
        #expect(presence.latest(names[7])?.at == start.addingTimeInterval(9), "the newest sighting is in memory")
        await presence.flush()
        #expect(commits.value == [200], "one transaction for all 200")
        let row = try #require(try await database.cluster(names[7]))
        #expect(row.lastSeen == start.addingTimeInterval(9))
        #expect(row.agentVersion == "0.1.9")
        await presence.flush()
        #expect(commits.value == [200], "nothing new: no transaction")
    }

    @Test func clusterListShowsPresenceNotYetWritten() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        let name = try ClusterName("edge")
        _ = try await hub.core.addCluster(name, labels: [:])
        let seen = Date().addingTimeInterval(-5)
        hub.core.presence.saw(name, agentVersion: "9.9.9", at: seen)
        let view = try #require(try await hub.core.clusterViews().first)
        #expect(view.agentVersion == "9.9.9")
        #expect(view.lastSeen.map { abs($0.timeIntervalSince(seen)) < 0.001 } == true)
        try await hub.stop()
        // Graceful shutdown wrote it.
        let database = try HubDatabase(path: dir.sub("hub") + "/hub.db")
        #expect(try await database.cluster(name)?.agentVersion == "9.9.9")
    }

    @Test func writesThatArriveTogetherShareATransactionAndABadOneFailsAlone() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let pool = try DatabasePool(path: dir.sub("g.db"))
        try await pool.write { try $0.execute(sql: "CREATE TABLE t (n INTEGER PRIMARY KEY CHECK (n >= 0))") }
        let commits = Locked<[Int]>([])
        let group = GroupCommit<Int>(writer: pool, onCommit: { n in commits.withLock { $0.append(n) } }) { db, items in
            for n in items { try db.execute(sql: "INSERT INTO t (n) VALUES (?)", arguments: [n]) }
        }
        let failures = Locked<[Int]>([])
        await withTaskGroup(of: Void.self) { tasks in
            for n in -1..<500 {
                tasks.addTask {
                    do { try await group.submit(n) } catch { failures.withLock { $0.append(n) } }
                }
            }
        }
        #expect(failures.value == [-1], "only the item the CHECK refuses fails")
        #expect(try await pool.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM t") } == 500, "every other item is stored")
        #expect(commits.value.reduce(0, +) == 500)
        #expect(commits.value.count < 500, "items that waited together shared a commit (\(commits.value.count) commits)")
    }

    // MARK: Audit batches compressed in the message

    @Test func compressedAuditEventsComeBackWholeAndInOrder() throws {
        let events = try Fixtures.files(in: "audit/webhook").prefix(3).flatMap { url -> [Data] in
            let list = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any] ?? [:]
            return try (list["items"] as? [Any] ?? []).map { try JSONSerialization.data(withJSONObject: $0) }
        } + [Data(), Data("{}".utf8)]
        #expect(events.count > 10)
        let compressed = try EventCompression.compress(events)
        #expect(compressed.count * 5 < events.reduce(0) { $0 + $1.count }, "real audit JSON compresses well even at level 1")
        #expect(try EventCompression.decompress(compressed, count: events.count) == events)
        // Through the wire type, as the hub reads it.
        let batch = Tether_V1_AuditBatch.with { $0.firstSequence = 1; $0.compressedEvents = compressed; $0.eventCount = UInt32(events.count) }
        #expect(try batch.decodedEvents() == events)
        #expect(try Tether_V1_AuditBatch.with { $0.events = events }.decodedEvents() == events, "uncompressed batches are read as before")
    }

    @Test func aCompressedBatchThatLiesOrExplodesIsRefusedNotExpanded() throws {
        let events = [Data("one".utf8), Data("two".utf8)]
        let good = try EventCompression.compress(events)
        func refusal(_ data: Data, count: Int, limit: Int = WireLimits.maxMessageBytes) -> String? {
            do {
                _ = try EventCompression.decompress(data, count: count, limit: limit)
                return nil
            } catch let error as TetherError {
                #expect(error.code == .invalidArgument)
                return error.message
            } catch {
                return "\(error)"
            }
        }
        #expect(refusal(good, count: 3)?.contains("holds 2 events, not the 3 it names") == true)
        #expect(refusal(good, count: 1)?.contains("more than its 1 events") == true)
        #expect(refusal(good, count: Int(UInt32.max))?.contains("holds 2 events, not the 4294967295 it names") == true,
                "a huge count from the sender is refused, not reserved")
        #expect(refusal(Data("not zlib at all".utf8), count: 1)?.contains("not valid zlib data") == true)
        #expect(refusal(good.prefix(good.count - 4), count: 2) != nil, "a truncated stream is refused")
        // A bomb: 64 MiB of zeros in one frame compresses to under 300 KiB at level 1.
        let bomb = try EventCompression.compress([Data(count: 64 << 20)])
        #expect(bomb.count < 300 << 10)
        #expect(refusal(bomb, count: 1)?.contains("expands past 32.0 MiB") == true)
        let both = Tether_V1_AuditBatch.with { $0.events = events; $0.compressedEvents = good; $0.eventCount = 2 }
        #expect(throws: TetherError.self) { try both.decodedEvents() }
    }
}
