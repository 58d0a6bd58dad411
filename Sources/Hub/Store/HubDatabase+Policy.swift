import Crypto
import Foundation
import GRDB
import Shared

/// Policy bundles, each cluster's compiled desired state (revision + content
/// hash), and what agents report back per object.
extension HubDatabase {
    static func registerPolicyMigrations(_ m: inout DatabaseMigrator) {
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
    static func registerLastDriftMigration(_ m: inout DatabaseMigrator) {
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
    func applyBundles(_ bundles: [PolicyBundle], now: Date) throws -> [DesiredState] {
        try writer.write { db in
            for bundle in bundles {
                try db.execute(sql: """
                    INSERT INTO policyBundles (name, selector, document, updatedAt) VALUES (?, ?, ?, ?)
                    ON CONFLICT(name) DO UPDATE SET selector = excluded.selector, document = excluded.document, updatedAt = excluded.updatedAt
                    """, arguments: [bundle.name, try JSONEncoder.sorted.encode(bundle.clusterSelector), try bundle.canonicalJSON(), now])
            }
            return try recompile(db, now: now)
        }
    }

    func deleteBundle(_ name: String, now: Date) throws -> [DesiredState] {
        try writer.write { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM policyBundles WHERE name = ?", arguments: [name]) == true else {
                throw TetherError(.notFound, "policy bundle '\(name)' not found")
            }
            try db.execute(sql: "DELETE FROM policyBundles WHERE name = ?", arguments: [name])
            return try recompile(db, now: now)
        }
    }

    /// Changes a cluster's labels (nil value: remove) and recompiles.
    func relabelCluster(_ name: ClusterName, changes: [String: String?], now: Date) throws -> (ClusterRecord, [DesiredState]) {
        try writer.write { db in
            guard var record = try ClusterRecord.fetchOne(db, key: name.rawValue) else {
                throw TetherError(.notFound, "cluster '\(name)' not found")
            }
            for (key, value) in changes { record.labels[key] = value }
            try record.update(db)
            return (record, try recompile(db, now: now))
        }
    }

    func bundleDocuments() throws -> [(name: String, document: Data, updatedAt: Date)] {
        try writer.read { db in
            try Row.fetchAll(db, sql: "SELECT name, document, updatedAt FROM policyBundles ORDER BY name").map { ($0["name"], $0["document"], $0["updatedAt"]) }
        }
    }

    func desiredState(_ cluster: String) throws -> DesiredState? {
        try writer.read { db in try Self.desired(db, cluster) }
    }

    static func desired(_ db: Database, _ cluster: String) throws -> DesiredState? {
        guard let row = try Row.fetchOne(db, sql: "SELECT revision, hash, objects FROM desiredStates WHERE cluster = ?", arguments: [cluster]) else { return nil }
        let objects = try JSONDecoder().decode([DesiredObject].self, from: row["objects"] as Data)
        return DesiredState(cluster: cluster, revision: UInt64(row["revision"] as Int64), hash: row["hash"], objects: objects)
    }

    /// Compiles every active cluster's desired state from the stored bundles; bumps
    /// the revision only where the content hash changed. Refuses overlaps.
    func recompile(_ db: Database, now: Date) throws -> [DesiredState] {
        let bundles = try Row.fetchAll(db, sql: "SELECT name, selector, document FROM policyBundles ORDER BY name").map { row -> (String, LabelSelector, [[String: Any]]) in
            let selector = try JSONDecoder().decode(LabelSelector.self, from: row["selector"] as Data)
            let document = try JSONSerialization.jsonObject(with: row["document"] as Data) as! [String: Any]
            let resources = (document["spec"] as? [String: Any])?["resources"] as? [[String: Any]] ?? []
            return (row["name"], selector, resources)
        }
        var changed: [DesiredState] = []
        for cluster in try ClusterRecord.filter(Column("revokedAt") == nil).order(Column("name")).fetchAll(db) {
            var objects: [DesiredObject] = []
            var owner: [String: String] = [:]
            for (bundle, selector, resources) in bundles where selector.matches(cluster.labels) {
                for resource in resources {
                    let object = try DesiredObject(bundle: bundle, object: resource)
                    if let other = owner[object.key] {
                        throw TetherError(.alreadyExists,
                            "bundles \(other) and \(bundle) would both put \(object.key) on cluster \(cluster.name); an object may come from one bundle only")
                    }
                    owner[object.key] = bundle
                    objects.append(object)
                }
            }
            objects.sort { ($0.order, $0.key) < ($1.order, $1.key) }
            // One message must carry it to the agent: refuse here, inside the
            // transaction, so nothing of the change is stored.
            let size = WireLimits.desiredStateBytes(objects: objects.lazy.map { ($0.bundle, $0.json.count) })
            guard size <= WireLimits.maxDesiredStateBytes else {
                throw TetherError(.invalidArgument, """
                    cluster \(cluster.name)'s desired state would be \(ByteCount.format(size)), over the \
                    \(ByteCount.format(WireLimits.maxDesiredStateBytes)) one message to its agent can carry; \
                    split the bundles or narrow their cluster selectors
                    """)
            }
            var hasher = SHA256()
            for object in objects {
                hasher.update(data: Data(object.bundle.utf8))
                hasher.update(data: Data([0]))
                hasher.update(data: object.json)
                hasher.update(data: Data([0]))
            }
            let hash = PKI.hex(hasher.finalize())
            let current = try Self.desired(db, cluster.name)
            guard current?.hash != hash else { continue }
            // A cluster no bundle ever selected has no desired state (revision 0).
            if current == nil && objects.isEmpty { continue }
            let state = DesiredState(cluster: cluster.name, revision: (current?.revision ?? 0) + 1, hash: hash, objects: objects)
            try db.execute(sql: """
                INSERT INTO desiredStates (cluster, revision, hash, objects, compiledAt) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT(cluster) DO UPDATE SET revision = excluded.revision, hash = excluded.hash, objects = excluded.objects, compiledAt = excluded.compiledAt
                """, arguments: [cluster.name, Int64(state.revision), hash, try JSONEncoder().encode(objects), now])
            changed.append(state)
        }
        return changed
    }

    /// What an agent reported for a revision.
    func recordPolicyReport(cluster: String, revision: UInt64, results: [ObjectResult], now: Date) throws {
        // The revision comes from the agent; SQLite integers are signed 64-bit, and
        // Int64(_:) traps on a larger value.
        guard let storedRevision = Int64(exactly: revision) else {
            throw TetherError(.invalidArgument, "policy report for revision \(revision), which the hub never issued")
        }
        try writer.write { db in
            try db.execute(sql: """
                INSERT INTO observedStates (cluster, revision, updatedAt) VALUES (?, ?, ?)
                ON CONFLICT(cluster) DO UPDATE SET revision = excluded.revision, updatedAt = excluded.updatedAt
                """, arguments: [cluster, storedRevision, now])
            for result in results {
                if result.state == "pruned" {
                    try db.execute(sql: "DELETE FROM objectStatuses WHERE cluster = ? AND object = ?", arguments: [cluster, result.object])
                    continue
                }
                if result.state == "drifted" {
                    // The agent reports drift once it has put the object back: in sync
                    // again, with the repair kept as the row's last drift.
                    try db.execute(sql: """
                        INSERT INTO objectStatuses (cluster, object, bundle, revision, state, message, updatedAt, lastDriftAt, lastDriftMessage)
                        VALUES (?, ?, ?, ?, 'applied', NULL, ?, ?, ?)
                        ON CONFLICT(cluster, object) DO UPDATE SET bundle = excluded.bundle, revision = excluded.revision, state = 'applied',
                            message = NULL, updatedAt = excluded.updatedAt, lastDriftAt = excluded.lastDriftAt, lastDriftMessage = excluded.lastDriftMessage
                        """, arguments: [cluster, result.object, result.bundle, storedRevision, now, now, result.message ?? "repaired in the cluster"])
                    continue
                }
                try db.execute(sql: """
                    INSERT INTO objectStatuses (cluster, object, bundle, revision, state, message, updatedAt) VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT(cluster, object) DO UPDATE SET bundle = excluded.bundle, revision = excluded.revision, state = excluded.state,
                        message = excluded.message, updatedAt = excluded.updatedAt
                    """, arguments: [cluster, result.object, result.bundle, storedRevision, result.state, result.message, now])
            }
        }
    }

    func observedRevision(_ cluster: String) throws -> UInt64? {
        try writer.read { db in try Int64.fetchOne(db, sql: "SELECT revision FROM observedStates WHERE cluster = ?", arguments: [cluster]).map(UInt64.init) }
    }

    func objectStatuses(cluster: String, bundle: String) throws -> [ObjectResult] {
        try writer.read { db in
            try Row.fetchAll(db, sql: """
                SELECT object, bundle, revision, state, message, lastDriftAt, lastDriftMessage FROM objectStatuses
                WHERE cluster = ? AND bundle = ? ORDER BY object
                """, arguments: [cluster, bundle]).map { row in
                let object: String = row["object"]
                let driftAt: Date? = row["lastDriftAt"]
                return ObjectResult(bundle: row["bundle"], object: object, state: row["state"], message: row["message"],
                                    revision: UInt64(row["revision"] as Int64),
                                    lastDrift: driftAt.map { LastDrift(object: object, at: $0, action: row["lastDriftMessage"] ?? "repaired in the cluster") })
            }
        }
    }
}

/// One object of a cluster's desired state.
struct DesiredObject: Codable, Sendable, Equatable {
    var bundle: String
    var kind: String
    var namespace: String?
    var name: String
    var json: Data

    var key: String { [kind, namespace, name].compactMap { $0 }.joined(separator: "/") }
    var order: Int { ManagedKind(rawValue: kind)?.applyOrder ?? 9 }

    init(bundle: String, object: [String: Any]) throws {
        self.bundle = bundle
        kind = object["kind"] as? String ?? ""
        let metadata = object["metadata"] as? [String: Any] ?? [:]
        namespace = metadata["namespace"] as? String
        name = metadata["name"] as? String ?? ""
        json = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    }
}

/// A cluster's compiled desired state.
struct DesiredState: Sendable, Equatable {
    var cluster: String
    var revision: UInt64
    var hash: String
    var objects: [DesiredObject]
}

/// What an agent reported for one object.
struct ObjectResult: Codable, Sendable, Equatable {
    var bundle: String
    var object: String
    var state: String
    var message: String?
    var revision: UInt64?
    /// The last drift the agent repaired on this object, kept across later reports.
    var lastDrift: LastDrift? = nil
}

/// A drift the agent found and repaired: which object, when the hub heard of it,
/// and what was done ("reverted a change made in the cluster").
struct LastDrift: Codable, Sendable, Equatable {
    var object: String
    var at: Date
    var action: String
}
