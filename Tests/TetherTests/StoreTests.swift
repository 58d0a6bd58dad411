import Foundation
import GRDB
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherHub

/// The data dir and database: created safely, reused, and never silently recreated.
@Suite struct StoreTests {
    @Test func firstStartCreatesAPrivateDataDirAndLaterStartsReuseIt() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.sub("data")
        let hub = try await TestHub.start(dataDir: path)
        let fm = FileManager.default
        func mode(_ file: String) throws -> Int { try (fm.attributesOfItem(atPath: file)[.posixPermissions] as! NSNumber).intValue }
        #expect(try mode(path) == 0o700)
        for secret in ["ca.key", "hub.key", "admin-credentials.json"] {
            #expect(try mode(path + "/" + secret) == 0o600, "\(secret)")
        }
        let credentials = try JSONDecoder().decode(AdminCredentials.self, from: Data(contentsOf: URL(fileURLWithPath: path + "/admin-credentials.json")))
        #expect(credentials.server == "https://127.0.0.1:\(hub.adminPort)")
        let fingerprint = try PKI.fingerprint(hub.core.ca.certificate)
        _ = try await hub.core.addCluster(ClusterName("kept"), labels: ["env": "prod"])
        try await hub.stop()

        let again = try await TestHub.start(dataDir: path)
        #expect(try PKI.fingerprint(again.core.ca.certificate) == fingerprint)
        await #expect(try again.core.database.clusters().map(\.labels) == [["env": "prod"]])
        let reread = try JSONDecoder().decode(AdminCredentials.self, from: Data(contentsOf: URL(fileURLWithPath: path + "/admin-credentials.json")))
        #expect(reread.token == credentials.token, "the operator credential survives restarts")
        try await again.stop()
    }

    @Test func corruptDatabaseIsRefusedNotRecreated() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.sub("hub.db")
        let garbage = Data((0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try garbage.write(to: URL(fileURLWithPath: path))
        let error = #expect(throws: TetherError.self) { try HubDatabase(path: path) }
        #expect(error?.code == .storage)
        #expect(error?.message.contains("restore") == true)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == garbage, "the file is left as it was")
    }

    @Test func databaseFromANewerHubIsRefused() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.sub("hub.db")
        do {
            let db = try HubDatabase(path: path)
            try db.writer.write { try $0.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v9-from-the-future')") }
        }
        let error = #expect(throws: TetherError.self) { try HubDatabase(path: path) }
        #expect(error?.code == .storage)
        #expect(error?.message.contains("newer tether-hub") == true)
        #expect(error?.message.contains("v9-from-the-future") == true)
    }

    @Test func reopeningAppliesNoMigrationTwice() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.sub("hub.db")
        _ = try await HubDatabase(path: path).addCluster(ClusterName("a"), labels: [:], now: Date())
        let reopened = try HubDatabase(path: path)
        await #expect(try reopened.clusters().map(\.name) == ["a"])
        let applied = try await reopened.writer.read { try HubDatabase.migrator.appliedIdentifiers($0) }
        #expect(applied == Set(HubDatabase.migrator.migrations))
        await #expect(try reopened.writer.read { try String.fetchOne($0, sql: "PRAGMA journal_mode") } == "wal")
    }

    @Test func aFailedEnrollmentWritesNothing() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let db = try HubDatabase(path: dir.sub("hub.db"))
        _ = try await db.addCluster(ClusterName("c"), labels: [:], now: Date())
        let secret = Base64URL.encode([UInt8](repeating: 3, count: 32))
        _ = try await db.createToken(id: "tok12345", cluster: ClusterName("c"), secretHash: AdminCredentials.hash(secret), expiresAt: Date().addingTimeInterval(60), now: Date())
        struct SigningFailed: Error {}
        await #expect(throws: SigningFailed.self) {
            try await db.enroll(tokenID: "tok12345", secret: secret, keyHash: Data(count: 32), now: Date()) { _ in throw SigningFailed() }
        }
        await #expect(try db.tokens().first?.usedAt == nil, "token not consumed")
        await #expect(try db.certificates(of: ClusterName("c")).isEmpty)
        await #expect(try db.cluster(ClusterName("c"))?.enrolledAt == nil)
    }

    @Test func mismatchedCAFilesAreRefused() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.sub("data")
        try await TestHub.start(dataDir: path).stop()
        try FileManager.default.removeItem(atPath: path + "/ca.key")
        let error = #expect(throws: TetherError.self) {
            try DataDirectory.open(path: path, advertise: ["127.0.0.1"], logger: testLogger)
        }
        #expect(error?.message.contains("only one of ca.crt and ca.key") == true)
    }
}
