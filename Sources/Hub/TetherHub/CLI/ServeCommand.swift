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

            Sign-in: with --oidc-issuer and --oidc-client-id people run \
            `tether-hub login --hub https://HUB:7443`; the provider's redirect URIs must \
            allow http://127.0.0.1 on any port (the CLI) and https://HUB:7443/callback \
            (the browser). A second factor (TOTP, enrolled at first sign-in) is asked \
            after the provider, unless --oidc-trust-amr and the provider reports one.
            """)

    @Option(help: ArgumentHelp("Directory for the CA, keys, database and credentials.", valueName: "dir"))
    var dataDir = "./tether-data"

    @Option(help: ArgumentHelp("Where agents connect (gRPC over mutual TLS).", valueName: "host:port"))
    var listen = "0.0.0.0:8443"

    @Option(help: ArgumentHelp("Admin HTTPS API, /healthz, /readyz and /metrics.", valueName: "host:port"))
    var adminListen = "127.0.0.1:9443"

    @Option(help: ArgumentHelp("Access listener: kubectl through the hub (/clusters/NAME/...), HTTPS; 'none' to disable.", valueName: "host:port"))
    var accessListen = "0.0.0.0:7443"

    @Option(help: ArgumentHelp(
        "Idle tunnels each agent keeps open while people use its cluster, so a request needs no round trip to open one (0: none; ended after 5 minutes unused).",
        valueName: "n"))
    var spareTunnels = HubSettings.defaultSpareTunnels

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

    @Option(help: ArgumentHelp(
        "Sign people in with this OpenID Connect provider (https; its /.well-known/openid-configuration is read). Needs --oidc-client-id.",
        valueName: "url"))
    var oidcIssuer: String?

    @Option(help: ArgumentHelp("The hub's client id at the provider (the ID tokens' audience).", valueName: "id"))
    var oidcClientId: String?

    @Option(help: ArgumentHelp("File holding the client secret (a confidential client); without it the hub is a public client using PKCE alone.",
                               valueName: "path"))
    var oidcClientSecretFile: String?

    @Option(help: ArgumentHelp("ID token claim that names the person at the hub.", valueName: "claim"))
    var oidcUsernameClaim = "email"

    @Option(help: ArgumentHelp("ID token claim with the person's groups (feeds AccessRoles' Group subjects).", valueName: "claim"))
    var oidcGroupsClaim = "groups"

    @Option(help: ArgumentHelp("Another scope to ask for (repeatable), e.g. one that makes the provider send groups.", valueName: "scope"))
    var oidcExtraScope: [String] = []

    @Flag(help: "Accept a second factor the provider reports in the ID token's amr claim (mfa, otp, hwk, ...) instead of asking for the hub's TOTP code.")
    var oidcTrustAmr = false

    @Option(help: ArgumentHelp("People in this group (from the identity provider, or a session's --group) see the console's admin pages and the compliance report.",
                               valueName: "group"))
    var adminGroup = HubSettings.defaultAdminGroup

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
        guard (0...64).contains(spareTunnels) else { throw ValidationError("--spare-tunnels must be between 0 and 64, not \(spareTunnels)") }
        config.spareTunnels = spareTunnels
        config.accessTLSKey = accessTlsKey
        if !advertise.isEmpty {
            config.advertise = advertise.flatMap { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
        }
        config.certificateLifetime = try DurationParser.parse(certificateLifetime)
        config.heartbeatInterval = try DurationParser.parse(heartbeatInterval)
        config.auditRetention = try DurationParser.parse(auditRetention)
        guard !adminGroup.trimmingCharacters(in: .whitespaces).isEmpty else { throw ValidationError("--admin-group must name a group") }
        config.adminGroup = adminGroup
        if let issuer = oidcIssuer {
            guard let clientID = oidcClientId else { throw ValidationError("--oidc-issuer needs --oidc-client-id") }
            var oidc = OIDCSettings(issuer: issuer, clientID: clientID)
            if let path = oidcClientSecretFile {
                guard let secret = try? String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), !secret.isEmpty else {
                    throw ValidationError("--oidc-client-secret-file \(path) cannot be read or is empty")
                }
                oidc.clientSecret = secret
            }
            oidc.usernameClaim = oidcUsernameClaim
            oidc.groupsClaim = oidcGroupsClaim
            oidc.extraScopes = oidcExtraScope
            oidc.trustAMR = oidcTrustAmr
            do {
                _ = try OIDCProvider(settings: oidc, logger: Logger(label: "tether.hub"))
            } catch let error as TetherError {
                throw ValidationError(error.message)
            }
            config.oidc = oidc
        } else if oidcClientId != nil || oidcClientSecretFile != nil || oidcTrustAmr {
            throw ValidationError("--oidc-client-id, --oidc-client-secret-file and --oidc-trust-amr need --oidc-issuer")
        }
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
