import ArgumentParser
import Foundation
import HubStore
import Shared

/// `tether-hub access …`: who may reach which clusters with which Kubernetes roles.
struct AccessCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "access",
        abstract: "Grant people and groups Kubernetes roles on clusters chosen by label (AccessRoles).",
        discussion: """
            An AccessRole names subjects (users and groups), a clusterSelector, and the \
            ClusterRoles bound cluster-wide and/or the ClusterRoles and Roles bound per \
            namespace. A person's access to a cluster is the union of every AccessRole that \
            names them or one of their groups and selects the cluster.
            """,
        subcommands: [Apply.self, List.self, Get.self, Delete.self, WhoCan.self, Explain.self])

    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Store AccessRoles from a YAML file or a directory of them.",
            discussion: """
                Every file is checked first; if any is refused, nothing is stored. Granting \
                cluster-admin, or a role a policy bundle defines with every verb on every \
                resource, needs spec.allowPrivileged: true.
                """)
        @Option(name: .shortAndLong, help: ArgumentHelp("An AccessRole file, or a directory of .yaml/.yml files.", valueName: "file|dir"))
        var filename: String
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let files = try YAMLFiles.read(filename)
            let result: AdminServer.AppliedRoles = try await admin.client().call(.POST, "/v1/access/roles", body: AdminServer.ApplyRequest(files: files))
            for role in result.roles { print("accessrole/\(role) applied") }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List AccessRoles, what each grants and the clusters it selects.",
            discussion: "PRIVILEGED is yes for a role that grants cluster-admin or a role with every verb on every resource.")
        @Option(help: "table or json.") var output: OutputFormat = .table
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let roles: [AccessRoleView] = try await admin.client().call(.GET, "/v1/access/roles")
            switch output {
            case .json:
                print(String(decoding: try JSONEncoder.tether.encode(roles), as: UTF8.self))
            case .table:
                print(Table.render(["NAME", "SUBJECTS", "GRANTS", "PRIVILEGED", "CLUSTERS", "MAX SESSION"], roles.map {
                    [$0.name, $0.subjects.joined(separator: ","), $0.grants.joined(separator: ","), $0.privilegedGrants.isEmpty ? "no" : "yes",
                     $0.clusters.isEmpty ? "-" : $0.clusters.joined(separator: ","), $0.maxSessionDuration ?? "-"]
                }))
            }
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one AccessRole as stored.")
        @Argument(help: "AccessRole name.") var name: String
        @Option(name: .shortAndLong, help: "yaml or json.") var output: String = "yaml"
        @OptionGroup var admin: AdminOptions

        func validate() throws {
            guard ["yaml", "json"].contains(output) else { throw ValidationError("--output must be yaml or json") }
        }

        func run() async throws {
            let view: AccessRoleView = try await admin.client().call(.GET, "/v1/access/roles/\(name)")
            try YAMLText.printDocument(view.document, as: output)
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete an AccessRole; what it granted ends.")
        @Argument(help: "AccessRole name.") var name: String
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let _: AdminServer.AppliedRoles = try await admin.client().call(.DELETE, "/v1/access/roles/\(name)")
            print("accessrole/\(name) deleted")
        }
    }

    struct WhoCan: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "who-can",
            abstract: "The people and groups that can reach a cluster, with the roles they get there.")
        @Argument(help: "Cluster name.") var cluster: String
        @Option(help: "table or json.") var output: OutputFormat = .table
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let rows: [WhoCanRow] = try await admin.client().call(.GET, "/v1/access/who-can/\(cluster)")
            switch output {
            case .json:
                print(String(decoding: try JSONEncoder.tether.encode(rows), as: UTF8.self))
            case .table:
                if rows.isEmpty { FileHandle.standardError.write(Data("no AccessRole selects cluster \(cluster)\n".utf8)) }
                print(Table.render(["KIND", "NAME", "ACCESSROLE", "GRANTS"], rows.map { [$0.kind, $0.name, $0.accessRole, $0.grants.joined(separator: ",")] }))
            }
        }
    }

    struct Explain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Which AccessRoles give a person what on a cluster, or why none does.",
            discussion: "Exit status 0 when the person gets something on the cluster, 3 when nothing.")
        @Argument(help: "The person's user name (as the identity provider names them).") var user: String
        @Argument(help: "Cluster name.") var cluster: String
        @Option(name: .customLong("group"), help: ArgumentHelp("A group the person is in (repeatable).", valueName: "group"))
        var groups: [String] = []
        @Option(help: "table or json.") var output: OutputFormat = .table
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let decision: AccessDecision = try await admin.client().call(
                .POST, "/v1/access/explain", body: AdminServer.ExplainRequest(user: user, groups: groups, cluster: cluster))
            switch output {
            case .json:
                print(String(decoding: try JSONEncoder.tether.encode(decision), as: UTF8.self))
            case .table:
                if decision.allowed {
                    print("\(user) gets on cluster \(cluster): \(decision.grants.summary.joined(separator: ", "))")
                    for contribution in decision.grantedBy {
                        print("  accessrole/\(contribution.accessRole): \(contribution.grants.joined(separator: ", "))")
                    }
                    if let limit = decision.maxSessionDuration { print("  sessions last at most \(DurationText.format(seconds: limit))") }
                } else {
                    print("\(user)\(groups.isEmpty ? "" : " (groups \(groups.joined(separator: ", ")))") gets nothing on cluster \(cluster)")
                }
                for miss in decision.notGrantedBy { print("  accessrole/\(miss.accessRole) does not apply: \(miss.reason)") }
                if decision.notGrantedBy.isEmpty && !decision.allowed { print("  there are no AccessRoles") }
            }
            if !decision.allowed { throw ExitCode(3) }
        }
    }
}

/// `tether-hub session …`: sessions issued by an operator (automation, break-glass).
struct SessionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "session",
        abstract: "Create, list and revoke people's sessions at the hub.",
        subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a session for a person (automation, break-glass); prints its credential once.",
            discussion: """
                The credential is the first line on stdout; details go to stderr. The hub keeps \
                only the session's record, never the credential: keep it like a password. The \
                session lasts --ttl (default 8h, at most 24h), shortened to the smallest \
                maxSessionDuration of the AccessRoles that name the person. The issue is audited.
                """)
        @Option(help: ArgumentHelp("The person the session is for.", valueName: "user")) var user: String
        @Option(name: .customLong("group"), help: ArgumentHelp("A group the person is in (repeatable).", valueName: "group"))
        var groups: [String] = []
        @Option(help: ArgumentHelp("How long the session lasts, e.g. 30m, 8h (default 8h, at most 24h).", valueName: "duration"))
        var ttl: String?
        @Option(name: .shortAndLong, help: ArgumentHelp(
            "Write a session file (0600) for `tether-hub kubeconfig --session FILE` instead of printing the credential.", valueName: "path"))
        var output: String?
        @OptionGroup var admin: AdminOptions

        func validate() throws {
            if let ttl {
                let d = try DurationParser.parse(ttl)
                guard d >= .seconds(60), d <= HubSettings.maxSessionTTL else { throw ValidationError("--ttl must be between 1m and 24h") }
            }
        }

        func run() async throws {
            let created: AdminServer.CreatedSession = try await admin.client().call(
                .POST, "/v1/sessions",
                body: AdminServer.CreateSessionRequest(user: user, groups: groups, ttlSeconds: try ttl.map { try DurationParser.parse($0).seconds }))
            if let output {
                guard let hub = created.hub else {
                    throw TetherError(.unavailable, "the hub runs without an access listener (serve --access-listen none); a session file needs one")
                }
                try SessionFile(hub: hub, user: created.session.user, credential: created.credential, expiresAt: created.session.expiresAt,
                                caCertificate: created.caCertificate).write(to: output)
                FileHandle.standardError.write(Data("wrote the session to \(output)\n".utf8))
            } else {
                print(created.credential)
            }
            var note = "session \(created.session.id) for \(created.session.user), expires \(Table.date(created.session.expiresAt))"
            if let cappedBy = created.cappedBy { note += " (shortened by accessrole/\(cappedBy) maxSessionDuration)" }
            if output == nil { note += "\nthe credential above is shown once; the hub keeps only the session's record" }
            FileHandle.standardError.write(Data((note + "\n").utf8))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List live sessions (with --all, ended ones too).")
        @Flag(help: "Include revoked and expired sessions.") var all = false
        @Option(help: "table or json.") var output: OutputFormat = .table
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let sessions: [SessionView] = try await admin.client().call(.GET, "/v1/sessions" + (all ? "?all=true" : ""))
            switch output {
            case .json:
                print(String(decoding: try JSONEncoder.tether.encode(sessions), as: UTF8.self))
            case .table:
                print(Table.render(["ID", "USER", "GROUPS", "METHOD", "CREATED", "EXPIRES", "STATE"], sessions.map {
                    [$0.id, $0.user, $0.groups.isEmpty ? "-" : $0.groups.joined(separator: ","), $0.method, Table.date($0.createdAt),
                     Table.date($0.expiresAt), $0.revokedAt != nil ? "revoked" : ($0.expiresAt <= Date() ? "expired" : "live")]
                }))
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "End a session, or every session of a person (--user), at once.")
        @Argument(help: "Session id (from session list).") var id: String?
        @Option(help: ArgumentHelp("Revoke every live session of this person.", valueName: "user")) var user: String?
        @OptionGroup var admin: AdminOptions

        func validate() throws {
            guard (id == nil) != (user == nil) else { throw ValidationError("give a session id or --user, not both") }
        }

        func run() async throws {
            let client = try admin.client()
            let revoked: [SessionView] = if let id {
                try await client.call(.DELETE, "/v1/sessions/\(id)")
            } else {
                try await client.call(.POST, "/v1/sessions/revoke", body: AdminServer.RevokeSessionsRequest(user: user!))
            }
            if revoked.isEmpty { print("no live sessions for \(user ?? "")") }
            for session in revoked { print("session/\(session.id) (\(session.user)) revoked") }
        }
    }
}
