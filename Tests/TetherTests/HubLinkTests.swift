import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Shared
import TestSupport
import Testing
@testable import TetherAgent
@testable import HubStore
@testable import TetherHub

/// The agent's channel against a real hub: presence, renewal on the channel,
/// reconnection across a hub restart, silence, removal and expiry.
@Suite struct HubLinkTests {
    @Test func agentComesOnlineAndGoesOfflineAtOnceWhenItStops() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try hub.join("prod-eu"))
        try await agent.waitUntilConnected()
        #expect(try await hub.status("prod-eu") == .online)
        #expect(metric("tether_agents_connected", in: hub.core.metrics.exposition()) == 1)
        let view = try #require(try await hub.core.clusterViews().first)
        #expect(view.agentVersion == TetherVersion.current)
        #expect(view.certificateExpiry != nil)

        // A clean stop half-closes the channel; the hub marks the cluster offline
        // as the RPC ends, not after missed heartbeats (the interval here is 10 s).
        try await agent.stop()
        try await eventually(timeout: .seconds(2), "offline") { try await hub.status("prod-eu") == .offline }
        #expect(metric("tether_agents_connected", in: hub.core.metrics.exposition()) == 0)
        try await hub.stop()
    }

    /// Renewal on virtual time: day-long certificates, and the hub's and the agent's
    /// clocks moved forward together past each renewal date. The TLS session was
    /// verified once, at connect, so only the renewal schedule and the hub's expiry
    /// watch see the moved time, which is exactly what is under test.
    @Test func agentRenewsRepeatedlyWithoutDroppingTheChannel() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hubClock = HubClock()
        let agentClock = ManualAgentClock(now: Date())
        let hub = try await TestHub.start(dataDir: dir.sub("hub"), certificateLifetime: .seconds(24 * 3600), clock: hubClock)
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try await hub.join("prod-eu"), clock: agentClock)
        try await agent.waitUntilConnected()
        let firstSerial = try PKI.serialHex(FileIdentityStore(directory: agent.stateDir).load()!.certificate())

        for round in 1...3 {
            // Until two thirds of a lifetime, nothing; then one renewal on the channel.
            let due = try FileIdentityStore(directory: agent.stateDir).load()!.renewalDate()
            let step = due.timeIntervalSince(agentClock.now()) + 60
            #expect(step > 3600, "round \(round): the next renewal is hours away on the agent's clock")
            try await eventually("round \(round): the renewal loop waits on the agent's clock") { agentClock.sleeping >= 1 }
            hubClock.advance(by: step)
            agentClock.advance(by: step)
            try await eventually("renewal \(round)") { agent.link.status.value.renewals >= round }
            #expect(agent.link.status.value.renewals == round, "one renewal per due date, not a burst")
        }

        #expect(agent.isConnected)
        #expect(agent.link.status.value.channelsOpened == 1, "the channel was never re-opened")
        #expect(hub.core.registry.sessionsOpened == 1)
        let stored = try #require(try FileIdentityStore(directory: agent.stateDir).load())
        #expect(try PKI.serialHex(stored.certificate()) != firstSerial)
        let certificates = try await hub.core.database.certificates(of: ClusterName("prod-eu"))
        #expect(certificates.filter { $0.purpose == "renew" }.count == 3, "one certificate per renewal")
        #expect(certificates.last?.serial == (try PKI.serialHex(stored.certificate())))
        try await agent.stop()
        try await hub.stop()
    }

    @Test func agentsReconnectAfterAHubRestartWithoutReEnrolling() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let first = try await TestHub.start(dataDir: dir.sub("hub"))
        let port = first.agentPort
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try first.join("prod-eu"))
        try await agent.waitUntilConnected()
        let identity = try FileIdentityStore(directory: agent.stateDir).load()
        try await first.stop()
        try await eventually("agent notices the hub is gone") { !agent.isConnected }

        let second = try await TestHub.start(dataDir: dir.sub("hub"), listenPort: port)
        try await eventually(timeout: .seconds(15), "reconnected") { try await second.status("prod-eu") == .online }
        #expect(try FileIdentityStore(directory: agent.stateDir).load() == identity, "same identity, no new enrollment")
        await #expect(try second.core.database.certificates(of: ClusterName("prod-eu")).filter { $0.purpose == "enroll" }.count == 1)
        try await eventually("agent welcomed again") { agent.link.status.value.channelsOpened == 2 }
        try await agent.stop()
        try await second.stop()
    }

    @Test func silentPeerIsMarkedOfflineAfterThreeMissedHeartbeats() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"), heartbeatInterval: .milliseconds(200))
        let identity = try await Enroller(logger: testLogger).enroll(with: try hub.join("quiet"))
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: hub.agentPort), transportSecurity: TLSProfiles.agent(identity: identity))
        let started = ContinuousClock.now
        let outcome: RPCError? = try await withGRPCClient(transport: transport) { client in
            do {
                try await Tether_V1_AgentLink.Client(wrapping: client).connect(
                    requestProducer: { writer in
                        try await writer.write(.with { $0.hello = .with { $0.protocolVersion = ProtocolVersion.current } })
                        // Then nothing: keep the request stream open and silent.
                        try await Task.sleep(for: .seconds(30))
                    },
                    onResponse: { response in
                        for try await message in response.messages where message.welcome.clusterName == "quiet" {
                            #expect(try await hub.status("quiet") == .online)
                        }
                    })
                return nil
            } catch let error as RPCError {
                return error
            }
        }
        let elapsed = ContinuousClock.now - started
        #expect(outcome?.code == .deadlineExceeded)
        #expect(elapsed >= .milliseconds(600), "not before three intervals")
        #expect(try await hub.status("quiet") == .offline)
        try await hub.stop()
    }

    @Test func removingAClusterCutsItsChannelAndTheAgentBacksOffToTheCap() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try hub.join("prod-eu"))
        try await agent.waitUntilConnected()

        _ = try await hub.core.removeCluster(ClusterName("prod-eu"))
        #expect(try !hub.core.registry.isConnected(ClusterName("prod-eu")), "closed as the removal returns")
        #expect(try await hub.status("prod-eu") == .revoked)
        // A failure bound: the agent may need one (jittered) redial to hear it.
        try await eventually(timeout: .seconds(10), "agent sees revocation") {
            agent.link.status.value.lastError?.code == .clusterRevoked
        }
        #expect(!agent.isConnected)
        try await agent.stop()
        try await hub.stop()
    }

    @Test func agentWhoseCertificateExpiredOfflineSaysSoAndDoesNotConnect() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        let enrolled = try await Enroller(logger: testLogger).enroll(with: try hub.join("prod-eu"))
        // The same identity, but with a certificate that ran out while "offline".
        let key = try P256.Signing.PrivateKey(pemRepresentation: enrolled.privateKeyPEM)
        let expired = try TestPKI(caKey: hub.core.ca.key, caCertificate: hub.core.ca.certificate)
            .agentCertificate(cluster: "prod-eu", key: key, notBefore: Date().addingTimeInterval(-7200), notAfter: Date().addingTimeInterval(-60))
        var identity = enrolled
        identity.certificatePEM = try PKI.pem(expired)
        try FileIdentityStore(directory: dir.sub("agent")).save(identity)

        let agent = try TestAgent.start(stateDir: dir.sub("agent"), join: nil)
        try await eventually("expiry reported") { agent.link.status.value.lastError?.code == .certificateExpired }
        let message = try #require(agent.link.status.value.lastError?.message)
        #expect(message.contains("expired"))
        #expect(message.contains("token create --cluster prod-eu"))
        #expect(hub.core.registry.sessionsOpened == 0)
        try await agent.stop()
        try await hub.stop()
    }

    @Test func hubRefusesAnAgentSpeakingAnotherProtocolVersion() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        let identity = try await Enroller(logger: testLogger).enroll(with: try hub.join("future"))
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: hub.agentPort), transportSecurity: TLSProfiles.agent(identity: identity))
        let error = await #expect(throws: RPCError.self) {
            try await withGRPCClient(transport: transport) { client in
                try await Tether_V1_AgentLink.Client(wrapping: client).connect(
                    requestProducer: { writer in
                        try await writer.write(.with { $0.hello = .with { $0.protocolVersion = 99 } })
                    },
                    onResponse: { response in for try await _ in response.messages {} })
            }
        }
        #expect(error?.code == .failedPrecondition)
        #expect(error?.message.contains("protocol v99") == true)
        #expect(try await hub.status("future") == .offline)
        try await hub.stop()
    }

    @Test func fiftyAgentsEnrollAndShowOnlineConcurrently() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        var joins: [JoinString] = []
        for i in 0..<50 { joins.append(try await hub.join("edge-\(i)")) }
        let agents = try joins.enumerated().map { i, join in try TestAgent.start(stateDir: dir.sub("agent-\(i)"), join: join) }
        try await eventually(timeout: .seconds(60), "50 online") {
            try await hub.core.clusterViews().filter { $0.status == .online }.count == 50
        }
        #expect(metric("tether_agents_connected", in: hub.core.metrics.exposition()) == 50)
        #expect(metric("tether_enrollments_total", in: hub.core.metrics.exposition()) == 50)
        for agent in agents { try await agent.stop() }
        try await eventually("all offline") { hub.core.registry.count == 0 }
        try await hub.stop()
    }
}
