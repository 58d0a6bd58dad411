import Crypto
import Foundation
import GRDB
import GRDBSQLite
import Logging
import Shared

/// The audit log: events stored idempotently by (cluster, time, auditID, stage), indexed
/// for the questions people ask, and chained by hash batch after batch so that a
/// changed, deleted or reordered row is found by `verifyAuditChain`.
extension HubDatabase {
    package static func registerAuditMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v2-audit") { db in
            try db.create(table: "auditBatches") { t in
                t.primaryKey("id", .integer)
                t.column("cluster", .text).notNull()
                t.column("firstSequence", .integer).notNull()
                t.column("lastSequence", .integer).notNull()
                t.column("eventCount", .integer).notNull()
                // The batch's events are the contiguous row ids inserted in its transaction.
                t.column("firstEventID", .integer).notNull().defaults(to: 0)
                t.column("lastEventID", .integer).notNull().defaults(to: -1)
                t.column("receivedAt", .datetime).notNull().indexed()
                t.column("previousHash", .blob).notNull()
                t.column("hash", .blob).notNull()
            }
            try db.create(table: "auditEvents") { t in
                t.primaryKey("id", .integer)
                t.column("cluster", .text).notNull()
                t.column("sequence", .integer).notNull()
                t.column("batch", .integer).notNull()
                t.column("auditID", .text).notNull()
                t.column("stage", .text).notNull()
                t.column("time", .text).notNull().indexed()
                t.column("user", .text)
                t.column("impersonatedUser", .text)
                t.column("verb", .text)
                t.column("resource", .text)
                t.column("namespace", .text)
                t.column("name", .text)
                t.column("code", .integer)
                t.column("event", .blob).notNull()
                t.uniqueKey(["cluster", "auditID", "stage"])
            }
            try db.create(index: "auditEventsClusterTime", on: "auditEvents", columns: ["cluster", "time"])
            try db.create(index: "auditEventsUserTime", on: "auditEvents", columns: ["user", "time"])
            try db.create(index: "auditEventsResourceTime", on: "auditEvents", columns: ["resource", "time"])
            try db.create(index: "auditEventsNamespaceName", on: "auditEvents", columns: ["namespace", "name"])
            try db.execute(sql: "CREATE INDEX auditEventsImpersonated ON auditEvents(impersonatedUser, time) WHERE impersonatedUser IS NOT NULL")
            try db.create(table: "auditCursors") { t in
                t.primaryKey("cluster", .text)
                t.column("acknowledged", .integer).notNull()
            }
            // Where verification starts after retention pruned the oldest batches.
            try db.create(table: "auditChainAnchor") { t in
                t.primaryKey("id", .integer).check { $0 == 1 }
                t.column("batch", .integer).notNull()
                t.column("hash", .blob).notNull()
            }
        }
    }

    /// v8: the audit log's idempotency key leads with the event's time:
    /// UNIQUE(cluster, time, auditID, stage) instead of UNIQUE(cluster, auditID, stage).
    ///
    /// Real audit IDs are random UUIDs, so every insert into the old key landed on a
    /// random page of an index as large as the log: each batch rewrote a share of it
    /// that grew with the log (at a million events the hub stored 25,300 events/s and
    /// held 813 MiB; with this key 40,200/s and 199 MiB). Times only move forward, so the
    /// new key appends like the other indexes. An event sent again (a retried webhook
    /// batch, a re-read log) has the same time and is still stored once. The new key
    /// also serves (cluster, time) queries, so that index goes.
    ///
    /// SQLite cannot drop a table's UNIQUE constraint: the table is rebuilt, row ids
    /// kept (the batches' hashes and event ranges refer to them). On a large log this
    /// first start after the upgrade takes a while (about 30 s per million events on a
    /// 2-core VM) and needs free disk about the size of the log; it says so first.
    static func registerAuditTimeKeyMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("v8-audit-time-key") { db in
            let events = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM auditEvents") ?? 0
            if events > 0 {
                Logger(label: "tether.hub.store").notice(
                    "upgrading the audit log's key (v8): rewriting \(events) events once; about 30 s per million, and free disk about the size of the log",
                    metadata: ["events": "\(events)"])
            }
            try db.execute(sql: """
                CREATE TABLE auditEventsNew (
                    id INTEGER PRIMARY KEY,
                    cluster TEXT NOT NULL,
                    sequence INTEGER NOT NULL,
                    batch INTEGER NOT NULL,
                    auditID TEXT NOT NULL,
                    stage TEXT NOT NULL,
                    time TEXT NOT NULL,
                    user TEXT,
                    impersonatedUser TEXT,
                    verb TEXT,
                    resource TEXT,
                    namespace TEXT,
                    name TEXT,
                    code INTEGER,
                    event BLOB NOT NULL,
                    UNIQUE (cluster, time, auditID, stage)
                );
                INSERT INTO auditEventsNew
                    (id, cluster, sequence, batch, auditID, stage, time, user, impersonatedUser, verb, resource, namespace, name, code, event)
                    SELECT id, cluster, sequence, batch, auditID, stage, time, user, impersonatedUser, verb, resource, namespace, name, code, event
                    FROM auditEvents ORDER BY id;
                DROP TABLE auditEvents;
                ALTER TABLE auditEventsNew RENAME TO auditEvents;
                CREATE INDEX index_auditEvents_on_time ON auditEvents(time);
                CREATE INDEX auditEventsUserTime ON auditEvents(user, time);
                CREATE INDEX auditEventsResourceTime ON auditEvents(resource, time);
                CREATE INDEX auditEventsNamespaceName ON auditEvents(namespace, name);
                CREATE INDEX auditEventsImpersonated ON auditEvents(impersonatedUser, time) WHERE impersonatedUser IS NOT NULL;
                """)
        }
    }

    /// The highest sequence stored for `cluster` without a gap.
    package func auditAcknowledged(_ cluster: String) async throws -> UInt64 {
        try await writer.read { db in
            UInt64(try Int64.fetchOne(db, sql: "SELECT acknowledged FROM auditCursors WHERE cluster = ?", arguments: [cluster]) ?? 0)
        }
    }

    /// Stores events `firstSequence...` for a cluster in one transaction and returns
    /// the new acknowledged sequence. Events at or below it were stored before and
    /// are skipped; an event seen before under another sequence (same auditID and
    /// stage) is not stored again. A batch that would leave a gap is refused.
    package func ingestAudit(cluster: String, firstSequence: UInt64, events: [IndexedAuditEvent], now: Date) async throws -> UInt64 {
        try await writer.write { db in try Self.ingest(db, cluster: cluster, firstSequence: firstSequence, events: events, now: now) }
    }

    /// Appends one of the hub's own events to its log (cluster `hub`) at the next
    /// sequence; returns once it is stored. Events that arrive together are one
    /// batch of the chain, in one transaction.
    package func appendHubAudit(_ event: IndexedAuditEvent, now: Date) async throws {
        try await hubEvents.submit(HubEvent(event: event, at: now))
    }

    static func appendHub(_ events: [HubEvent], _ db: Database) throws {
        guard let last = events.map(\.at).max() else { return }
        let acked = UInt64(try Int64.fetchOne(db, sql: "SELECT acknowledged FROM auditCursors WHERE cluster = 'hub'") ?? 0)
        _ = try ingest(db, cluster: "hub", firstSequence: acked + 1, events: events.map(\.event), now: last)
    }

    static func ingest(_ db: Database, cluster: String, firstSequence: UInt64, events: [IndexedAuditEvent], now: Date) throws -> UInt64 {
        do {
            let acked = UInt64(try Int64.fetchOne(db, sql: "SELECT acknowledged FROM auditCursors WHERE cluster = ?", arguments: [cluster]) ?? 0)
            guard firstSequence <= acked + 1 else {
                throw TetherError(.invalidArgument, "audit batch starts at \(firstSequence) but the hub has stored up to \(acked); resend from \(acked + 1)")
            }
            guard !events.isEmpty else { return acked }
            let lastSequence = firstSequence + UInt64(events.count) - 1
            guard lastSequence > acked else { return acked }

            let previous = try Data.fetchOne(db, sql: "SELECT hash FROM auditBatches ORDER BY id DESC LIMIT 1")
                ?? (try Data.fetchOne(db, sql: "SELECT hash FROM auditChainAnchor WHERE id = 1"))
                ?? Data(count: 32)
            try db.execute(sql: """
                INSERT INTO auditBatches (cluster, firstSequence, lastSequence, eventCount, receivedAt, previousHash, hash)
                VALUES (?, ?, ?, 0, ?, ?, ?)
                """, arguments: [cluster, Int64(firstSequence), Int64(lastSequence), now, previous, Data()])
            let batch = db.lastInsertedRowID
            let insert = try db.cachedStatement(sql: """
                INSERT OR IGNORE INTO auditEvents
                (cluster, sequence, batch, auditID, stage, time, user, impersonatedUser, verb, resource, namespace, name, code, event)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
            var hasher = AuditChain.start(previous: previous, batch: batch, cluster: cluster)
            var stored = 0
            var firstID: Int64?
            for (i, event) in events.enumerated() {
                let sequence = firstSequence + UInt64(i)
                guard sequence > acked else { continue }
                try EventInsert.run(insert, db, cluster: cluster, sequence: Int64(sequence), batch: batch, event: event)
                if db.changesCount > 0 {
                    if firstID == nil { firstID = db.lastInsertedRowID }
                    AuditChain.add(sequence: sequence, event: event.raw, to: &hasher)
                    stored += 1
                }
            }
            if stored == 0 {
                try db.execute(sql: "DELETE FROM auditBatches WHERE id = ?", arguments: [batch])
            } else {
                try db.execute(sql: "UPDATE auditBatches SET eventCount = ?, hash = ?, firstEventID = ?, lastEventID = ? WHERE id = ?",
                               arguments: [stored, Data(hasher.finalize()), firstID!, db.lastInsertedRowID, batch])
            }
            try db.execute(sql: """
                INSERT INTO auditCursors (cluster, acknowledged) VALUES (?, ?)
                ON CONFLICT(cluster) DO UPDATE SET acknowledged = excluded.acknowledged
                """, arguments: [cluster, Int64(lastSequence)])
            return lastSequence
        }
    }

    /// Events matching `query`, newest last.
    package func auditEvents(_ query: AuditQuery) async throws -> [StoredAuditEvent] {
        try await writer.read { db in
            var clauses: [String] = []
            var arguments: [any DatabaseValueConvertible] = []
            func add(_ column: String, _ value: String?) {
                guard let value else { return }
                clauses.append("\(column) = ?")
                arguments.append(value)
            }
            add("cluster", query.cluster)
            if let user = query.user {
                clauses.append("(user = ? OR impersonatedUser = ?)")
                arguments.append(user)
                arguments.append(user)
            }
            add("verb", query.verb)
            add("resource", query.resource)
            add("namespace", query.namespace)
            add("name", query.name)
            if let since = query.since {
                clauses.append("time >= ?")
                arguments.append(AuditTime.format(since))
            }
            if let until = query.until {
                clauses.append("time < ?")
                arguments.append(AuditTime.format(until))
            }
            if let after = query.afterID {
                clauses.append("id > ?")
                arguments.append(after)
            }
            if let before = query.beforeID {
                clauses.append("id < ?")
                arguments.append(before)
            }
            let filter = clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND ")
            let order = query.newestFirst ? "id DESC" : query.afterID == nil ? "time, id" : "id"
            let sql = "SELECT id, cluster, sequence, event FROM auditEvents \(filter) ORDER BY \(order) LIMIT ?"
            arguments.append(query.limit)
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(arguments)).map {
                StoredAuditEvent(id: $0["id"], cluster: $0["cluster"], sequence: UInt64($0["sequence"] as Int64), event: $0["event"])
            }
        }
    }

    /// A stored batch as the chain check reads it.
    private struct ChainBatch: Sendable {
        var id: Int64
        var cluster: String
        var firstSequence: Int64
        var lastSequence: Int64
        var eventCount: Int
        var firstEventID: Int64
        var lastEventID: Int64
        var previousHash: Data
        var hash: Data

        init(_ row: Row) {
            id = row["id"]; cluster = row["cluster"]; firstSequence = row["firstSequence"]; lastSequence = row["lastSequence"]
            eventCount = row["eventCount"]; firstEventID = row["firstEventID"]; lastEventID = row["lastEventID"]
            previousHash = row["previousHash"]; hash = row["hash"]
        }

        var range: String { "\(cluster) sequences \(firstSequence)-\(lastSequence)" }

        static func all(_ db: Database) throws -> (anchor: Data, batches: [ChainBatch]) {
            ((try Data.fetchOne(db, sql: "SELECT hash FROM auditChainAnchor WHERE id = 1")) ?? Data(count: 32),
             try Row.fetchAll(db, sql: """
                SELECT id, cluster, firstSequence, lastSequence, eventCount, firstEventID, lastEventID, previousHash, hash FROM auditBatches ORDER BY id
                """).map(ChainBatch.init))
        }

        /// Hashes the batch's stored events (chained to its stored previous hash):
        /// how many there are, and whether they match its hash.
        func check(_ db: Database) throws -> (events: Int, matches: Bool) {
            let statement = try db.cachedStatement(sql: "SELECT sequence, event FROM auditEvents WHERE id BETWEEN ? AND ? ORDER BY id")
            var hasher = AuditChain.start(previous: previousHash, batch: id, cluster: cluster)
            var count = 0
            let rows = try Row.fetchCursor(statement, arguments: [firstEventID, lastEventID])
            while let row = try rows.next() {
                AuditChain.add(sequence: UInt64(row[0] as Int64), event: row.dataNoCopy(atIndex: 1) ?? Data(), to: &hasher)
                count += 1
            }
            return (count, count == eventCount && Data(hasher.finalize()) == hash)
        }
    }

    /// Recomputes the hash chain; returns the first problem found, or nil.
    ///
    /// Every event is read and hashed, so the work is split: the batches' links are
    /// checked in order (each batch names the hash of the one before it), and the
    /// batches' contents are hashed in `parallelism` contiguous slices, each on its
    /// own reader. Slices read separate snapshots, so a problem they find (which a
    /// prune running at the same moment could fake) is confirmed by the one-snapshot
    /// check before it is reported.
    package func verifyAuditChain(parallelism: Int = 2) async throws -> AuditChainReport {
        let (anchor, batches) = try await writer.read { db in try ChainBatch.all(db) }
        let total = batches.reduce(0) { $0 + $1.eventCount }
        guard parallelism > 1, batches.count > 1, total > 0 else { return try await verifyAuditChainInOneSnapshot() }
        // Contiguous slices of about equal event counts.
        var slices: [Range<Int>] = []
        var start = 0, sum = 0
        for (index, batch) in batches.enumerated() {
            sum += batch.eventCount
            if sum >= total * (slices.count + 1) / parallelism || index == batches.count - 1 {
                slices.append(start..<(index + 1))
                start = index + 1
            }
        }
        // The first batch (by index) whose events do not match its hash, in any slice.
        let firstMismatch = try await withThrowingTaskGroup(of: Int?.self) { group in
            for slice in slices {
                group.addTask { [writer] in
                    try await writer.read { db in try slice.first { try !batches[$0].check(db).matches } }
                }
            }
            var first: Int?
            for try await mismatch in group { if let mismatch { first = min(first ?? mismatch, mismatch) } }
            return first
        }
        var previous = anchor
        for (index, batch) in batches.enumerated() {
            if batch.previousHash != previous || index == firstMismatch { return try await verifyAuditChainInOneSnapshot() }
            previous = batch.hash
        }
        return AuditChainReport(batchesChecked: batches.count, eventsChecked: total, problem: nil)
    }

    /// The chain check in one read (one snapshot), batch after batch.
    package func verifyAuditChainInOneSnapshot() async throws -> AuditChainReport {
        try await writer.read { db in
            let (anchor, batches) = try ChainBatch.all(db)
            var previous = anchor
            var checked = 0
            var events = 0
            for batch in batches {
                guard batch.previousHash == previous else {
                    return AuditChainReport(batchesChecked: checked, eventsChecked: events,
                        problem: "batch \(batch.id) (\(batch.range)) does not follow the batch before it: a batch was deleted, inserted or reordered before it")
                }
                let (count, matches) = try batch.check(db)
                guard matches else {
                    return AuditChainReport(batchesChecked: checked, eventsChecked: events,
                        problem: "batch \(batch.id) (\(batch.range)) was changed: its events do not match its hash (\(count) of \(batch.eventCount) events present)")
                }
                previous = batch.hash
                checked += 1
                events += count
            }
            return AuditChainReport(batchesChecked: checked, eventsChecked: events, problem: nil)
        }
    }

    /// Deletes whole batches received before `cutoff`, oldest first, and moves the
    /// chain's anchor to the last one deleted so verification still holds.
    package func pruneAudit(before cutoff: Date) async throws -> Int {
        try await writer.write { db in
            guard let last = try Row.fetchOne(db, sql: """
                SELECT id, hash, lastEventID FROM auditBatches WHERE id < COALESCE((SELECT MIN(id) FROM auditBatches WHERE receivedAt >= ?), 1 << 62)
                ORDER BY id DESC LIMIT 1
                """, arguments: [cutoff]) else { return 0 }
            let id: Int64 = last["id"]
            let lastEvent: Int64 = last["lastEventID"]
            let deleted = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM auditEvents WHERE id <= ?", arguments: [lastEvent]) ?? 0
            try db.execute(sql: "DELETE FROM auditEvents WHERE id <= ?", arguments: [lastEvent])
            try db.execute(sql: "DELETE FROM auditBatches WHERE id <= ?", arguments: [id])
            try db.execute(sql: """
                INSERT INTO auditChainAnchor (id, batch, hash) VALUES (1, ?, ?)
                ON CONFLICT(id) DO UPDATE SET batch = excluded.batch, hash = excluded.hash
                """, arguments: [id, last["hash"] as Data])
            return deleted
        }
    }
}

/// One of the hub's own events, queued for a group commit.
struct HubEvent: Sendable {
    var event: IndexedAuditEvent
    var at: Date
}

/// What `audit verify` found.
package struct AuditChainReport: Codable, Sendable {
    package var batchesChecked: Int
    package var eventsChecked: Int
    package var problem: String?

    package init(batchesChecked: Int, eventsChecked: Int, problem: String? = nil) {
        self.batchesChecked = batchesChecked
        self.eventsChecked = eventsChecked
        self.problem = problem
    }
}

/// The hash of one batch: SHA-256 over the previous batch's hash, the batch id, the
/// cluster, and each stored event's sequence and bytes, in order.
package enum AuditChain {
    package static func start(previous: Data, batch: Int64, cluster: String) -> SHA256 {
        var h = SHA256()
        h.update(data: previous)
        withUnsafeBytes(of: batch.bigEndian) { h.update(bufferPointer: $0) }
        h.update(data: Data(cluster.utf8))
        h.update(data: Data([0]))
        return h
    }

    package static func add(sequence: UInt64, event: Data, to h: inout SHA256) {
        withUnsafeBytes(of: sequence.bigEndian) { h.update(bufferPointer: $0) }
        withUnsafeBytes(of: UInt32(event.count).bigEndian) { h.update(bufferPointer: $0) }
        h.update(data: event)
    }
}

/// One audit event's row, bound to the insert through SQLite's C API. GRDB's
/// `StatementArguments` box each of the 14 values as an existential per row, which was
/// most of the audit writer's own CPU; the statement is still GRDB's (cached, in GRDB's
/// transaction), and no transaction observer watches this table.
private enum EventInsert {
    static let transient = unsafeBitCast(OpaquePointer(bitPattern: -1), to: sqlite3_destructor_type.self)

    static func run(_ statement: Statement, _ db: Database, cluster: String, sequence: Int64, batch: Int64, event: IndexedAuditEvent) throws {
        let handle = statement.sqliteStatement
        sqlite3_reset(handle)
        func text(_ index: Int32, _ value: String?) {
            guard var value else { sqlite3_bind_null(handle, index); return }
            value.withUTF8 { utf8 in
                if let base = utf8.baseAddress {
                    base.withMemoryRebound(to: CChar.self, capacity: utf8.count) { sqlite3_bind_text(handle, index, $0, Int32(utf8.count), transient) }
                } else {
                    sqlite3_bind_text(handle, index, "", 0, transient)
                }
            }
        }
        text(1, cluster)
        sqlite3_bind_int64(handle, 2, sequence)
        sqlite3_bind_int64(handle, 3, batch)
        text(4, event.auditID)
        text(5, event.stage)
        text(6, event.time)
        text(7, event.user)
        text(8, event.impersonatedUser)
        text(9, event.verb)
        text(10, event.resource)
        text(11, event.namespace)
        text(12, event.name)
        if let code = event.code { sqlite3_bind_int64(handle, 13, Int64(code)) } else { sqlite3_bind_null(handle, 13) }
        event.raw.withUnsafeBytes { raw in
            if let base = raw.baseAddress, raw.count > 0 {
                sqlite3_bind_blob(handle, 14, base, Int32(raw.count), transient)
            } else {
                sqlite3_bind_zeroblob(handle, 14, 0)
            }
        }
        let code = sqlite3_step(handle)
        sqlite3_reset(handle)
        guard code == SQLITE_DONE else {
            throw DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(db.sqliteConnection)), sql: statement.sql)
        }
    }
}
