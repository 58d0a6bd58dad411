import Crypto
import Foundation
import GRDB
import Shared

/// Policy bundles, each cluster's compiled desired state (revision + content
/// hash), and what agents report back per object.
extension HubDatabase {
    package static func registerPolicyMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v3-policy") { db in
            try db.create(table: "policyBundles") { t in
                t.primaryKey("name", .text)
                t.column("selector", .blob).notNull()
                t.column("document", .blob).notNull()
                t.column("updatedAt", .datetime).notNull()
            }
            try db.create(table: "desiredStates") { t in
                t.primaryKey("cluster", .text).references("clusters", onDelete: .cascade)
                t.column("revision", .integer).notNull()
                t.column("hash", .text).notNull()
                t.column("objects", .blob).notNull()
                t.column("compiledAt", .datetime).notNull()
            }
            try db.create(table: "observedStates") { t in
                t.primaryKey("cluster", .text).references("clusters", onDelete: .cascade)
                t.column("revision", .integer).notNull()
                t.column("updatedAt", .datetime).notNull()
            }
            try db.create(table: "objectStatuses") { t in
                t.column("cluster", .text).notNull().references("clusters", onDelete: .cascade)
                t.column("object", .text).notNull()
                t.column("bundle", .text).notNull().indexed()
                t.column("revision", .integer).notNull()
                t.column("state", .text).notNull().check { ["applied", "failed", "drifted", "pruned"].contains($0) }
                t.column("message", .text)
                t.column("updatedAt", .datetime).notNull()
                t.primaryKey(["cluster", "object"])
            }
        }
    }

    /// A repaired drift is history, not a state: the object is in sync again, and
    /// the row remembers when and what was put back. Rows stored as `drifted`
    /// before this migration become exactly that.
    package static func registerLastDriftMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("v4-policy-last-drift") { db in
            try db.alter(table: "objectStatuses") { t in
                t.add(column: "lastDriftAt", .datetime)
                t.add(column: "lastDriftMessage", .text)
            }
            try db.execute(sql: """
                UPDATE objectStatuses SET state = 'applied', lastDriftAt = updatedAt,
                    lastDriftMessage = COALESCE(message, 'repaired in the cluster'), message = NULL
                WHERE state = 'drifted'
                """)
        }
    }

    /// Stores bundles (replacing same-named ones) and recompiles every cluster in
    /// the same transaction, after checking that no cluster would get the same
    /// object from two bundles. Returns the clusters whose desired state changed.
    /// `audit`: the hub's own audit events for the change, stored in the same
    /// transaction (the change and its record are one; the call does not queue
    /// behind other writers a second time).
    package func applyBundles(_ bundles: [PolicyBundle], now: Date, audit: [IndexedAuditEvent] = []) async throws -> [DesiredState] {
        try await writer.write { db in
            for bundle in bundles {
                try db.execute(sql: """
                    INSERT INTO policyBundles (name, selector, document, updatedAt) VALUES (?, ?, ?, ?)
                    ON CONFLICT(name) DO UPDATE SET selector = excluded.selector, document = excluded.document, updatedAt = excluded.updatedAt
                    """, arguments: [bundle.name, try JSONEncoder.sorted.encode(bundle.clusterSelector), try bundle.canonicalJSON(), now])
            }
            let changed = try recompile(db, now: now)
            try Self.appendHub(audit.map { HubEvent(event: $0, at: now) }, db)
            return changed
        }
    }

    package func deleteBundle(_ name: String, now: Date, audit: [IndexedAuditEvent] = []) async throws -> [DesiredState] {
        try await writer.write { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM policyBundles WHERE name = ?", arguments: [name]) == true else {
                throw TetherError(.notFound, "policy bundle '\(name)' not found")
            }
            try db.execute(sql: "DELETE FROM policyBundles WHERE name = ?", arguments: [name])
            let changed = try recompile(db, now: now)
            try Self.appendHub(audit.map { HubEvent(event: $0, at: now) }, db)
            return changed
        }
    }

    /// Changes a cluster's labels (nil value: remove) and recompiles.
    package func relabelCluster(
        _ name: ClusterName, changes: [String: String?], now: Date, audit: [IndexedAuditEvent] = []
    ) async throws -> (ClusterRecord, [DesiredState]) {
        try await writer.write { db in
            guard var record = try ClusterRecord.fetchOne(db, key: name.rawValue) else {
                throw TetherError(.notFound, "cluster '\(name)' not found")
            }
            for (key, value) in changes { record.labels[key] = value }
            try record.update(db)
            let changed = try recompile(db, now: now, only: name.rawValue)
            try Self.appendHub(audit.map { HubEvent(event: $0, at: now) }, db)
            return (record, changed)
        }
    }

    package func bundleDocuments() async throws -> [(name: String, document: Data, updatedAt: Date)] {
        try await writer.read { db in
            try Row.fetchAll(db, sql: "SELECT name, document, updatedAt FROM policyBundles ORDER BY name").map { ($0["name"], $0["document"], $0["updatedAt"]) }
        }
    }

    package func desiredState(_ cluster: String) async throws -> DesiredState? {
        try await writer.read { db in try Self.desired(db, cluster) }
    }

    package static func desired(_ db: Database, _ cluster: String) throws -> DesiredState? {
        guard let row = try Row.fetchOne(db, sql: "SELECT revision, hash, objects FROM desiredStates WHERE cluster = ?", arguments: [cluster]) else { return nil }
        let objects = try JSONDecoder().decode([DesiredObject].self, from: row["objects"] as Data)
        return DesiredState(cluster: cluster, revision: UInt64(row["revision"] as Int64), hash: row["hash"], objects: objects)
    }

    /// Compiles every active cluster's desired state from the stored bundles
    /// (`PolicyCompiler`) and stores what changed. Three reads and one write per
    /// changed cluster, whatever the number of clusters: no per-cluster decode.
    /// `only`: the one cluster whose labels changed or that was just added (the
    /// others' states cannot change, so they are neither read nor compiled).
    package func recompile(_ db: Database, now: Date, only cluster: String? = nil) throws -> [DesiredState] {
        let bundles = try Row.fetchAll(db, sql: "SELECT name, selector, document FROM policyBundles ORDER BY name").map { row -> PolicyCompiler.Bundle in
            let selector = try JSONDecoder().decode(LabelSelector.self, from: row["selector"] as Data)
            let document = try JSONSerialization.jsonObject(with: row["document"] as Data) as! [String: Any]
            let resources = (document["spec"] as? [String: Any])?["resources"] as? [[String: Any]] ?? []
            return PolicyCompiler.Bundle(name: row["name"], selector: selector, resources: resources)
        }
        var current: [String: (revision: UInt64, hash: String)] = [:]
        let states = cluster == nil ? try Row.fetchAll(db, sql: "SELECT cluster, revision, hash FROM desiredStates")
            : try Row.fetchAll(db, sql: "SELECT cluster, revision, hash FROM desiredStates WHERE cluster = ?", arguments: [cluster])
        for row in states {
            current[row["cluster"]] = (UInt64(row["revision"] as Int64), row["hash"])
        }
        // Raw rows, each distinct label set decoded once: a fleet has many clusters
        // and few label sets, and decoding a record per cluster was most of an apply.
        let rows = cluster == nil
            ? try Row.fetchAll(db, sql: "SELECT name, labels FROM clusters WHERE revokedAt IS NULL ORDER BY name")
            : try Row.fetchAll(db, sql: "SELECT name, labels FROM clusters WHERE revokedAt IS NULL AND name = ?", arguments: [cluster])
        var labelSets: [String: [String: String]] = [:]
        let clusters = try rows.map { row -> PolicyCompiler.Cluster in
            let name: String = row["name"]
            let text: String = row["labels"]
            let labels: [String: String]
            if let known = labelSets[text] {
                labels = known
            } else {
                labels = try JSONDecoder().decode([String: String].self, from: Data(text.utf8))
                labelSets[text] = labels
            }
            return PolicyCompiler.Cluster(name: name, labels: labels, current: current[name])
        }
        let changed = try PolicyCompiler.compile(bundles: bundles, clusters: clusters)
        let statement = try db.cachedStatement(sql: """
            INSERT INTO desiredStates (cluster, revision, hash, objects, compiledAt) VALUES (?, ?, ?, ?, ?)
            ON CONFLICT(cluster) DO UPDATE SET revision = excluded.revision, hash = excluded.hash, objects = excluded.objects, compiledAt = excluded.compiledAt
            """)
        var encoded: [String: Data] = [:]
        for state in changed {
            let objects = try encoded[state.hash] ?? JSONEncoder().encode(state.objects)
            encoded[state.hash] = objects
            try statement.execute(arguments: [state.cluster, Int64(state.revision), state.hash, objects, now])
        }
        return changed
    }

    /// What an agent reported for a revision; returns once it is stored. Reports
    /// that arrive together (a fleet answering a bundle change) share a transaction.
    package func recordPolicyReport(cluster: String, revision: UInt64, results: [ObjectResult], now: Date) async throws {
        // The revision comes from the agent; SQLite integers are signed 64-bit, and
        // Int64(_:) traps on a larger value.
        guard let storedRevision = Int64(exactly: revision) else {
            throw TetherError(.invalidArgument, "policy report for revision \(revision), which the hub never issued")
        }
        try await reports.submit(PolicyReport(cluster: cluster, revision: storedRevision, results: results, at: now))
    }

    static func write(_ report: PolicyReport, _ db: Database) throws {
        let (cluster, storedRevision, now) = (report.cluster, report.revision, report.at)
        try db.cachedStatement(sql: """
            INSERT INTO observedStates (cluster, revision, updatedAt) VALUES (?, ?, ?)
            ON CONFLICT(cluster) DO UPDATE SET revision = excluded.revision, updatedAt = excluded.updatedAt
            """).execute(arguments: [cluster, storedRevision, now])
        for result in report.results {
            if result.state == .pruned {
                try db.cachedStatement(sql: "DELETE FROM objectStatuses WHERE cluster = ? AND object = ?").execute(arguments: [cluster, result.object])
                continue
            }
            if result.state == .drifted {
                // The agent reports drift once it has put the object back: in sync
                // again, with the repair kept as the row's last drift.
                try db.cachedStatement(sql: """
                    INSERT INTO objectStatuses (cluster, object, bundle, revision, state, message, updatedAt, lastDriftAt, lastDriftMessage)
                    VALUES (?, ?, ?, ?, 'applied', NULL, ?, ?, ?)
                    ON CONFLICT(cluster, object) DO UPDATE SET bundle = excluded.bundle, revision = excluded.revision, state = 'applied',
                        message = NULL, updatedAt = excluded.updatedAt, lastDriftAt = excluded.lastDriftAt, lastDriftMessage = excluded.lastDriftMessage
                    """).execute(arguments: [cluster, result.object, result.bundle, storedRevision, now, now, result.message ?? "repaired in the cluster"])
                continue
            }
            try db.cachedStatement(sql: """
                INSERT INTO objectStatuses (cluster, object, bundle, revision, state, message, updatedAt) VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(cluster, object) DO UPDATE SET bundle = excluded.bundle, revision = excluded.revision, state = excluded.state,
                    message = excluded.message, updatedAt = excluded.updatedAt
                """).execute(arguments: [cluster, result.object, result.bundle, storedRevision, result.state.rawValue, result.message, now])
        }
    }

    package func observedRevision(_ cluster: String) async throws -> UInt64? {
        try await writer.read { db in try Int64.fetchOne(db, sql: "SELECT revision FROM observedStates WHERE cluster = ?", arguments: [cluster]).map(UInt64.init) }
    }

    package func objectStatuses(cluster: String, bundle: String) async throws -> [ObjectResult] {
        try await writer.read { db in
            try Row.fetchAll(db, sql: """
                SELECT object, bundle, revision, state, message, lastDriftAt, lastDriftMessage FROM objectStatuses
                WHERE cluster = ? AND bundle = ? ORDER BY object
                """, arguments: [cluster, bundle]).map { row in
                let object: String = row["object"]
                let driftAt: Date? = row["lastDriftAt"]
                return ObjectResult(bundle: row["bundle"], object: object, state: ObjectState(rawValue: row["state"]) ?? .failed, message: row["message"],
                                    revision: UInt64(row["revision"] as Int64),
                                    lastDrift: driftAt.map { LastDrift(object: object, at: $0, action: row["lastDriftMessage"] ?? "repaired in the cluster") })
            }
        }
    }
}

/// An agent's report, as queued for a group commit.
struct PolicyReport: Sendable {
    var cluster: String
    var revision: Int64
    var results: [ObjectResult]
    var at: Date
}

/// One object of a cluster's desired state.
package struct DesiredObject: Codable, Sendable, Equatable {
    package var bundle: String
    package var kind: String
    package var namespace: String?
    package var name: String
    package var json: Data

    package var objectKey: ObjectKey { ObjectKey(kind: kind, namespace: namespace, name: name) }
    package var key: String { objectKey.description }
    package var order: Int { ManagedKind.applyOrder(of: kind) }

    package init(bundle: String, object: [String: Any]) throws {
        self.bundle = bundle
        let key = ObjectKey(object: object)
        kind = key.kind
        namespace = key.namespace
        name = key.name
        json = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    }
}

/// A cluster's compiled desired state.
package struct DesiredState: Sendable, Equatable {
    package var cluster: String
    package var revision: UInt64
    package var hash: String
    package var objects: [DesiredObject]

    package init(cluster: String, revision: UInt64, hash: String, objects: [DesiredObject]) {
        self.cluster = cluster
        self.revision = revision
        self.hash = hash
        self.objects = objects
    }
}

/// What an agent reported for one object.
package struct ObjectResult: Codable, Sendable, Equatable {
    package var bundle: String
    package var object: String
    package var state: ObjectState
    package var message: String?
    package var revision: UInt64?
    /// The last drift the agent repaired on this object, kept across later reports.
    package var lastDrift: LastDrift? = nil

    package init(bundle: String, object: String, state: ObjectState, message: String? = nil, revision: UInt64? = nil, lastDrift: LastDrift? = nil) {
        self.bundle = bundle
        self.object = object
        self.state = state
        self.message = message
        self.revision = revision
        self.lastDrift = lastDrift
    }
}

/// A drift the agent found and repaired: which object, when the hub heard of it,
/// and what was done ("reverted a change made in the cluster").
package struct LastDrift: Codable, Sendable, Equatable {
    package var object: String
    package var at: Date
    package var action: String

    package init(object: String, at: Date, action: String) {
        self.object = object
        self.at = at
        self.action = action
    }
}
