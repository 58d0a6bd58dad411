import Foundation
import GRDB
import Shared

/// A person who signed in through the identity provider, as the hub remembers them:
/// the groups of their last login, their second factor, and whether an operator
/// disabled them.
package struct PersonRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    package static let databaseTableName = "people"
    package var name: String
    /// The groups the identity provider gave at the last login.
    package var groups: [String]
    package var firstSeenAt: Date
    package var lastLoginAt: Date?
    package var disabledAt: Date?
    /// The TOTP secret, sealed with the hub's `otp.key` (AES-GCM); nil: none enrolled.
    package var otpSecret: Data?
    /// When the person confirmed the secret with a first code; until then a login
    /// asks them to enroll again.
    package var otpConfirmedAt: Date?
    /// The last time step a code was accepted for (each code works once).
    package var otpLastStep: Int64?
    /// Wrong codes in a row; five lock the person out until `lockedUntil`.
    package var failedCodes: Int
    package var lockedUntil: Date?

    package init(name: String, groups: [String] = [], firstSeenAt: Date) {
        self.name = name
        self.groups = groups
        self.firstSeenAt = firstSeenAt
        self.failedCodes = 0
    }
}

extension HubDatabase {
    package static func registerPeopleMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v7-people") { db in
            try db.create(table: "people") { t in
                t.primaryKey("name", .text)
                t.column("groups", .text).notNull()
                t.column("firstSeenAt", .datetime).notNull()
                t.column("lastLoginAt", .datetime)
                t.column("disabledAt", .datetime)
                t.column("otpSecret", .blob)
                t.column("otpConfirmedAt", .datetime)
                t.column("otpLastStep", .integer)
                t.column("failedCodes", .integer).notNull().defaults(to: 0)
                t.column("lockedUntil", .datetime)
            }
        }
    }

    package func person(_ name: String) async throws -> PersonRecord? {
        try await writer.read { db in try PersonRecord.fetchOne(db, key: name) }
    }

    package func people() async throws -> [PersonRecord] {
        try await writer.read { db in try PersonRecord.order(Column("name")).fetchAll(db) }
    }

    /// Changes one person in a transaction with the audit events `body` returns:
    /// `body` sees the stored record (a new one when `create` and there is none) and
    /// may change it; a person who is not there and not to be created is not-found.
    package func updatePerson<T: Sendable>(_ name: String, create: Bool = false, now: Date,
                                           _ body: @Sendable @escaping (inout PersonRecord) throws -> (T, [IndexedAuditEvent])) async throws -> T {
        try await writer.write { db in
            var record: PersonRecord
            if let stored = try PersonRecord.fetchOne(db, key: name) {
                record = stored
            } else if create {
                record = PersonRecord(name: name, firstSeenAt: now)
            } else {
                throw TetherError(.notFound, "no person named '\(name)' has signed in at this hub")
            }
            let (result, audit) = try body(&record)
            try record.save(db)
            try Self.appendHub(audit.map { HubEvent(event: $0, at: now) }, db)
            return result
        }
    }
}
