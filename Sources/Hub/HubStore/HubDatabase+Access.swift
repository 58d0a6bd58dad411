import Foundation
import GRDB
import Shared

/// AccessRoles (who may reach which clusters with which roles) and people's sessions.
extension HubDatabase {
    package static func registerAccessMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v6-access") { db in
            try db.create(table: "accessRoles") { t in
                t.primaryKey("name", .text)
                // The AccessRole as JSON (AccessRole's Codable form).
                t.column("role", .blob).notNull()
                t.column("updatedAt", .datetime).notNull()
            }
            try db.create(table: "sessions") { t in
                t.primaryKey("id", .text)
                t.column("user", .text).notNull().indexed()
                t.column("groups", .text).notNull()
                t.column("method", .text).notNull()
                t.column("issuedBy", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("expiresAt", .datetime).notNull().indexed()
                t.column("revokedAt", .datetime)
                t.column("lastUsedAt", .datetime)
            }
        }
    }

    // MARK: AccessRoles

    /// Stores roles (replacing same-named ones) and the hub's audit events for the
    /// change, in one transaction.
    package func applyAccessRoles(_ roles: [AccessRole], now: Date, audit: [IndexedAuditEvent] = []) async throws {
        try await writer.write { db in
            for role in roles {
                try db.execute(sql: """
                    INSERT INTO accessRoles (name, role, updatedAt) VALUES (?, ?, ?)
                    ON CONFLICT(name) DO UPDATE SET role = excluded.role, updatedAt = excluded.updatedAt
                    """, arguments: [role.name, try JSONEncoder.sorted.encode(role), now])
            }
            try Self.appendHub(audit.map { HubEvent(event: $0, at: now) }, db)
        }
    }

    package func deleteAccessRole(_ name: String, now: Date, audit: [IndexedAuditEvent] = []) async throws {
        try await writer.write { db in
            try db.execute(sql: "DELETE FROM accessRoles WHERE name = ?", arguments: [name])
            guard db.changesCount > 0 else { throw TetherError(.notFound, "access role '\(name)' not found") }
            try Self.appendHub(audit.map { HubEvent(event: $0, at: now) }, db)
        }
    }

    package func accessRoles() async throws -> [(role: AccessRole, updatedAt: Date)] {
        try await writer.read { db in
            try Row.fetchAll(db, sql: "SELECT role, updatedAt FROM accessRoles ORDER BY name").map {
                (try JSONDecoder().decode(AccessRole.self, from: $0["role"] as Data), $0["updatedAt"])
            }
        }
    }

    // MARK: Sessions

    package func createSession(_ session: SessionRecord, audit: [IndexedAuditEvent] = []) async throws {
        try await writer.write { db in
            try db.execute(sql: """
                INSERT INTO sessions (id, user, groups, method, issuedBy, createdAt, expiresAt) VALUES (?, ?, ?, ?, ?, ?, ?)
                """, arguments: [session.id, session.user, String(decoding: try JSONEncoder.sorted.encode(session.groups), as: UTF8.self),
                                 session.method, session.issuedBy, session.createdAt, session.expiresAt])
            try Self.appendHub(audit.map { HubEvent(event: $0, at: session.createdAt) }, db)
        }
    }

    package func session(_ id: String) async throws -> SessionRecord? {
        try await sessionCache.value(id) {
            try await writer.read { db in try Row.fetchOne(db, sql: "SELECT * FROM sessions WHERE id = ?", arguments: [id]).map(Self.session) }
        }
    }

    /// Sessions newest first; ended ones (revoked or expired before `now`) only with `includeEnded`.
    package func sessions(now: Date, includeEnded: Bool = false) async throws -> [SessionRecord] {
        try await writer.read { db in
            let filter = includeEnded ? "" : "WHERE revokedAt IS NULL AND expiresAt > ?"
            return try Row.fetchAll(db, sql: "SELECT * FROM sessions \(filter) ORDER BY createdAt DESC, id",
                                    arguments: includeEnded ? [] : [now]).map(Self.session)
        }
    }

    /// Revokes the session `id`, or every live session of `user`; returns what was
    /// revoked (empty when nothing was live). The audit events are written with it.
    package func revokeSessions(id: String? = nil, user: String? = nil, now: Date,
                                audit: @Sendable ([SessionRecord]) throws -> [IndexedAuditEvent] = { _ in [] }) async throws -> [SessionRecord] {
        try await writer.write { db in
            let (column, value) = id.map { ("id", $0) } ?? ("user", user ?? "")
            let live = try Row.fetchAll(db, sql: "SELECT * FROM sessions WHERE \(column) = ? AND revokedAt IS NULL AND expiresAt > ?",
                                        arguments: [value, now]).map(Self.session)
            if let id, live.isEmpty {
                guard let existing = try Row.fetchOne(db, sql: "SELECT * FROM sessions WHERE id = ?", arguments: [id]).map(Self.session) else {
                    throw TetherError(.notFound, "session '\(id)' not found")
                }
                throw TetherError(.conflict, "session '\(id)' already ended (\(existing.revokedAt != nil ? "revoked" : "expired"))")
            }
            try db.execute(sql: "UPDATE sessions SET revokedAt = ? WHERE \(column) = ? AND revokedAt IS NULL AND expiresAt > ?", arguments: [now, value, now])
            let revoked = live.map { var s = $0; s.revokedAt = now; return s }
            try Self.appendHub(try audit(revoked).map { HubEvent(event: $0, at: now) }, db)
            return revoked
        }
    }

    /// Gives a person's live sessions made by `method…` sign-ins the groups of their
    /// latest one (the identity provider's word is the newest); returns how many changed.
    package func updateSessionGroups(user: String, groups: [String], methodPrefix: String, now: Date) async throws -> Int {
        try await writer.write { db in
            try db.execute(sql: """
                UPDATE sessions SET groups = ? WHERE user = ? AND method LIKE ? AND revokedAt IS NULL AND expiresAt > ? AND groups != ?
                """, arguments: [String(decoding: try JSONEncoder.sorted.encode(groups), as: UTF8.self), user, methodPrefix + "%", now,
                                 String(decoding: try JSONEncoder.sorted.encode(groups), as: UTF8.self)])
            return db.changesCount
        }
    }

    static func session(_ row: Row) throws -> SessionRecord {
        SessionRecord(id: row["id"], user: row["user"], groups: try JSONDecoder().decode([String].self, from: Data((row["groups"] as String).utf8)),
                      method: row["method"], issuedBy: row["issuedBy"], createdAt: row["createdAt"], expiresAt: row["expiresAt"],
                      revokedAt: row["revokedAt"], lastUsedAt: row["lastUsedAt"])
    }
}
