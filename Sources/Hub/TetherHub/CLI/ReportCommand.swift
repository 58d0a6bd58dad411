import ArgumentParser
import Foundation
import Shared

/// `tether-hub report`: the compliance report for a period, as HTML or JSON.
struct ReportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Write the compliance report for a period (who reached what, JIT credentials, policy, audit, zero-trust checklist).",
        discussion: """
            The report covers --since (a duration back from now, or an RFC 3339 time; default 30d) up to \
            --until (default now). HTML is one self-contained file (no network needed to view it; print it \
            for a PDF); JSON carries the same figures for other tools. The console shows it to admins at /console/report.
            """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case html, json }

    @Option(help: ArgumentHelp("Start of the period: a duration back from now (30d, 12h) or an RFC 3339 time.", valueName: "duration|time"))
    var since = "30d"
    @Option(help: ArgumentHelp("End of the period (RFC 3339); default now.", valueName: "time"))
    var until: String?
    @Option(help: "html or json.") var format: Format = .html
    @Option(name: .shortAndLong, help: ArgumentHelp("Write the report to this file instead of stdout.", valueName: "path"))
    var output: String?
    @OptionGroup var admin: AdminOptions

    func validate() throws {
        _ = try AuditCommand.Filters.time(since, allowDuration: true)
        if let until { _ = try AuditCommand.Filters.time(until, allowDuration: false) }
    }

    func run() async throws {
        var items = [URLQueryItem(name: "since", value: try AuditCommand.Filters.time(since, allowDuration: true))]
        if let until { items.append(URLQueryItem(name: "until", value: try AuditCommand.Filters.time(until, allowDuration: false))) }
        FileHandle.standardError.write(Data("building the report (the audit hash chain is verified in full)…\n".utf8))
        let started = ContinuousClock.now
        let report: ComplianceReport = try await admin.client().call(.GET, AuditCommand.path("/v1/report", items))
        let data: Data
        switch format {
        case .json:
            let encoder = JSONEncoder.tether
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            data = try encoder.encode(report)
        case .html:
            data = Data(report.standaloneHTML().utf8)
        }
        if let output {
            try AtomicFile.write(data, to: output, mode: 0o600)
            let failing = report.checklist.filter { !$0.passed }.count
            FileHandle.standardError.write(Data("""
                wrote \(output) (\(data.count) bytes) in \(Report.duration((ContinuousClock.now - started).seconds)): \
                \(report.access.requests) requests, \(report.credentials.created) JIT accounts, \(report.policy.driftEvents) drift events, \
                chain \(report.audit.chain.intact ? "intact" : "BROKEN"), \(report.checklist.count - failing)/\(report.checklist.count) clusters pass the checklist

                """.utf8))
        } else {
            FileHandle.standardOutput.write(data)
        }
    }
}
