import ArgumentParser
import Foundation
import Shared

/// `tether-hub token …`: join tokens that let an agent enroll once.
struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Create, list and revoke single-use join tokens.",
        subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a join token; prints the join string alone on stdout's first line.")

        @Option(help: "The registered cluster the token enrolls.")
        var cluster: String

        @Option(help: ArgumentHelp("How long the token is valid (default 24h, at most 7d).", valueName: "duration"))
        var ttl: String?

        @OptionGroup var admin: AdminOptions

        func validate() throws {
            _ = try ClusterName(cluster)
            if let ttl {
                let d = try DurationParser.parse(ttl)
                guard d <= .seconds(7 * 86_400) else { throw ValidationError("--ttl must be at most 7d") }
            }
        }

        func run() async throws {
            let ttlSeconds = try ttl.map { try DurationParser.parse($0).seconds }
            let created: CreatedToken = try await admin.client().call(
                .POST, "/v1/tokens", body: CreateTokenRequest(cluster: cluster, ttlSeconds: ttlSeconds))
            print(created.joinString)
            let help = """
                Join token \(created.token.id) for cluster \(created.token.cluster), single use, expires \(Table.date(created.token.expiresAt)).
                Install the agent in the cluster with the chart in this repository (charts/tether-agent):
                  \(HelmInstallLine.make(joinString: created.joinString))
                or run it outside a cluster (the join string is a secret; pass it by environment where you can):
                  TETHER_JOIN_TOKEN='\(created.joinString)' tether-agent --state-dir /var/lib/tether-agent

                """
            FileHandle.standardError.write(Data(help.utf8))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List join tokens (never their secrets).")

        @Option(help: "table or json.")
        var output: OutputFormat = .table

        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let tokens: [TokenView] = try await admin.client().call(.GET, "/v1/tokens")
            switch output {
            case .json:
                print(String(decoding: try JSONEncoder.tether.encode(tokens), as: UTF8.self))
            case .table:
                print(Table.render(
                    ["ID", "CLUSTER", "STATUS", "CREATED", "EXPIRES"],
                    tokens.map { [$0.id, $0.cluster, $0.status.rawValue, Table.date($0.createdAt), Table.date($0.expiresAt)] }))
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke an unused join token.")

        @Argument(help: "Token id (the 8 characters `token list` shows).")
        var id: String

        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let view: TokenView = try await admin.client().call(.DELETE, "/v1/tokens/\(id)")
            print("token \(view.id) revoked")
        }
    }
}

/// The `helm install` line `token create` prints: the chart's release name and
/// namespace defaults, and the join string as a string value (never a number or a list).
enum HelmInstallLine {
    static func make(joinString: String, chart: String = "./charts/tether-agent") -> String {
        "helm install tether-agent \(chart) --namespace tether-system --create-namespace --set-string joinToken='\(joinString)'"
    }
}
