import ArgumentParser
import Foundation
import Shared

/// `tether-hub cluster …`: register, list and remove clusters.
struct ClusterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Register, list and remove clusters.",
        subcommands: [Add.self, List.self, Label.self, Remove.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register a cluster; then create a join token for its agent.")

        @Argument(help: "Cluster name: a DNS-1123 label, e.g. prod-eu-1.")
        var name: String

        @Option(name: .customLong("label"), help: ArgumentHelp("A label KEY=VALUE; repeat for several.", valueName: "key=value"))
        var labels: [String] = []

        @OptionGroup var admin: AdminOptions

        func validate() throws {
            _ = try ClusterName(name)
            for label in labels { _ = try LabelRules.parseAssignment(label) }
        }

        func run() async throws {
            var map: [String: String] = [:]
            for label in labels {
                let (k, v) = try LabelRules.parseAssignment(label)
                map[k] = v
            }
            let view: ClusterView = try await admin.client().call(.POST, "/v1/clusters", body: AddClusterRequest(name: name, labels: map))
            print("cluster \(view.name) added (status \(view.status.rawValue))")
            FileHandle.standardError.write(Data("next: tether-hub token create --cluster \(view.name)\n".utf8))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List clusters with their status.")

        @Option(help: "table or json.")
        var output: OutputFormat = .table

        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let clusters: [ClusterView] = try await admin.client().call(.GET, "/v1/clusters")
            switch output {
            case .json:
                let encoder = JSONEncoder.tether
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(clusters), as: UTF8.self))
            case .table:
                print(Table.render(
                    ["NAME", "STATUS", "DATA PATH", "LABELS", "LAST SEEN", "AGENT", "CERT EXPIRES"],
                    clusters.map { c in
                        [c.name, c.status.rawValue, c.dataPath ?? "-",
                         c.labels.isEmpty ? "-" : c.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","),
                         Table.date(c.lastSeen), c.agentVersion ?? "-", Table.date(c.certificateExpiry)]
                    }))
            }
        }
    }

    struct Label: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set (KEY=VALUE) or remove (KEY-) labels; bundles follow at once.")

        @Argument(help: "Cluster name.") var name: String
        @Argument(help: ArgumentHelp("KEY=VALUE to set, KEY- to remove.", valueName: "change")) var changes: [String]
        @OptionGroup var admin: AdminOptions

        func validate() throws {
            guard !changes.isEmpty else { throw ValidationError("give at least one KEY=VALUE or KEY-") }
        }

        func run() async throws {
            let view: ClusterView = try await admin.client().call(
                .PATCH, "/v1/clusters/\(try ClusterName(name))/labels", body: AdminServer.LabelRequest(changes: changes))
            let labels = view.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
            print("cluster \(view.name) labeled: \(labels.isEmpty ? "(no labels)" : labels)")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a cluster: revoke its agent's certificate and cut its channel now.")

        @Argument(help: "Cluster name.")
        var name: String

        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let view: ClusterView = try await admin.client().call(.DELETE, "/v1/clusters/\(try ClusterName(name))")
            print("cluster \(view.name) removed: certificate revoked, channel closed")
        }
    }
}
