import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals
import Shared

/// `tether-hub serve`: runs the hub until SIGTERM or SIGINT.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the hub.",
        discussion: """
            The first start creates, in the data dir (mode 0700): a CA, the hub's serving \
            certificate, the SQLite database and admin-credentials.json for the CLI. Later \
            starts reuse them. Only one hub may use a data dir at a time (it holds \
            an flock on DIR/hub.lock); the hub refuses to start when its keys or \
            credential file can be read by group or others, or when the dir belongs \
            to another user. SIGTERM closes agent channels and exits 0.
            """)

    @Option(help: ArgumentHelp("Directory for the CA, keys, database and credentials.", valueName: "dir"))
    var dataDir = "./tether-data"

    @Option(help: ArgumentHelp("Where agents connect (gRPC over mutual TLS).", valueName: "host:port"))
    var listen = "0.0.0.0:8443"

    @Option(help: ArgumentHelp("Admin HTTPS API, /healthz, /readyz and /metrics.", valueName: "host:port"))
    var adminListen = "127.0.0.1:9443"

    @Option(help: ArgumentHelp("Access listener: kubectl through the hub (/clusters/NAME/...), HTTPS; 'none' to disable.", valueName: "host:port"))
    var accessListen = "0.0.0.0:7443"

    @Option(help: ArgumentHelp("Certificate chain (PEM) for the access listener instead of the hub's own (with --access-tls-key).", valueName: "path"))
    var accessTlsCert: String?

    @Option(help: ArgumentHelp("Private key (PEM) for --access-tls-cert.", valueName: "path"))
    var accessTlsKey: String?

    @Option(help: ArgumentHelp(
        "Name or IP agents dial; repeat for several. The first goes into join strings. Default: this host's name, localhost and 127.0.0.1.",
        valueName: "host"))
    var advertise: [String] = []

    @Option(help: ArgumentHelp("Lifetime of agent certificates; agents renew at two thirds of it.", valueName: "duration"))
    var certificateLifetime = "24h"

    @Option(help: ArgumentHelp("Heartbeat interval told to agents; three missed ones mark an agent offline.", valueName: "duration"))
    var heartbeatInterval = "10s"

    @Option(help: ArgumentHelp("Keep audit events this long; older ones are pruned hourly.", valueName: "duration"))
    var auditRetention = "90d"

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        _ = try parsed()
    }

    func parsed() throws -> HubConfiguration {
        var config = HubConfiguration()
        config.dataDirectory = dataDir
        config.listen = try HostPort(parsing: listen)
        config.adminListen = try HostPort(parsing: adminListen)
        config.accessListen = accessListen == "none" ? nil : try HostPort(parsing: accessListen)
        guard (accessTlsCert == nil) == (accessTlsKey == nil) else {
            throw ValidationError("--access-tls-cert and --access-tls-key go together")
        }
        for path in [accessTlsCert, accessTlsKey].compactMap({ $0 }) where !FileManager.default.isReadableFile(atPath: path) {
            throw ValidationError("\(path) does not exist or cannot be read")
        }
        config.accessTLSCertificate = accessTlsCert
        config.accessTLSKey = accessTlsKey
        if !advertise.isEmpty {
            config.advertise = advertise.flatMap { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
        }
        config.certificateLifetime = try DurationParser.parse(certificateLifetime)
        config.heartbeatInterval = try DurationParser.parse(heartbeatInterval)
        config.auditRetention = try DurationParser.parse(auditRetention)
        guard config.certificateLifetime >= .seconds(2) else {
            throw ValidationError("--certificate-lifetime must be at least 2s")
        }
        return config
    }

    func run() async throws {
        // Everything the process writes (database, keys, identity) is private to it.
        umask(0o077)
        LogSetup.bootstrap(level: logLevel)
        let logger = Logger(label: "tether.hub")
        // Before anything in the dir is read or written: a second hub on the same dir
        // stops here, and the first one's database and credential file stay as they are.
        let lock = try DataDirectoryLock.acquire(dataDir: dataDir)
        defer { lock.release() }
        let hub = try HubServer(configuration: try parsed(), logger: logger, signals: [.sigterm, .sigint])
        try await hub.run()
        logger.notice("hub stopped")
    }
}
