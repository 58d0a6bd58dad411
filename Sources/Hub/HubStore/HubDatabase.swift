import Crypto
import Foundation
import GRDB
import Shared

/// The hub's one database: a SQLite file in WAL mode, opened through GRDB. Every
/// write the hub makes is a method here named for its intent, and each runs in one
/// transaction, so a refused or failed operation leaves nothing half-written.
///
/// This is the narrow interface a PostgreSQL-backed store would implement for hubs
/// that run as several replicas.
package final class HubDatabase: Sendable {
    package let writer: DatabasePool
    /// Agents' policy reports, group-committed.
    let reports: GroupCommit<PolicyReport>
    /// The hub's own audit events, group-committed.
    let hubEvents: GroupCommit<HubEvent>
    /// What the access path reads on every request, until its table changes.
    let sessionCache = ReadCache<String, SessionRecord>(tables: ["sessions"])
    let clusterCache = ReadCache<String, ClusterRecord>(tables: ["clusters"])
    let standingCache = ReadCache<String, CertificateStanding>(tables: ["certificates"])

    /// Opens (creating on first use) the database at `path`. Refuses a file that is
    /// not a SQLite database, one that fails its integrity check, and one written by
    /// a newer hub, rather than recreating it and losing data.
    package init(path: String) throws {
        var config = Configuration()
        config.foreignKeysEnabled = true
        config.busyMode = .timeout(5)
        config.prepareDatabase { db in
            // The audit log's indexes outgrow SQLite's 2 MiB default page cache fast;
            // without a larger cache and memory-mapped reads every insert re-reads
            // index pages through the kernel. Durability is unchanged (WAL, fsync on commit).
            try db.execute(sql: "PRAGMA cache_size = -65536")
            try db.execute(sql: "PRAGMA mmap_size = 1073741824")
            // Checkpoint less often: index pages touched by many batches are copied once.
            try db.execute(sql: "PRAGMA wal_autocheckpoint = 16384")
        }
        let pool: DatabasePool
        do {
            pool = try DatabasePool(path: path, configuration: config)
            try pool.read { db in
                let result = try String.fetchOne(db, sql: "PRAGMA quick_check") ?? "no result"
                guard result == "ok" else {
                    throw TetherError(.storage, "integrity check failed: \(result)")
                }
            }
        } catch let error as TetherError {
            throw TetherError(.storage, "database \(path) is corrupt (\(error.message)); restore it from a backup. The hub will not recreate it.")
        } catch {
            throw TetherError(.storage, "cannot open database \(path): \(error). If the file is damaged, restore it from a backup; the hub will not recreate it.")
        }
        let migrator = Self.migrator
        try pool.read { db in
            if try migrator.hasBeenSuperseded(db) {
                let unknown = try migrator.appliedIdentifiers(db).subtracting(migrator.migrations)
                throw TetherError(.storage,
                    "database \(path) was written by a newer tether-hub (schema \(unknown.sorted().joined(separator: ", "))); run that version or restore a backup")
            }
        }
        try migrator.migrate(pool)
        self.writer = pool
        self.reports = GroupCommit(writer: pool) { db, reports in
            for report in reports { try Self.write(report, db) }
        }
        self.hubEvents = GroupCommit(writer: pool) { db, events in try Self.appendHub(events, db) }
        pool.add(transactionObserver: sessionCache, extent: .databaseLifetime)
        pool.add(transactionObserver: clusterCache, extent: .databaseLifetime)
        pool.add(transactionObserver: standingCache, extent: .databaseLifetime)
    }

    /// Append-only: never edit a migration that has shipped; add a new one.
    package static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1-clusters-tokens-certificates") { db in
            try db.create(table: "clusters") { t in
                t.primaryKey("name", .text)
                t.column("labels", .text).notNull().defaults(to: "{}")
                t.column("createdAt", .datetime).notNull()
                t.column("enrolledAt", .datetime)
                t.column("lastSeen", .datetime)
                t.column("agentVersion", .text)
                t.column("certificateSerial", .text)
                t.column("certificateExpiry", .datetime)
                t.column("revokedAt", .datetime)
            }
            try db.create(table: "joinTokens") { t in
                t.primaryKey("id", .text)
                t.column("cluster", .text).notNull().indexed().references("clusters", onDelete: .cascade)
                t.column("secretHash", .blob).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("expiresAt", .datetime).notNull()
                t.column("usedAt", .datetime)
                t.column("revokedAt", .datetime)
            }
            try db.create(table: "certificates") { t in
                t.primaryKey("serial", .text)
                t.column("cluster", .text).notNull().indexed().references("clusters", onDelete: .cascade)
                t.column("purpose", .text).notNull().check { ["enroll", "renew"].contains($0) }
                t.column("issuedAt", .datetime).notNull()
                t.column("notAfter", .datetime).notNull()
                t.column("revokedAt", .datetime)
            }
            try db.create(table: "adminTokens") { t in
                t.primaryKey("tokenHash", .blob)
                t.column("createdAt", .datetime).notNull()
            }
        }
        registerAuditMigrations(&m)
        registerPolicyMigrations(&m)
        registerLastDriftMigration(&m)
        m.registerMigration("v5-enrollment-retry") { db in
            // What an enrollment issued, so the same agent (same key) asking again
            // after a lost answer gets the same certificate instead of "already used".
            try db.alter(table: "joinTokens") { t in
                t.add(column: "enrolledKeyHash", .blob)
                t.add(column: "enrolledSerial", .text)
                t.add(column: "enrolledCertificate", .text)
            }
        }
        registerAccessMigrations(&m)
        registerPeopleMigrations(&m)
        registerAuditTimeKeyMigration(&m)
        return m
    }

    // MARK: Clusters

    package func addCluster(_ name: ClusterName, labels: [String: String], now: Date) async throws -> ClusterRecord {
        try await writer.write { db in
            if let existing = try ClusterRecord.fetchOne(db, key: name.rawValue) {
                let state = existing.revokedAt == nil ? "" : " (removed; choose another name)"
                throw TetherError(.alreadyExists, "cluster '\(name)' already exists\(state)")
            }
            let record = ClusterRecord(name: name.rawValue, labels: labels, createdAt: now)
            try record.insert(db)
            // Bundles that select the new cluster apply at once (or the add is refused
            // if two of them would put the same object on it).
            _ = try recompile(db, now: now, only: name.rawValue)
            return record
        }
    }

    package func clusters() async throws -> [ClusterRecord] {
        try await writer.read { db in try ClusterRecord.order(Column("name")).fetchAll(db) }
    }

    package func cluster(_ name: ClusterName) async throws -> ClusterRecord? {
        try await clusterCache.value(name.rawValue) { try await writer.read { db in try ClusterRecord.fetchOne(db, key: name.rawValue) } }
    }

    /// Revokes a cluster: its certificates and open tokens stop working at once.
    package func revokeCluster(_ name: ClusterName, now: Date) async throws -> ClusterRecord {
        try await writer.write { db in
            guard var record = try ClusterRecord.fetchOne(db, key: name.rawValue) else {
                throw TetherError(.notFound, "cluster '\(name)' not found")
            }
            if record.revokedAt == nil {
                record.revokedAt = now
                try record.update(db)
                try db.execute(sql: "UPDATE certificates SET revokedAt = ? WHERE cluster = ? AND revokedAt IS NULL", arguments: [now, name.rawValue])
                try db.execute(sql: "UPDATE joinTokens SET revokedAt = ? WHERE cluster = ? AND revokedAt IS NULL AND usedAt IS NULL", arguments: [now, name.rawValue])
            }
            return record
        }
    }

    /// Where each agent was last seen, for many clusters in one transaction: the
    /// hub keeps presence in memory and writes it in batches (`PresenceRecorder`),
    /// so heartbeats from thousands of agents cost about one commit a second.
    package func recordPresence(_ sightings: [Sighting]) async throws {
        guard !sightings.isEmpty else { return }
        try await writer.write { db in
            let statement = try db.cachedStatement(sql: "UPDATE clusters SET lastSeen = ?, agentVersion = ? WHERE name = ?")
            for sighting in sightings {
                try statement.execute(arguments: [sighting.at, sighting.agentVersion, sighting.cluster.rawValue])
            }
        }
    }

    // MARK: Join tokens

    package func createToken(id: String, cluster: ClusterName, secretHash: Data, expiresAt: Date, now: Date) async throws -> JoinTokenRecord {
        try await writer.write { db in
            guard let record = try ClusterRecord.fetchOne(db, key: cluster.rawValue) else {
                throw TetherError(.notFound, "cluster '\(cluster)' not found; add it first with `tether-hub cluster add \(cluster)`")
            }
            guard record.revokedAt == nil else {
                throw TetherError(.clusterRevoked, "cluster '\(cluster)' was removed; it cannot enroll again")
            }
            let token = JoinTokenRecord(id: id, cluster: cluster.rawValue, secretHash: secretHash, createdAt: now, expiresAt: expiresAt)
            try token.insert(db)
            return token
        }
    }

    package func tokens() async throws -> [JoinTokenRecord] {
        try await writer.read { db in try JoinTokenRecord.order(Column("createdAt")).fetchAll(db) }
    }

    package func revokeToken(id: String, now: Date) async throws -> JoinTokenRecord {
        try await writer.write { db in
            guard var token = try JoinTokenRecord.fetchOne(db, key: id) else {
                throw TetherError(.notFound, "token '\(id)' not found")
            }
            if token.usedAt != nil {
                throw TetherError(.tokenUsed, "token '\(id)' was already used; remove the cluster to cut off its agent")
            }
            if token.revokedAt == nil {
                token.revokedAt = now
                try token.update(db)
            }
            return token
        }
    }

    /// Enrollment in one transaction: checks the token, lets `issue` sign the
    /// certificate for the token's cluster, then consumes the token and records the
    /// certificate and the enrollment. Any refusal or failure writes nothing.
    ///
    /// `keyHash` names the agent's key (SHA-256 of its public key). An agent whose
    /// answer was lost on the way asks again with the same token and key: it gets the
    /// certificate already issued (while that is still active), not "already used",
    /// and nothing new is minted. Another key with a used token is refused.
    package func enroll(
        tokenID: String, secret: String, keyHash: Data, now: Date, issue: @escaping @Sendable (ClusterName) throws -> IssuedCertificate
    ) async throws -> (ClusterName, IssuedCertificate, retried: Bool) {
        try await writer.write { db in
            let unknown = TetherError(.tokenUnknown, "join token is unknown or its secret is wrong; create a new one with `tether-hub token create`")
            guard var token = try JoinTokenRecord.fetchOne(db, key: tokenID) else { throw unknown }
            let presented = Data(SHA256.hash(data: Data(secret.utf8)))
            guard constantTimeEqual(presented, token.secretHash) else { throw unknown }
            let name = try ClusterName(token.cluster)
            if token.usedAt != nil {
                if let enrolledKey = token.enrolledKeyHash, constantTimeEqual(enrolledKey, keyHash),
                   let serial = token.enrolledSerial, let pem = token.enrolledCertificate,
                   let certificate = try CertificateRecord.fetchOne(db, key: serial), certificate.revokedAt == nil, certificate.notAfter > now,
                   let cluster = try ClusterRecord.fetchOne(db, key: name.rawValue), cluster.revokedAt == nil {
                    return (name, IssuedCertificate(serial: serial, notAfter: certificate.notAfter, pem: pem), true)
                }
                throw TetherError(.tokenUsed, "join token \(tokenID) was already used (tokens are single use); create a new one with `tether-hub token create --cluster \(token.cluster)`")
            }
            if token.revokedAt != nil {
                throw TetherError(.tokenRevoked, "join token \(tokenID) was revoked")
            }
            if token.expiresAt <= now {
                throw TetherError(.tokenExpired, "join token \(tokenID) expired at \(iso8601(token.expiresAt)); create a new one with `tether-hub token create --cluster \(token.cluster)`")
            }
            guard var cluster = try ClusterRecord.fetchOne(db, key: name.rawValue), cluster.revokedAt == nil else {
                throw TetherError(.clusterRevoked, "cluster '\(name)' was removed; it cannot enroll")
            }
            let issued = try issue(name)
            token.usedAt = now
            token.enrolledKeyHash = keyHash
            token.enrolledSerial = issued.serial
            token.enrolledCertificate = issued.pem
            try token.update(db)
            // A new enrollment replaces the cluster's identity: older certificates stop working.
            try db.execute(sql: "UPDATE certificates SET revokedAt = ? WHERE cluster = ? AND revokedAt IS NULL", arguments: [now, name.rawValue])
            try CertificateRecord(serial: issued.serial, cluster: name.rawValue, purpose: "enroll", issuedAt: now, notAfter: issued.notAfter).insert(db)
            cluster.enrolledAt = now
            cluster.certificateSerial = issued.serial
            cluster.certificateExpiry = issued.notAfter
            try cluster.update(db)
            return (name, issued, false)
        }
    }

    package func recordRenewal(_ name: ClusterName, issued: IssuedCertificate, now: Date) async throws {
        try await writer.write { db in
            guard let cluster = try ClusterRecord.fetchOne(db, key: name.rawValue), cluster.revokedAt == nil else {
                throw TetherError(.clusterRevoked, "cluster '\(name)' was removed")
            }
            try CertificateRecord(serial: issued.serial, cluster: name.rawValue, purpose: "renew", issuedAt: now, notAfter: issued.notAfter).insert(db)
            try db.execute(sql: "UPDATE clusters SET certificateSerial = ?, certificateExpiry = ? WHERE name = ?",
                           arguments: [issued.serial, issued.notAfter, name.rawValue])
        }
    }

    /// Whether a certificate the CA issued may still be used.
    package enum CertificateStanding: Equatable, Sendable {
        case active
        case revoked
        case unknown
    }

    package func standing(ofCertificate serial: String) async throws -> CertificateStanding {
        try await standingCache.value(serial) {
            try await writer.read { db in
                guard let cert = try CertificateRecord.fetchOne(db, key: serial) else { return .unknown }
                return cert.revokedAt == nil ? .active : .revoked
            }
        } ?? .unknown
    }

    package func certificates(of name: ClusterName) async throws -> [CertificateRecord] {
        try await writer.read { db in
            try CertificateRecord.filter(Column("cluster") == name.rawValue).order(Column("issuedAt")).fetchAll(db)
        }
    }

    // MARK: Admin credentials

    package func addAdminToken(hash: Data, now: Date) async throws {
        try await writer.write { db in try AdminTokenRecord(tokenHash: hash, createdAt: now).insert(db) }
    }

    package func isAdminToken(hash: Data) async throws -> Bool {
        try await writer.read { db in try AdminTokenRecord.exists(db, key: hash) }
    }
}

/// An agent seen at `at` (a message on its channel, or its channel closing).
package struct Sighting: Sendable, Equatable {
    package var cluster: ClusterName
    package var agentVersion: String
    package var at: Date

    package init(cluster: ClusterName, agentVersion: String, at: Date) {
        self.cluster = cluster
        self.agentVersion = agentVersion
        self.at = at
    }

}

/// A certificate the CA just signed, before it is recorded.
package struct IssuedCertificate: Sendable, Equatable {
    package var serial: String
    package var notAfter: Date
    package var pem: String

    package init(serial: String, notAfter: Date, pem: String) {
        self.serial = serial
        self.notAfter = notAfter
        self.pem = pem
    }
}

package func constantTimeEqual(_ a: Data, _ b: Data) -> Bool {
    guard a.count == b.count else { return false }
    var diff: UInt8 = 0
    for (x, y) in zip(a, b) { diff |= x ^ y }
    return diff == 0
}

package func iso8601(_ date: Date) -> String {
    date.formatted(.iso8601)
}

extension HubDatabase {
    /// Writes a consistent copy of the database at `path` to `destination` with
    /// `VACUUM INTO`: one read transaction, so a running hub keeps writing meanwhile
    /// (WAL) and the copy holds every transaction committed before it began.
    package static func snapshot(databaseAt path: String, to destination: String) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            throw TetherError(.notFound, "no database at \(path): is that the hub's data dir?")
        }
        var config = Configuration()
        config.busyMode = .timeout(30)
        let queue = try DatabaseQueue(path: path, configuration: config)
        try queue.inDatabase { db in
            let result = try String.fetchOne(db, sql: "PRAGMA quick_check") ?? "no result"
            guard result == "ok" else { throw TetherError(.storage, "database \(path) fails its integrity check (\(result)); not backing it up") }
            try db.execute(sql: "VACUUM INTO ?", arguments: [destination])
        }
        try queue.close()
    }
}
