import Foundation
import Shared
import TestSupport
import Testing
@testable import TetherAgent
@testable import HubStore
@testable import TetherHub

/// Enrollment against a real hub: one happy path, and every way a join string can
/// be refused, each with its own error and nothing recorded at the hub.
@Suite struct EnrollmentTests {
    let dir: TemporaryDirectory
    let clock = HubClock()
    let enroller = Enroller(logger: testLogger)

    init() throws { dir = try TemporaryDirectory() }

    func withHub(_ body: (TestHub) async throws -> Void) async throws {
        let hub = try await TestHub.start(dataDir: dir.sub("hub"), clock: clock)
        do {
            try await body(hub)
        } catch {
            try? await hub.stop()
            dir.remove()
            throw error
        }
        try await hub.stop()
        dir.remove()
    }

    /// Asserts the cluster has no agent: still pending, no certificate issued.
    func expectNoAgent(_ hub: TestHub, _ cluster: String) async throws {
        #expect(try await hub.status(cluster) == .pending)
        #expect(try await hub.core.database.certificates(of: ClusterName(cluster)).isEmpty)
    }

    @Test func happyPathIssuesACertificateNamingTheCluster() async throws {
        try await withHub { hub in
            let join = try await hub.join("prod-eu")
            #expect(join.hub == HostPort(host: "127.0.0.1", port: hub.agentPort))
            let identity = try await enroller.enroll(with: join)
            #expect(identity.cluster.rawValue == "prod-eu")
            let cert = try identity.certificate()
            #expect(PKI.clusterName(in: cert)?.rawValue == "prod-eu")
            #expect(try PKI.fingerprint(identity.caCertificate()) == join.caHash)
            #expect(try await hub.core.database.certificates(of: ClusterName("prod-eu")).map(\.serial) == [PKI.serialHex(cert)])
            // Only the hash of the secret is stored.
            let token = try #require(try await hub.core.database.tokens().first)
            #expect(token.usedAt != nil)
            #expect(token.secretHash != Data(join.secret.utf8))
            let raw = try String(contentsOfFile: hub.dataDir + "/hub.db-wal", encoding: .isoLatin1)
                + (try String(contentsOfFile: hub.dataDir + "/hub.db", encoding: .isoLatin1))
            #expect(!raw.contains(join.secret))
        }
    }

    @Test func reusedTokenIsRefused() async throws {
        try await withHub { hub in
            let join = try await hub.join("prod-eu")
            _ = try await enroller.enroll(with: join)
            let before = try await hub.core.database.certificates(of: ClusterName("prod-eu"))
            let error = await #expect(throws: TetherError.self) { try await enroller.enroll(with: join) }
            #expect(error?.code == .tokenUsed)
            #expect(error?.message.contains("already used") == true)
            #expect(try await hub.core.database.certificates(of: ClusterName("prod-eu")) == before)
        }
    }

    @Test func expiredTokenIsRefused() async throws {
        try await withHub { hub in
            let join = try await hub.join("prod-eu", ttl: .seconds(3600))
            clock.advance(by: 3601)
            let error = await #expect(throws: TetherError.self) { try await enroller.enroll(with: join) }
            #expect(error?.code == .tokenExpired)
            #expect(error?.message.contains("expired") == true)
            try await expectNoAgent(hub, "prod-eu")
        }
    }

    @Test func revokedTokenIsRefused() async throws {
        try await withHub { hub in
            let join = try await hub.join("prod-eu")
            _ = try await hub.core.revokeToken(id: join.tokenID)
            let error = await #expect(throws: TetherError.self) { try await enroller.enroll(with: join) }
            #expect(error?.code == .tokenRevoked)
            try await expectNoAgent(hub, "prod-eu")
        }
    }

    @Test func unknownTokenAndWrongSecretAreRefused() async throws {
        try await withHub { hub in
            let join = try await hub.join("prod-eu")
            var unknown = join
            unknown.tokenID = "zzzzzzzz"
            var wrongSecret = join
            wrongSecret.secret = Base64URL.encode([UInt8](repeating: 9, count: 32))
            for bad in [unknown, wrongSecret] {
                let error = await #expect(throws: TetherError.self) { try await enroller.enroll(with: bad) }
                #expect(error?.code == .tokenUnknown)
            }
            try await expectNoAgent(hub, "prod-eu")
            // The real token still works afterwards: a refusal consumed nothing.
            _ = try await enroller.enroll(with: join)
        }
    }

    @Test func wrongCAPinIsRefusedBeforeTheTokenIsSent() async throws {
        try await withHub { hub in
            var join = try await hub.join("prod-eu")
            let realPin = join.caHash
            join.caHash = try PKI.fingerprint(TestPKI().caCertificate)
            let error = await #expect(throws: TetherError.self) { try await enroller.enroll(with: join) }
            #expect(error?.code == .caPinMismatch)
            #expect(error?.message.contains(realPin) == true, "names what the hub presented")
            try await expectNoAgent(hub, "prod-eu")
            // The token was never presented, so it is still usable.
            #expect(try await hub.core.tokenViews().first?.status == .active)
        }
    }

    @Test func malformedJoinStringIsRefusedByTheAgentCommand() throws {
        let error = #expect(throws: (any Error).self) {
            try RunCommand.parse(["--state-dir", dir.sub("agent"), "--join-token", "tether1.not-a-join-string"]).validate()
        }
        #expect("\(error!)".contains("malformed join string"))
    }

    @Test func tokensForUnknownOrRemovedClustersAndOverlongTTLsAreRefused() async throws {
        try await withHub { hub in
            await #expect(throws: TetherError.self) { try await hub.core.createToken(cluster: ClusterName("nope"), ttl: nil) }
            _ = try await hub.join("gone")
            _ = try await hub.core.removeCluster(ClusterName("gone"))
            let removed = await #expect(throws: TetherError.self) { try await hub.core.createToken(cluster: ClusterName("gone"), ttl: nil) }
            #expect(removed?.code == .clusterRevoked)
            _ = try await hub.join("prod")
            let long = await #expect(throws: TetherError.self) { try await hub.core.createToken(cluster: ClusterName("prod"), ttl: .seconds(8 * 86_400)) }
            #expect(long?.code == .invalidArgument)
        }
    }

    @Test func csrForAnotherKeyThanTheConnectionsIsRefused() async throws {
        try await withHub { hub in
            let join = try await hub.join("prod-eu")
            let other = P256Key()
            let csr = try PKI.makeCSR(key: other, commonName: "x")
            let connectionKey = P256Key()
            let error = await #expect(throws: TetherError.self) {
                try await hub.core.enroll(tokenID: join.tokenID, secret: join.secret, csrPEM: csr,
                                    bootstrapKey: .init(connectionKey.publicKey))
            }
            #expect(error?.code == .badCSR)
            let garbage = await #expect(throws: TetherError.self) {
                try await hub.core.enroll(tokenID: join.tokenID, secret: join.secret, csrPEM: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----",
                                    bootstrapKey: .init(connectionKey.publicKey))
            }
            #expect(garbage?.code == .badCSR)
            try await expectNoAgent(hub, "prod-eu")
        }
    }

    /// The answer to an enrollment can be lost (a connection cut after the hub
    /// committed). The agent asks again with the same key: it gets the same
    /// certificate, and nothing new is minted. A different key, or the same key after
    /// the cluster was removed, is refused as before.
    @Test func anEnrollmentAskedAgainWithTheSameKeyGetsTheSameCertificate() async throws {
        try await withHub { hub in
            let join = try await hub.join("prod-eu")
            let key = P256Key()
            let first = try await enroller.enroll(with: join, key: key)
            let again = try await enroller.enroll(with: join, key: key)
            #expect(again.certificatePEM == first.certificatePEM)
            #expect(try await hub.core.database.certificates(of: ClusterName("prod-eu")).count == 1, "one certificate for one enrollment")
            #expect(hub.core.metrics.exposition().contains("tether_enrollments_total 1\n"))
            let other = await #expect(throws: TetherError.self) { try await enroller.enroll(with: join) }
            #expect(other?.code == .tokenUsed)
            _ = try await hub.core.removeCluster(ClusterName("prod-eu"))
            let removed = await #expect(throws: TetherError.self) { try await enroller.enroll(with: join, key: key) }
            #expect(removed?.code == .tokenUsed)
        }
    }
}

import Crypto
typealias P256Key = P256.Signing.PrivateKey
