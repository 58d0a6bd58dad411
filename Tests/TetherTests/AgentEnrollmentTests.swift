import Foundation
import NIOCore
import NIOPosix
import Shared
import TestSupport
import Testing
@testable import TetherAgent
@testable import HubStore
@testable import TetherHub

/// The built `tether-agent` while it enrolls: a join string for a name the hub does
/// not serve is a configuration error (exit non-zero, naming the names it does
/// serve), and SIGTERM at any moment is a clean exit.
@Suite struct AgentEnrollmentTests {
    /// A TCP listener on 127.0.0.1 that accepts connections and never sends a byte:
    /// a peer that hangs a TLS handshake for as long as the client waits.
    final class SilentListener: Sendable {
        let channel: any Channel
        let accepted = Locked(0)
        var port: Int { channel.localAddress!.port! }

        init() async throws {
            let accepted = self.accepted
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .childChannelInitializer { channel in
                    accepted.withLock { $0 += 1 }
                    return channel.eventLoop.makeSucceededVoidFuture()
                }
                .bind(host: "127.0.0.1", port: 0).get()
        }

        func close() async throws { try await channel.close() }
    }

    static func agent(_ dir: TemporaryDirectory, join: String?, _ extra: [String] = []) throws -> ChildProcess {
        try ChildProcess(try ChildProcess.binary("tether-agent"),
                         ["--state-dir", dir.sub("agent"), "--health-listen", "none", "--audit-listen", "none"] + extra,
                         environment: join.map { ["TETHER_JOIN_TOKEN": $0] } ?? [:])
    }

    /// A well-formed join string for a hub at 127.0.0.1:`port`.
    static func joinString(port: Int) -> JoinString {
        JoinString(hub: HostPort(host: "127.0.0.1", port: port), tokenID: "abcd1234",
                   secret: Base64URL.encode((0..<32).map { _ in UInt8.random(in: 0...255) }), caHash: "sha256:" + String(repeating: "a", count: 64))
    }

    static func exitStatus(_ agent: ChildProcess, within timeout: Duration = .seconds(20)) async throws -> (status: Int32, reason: Process.TerminationReason) {
        try await eventually(timeout: timeout, "agent exited; output:\n\(agent.output)") { !agent.process.isRunning }
        let status = await agent.waitForExit()
        return (status, agent.process.terminationReason)
    }

    @Test func aJoinStringForANameTheHubCertificateDoesNotCoverIsAConfigurationError() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        // The hub serves 127.0.0.1 only; `localhost` reaches it but is not in its certificate.
        let join = try await hub.join("prod-eu")
        let wrongName = JoinString(hub: HostPort(host: "localhost", port: join.hub.port), tokenID: join.tokenID, secret: join.secret, caHash: join.caHash)
        let agent = try Self.agent(dir, join: wrongName.encoded)
        let exit = try await Self.exitStatus(agent)
        #expect(exit.reason == .exit && exit.status != 0, "\(exit) \(agent.output)")
        #expect(agent.output.contains("the join string's hub address 'localhost' is not a name the hub's serving certificate covers (it covers: 127.0.0.1)"),
                "\(agent.output)")
        #expect(agent.output.components(separatedBy: "enrolling").count == 2, "tried once, not in a loop: \(agent.output)")

        // Nothing was spent: the same token with the hub's own name enrolls.
        let good = try TestAgent.start(stateDir: dir.sub("agent"), join: join)
        try await good.waitUntilConnected()
        try await good.stop()
        try await hub.stop()
    }

    @Test func sigtermWhileEnrollmentRetriesExitsZero() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // A hub address where nothing listens: the agent retries with backoff. The
        // port stays reserved (bound, never listening), so no other test's server can
        // be given it meanwhile.
        let closed = try ReservedPort()
        let join = Self.joinString(port: closed.port)
        let agent = try Self.agent(dir, join: join.encoded)
        try await agent.waitForOutput(containing: "reconnecting")
        agent.signal(SIGTERM)
        let exit = try await Self.exitStatus(agent)
        #expect(exit.reason == .exit && exit.status == 0, "\(exit) \(agent.output)")
        withExtendedLifetime(closed) {}
    }

    @Test func sigtermWhileEnrollmentHangsExitsZero() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // A hub that accepts the connection and never answers the TLS handshake.
        let silent = try await SilentListener()
        let join = Self.joinString(port: silent.port)
        let agent = try Self.agent(dir, join: join.encoded)
        try await eventually("the agent is connecting") { silent.accepted.value > 0 }
        agent.signal(SIGTERM)
        let exit = try await Self.exitStatus(agent, within: .seconds(10))
        #expect(exit.reason == .exit && exit.status == 0, "\(exit) \(agent.output)")
        try await silent.close()
    }

    @Test func sigtermWhileReadingSecretsBeforeStartingExitsZero() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // The API server hangs: the agent is still reading its audit Secret when SIGTERM comes.
        let silent = try await SilentListener()
        try """
            apiVersion: v1
            kind: Config
            clusters: [{name: c, cluster: {server: "https://127.0.0.1:\(silent.port)"}}]
            users: [{name: u, user: {token: t}}]
            contexts: [{name: x, context: {cluster: c, user: u, namespace: tether-system}}]
            current-context: x
            """.write(toFile: dir.sub("kubeconfig"), atomically: true, encoding: .utf8)
        let agent = try ChildProcess(try ChildProcess.binary("tether-agent"), [
            "--state-dir", dir.sub("agent"), "--health-listen", "none", "--audit-listen", "127.0.0.1:0",
            "--kubeconfig", dir.sub("kubeconfig"), "--audit-secret", "tether-agent-audit",
        ])
        try await eventually("the agent is reading its Secret") { silent.accepted.value > 0 }
        agent.signal(SIGTERM)
        let exit = try await Self.exitStatus(agent, within: .seconds(10))
        #expect(exit.reason == .exit && exit.status == 0, "\(exit) \(agent.output)")
        try await silent.close()
    }
}
