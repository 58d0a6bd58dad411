import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import Shared
import UnixSignals

/// `tether-agent`: runs in a cluster and keeps one outbound channel to the hub.
@main
struct TetherAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tether-agent",
        abstract: "Tether agent: connects a cluster to its Tether hub.",
        version: TetherVersion.current,
        subcommands: [RunCommand.self],
        defaultSubcommand: RunCommand.self)
}

/// `tether-agent [run]`: enroll if needed, then stay connected until SIGTERM.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Enroll (first run) and keep the channel to the hub up.",
        discussion: """
            With no identity in the state dir, the agent enrolls with the join string from \
            `tether-hub token create`, then keeps its key and certificate there (0600). \
            Later runs connect straight away and ignore any join token.
            """)

    @Option(help: ArgumentHelp("Directory for the agent's identity (env TETHER_STATE_DIR).", valueName: "dir"))
    var stateDir: String?

    @Option(help: ArgumentHelp("Join string from `tether-hub token create` (env TETHER_JOIN_TOKEN; prefer the env: arguments show in ps).", valueName: "join"))
    var joinToken: String?

    @Option(help: ArgumentHelp("Health, readiness and metrics over plain HTTP; 'none' to disable.", valueName: "host:port"))
    var healthListen = "0.0.0.0:9090"

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    var resolvedStateDir: String? { stateDir ?? ProcessInfo.processInfo.environment["TETHER_STATE_DIR"] }
    var resolvedJoinToken: String? {
        let raw = joinToken ?? ProcessInfo.processInfo.environment["TETHER_JOIN_TOKEN"]
        return raw.flatMap { $0.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty ? nil : $0 }
    }

    func validate() throws {
        guard resolvedStateDir != nil else { throw ValidationError("--state-dir (or TETHER_STATE_DIR) is required") }
        if let token = resolvedJoinToken { _ = try JoinString(parsing: token) }
        if healthListen != "none" { _ = try HostPort(parsing: healthListen) }
    }

    func run() async throws {
        // Everything the process writes (database, keys, identity) is private to it.
        umask(0o077)
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        let logger = Logger(label: "tether.agent")
        let metrics = AgentMetrics()
        let link = HubLink(
            store: FileIdentityStore(directory: resolvedStateDir!),
            joinString: try resolvedJoinToken.map { try JoinString(parsing: $0) },
            logger: logger, metrics: metrics)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: link, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup)
        ]
        if healthListen != "none" {
            services.insert(.init(service: HealthServer.make(listen: try HostPort(parsing: healthListen), link: link, metrics: metrics) { address in
                logger.info("health endpoint listening", metadata: ["address": "\(address)"])
            }), at: 0)
        }
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
