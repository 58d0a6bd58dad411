import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import Shared
import UnixSignals

/// `tether-agent`: runs in a cluster and keeps one outbound channel to the hub.
package struct TetherAgentCommand: AsyncParsableCommand {
    package init() {}

    package static let configuration = CommandConfiguration(
        commandName: "tether-agent",
        abstract: "Tether agent: connects a cluster to its Tether hub.",
        version: TetherVersion.current,
        subcommands: [RunCommand.self, AuditKubeconfigCommand.self, PermissionsCommand.self],
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

    @Option(help: ArgumentHelp("HTTPS endpoint for the API server's audit webhook (path /audit); 'none' to disable.", valueName: "host:port"))
    var auditListen = "0.0.0.0:8444"

    @Option(help: ArgumentHelp("Most disk the audit spool may use before the webhook answers 429 (e.g. 512Mi, 1Gi).", valueName: "size"))
    var auditSpoolMax = "1Gi"

    @Option(help: ArgumentHelp("Delete a person's just-in-time service account after this long without a request through the hub (made again on the next one).", valueName: "duration"))
    var jitIdle = "30m"

    @Option(help: ArgumentHelp("Serve this certificate (PEM) on the audit endpoint instead of the agent's own.", valueName: "path"))
    var auditTlsCert: String?

    @Option(help: ArgumentHelp("Key (PEM) for --audit-tls-cert.", valueName: "path"))
    var auditTlsKey: String?

    @Option(help: ArgumentHelp("Another DNS name or IP address for the audit endpoint's certificate (repeatable), e.g. the Service's ClusterIP the API server posts to. The Service names in POD_NAMESPACE are always included.", valueName: "name"))
    var auditSan: [String] = []

    @Option(help: ArgumentHelp("Follow this API server audit log file (JSON lines) through rotation; its position is kept in the state dir.", valueName: "path"))
    var auditLogFile: String?

    @Option(help: ArgumentHelp("Kubeconfig for running outside a cluster (in a pod the service account is used).", valueName: "path"))
    var kubeconfig: String?

    @Option(help: ArgumentHelp("Context in --kubeconfig (default: its current-context).", valueName: "name"))
    var context: String?

    @Option(help: ArgumentHelp("Keep the identity in this Secret in the agent's namespace, so a rescheduled pod keeps it.", valueName: "name"))
    var identitySecret: String?

    @Option(help: ArgumentHelp("Keep the audit webhook's token and CA in this Secret in the agent's namespace too, so a rescheduled pod serves the webhook with the credentials the API server has.", valueName: "name"))
    var auditSecret: String?

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
        if auditListen != "none" { _ = try HostPort(parsing: auditListen) }
        _ = try ByteSize.parse(auditSpoolMax)
        guard try DurationParser.parse(jitIdle) >= .seconds(60) else { throw ValidationError("--jit-idle must be at least 1m") }
        if let kubeconfig { _ = try KubeConnection.kubeconfig(path: kubeconfig, context: context) }
        guard context == nil || kubeconfig != nil else { throw ValidationError("--context needs --kubeconfig") }
        for name in auditSan where name.isEmpty || name.contains(where: { $0.isWhitespace || $0 == "/" || $0 == "@" }) {
            throw ValidationError("--audit-san '\(name)' is not a DNS name or IP address")
        }
        if auditSecret != nil, auditListen == "none" {
            throw ValidationError("--audit-secret keeps the audit webhook's credentials; it needs the webhook (--audit-listen)")
        }
        guard (auditTlsCert == nil) == (auditTlsKey == nil) else {
            throw ValidationError("--audit-tls-cert and --audit-tls-key go together")
        }
    }

    func run() async throws {
        // From here on SIGTERM and SIGINT stop the agent cleanly (see runUntilSignalled).
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        // Everything the process writes (database, keys, identity) is private to it.
        umask(0o077)
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        let logger = Logger(label: "tether.agent")
        var config = AgentConfiguration(stateDirectory: resolvedStateDir!, joinString: try resolvedJoinToken.map { try JoinString(parsing: $0) })
        config.healthListen = healthListen == "none" ? nil : try HostPort(parsing: healthListen)
        config.auditListen = auditListen == "none" ? nil : try HostPort(parsing: auditListen)
        config.auditSpoolMax = try ByteSize.parse(auditSpoolMax)
        config.jitIdle = try DurationParser.parse(jitIdle)
        config.auditTLSCertFile = auditTlsCert
        config.auditTLSKeyFile = auditTlsKey
        config.auditLogFile = auditLogFile
        config.auditNames += auditSan.filter { !config.auditNames.contains($0) }
        config.identitySecret = identitySecret
        config.auditSecret = auditSecret
        if let kubeconfig {
            config.kubernetes = try KubeConnection.kubeconfig(path: kubeconfig, context: context)
        } else {
            config.kubernetes = KubeConnection.inCluster()
        }
        let configuration = config
        try await Self.runUntilSignalled(signals, logger: logger) {
            try await AgentRuntime.prepare(configuration, logger: logger)
            return try AgentRuntime(configuration: configuration, logger: logger)
        }
    }

    /// Runs the agent and makes SIGTERM and SIGINT, whenever they come, a clean exit
    /// (status 0). The signals are trapped before anything else happens: one that
    /// arrives while the agent still prepares (reads its Secrets, which may wait on an
    /// API server that does not answer) ends the process without waiting for that
    /// work, which writes nothing that is not atomic; once the runtime runs, it is
    /// shut down gracefully (the hub link stops, also mid-enrollment).
    static func runUntilSignalled(_ signals: UnixSignalsSequence, logger: Logger,
                                  prepare: @escaping @Sendable () async throws -> AgentRuntime) async throws {
        let (events, writer) = AsyncStream.makeStream(of: LifecycleEvent.self)
        let preparing = Task {
            do {
                writer.yield(.prepared(.success(try await prepare())))
            } catch {
                writer.yield(.prepared(.failure(error)))
            }
        }
        let trap = Task {
            for await signal in signals { writer.yield(.signalled(signal)) }
        }
        defer { trap.cancel() }
        var runtime: AgentRuntime?
        var stopping = false
        for await event in events {
            switch event {
            case .signalled(let signal):
                logger.notice("stopping", metadata: ["signal": "\(signal)"])
                guard let runtime else {
                    preparing.cancel()
                    return
                }
                if !stopping {
                    stopping = true
                    await runtime.shutdown()
                }
            case .prepared(.failure(let error)):
                throw error
            case .prepared(.success(let prepared)):
                runtime = prepared
                Task {
                    do {
                        try await prepared.run()
                        writer.yield(.finished(.success(())))
                    } catch {
                        writer.yield(.finished(.failure(error)))
                    }
                }
            case .finished(let result):
                return try result.get()
            }
        }
    }

    /// What the process waits for: its preparation, a signal, or the runtime's end.
    enum LifecycleEvent: Sendable {
        case prepared(Result<AgentRuntime, any Error>)
        case signalled(UnixSignal)
        case finished(Result<Void, any Error>)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// `tether-agent audit-kubeconfig`: what an API server's `--audit-webhook-config-file` needs.
struct AuditKubeconfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit-kubeconfig",
        abstract: "Print the kubeconfig for the API server's --audit-webhook-config-file.",
        discussion: """
            Run it where the agent keeps its state (in the pod: kubectl exec). Point the API \
            server at the agent's Service, e.g. --server https://tether-agent.tether-system.svc:8444/audit, \
            and set --audit-webhook-config-file to the printed file and --audit-policy-file to your policy.
            """)

    @Option(help: ArgumentHelp("The URL the API server posts to.", valueName: "url"))
    var server: String

    @Option(help: ArgumentHelp("The agent's state dir (env TETHER_STATE_DIR).", valueName: "dir"))
    var stateDir: String?

    @Option(help: ArgumentHelp("The certificate served with --audit-tls-cert, if any (its issuer is what the API server must trust).", valueName: "path"))
    var auditTlsCert: String?

    func validate() throws {
        guard let url = URL(string: server), url.scheme == "https", url.host != nil else {
            throw ValidationError("--server must be an https:// URL, e.g. https://tether-agent.tether-system.svc:8444/audit")
        }
        guard stateDir ?? ProcessInfo.processInfo.environment["TETHER_STATE_DIR"] != nil else {
            throw ValidationError("--state-dir (or TETHER_STATE_DIR) is required")
        }
    }

    func run() throws {
        let dir = stateDir ?? ProcessInfo.processInfo.environment["TETHER_STATE_DIR"]!
        var endpoint = try AuditEndpoint.load(stateDir: dir, names: ["localhost"], certFile: nil, keyFile: nil)
        if let auditTlsCert {
            endpoint.caPEM = try String(contentsOfFile: auditTlsCert, encoding: .utf8)
        }
        print(endpoint.kubeconfig(server: server), terminator: "")
    }
}

/// Sizes as Kubernetes writes them: 512Mi, 1Gi, 100M, or bytes.
enum ByteSize {
    static func parse(_ text: String) throws -> Int64 {
        let units: [(String, Int64)] = [("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40), ("K", 1000), ("M", 1_000_000), ("G", 1_000_000_000)]
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            if let n = Int64(text.dropLast(suffix.count)), n > 0 { return n * factor }
        }
        if let n = Int64(text), n > 0 { return n }
        throw ValidationError("invalid size '\(text)': use bytes or a unit, e.g. 512Mi or 1Gi")
    }
}

/// `tether-agent permissions`: the Kubernetes API access the agent needs, as RBAC rules.
struct PermissionsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "permissions",
        abstract: "Print the RBAC rules the agent needs (JSON), each with why it exists.",
        discussion: """
            Rules with scope "cluster" belong in a ClusterRole bound to the agent's service account; \
            "own-namespace" rules in a Role in the agent's namespace. The Helm chart grants exactly these.
            """)

    @Option(help: ArgumentHelp("The Secret the agent keeps its identity in (--identity-secret of `run`), if any.", valueName: "name"))
    var identitySecret: String?

    @Option(help: ArgumentHelp("The Secret the agent keeps its audit webhook credentials in (--audit-secret of `run`), if any.", valueName: "name"))
    var auditSecret: String?

    func run() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        print(String(decoding: try encoder.encode(KubeAccess.required(identitySecret: identitySecret, auditSecret: auditSecret)), as: UTF8.self))
    }
}
