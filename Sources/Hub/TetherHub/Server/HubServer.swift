import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Hummingbird
import Logging
import NIOCore
import HubStore
import Shared
import ServiceLifecycle
import UnixSignals

/// How `tether-hub serve` is configured; every field has an embedded default.
struct HubConfiguration: Sendable {
    var dataDirectory = "./tether-data"
    var listen = HostPort(host: "0.0.0.0", port: 8443)
    var adminListen = HostPort(host: "127.0.0.1", port: 9443)
    /// The access listener (kubectl through the hub); nil: none.
    var accessListen: HostPort? = HostPort(host: "0.0.0.0", port: 7443)
    /// A certificate and key (PEM) the access listener serves instead of the hub's own.
    var accessTLSCertificate: String?
    var accessTLSKey: String?
    /// Sign-in through the company's identity provider (nil: none).
    var oidc: OIDCSettings?
    /// Members of this group see the console's admin pages and the report.
    var adminGroup = HubSettings.defaultAdminGroup
    /// How often agents are told the live sessions (they delete other sessions' accounts).
    var sessionSweepInterval: Duration = .seconds(60)
    /// How often each connected cluster's API server is probed through its agent.
    var dataPathProbeInterval: Duration = .seconds(30)
    /// Names and addresses agents dial; the serving certificate covers all of them
    /// and join strings carry the first.
    var advertise: [String] = HubConfiguration.defaultAdvertise
    var certificateLifetime: Duration = .seconds(24 * 3600)
    var heartbeatInterval: Duration = .seconds(10)
    var spareTunnels = HubSettings.defaultSpareTunnels
    var spareTunnelIdle: Duration = .seconds(300)
    var auditRetention: Duration = .seconds(90 * 86_400)
    /// Handshake and first-bytes deadlines and the cap on connections that have
    /// not yet proven themselves, on the agent and admin listeners alike.
    var connectionLimits = ConnectionLimits.defaults

    static var defaultAdvertise: [String] {
        var names: [String] = []
        let host = ProcessInfo.processInfo.hostName
        if !host.isEmpty, host != "localhost" { names.append(host) }
        names.append(contentsOf: ["localhost", "127.0.0.1"])
        return names
    }
}

/// The hub process: opens the data dir, then runs the agent gateway and the admin
/// API as services in one `ServiceGroup`, shutting down gracefully (closing agent
/// channels first) on SIGTERM or SIGINT.
final class HubServer: Sendable {
    let core: HubCore
    let directory: DataDirectory
    let readiness = Readiness()
    let adminAddress = AsyncValue<NIOCore.SocketAddress>()
    private let group: ServiceGroup
    private let gateway: AgentGatewayService

    init(configuration: HubConfiguration, clock: HubClock = HubClock(), logger: Logger, signals: [UnixSignal] = []) throws {
        guard !configuration.advertise.isEmpty else {
            throw TetherError(.invalidArgument, "--advertise needs at least one name or address")
        }
        let directory = try DataDirectory.open(path: configuration.dataDirectory, advertise: configuration.advertise, now: clock.now(), logger: logger)
        let database = try HubDatabase(path: directory.databasePath)
        let settings = HubSettings(
            certificateLifetime: configuration.certificateLifetime,
            heartbeatInterval: configuration.heartbeatInterval,
            joinHost: configuration.advertise[0],
            adminGroup: configuration.adminGroup,
            spareTunnels: configuration.spareTunnels,
            spareTunnelIdle: configuration.spareTunnelIdle)
        let core = HubCore(database: database, ca: directory.ca, settings: settings, clock: clock, metrics: HubMetrics(), logger: logger,
                           sessionKey: directory.sessionKey, otpKey: directory.otpKey,
                           oidc: try configuration.oidc.map { try OIDCProvider(settings: $0, logger: logger) })
        self.core = core
        self.directory = directory

        let gateway = try AgentGatewayService(core: core, directory: directory, listen: configuration.listen,
                                              limits: configuration.connectionLimits, logger: logger)
        self.gateway = gateway

        let readiness = self.readiness
        let adminAddress = self.adminAddress
        let adminListen = configuration.adminListen
        let admin = Application(
            router: AdminServer.makeRouter(core: core, readiness: readiness),
            server: .guardedTLS(try AdminServer.tlsConfiguration(directory: directory),
                                guard: core.metrics.connectionGuard(listener: "admin", limits: configuration.connectionLimits, logger: logger)),
            configuration: .init(address: .hostname(adminListen.host, port: adminListen.port), serverName: "tether-hub"),
            onServerRunning: { channel in
                guard let bound = channel.localAddress else { return }
                // The CLI reaches the admin API on loopback when it listens on every address.
                let host = ["0.0.0.0", "::"].contains(adminListen.host) ? "127.0.0.1" : adminListen.host
                let server = "https://\(HostPort(host: host, port: bound.port ?? adminListen.port))"
                do {
                    try await directory.writeCredentials(server: server, database: database, now: clock.now())
                    adminAddress.set(bound)
                    _ = await gateway.boundAddress.value
                    let access = await core.accessEndpoint.value?.url ?? "off"
                    readiness.set(true)
                    logger.notice("hub ready", metadata: [
                        "admin": "\(server)", "agents": "\(core.joinAddress.current.map { "\($0)" } ?? "?")",
                        "access": "\(access)",
                        "credentials": "\(directory.credentialsPath)",
                        "caFingerprint": "\((try? PKI.fingerprint(directory.ca.certificate)) ?? "?")",
                    ])
                } catch {
                    logger.error("cannot write the operator credential file", metadata: ["error": "\(error)"])
                }
            },
            logger: logger)

        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            // Presence first: it stops last, after the channels whose last sightings it writes.
            .init(service: core.presence),
            .init(service: AuditRetentionService(core: core, retention: configuration.auditRetention)),
            .init(service: SessionSweepService(core: core, interval: configuration.sessionSweepInterval)),
            .init(service: DataPathProbeService(core: core, interval: configuration.dataPathProbeInterval)),
            .init(service: admin), .init(service: gateway),
        ]
        if let accessListen = configuration.accessListen {
            let access = Application(
                router: AccessProxy.makeRouter(core: core),
                server: .guardedTLS(try AccessProxy.tlsConfiguration(directory: directory, certificate: configuration.accessTLSCertificate,
                                                                    key: configuration.accessTLSKey),
                                    guard: core.metrics.connectionGuard(listener: "access", limits: configuration.connectionLimits, logger: logger),
                                    // Watches and log follows stay open without a byte for long stretches.
                                    idleTimeout: .hours(24),
                                    upgrades: { head, exchange in await AccessProxy.upgrade(head, exchange: exchange, core: core) }),
                configuration: .init(address: .hostname(accessListen.host, port: accessListen.port), serverName: "tether-hub"),
                onServerRunning: { channel in
                    let port = channel.localAddress?.port ?? accessListen.port
                    core.accessEndpoint.set(AccessEndpoint(
                        url: "https://\(HostPort(host: configuration.advertise[0], port: port))",
                        caCertificate: configuration.accessTLSCertificate == nil ? try? PKI.pem(directory.ca.certificate) : nil))
                },
                logger: logger)
            services.append(.init(service: access))
        } else {
            core.accessEndpoint.set(nil)
        }
        group = ServiceGroup(configuration: .init(
            services: services,
            gracefulShutdownSignals: signals,
            cancellationSignals: [],
            logger: logger))
    }

    /// Runs until shutdown.
    func run() async throws {
        // Once the listeners are closed, what proxied requests still have to record
        // is written before the process goes.
        do {
            try await group.run()
        } catch {
            await core.auditBacklog.drained()
            throw error
        }
        await core.auditBacklog.drained()
    }

    /// Begins graceful shutdown: agent channels are closed, then the listeners.
    func shutdown() async {
        readiness.set(false)
        await group.triggerGracefulShutdown()
    }

    /// The agent listener's bound address, once it is listening.
    var agentAddress: NIOCore.SocketAddress {
        get async { await gateway.boundAddress.value }
    }
}

/// The agent listener as a `Service`: a gRPC server with the enrollment and
/// agent-link services behind `AgentAuthInterceptor`.
final class AgentGatewayService: Service, Sendable {
    let core: HubCore
    let server: GRPCServer<GuardedServerTransport>
    let boundAddress = AsyncValue<NIOCore.SocketAddress>()
    let logger: Logger

    init(core: HubCore, directory: DataDirectory, listen: HostPort, limits: ConnectionLimits, logger: Logger) throws {
        self.core = core
        self.logger = logger
        let metrics = core.metrics
        var config = HTTP2ServerTransport.Posix.Config.defaults
        config.compression.enabledAlgorithms = .all
        // Audit batches of up to 10,000 events (~8 MB before compression) and
        // desired states up to WireLimits.maxDesiredStateBytes.
        config.rpc.maxRequestPayloadSize = WireLimits.maxMessageBytes
        config.http2.targetWindowSize = 8 << 20
        // Agents keep one channel open for days; keep it alive through idle NATs.
        config.connection.maxIdleTime = nil
        config.connection.keepalive.clientBehavior.allowWithoutCalls = true
        config.connection.keepalive.clientBehavior.minPingIntervalWithoutCalls = .seconds(5)
        let transport = try GuardedServerTransport(
            host: listen.host, port: listen.port,
            tls: TLSProfiles.hubListener(
                servingChainPEM: [try PKI.pem(directory.servingCertificate), try PKI.pem(directory.ca.certificate)],
                servingKeyPEM: directory.servingKeyPEM,
                ca: directory.ca.certificate),
            verification: CertificateChecks.hubListenerCallback(ca: directory.ca.certificate) { why in
                metrics.handshakeRefusals.increment()
                logger.warning("agent TLS handshake refused", metadata: ["reason": "\(why)"])
            },
            config: config,
            guard: metrics.connectionGuard(listener: "agent", limits: limits, logger: logger))
        server = GRPCServer(
            transport: transport,
            services: [EnrollmentService(core: core), AgentLinkService(core: core)],
            interceptors: [AgentAuthInterceptor(core: core)])
    }

    func run() async throws {
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await self.server.serve() }
                group.addTask {
                    guard let address = try await self.server.listeningAddress?.ipv4OrIPv6 else { return }
                    self.boundAddress.set(address)
                    self.core.joinAddress.set(HostPort(host: self.core.settings.joinHost, port: address.port ?? 0))
                }
                try await group.waitForAll()
            }
        } onGracefulShutdown: {
            self.core.registry.closeAll(reason: TetherError(.unavailable, "hub is shutting down"))
            self.server.beginGracefulShutdown()
        }
    }
}

extension GRPCNIOTransportCore.SocketAddress {
    var ipv4OrIPv6: NIOCore.SocketAddress? {
        if let v4 = ipv4 { return try? .init(ipAddress: v4.host, port: v4.port) }
        if let v6 = ipv6 { return try? .init(ipAddress: v6.host, port: v6.port) }
        return nil
    }
}
