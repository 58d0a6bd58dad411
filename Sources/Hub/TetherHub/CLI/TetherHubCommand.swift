import ArgumentParser
import Logging
import Shared

/// `tether-hub`: runs the hub (`serve`) and talks to a running one.
package struct TetherHubCommand: AsyncParsableCommand {
    package init() {}

    package static let configuration = CommandConfiguration(
        commandName: "tether-hub",
        abstract: "Tether hub: zero-trust access to a fleet of Kubernetes clusters.",
        discussion: """
            Start the hub with `tether-hub serve`. The other subcommands call a running hub's \
            admin API with the credential file it writes into its data dir \
            (default ./tether-data/admin-credentials.json).
            """,
        version: TetherVersion.current,
        subcommands: [ServeCommand.self, ClusterCommand.self, TokenCommand.self, PolicyCommand.self, AccessCommand.self, SessionCommand.self, UserCommand.self,
                      LoginCommand.self, LogoutCommand.self, WhoAmICommand.self, KubeconfigCommand.self, CredentialCommand.self, AuditCommand.self, ReportCommand.self, BackupCommand.self, RestoreCommand.self]
    )
}

/// `--credentials`, shared by every client subcommand.
struct AdminOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Operator credential file written by `tether-hub serve` (env TETHER_CREDENTIALS).",
        valueName: "path"))
    var credentials: String?

    var credentialsPath: String {
        credentials ?? ProcessInfo.processInfo.environment["TETHER_CREDENTIALS"] ?? "./tether-data/admin-credentials.json"
    }

    func client() throws -> AdminClient { try AdminClient(credentialsPath: credentialsPath) }
}

/// `--output table|json`.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

/// Logging to stderr with a level; one line per event with its metadata.
enum LogSetup {
    static func bootstrap(level: Logger.Level) {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

import Foundation
