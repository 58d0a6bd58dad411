import Crypto
import Foundation
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherHub

/// Sessions: signed credentials the hub checks against its store, so that a
/// revocation is immediate and a hub restart keeps them.
@Suite struct SessionTests {
    static let unauthenticated = "the session credential is not valid; create a new session (tether-hub session create, or log in)"

    @Test func aSessionAuthenticatesUntilRevokedAndTheRevocationIsImmediate() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.path)
        defer { Task { try? await hub.stop() } }
        let (session, credential, cappedBy) = try await hub.core.createSession(user: "alice@example.com", groups: ["sre", "developers", "sre"], ttl: nil)
        #expect(cappedBy == nil)
        #expect(session.groups == ["developers", "sre"])
        #expect(abs(session.expiresAt.timeIntervalSince(session.createdAt) - 8 * 3600) < 1, "default 8 h")
        #expect(credential.hasPrefix("tether-session.v1."))

        let checked = try await hub.core.authenticate(credential: credential)
        #expect(checked.id == session.id && checked.user == "alice@example.com" && checked.method == "operator")
        #expect(try await hub.core.sessionViews(includeEnded: false).map(\.id) == [session.id])

        let revoked = try await hub.core.revokeSessions(id: session.id)
        #expect(revoked.map(\.id) == [session.id])
        await #expect(throws: TetherError(.unauthenticated, "session \(session.id) was revoked; create a new session (tether-hub session create, or log in)")) {
            try await hub.core.authenticate(credential: credential)
        }
        #expect(try await hub.core.sessionViews(includeEnded: false).isEmpty)
        #expect(try await hub.core.sessionViews(includeEnded: true).first?.revokedAt != nil)
        await #expect(throws: TetherError(.conflict, "session '\(session.id)' already ended (revoked)")) { try await hub.core.revokeSessions(id: session.id) }
        await #expect(throws: TetherError(.notFound, "session 'nope' not found")) { try await hub.core.revokeSessions(id: "nope") }

        // Created and revoked are in the hub's audit log; the credential is nowhere in it.
        let events = try await hub.core.database.auditEvents(AuditQuery(cluster: "hub", resource: "sessions"))
        #expect(events.count == 2)
        #expect(!events.contains { String(decoding: $0.event, as: UTF8.self).contains(credential.split(separator: ".").last!) })
    }

    @Test func forgedTamperedAndForeignCredentialsAreRefusedAlike() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.path)
        defer { Task { try? await hub.stop() } }
        let (session, credential, _) = try await hub.core.createSession(user: "alice", groups: [], ttl: .seconds(3600))

        // The payload rewritten to another user, with the original signature.
        var claims = SessionCredential(session: session).claims
        claims.sub = "root"
        let parts = credential.split(separator: ".")
        let forgedPayload = Base64URL.encode(try JSONEncoder().encode(claims))
        let tampered = "tether-session.v1.\(forgedPayload).\(parts.last!)"
        // Signed with another hub's key.
        let foreign = try SessionCredential(session: session).encoded(key: SymmetricKey(size: .bits256))
        for bad in [tampered, foreign, "", "Bearer x", "tether-session.v1.", "tether-session.v1.a.b", credential + "x",
                    String(repeating: "a", count: 10_000)] {
            await #expect(throws: TetherError(.unauthenticated, Self.unauthenticated), "\(bad.prefix(40))") {
                try await hub.core.authenticate(credential: bad)
            }
        }
        #expect(try await hub.core.authenticate(credential: credential).user == "alice")
    }

    @Test func sessionsExpireAndAreCappedByTheRolesMaxSessionDuration() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let clock = HubClock()
        let hub = try await TestHub.start(dataDir: dir.path, clock: clock)
        defer { Task { try? await hub.stop() } }
        try await hub.core.applyAccessRoles(try AccessRoleParser.parse(yaml: AccessRoleTests.roles, file: "roles.yaml"))

        let (capped, credential, cappedBy) = try await hub.core.createSession(user: "alice@example.com", groups: [], ttl: .seconds(12 * 3600))
        #expect(cappedBy == "team-a-edit")
        #expect(abs(capped.expiresAt.timeIntervalSince(capped.createdAt) - 4 * 3600) < 1)
        let (other, _, otherCap) = try await hub.core.createSession(user: "bob", groups: ["developers"], ttl: .seconds(12 * 3600))
        #expect(otherCap == nil && abs(other.expiresAt.timeIntervalSince(other.createdAt) - 12 * 3600) < 1)

        clock.advance(by: 4 * 3600 + 1)
        await #expect(throws: TetherError.self) { try await hub.core.authenticate(credential: credential) }
        do {
            _ = try await hub.core.authenticate(credential: credential)
        } catch let error as TetherError {
            #expect(error.code == .unauthenticated && error.message.contains("expired at"))
        }
        #expect(try await hub.core.sessionViews(includeEnded: false).map(\.user) == ["bob"])

        for ttl: Duration in [.seconds(30), .seconds(25 * 3600)] {
            await #expect(throws: TetherError(.invalidArgument, "--ttl must be between 1m and 24h (sessions are short-lived; create a new one when it ends)")) {
                try await hub.core.createSession(user: "carol", groups: [], ttl: ttl)
            }
        }
        await #expect(throws: TetherError.self) { try await hub.core.createSession(user: "", groups: [], ttl: nil) }
        await #expect(throws: TetherError.self) { try await hub.core.createSession(user: "eve\nadmin", groups: [], ttl: nil) }
    }

    @Test func aHubRestartKeepsSessionsAndRevokingAPersonEndsAllOfTheirs() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let before = try await TestHub.start(dataDir: dir.path)
        let hub0 = before
        let first = try await hub0.core.createSession(user: "alice", groups: [], ttl: nil).credential
        let second = try await hub0.core.createSession(user: "alice", groups: ["sre"], ttl: nil).credential
        let bobs = try await hub0.core.createSession(user: "bob", groups: [], ttl: nil).credential
        try await hub0.stop()

        // The signing key is in the data dir, 0600, and survives the restart.
        var info = stat()
        #expect(stat(dir.sub("session.key"), &info) == 0 && info.st_mode & 0o777 == 0o600)
        let hub = try await TestHub.start(dataDir: dir.path)
        defer { Task { try? await hub.stop() } }
        #expect(try await hub.core.authenticate(credential: first).user == "alice")
        #expect(try await hub.core.authenticate(credential: second).groups == ["sre"])

        let revoked = try await hub.core.revokeSessions(user: "alice")
        #expect(revoked.count == 2)
        for credential in [first, second] {
            await #expect(throws: TetherError.self) { try await hub.core.authenticate(credential: credential) }
        }
        #expect(try await hub.core.authenticate(credential: bobs).user == "bob")
        #expect(try await hub.core.revokeSessions(user: "alice").isEmpty)
    }

    @Test func aDamagedSessionKeyIsRefusedNotReplaced() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.path)
        try await hub.stop()
        try writeSecret("not a key\n", to: dir.sub("session.key"))
        do {
            _ = try await TestHub.start(dataDir: dir.path)
            Issue.record("a hub started with a damaged session key")
        } catch let error as TetherError {
            #expect(error.message.contains("session.key is not a session signing key"))
        }
        #expect(try String(contentsOfFile: dir.sub("session.key"), encoding: .utf8) == "not a key\n")
    }
}
