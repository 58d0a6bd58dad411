import Foundation
import KubeEmulator
import Logging
import NIOCore
import Shared
import TestSupport
@testable import TetherAgent
@testable import HubStore
@testable import TetherHub

/// Tests log nothing unless TETHER_TEST_LOG is set (to a level, such as `debug`, or
/// anything else for `info`).
let testLogger: Logger = {
    if let setting = ProcessInfo.processInfo.environment["TETHER_TEST_LOG"] {
        var logger = Logger(label: "test", factory: { StreamLogHandler.standardError(label: $0) })
        logger.logLevel = Logger.Level(rawValue: setting) ?? .info
        return logger
    }
    return Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
}()

/// A real hub in this process: real TLS, real SQLite in a temp dir, real gRPC on
/// loopback ports chosen by the kernel.
final class TestHub: Sendable {
    let server: HubServer
    let task: Task<Void, any Error>
    let dataDir: String
    let agentPort: Int
    let adminPort: Int

    var core: HubCore { server.core }

    static func start(
        dataDir: String,
        listenPort: Int = 0,
        certificateLifetime: Duration = .seconds(3600),
        heartbeatInterval: Duration = .seconds(10),
        clock: HubClock = HubClock(),
        connectionLimits: ConnectionLimits = .defaults,
        oidc: OIDCSettings? = nil,
        spareTunnelIdle: Duration = .seconds(300)
    ) async throws -> TestHub {
        var config = HubConfiguration()
        config.dataDirectory = dataDir
        config.listen = HostPort(host: "127.0.0.1", port: listenPort)
        config.adminListen = HostPort(host: "127.0.0.1", port: 0)
        config.accessListen = HostPort(host: "127.0.0.1", port: 0)
        config.advertise = ["127.0.0.1"]
        config.certificateLifetime = certificateLifetime
        config.heartbeatInterval = heartbeatInterval
        config.connectionLimits = connectionLimits
        config.oidc = oidc
        config.spareTunnelIdle = spareTunnelIdle
        let server = try HubServer(configuration: config, clock: clock, logger: testLogger)
        let task = Task { try await server.run() }
        let agent = await server.agentAddress
        let admin = await server.adminAddress.value
        return TestHub(server: server, task: task, dataDir: dataDir, agentPort: agent.port!, adminPort: admin.port!)
    }

    private init(server: HubServer, task: Task<Void, any Error>, dataDir: String, agentPort: Int, adminPort: Int) {
        self.server = server
        self.task = task
        self.dataDir = dataDir
        self.agentPort = agentPort
        self.adminPort = adminPort
    }

    func stop() async throws {
        await server.shutdown()
        try await task.value
    }

    /// Registers `cluster` (if needed) and returns a fresh join string for it.
    func join(_ cluster: String, ttl: Duration? = nil) async throws -> JoinString {
        let name = try ClusterName(cluster)
        if try await core.database.cluster(name) == nil {
            _ = try await core.addCluster(name, labels: [:])
        }
        return try await core.createToken(cluster: name, ttl: ttl).1
    }

    func status(_ cluster: String) async throws -> ClusterView.Status? {
        try await core.clusterViews().first { $0.name == cluster }?.status
    }
}

/// A real agent in this process, composed exactly as `tether-agent` composes it
/// (hub link, audit forwarder, audit webhook on a kernel-chosen loopback port),
/// with its state in a temp dir.
final class TestAgent: Sendable {
    let runtime: AgentRuntime
    let task: Task<Void, any Error>
    let stateDir: String

    var link: HubLink { runtime.link }

    static func start(stateDir: String, join: JoinString?, audit: Bool = false, spoolLimit: Int64 = 1 << 30, auditLogFile: String? = nil,
                      health: Bool = false, connectionLimits: ConnectionLimits = .defaults,
                      clock: any AgentClock = SystemAgentClock()) throws -> TestAgent {
        var config = AgentConfiguration(stateDirectory: stateDir, joinString: join)
        config.healthListen = health ? HostPort(host: "127.0.0.1", port: 0) : nil
        config.connectionLimits = connectionLimits
        config.auditListen = audit ? HostPort(host: "127.0.0.1", port: 0) : nil
        config.auditSpoolMax = spoolLimit
        config.auditLogFile = auditLogFile
        let runtime = try AgentRuntime(configuration: config, logger: testLogger, clock: clock)
        let task = Task { try await runtime.run() }
        return TestAgent(runtime: runtime, task: task, stateDir: stateDir)
    }

    private init(runtime: AgentRuntime, task: Task<Void, any Error>, stateDir: String) {
        self.runtime = runtime
        self.task = task
        self.stateDir = stateDir
    }

    var isConnected: Bool { link.status.value.connected }

    func waitUntilConnected(timeout: Duration = .seconds(30)) async throws {
        try await eventually(timeout: timeout, "agent connected") { self.isConnected }
    }

    func stop() async throws {
        await runtime.shutdown()
        try await task.value
    }
}

/// An emulated cluster `prod-eu` (label `env=prod`) whose agent is connected to a
/// hub, with AccessRoles applied: what the access and sign-in tests stand on.
struct EmulatedCluster {
    /// The AccessRole most access tests start from: group `developers` gets `view`
    /// on every `env=prod` cluster.
    static let prodView = """
        apiVersion: tether.dev/v1
        kind: AccessRole
        metadata: {name: prod-view}
        spec:
          subjects: [{kind: Group, name: developers}]
          clusterSelector: {matchLabels: {env: prod}}
          clusterRoles: [view]
        """

    let emulator: KubeEmulator
    let hub: TestHub
    let agent: AgentRuntime
    let agentTask: Task<Void, any Error>
    let endpoint: AccessEndpoint

    static func start(_ dir: TemporaryDirectory, spareTunnelIdle: Duration = .seconds(300), roles: String,
                      oidc: OIDCSettings? = nil) async throws -> EmulatedCluster {
        let emulator = try await KubeEmulator.start()
        try emulator.writeKubeconfig(to: dir.sub("emulator-kubeconfig"))
        let hub = try await TestHub.start(dataDir: dir.sub("hub"), oidc: oidc, spareTunnelIdle: spareTunnelIdle)
        _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: ["env": "prod"])
        try await hub.core.applyAccessRoles(try AccessRoleParser.parse(yaml: roles, file: "roles.yaml"))
        var config = AgentConfiguration(stateDirectory: dir.sub("agent"), joinString: try await hub.join("prod-eu"))
        config.healthListen = nil
        config.auditListen = nil
        config.kubernetes = try KubeConnection.kubeconfig(path: dir.sub("emulator-kubeconfig"))
        let agent = try AgentRuntime(configuration: config, logger: testLogger)
        let agentTask = Task { try await agent.run() }
        try await eventually("agent online") { try await hub.status("prod-eu") == .online }
        guard let endpoint = await hub.core.accessEndpoint.value else { throw TetherError(.unavailable, "the test hub has no access listener") }
        return EmulatedCluster(emulator: emulator, hub: hub, agent: agent, agentTask: agentTask, endpoint: endpoint)
    }

    func stop() async throws {
        await agent.shutdown()
        try await agentTask.value
        try await hub.stop()
        await emulator.stop()
    }
}
