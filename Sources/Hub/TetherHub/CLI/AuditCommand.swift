import ArgumentParser
import Foundation
import NIOCore
import HubStore
import Shared

/// `tether-hub audit …`: ask the central audit log.
struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Query, export and verify the central audit log.",
        subcommands: [Query.self, Export.self, Verify.self])

    /// Filters shared by query and export.
    struct Filters: ParsableArguments {
        @Option(help: "Only this cluster ('hub' for the hub's own actions).") var cluster: String?
        @Option(help: "Only this user, as user or as impersonated user.") var user: String?
        @Option(help: "Only this verb (get, list, create, update, patch, delete, ...).") var verb: String?
        @Option(help: "Only this resource (e.g. rolebindings).") var resource: String?
        @Option(help: "Only this namespace.") var namespace: String?
        @Option(help: "Only this object name.") var name: String?
        @Option(help: ArgumentHelp("From a duration ago (24h, 7d) or an RFC 3339 time.", valueName: "duration|time")) var since: String?
        @Option(help: ArgumentHelp("Before this RFC 3339 time.", valueName: "time")) var until: String?

        func validate() throws { _ = try queryItems() }

        func queryItems() throws -> [URLQueryItem] {
            var items: [URLQueryItem] = []
            for (key, value) in [("cluster", cluster), ("user", user), ("verb", verb), ("resource", resource), ("namespace", namespace), ("name", name)] {
                if let value { items.append(URLQueryItem(name: key, value: value)) }
            }
            if let since { items.append(URLQueryItem(name: "since", value: try Self.time(since, allowDuration: true))) }
            if let until { items.append(URLQueryItem(name: "until", value: try Self.time(until, allowDuration: false))) }
            return items
        }

        static func time(_ text: String, allowDuration: Bool) throws -> String {
            if allowDuration {
                do {
                    return Date().addingTimeInterval(-(try DurationParser.parse(text)).seconds).formatted(.iso8601)
                } catch let error as TetherError where AuditTime.parse(text) == nil && text.first?.isNumber == true && text.last?.isLetter == true {
                    // Reads as a duration, not as a time: say what is wrong with it (e.g. too long).
                    throw ValidationError("--since: \(error.message)")
                } catch {}
            }
            guard let date = AuditTime.parse(text) else {
                throw ValidationError("'\(text)' is not \(allowDuration ? "a duration (24h, 7d) or " : "")an RFC 3339 time (2026-11-28T12:00:00Z)")
            }
            return date.formatted(.iso8601)
        }
    }

    static func path(_ base: String, _ items: [URLQueryItem]) -> String {
        var components = URLComponents()
        components.path = base
        components.queryItems = items.isEmpty ? nil : items
        return components.string ?? base
    }

    struct Query: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Find audit events (oldest first).")

        @OptionGroup var filters: Filters
        @Option(help: "At most this many events.") var limit = 100
        @Option(help: "table, json or csv.") var output: AuditOutput = .table
        @OptionGroup var admin: AdminOptions

        func validate() throws {
            guard limit > 0, limit <= 100_000 else { throw ValidationError("--limit must be between 1 and 100000") }
        }

        func run() async throws {
            let items = try filters.queryItems() + [URLQueryItem(name: "limit", value: "\(limit)")]
            var body = Data()
            try await admin.client().stream(AuditCommand.path("/v1/audit/events", items)) { body.append(contentsOf: $0.readableBytesView) }
            let records = try JSONSerialization.jsonObject(with: body) as? [[String: Any]] ?? []
            switch output {
            case .json:
                print(String(decoding: body, as: UTF8.self))
            case .table, .csv:
                let header = ["TIME", "CLUSTER", "USER", "VERB", "RESOURCE", "NAMESPACE", "NAME", "CODE"]
                let rows = records.map(AuditRow.init).map(\.cells)
                if output == .table {
                    print(Table.render(header, rows))
                } else {
                    print(([header] + rows).map { $0.map(CSV.escape).joined(separator: ",") }.joined(separator: "\n"))
                }
            }
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stream matching events as JSON lines to stdout, with progress on stderr.",
            discussion: "Each line: {\"cluster\": ..., \"sequence\": ..., \"event\": <the audit.k8s.io/v1 Event as received>}.")

        @OptionGroup var filters: Filters
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let out = FileHandle.standardOutput
            var lines = 0
            var bytes = 0
            var lastReport = ContinuousClock.now
            let started = ContinuousClock.now
            try await admin.client().stream(AuditCommand.path("/v1/audit/export", try filters.queryItems())) { chunk in
                let data = Data(chunk.readableBytesView)
                try out.write(contentsOf: data)
                lines += data.reduce(0) { $0 + ($1 == 10 ? 1 : 0) }
                bytes += data.count
                if ContinuousClock.now - lastReport > .seconds(1) {
                    lastReport = .now
                    FileHandle.standardError.write(Data("exported \(lines) events (\(bytes / 1024) KiB)...\n".utf8))
                }
            }
            let seconds = (ContinuousClock.now - started).seconds
            FileHandle.standardError.write(Data("exported \(lines) events (\(bytes / 1024) KiB) in \(String(format: "%.1f", seconds))s\n".utf8))
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Recompute the audit log's hash chain; exit non-zero naming the first changed, deleted or reordered batch.")

        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let report: AuditChainReport = try await admin.client().call(.GET, "/v1/audit/verify")
            if let problem = report.problem {
                FileHandle.standardError.write(Data("audit log FAILED verification after \(report.batchesChecked) good batches: \(problem)\n".utf8))
                throw ExitCode(2)
            }
            print("audit log verified: \(report.batchesChecked) batches, \(report.eventsChecked) events, chain intact")
        }
    }
}

enum AuditOutput: String, ExpressibleByArgument, CaseIterable {
    case table, json, csv
}

/// The columns `audit query` shows.
struct AuditRow {
    var cells: [String]

    init(_ record: [String: Any]) {
        let event = record["event"] as? [String: Any] ?? [:]
        let ref = event["objectRef"] as? [String: Any] ?? [:]
        var user = (event["user"] as? [String: Any])?["username"] as? String ?? "-"
        if let impersonated = (event["impersonatedUser"] as? [String: Any])?["username"] as? String {
            user += " (as \(impersonated))"
        }
        let code = ((event["responseStatus"] as? [String: Any])?["code"] as? Int).map(String.init) ?? "-"
        cells = [
            event["stageTimestamp"] as? String ?? "-", record["cluster"] as? String ?? "-", user,
            event["verb"] as? String ?? "-", ref["resource"] as? String ?? "-", ref["namespace"] as? String ?? "-",
            ref["name"] as? String ?? "-", code,
        ]
    }
}

enum CSV {
    static func escape(_ field: String) -> String {
        field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) ? "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : field
    }
}
