import Foundation
import GRDB
import TestSupport
import Testing
@testable import HubStore

/// v8 rebuilds the audit table with a time-led idempotency key: a log written by an
/// earlier hub keeps every event, row id and hash, and still refuses duplicates.
@Suite struct AuditMigrationTests {
    private static func events(from body: Data) throws -> [IndexedAuditEvent] {
        try AuditTests.items(body).map { try IndexedAuditEvent(raw: JSONSerialization.data(withJSONObject: $0)) }
    }

    @Test func anOlderLogKeepsEveryEventAndItsChainAndStillRefusesDuplicates() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.sub("hub.db")
        var stored: [IndexedAuditEvent] = []
        do {
            // The database as the hub before v8 left it, with a log in it.
            let old = try DatabasePool(path: path)
            try HubDatabase.migrator.migrate(old, upTo: "v7-people")
            var sequence: UInt64 = 1
            for (_, body) in try AuditTests.webhookFixtures() {
                let events = try Self.events(from: body)
                let first = sequence
                _ = try await old.write { db in try HubDatabase.ingest(db, cluster: "c", firstSequence: first, events: events, now: Date()) }
                sequence += UInt64(events.count)
                stored += events
            }
            let oldKey = try await old.read { db in try String.fetchAll(db, sql: "SELECT name FROM pragma_index_list('auditEvents')") }
            #expect(oldKey.contains("auditEventsClusterTime"), "control: the old schema: \(oldKey)")
            try old.close()
        }
        let before = try await runCommand("/usr/bin/sqlite3", [path, "SELECT id, sequence, hex(event) FROM auditEvents ORDER BY id"]).stdout

        let db = try HubDatabase(path: path)
        let after = try await runCommand("/usr/bin/sqlite3", [path, "SELECT id, sequence, hex(event) FROM auditEvents ORDER BY id"]).stdout
        #expect(after == before, "every row, under the same id")
        #expect(!after.isEmpty)
        let report = try await db.verifyAuditChain()
        #expect(report.problem == nil)
        #expect(report.eventsChecked == stored.count)

        let keys = try await db.writer.read { db in
            try Row.fetchAll(db, sql: "SELECT name, \"unique\" AS isUnique FROM pragma_index_list('auditEvents')").map { ($0["name"] as String, $0["isUnique"] as Int) }
        }
        let uniqueColumns = try await db.writer.read { db -> [String] in
            let name = try #require(keys.first { $0.1 == 1 }?.0)
            return try String.fetchAll(db, sql: "SELECT name FROM pragma_index_info(?) ORDER BY seqno", arguments: [name])
        }
        #expect(uniqueColumns == ["cluster", "time", "auditID", "stage"])
        #expect(!keys.map(\.0).contains("auditEventsClusterTime"), "the unique key serves (cluster, time)")
        #expect(Set(keys.map(\.0)).isSuperset(of: ["index_auditEvents_on_time", "auditEventsUserTime", "auditEventsResourceTime",
                                                  "auditEventsNamespaceName", "auditEventsImpersonated"]))

        // The same events sent again under new sequence numbers are not stored twice;
        // a new one after them is.
        let count = stored.count
        let acked = try await db.ingestAudit(cluster: "c", firstSequence: UInt64(count) + 1, events: Array(stored.prefix(3)), now: Date())
        #expect(acked == UInt64(count) + 3)
        var fresh = stored[0]
        fresh.auditID = "00000000-0000-4000-8000-000000000001"
        _ = try await db.ingestAudit(cluster: "c", firstSequence: acked + 1, events: [fresh], now: Date())
        let rows = try await db.writer.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM auditEvents") }
        #expect(rows == count + 1)
        let queried = try await db.auditEvents(AuditQuery(cluster: "c", limit: 100_000))
        #expect(queried.count == count + 1)
        #expect(try await db.verifyAuditChain().problem == nil)
    }
}
