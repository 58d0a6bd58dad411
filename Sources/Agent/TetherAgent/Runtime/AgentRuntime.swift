import Foundation
import Hummingbird
import HummingbirdTLS
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Shared
import UnixSignals

/// How `tether-agent run` is configured.
struct AgentConfiguration: Sendable {
    var stateDirectory: String
    var joinString: JoinString?
    /// nil: no health listener.
    var healthListen: HostPort? = HostPort(host: "0.0.0.0", port: 9090)
    /// nil: no audit webhook.
    var auditListen: HostPort? = HostPort(host: "0.0.0.0", port: 8444)
    var auditSpoolMax: Int64 = 1 << 30
    /// A just-in-time account unused this long is deleted (made again on the next request).
    var jitIdle: Duration = .seconds(1800)
    /// Most events per audit batch sent to the hub. `TETHER_AUDIT_FORWARD_BATCH`
    /// overrides it: tests make it small so that a kill lands mid-forward.
    var auditForwardBatchSize = ProcessInfo.processInfo.environment["TETHER_AUDIT_FORWARD_BATCH"].flatMap(Int.init).flatMap { $0 > 0 ? $0 : nil } ?? 10_000
    var auditTLSCertFile: String?
    var auditTLSKeyFile: String?
    /// An API server audit log to follow instead of (or besides) the webhook.
    var auditLogFile: String?
    /// The cluster's API server; nil: policy is reported as failed, not applied.
    var kubernetes: KubeConnection?
    /// Keep the identity in this Secret (in the pod's namespace) instead of the state dir.
    var identitySecret: String?
    /// Keep the audit webhook's token and CA in this Secret (in the pod's namespace) too.
    var auditSecret: String?
    var auditNames = AuditEndpoint.defaultNames(namespace: ProcessInfo.processInfo.environment["POD_NAMESPACE"])
    /// Handshake and first-bytes deadlines and the pending-connection cap on the
    /// audit webhook and health listeners.
    var connectionLimits = ConnectionLimits.defaults
}

/// The agent process: the hub link (with the audit forwarder on its channel), the
/// audit webhook and the health endpoint, as one `ServiceGroup`.
final class AgentRuntime: Sendable {
    let link: HubLink
    let spool: AuditSpool
    let metrics: AgentMetrics
    let endpoint: AuditEndpoint?
    let auditAddress = AsyncValue<SocketAddress>()
    let healthAddress = AsyncValue<SocketAddress>()
    let group: ServiceGroup
    let kubeClient: KubeClient?
    let kubeForwarder: KubeForwarder?
    let logger: Logger

    /// `clock`: what the channel schedules renewal by (tests pass a `ManualAgentClock`).
    init(configuration c: AgentConfiguration, logger: Logger, signals: [UnixSignal] = [], clock: any AgentClock = SystemAgentClock()) throws {
        self.logger = logger
        let metrics = AgentMetrics()
        let spool = try AuditSpool(directory: c.stateDirectory + "/audit-spool", limit: c.auditSpoolMax)
        let applier: any DesiredStateApplier
        let driftWatcher: DriftWatcher?
        let tunnelForwarder: any TunnelForwarder
        // The hub channel's connection and the tunnels' connections to the API
        // server share one event loop, where the tunnels' tasks run too.
        let linkLoop = MultiThreadedEventLoopGroup.singleton.next()
        if let connection = c.kubernetes {
            let client = try KubeClient(connection: connection)
            kubeClient = client
            let state = ReconcileState()
            applier = KubernetesApplier(client: client, logger: logger, state: state)
            driftWatcher = DriftWatcher(client: client, state: state, logger: logger)
            let forwarder = try KubeForwarder(
                connection: connection, accounts: JITAccounts(client: client, namespace: connection.namespace ?? "default", logger: logger, metrics: metrics,
                                                     idle: c.jitIdle),
                logger: logger, loop: linkLoop)
            tunnelForwarder = forwarder
            kubeForwarder = forwarder
            logger.notice("applying policy to the Kubernetes API", metadata: ["server": "\(connection.server)"])
        } else {
            kubeClient = nil
            kubeForwarder = nil
            tunnelForwarder = NoKubernetesForwarder()
            driftWatcher = nil
            applier = NoKubernetesApplier()
            logger.warning("no Kubernetes API configured (not in a pod, no --kubeconfig): policy bundles will be reported as failed; the hub channel and audit keep running")
        }
        let store: any IdentityStore
        if let secret = c.identitySecret {
            guard let client = kubeClient, let namespace = c.kubernetes?.namespace else {
                throw TetherError(.invalidArgument, "--identity-secret needs a Kubernetes API (in a pod, or --kubeconfig with a namespace in its context)")
            }
            store = SecretIdentityStore(client: client, namespace: namespace, name: secret)
        } else {
            store = FileIdentityStore(directory: c.stateDirectory)
        }
        var forwarder = AuditForwarder(spool: spool, metrics: metrics, logger: logger)
        forwarder.batchSize = c.auditForwardBatchSize
        let link = HubLink(
            store: store, joinString: c.joinString, logger: logger, metrics: metrics,
            participants: [forwarder], applier: applier, forwarder: tunnelForwarder, clock: clock, loop: linkLoop)
        self.metrics = metrics
        self.spool = spool
        self.link = link
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let listen = c.healthListen {
            let bound = healthAddress
            let guarded = metrics.connectionGuard(listener: "health", limits: c.connectionLimits, logger: logger)
            services.append(.init(service: HealthServer.make(listen: listen, link: link, metrics: metrics, spool: spool, guard: guarded) { address in
                bound.set(address)
                logger.notice("health endpoint listening", metadata: ["address": "\(address)"])
            }))
        }
        if let listen = c.auditListen {
            let endpoint = try AuditEndpoint.load(stateDir: c.stateDirectory, names: c.auditNames, certFile: c.auditTLSCertFile, keyFile: c.auditTLSKeyFile)
            self.endpoint = endpoint
            let bound = auditAddress
            services.append(.init(service: Application(
                router: AuditReceiver.makeRouter(spool: spool, token: endpoint.token, metrics: metrics, logger: logger),
                server: .guardedTLS(try endpoint.tlsConfiguration(),
                                    guard: metrics.connectionGuard(listener: "audit", limits: c.connectionLimits, logger: logger)),
                configuration: .init(address: .hostname(listen.host, port: listen.port), serverName: "tether-agent-audit"),
                onServerRunning: { channel in
                    guard let address = channel.localAddress else { return }
                    bound.set(address)
                    logger.notice("audit webhook listening", metadata: ["address": "\(address)", "path": "/audit"])
                },
                logger: logger)))
        } else {
            endpoint = nil
        }
        if let driftWatcher {
            services.append(.init(service: driftWatcher))
        }
        if let file = c.auditLogFile {
            services.append(.init(service: AuditLogFollower(path: file, spool: spool, stateDir: c.stateDirectory, metrics: metrics, logger: logger)))
        }
        services.append(.init(service: link, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup))
        group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: signals, cancellationSignals: [], logger: logger))
    }

    /// What must happen before the runtime is composed and that needs the network:
    /// the audit webhook's credentials from (or into) `auditSecret`.
    static func prepare(_ c: AgentConfiguration, logger: Logger) async throws {
        guard let name = c.auditSecret, c.auditListen != nil else { return }
        guard let connection = c.kubernetes, let namespace = connection.namespace else {
            throw TetherError(.invalidArgument, "--audit-secret needs a Kubernetes API (in a pod, or --kubeconfig with a namespace in its context)")
        }
        let client = try KubeClient(connection: connection)
        do {
            try await AuditCredentialSecret(client: client, namespace: namespace, name: name).sync(stateDir: c.stateDirectory, logger: logger)
        } catch {
            try? await client.shutdown()
            throw error
        }
        try await client.shutdown()
    }

    func run() async throws {
        do {
            try await group.run()
        } catch {
            try? await kubeClient?.shutdown()
            try? await kubeForwarder?.shutdown()
            throw error
        }
        logger.trace("agent services stopped; closing API clients")
        try? await kubeClient?.shutdown()
        logger.trace("kube client closed")
        try? await kubeForwarder?.shutdown()
        logger.trace("forwarder closed")
    }
    func shutdown() async { await group.triggerGracefulShutdown() }
}
