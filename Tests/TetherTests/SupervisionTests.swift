import Foundation
import GRPCCore
import Shared
import TestSupport
import Testing
@testable import TetherAgent
@testable import HubStore
@testable import TetherHub

/// The agent's channel keeps its parts running: a part that fails is restarted
/// alone or the channel re-dials (`ChannelSupervisor`), logged and counted,
/// never silently dropped.
@Suite struct SupervisionTests {
    /// A fixed sequence of "random" numbers: the jitter is still drawn, but the
    /// test knows the bounds it must stay in.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return state
        }
    }

    @Test func aLocalFailureWrappedByGRPCIsNotTheHubs() {
        // What grpc-swift makes of an error the audit request producer throws.
        let damaged = AuditSpool.Damaged(path: "/spool/00000001.seg", offset: 4096, sequence: 17)
        let wrapped = RPCError(code: .unknown, message: "Write failed.", cause: damaged)
        let local = HubLink.classify(wrapped)
        #expect(!local.fromHub)
        #expect(local.description.contains("damaged at byte 4096"), "\(local.description)")
        // The hub's own refusal stays the hub's.
        #expect(HubLink.classify(RPCError(code: .failedPrecondition, message: "gap")).fromHub)
    }

    @Test func anAuditFailureRestartsTheAuditPartWithCappedJitteredBackoff() {
        var supervisor = ChannelSupervisor(initialDelay: .milliseconds(500), maximumDelay: .seconds(4), healthyAfter: .seconds(60), redialAfterFailures: 100)
        var rng = SeededGenerator(state: 7)
        var delays: [Duration] = []
        for _ in 0..<8 {
            guard case .restart(.audit, let delay) = supervisor.partStopped(.audit, after: .milliseconds(10), using: &rng) else {
                Issue.record("an audit failure must restart the audit part")
                return
            }
            delays.append(delay)
        }
        let expectedCeilings: [Duration] = [.milliseconds(500), .seconds(1), .seconds(2), .seconds(4), .seconds(4), .seconds(4), .seconds(4), .seconds(4)]
        for (delay, ceiling) in zip(delays, expectedCeilings) {
            #expect(delay >= ceiling / 2 && delay <= ceiling, "\(delay) within [\(ceiling / 2), \(ceiling)]")
        }
        #expect(supervisor.stops[.audit] == 8)
    }

    @Test func aPartThatRanHealthyRestartsFromTheShortestDelayAgain() {
        var supervisor = ChannelSupervisor(initialDelay: .milliseconds(500), maximumDelay: .seconds(30), healthyAfter: .seconds(60))
        var rng = SeededGenerator(state: 1)
        for _ in 0..<4 { _ = supervisor.partStopped(.renewal, after: .seconds(1), using: &rng) }
        guard case .restart(.renewal, let delay) = supervisor.partStopped(.renewal, after: .seconds(3600), using: &rng) else {
            Issue.record("renewal restarts in place")
            return
        }
        #expect(delay <= .milliseconds(500))
    }

    @Test func policyAndHeartbeatFailuresCloseTheChannelForARedial() {
        var supervisor = ChannelSupervisor()
        #expect(supervisor.partStopped(.policy, after: .seconds(5)) == .closeChannel(.policy))
        #expect(supervisor.partStopped(.heartbeat, after: .seconds(5)) == .closeChannel(.heartbeat))
        #expect(ChannelSupervisor.remedy(for: .audit) == .restartPart)
        #expect(ChannelSupervisor.remedy(for: .renewal) == .restartPart)
    }

    @Test func aPartThatKeepsFailingInPlaceEscalatesToARedial() {
        var supervisor = ChannelSupervisor(redialAfterFailures: 3)
        var rng = SeededGenerator(state: 3)
        for _ in 0..<3 {
            guard case .restart = supervisor.partStopped(.audit, after: .milliseconds(1), using: &rng) else {
                Issue.record("restarts in place first")
                return
            }
        }
        #expect(supervisor.partStopped(.audit, after: .milliseconds(1), using: &rng) == .closeChannel(.audit))
        // The count starts again for the next run of failures.
        guard case .restart = supervisor.partStopped(.audit, after: .milliseconds(1), using: &rng) else {
            Issue.record("restarts in place again after the escalation")
            return
        }
    }

    @Test func aLocalFailureNeverRedialsHoweverOftenItRepeats() {
        var supervisor = ChannelSupervisor(maximumDelay: .seconds(2), redialAfterFailures: 2)
        var rng = SeededGenerator(state: 5)
        for _ in 0..<10 {
            guard case .restart(.audit, let delay) = supervisor.partStopped(.audit, after: .milliseconds(1), fromHub: false, using: &rng) else {
                Issue.record("a damaged spool is not fixed by a new connection: restart in place")
                return
            }
            #expect(delay <= .seconds(2))
        }
    }

    @Test func everyPartIsCountedFromZero() {
        let exposition = AgentMetrics().exposition()
        for part in ChannelPart.allCases {
            #expect(metric(#"tether_agent_channel_restarts_total{part="\#(part.rawValue)"}"#, in: exposition) == 0, "\(part)")
        }
    }

    /// The hub refuses one batch (as a busy database would); the same running
    /// agent, on the same channel, sends it again and keeps forwarding.
    @Test func forwardingResumesOnTheSameChannelAfterTheHubRefusesABatch() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try hub.join("prod-eu"), audit: true)
        try await agent.waitUntilConnected()
        let cluster = try ClusterName("prod-eu")
        let webhook = try await AuditTests.Webhook(agent: agent)
        do {
            let fixtures = try AuditTests.webhookFixtures()
            try #require(fixtures.count >= 3)
            var expected = 0
            func post(_ body: Data) async throws {
                let (status, text) = try await webhook.post(body)
                #expect(status == 200, "\(text)")
                expected += try AuditTests.items(body).count
            }

            try await post(fixtures[0].body)
            try await eventually("first batch stored") { try await hub.core.auditAcknowledged(cluster) == UInt64(expected) }

            hub.core.auditIngestFaults.refuseNext(1)
            try await post(fixtures[1].body)
            try await eventually("the refused batch stored after the audit part restarted") {
                try await hub.core.auditAcknowledged(cluster) == UInt64(expected)
            }
            #expect(hub.core.auditIngestFaults.refused == 1, "the hub did refuse a batch")

            // Forwarding goes on afterwards too.
            try await post(fixtures[2].body)
            try await eventually("a later batch stored") { try await hub.core.auditAcknowledged(cluster) == UInt64(expected) }

            let events = try await hub.core.database.auditEvents(AuditQuery(cluster: "prod-eu", limit: 1_000_000, afterID: 0))
            #expect(events.count == expected, "every event stored exactly once")
            #expect(Set(events.map(\.sequence)) == Set(1...UInt64(expected)))
            try await eventually("spool trimmed to the ack") { agent.runtime.spool.acknowledged == UInt64(expected) }

            // The same running agent and the same channel: only the audit part restarted.
            #expect(agent.link.status.value.channelsOpened == 1)
            #expect(hub.core.registry.sessionsOpened == 1)
            #expect(agent.isConnected)
            let exposition = agent.runtime.metrics.exposition()
            #expect(metric(#"tether_agent_channel_restarts_total{part="audit"}"#, in: exposition) == 1)
            #expect(metric(#"tether_agent_channel_restarts_total{part="policy"}"#, in: exposition) == 0)
            #expect(metric(#"tether_agent_channel_restarts_total{part="heartbeat"}"#, in: exposition) == 0)
        } catch {
            try? await webhook.shutdown()
            throw error
        }
        try await webhook.shutdown()
        try await agent.stop()
        try await hub.stop()
    }
}
