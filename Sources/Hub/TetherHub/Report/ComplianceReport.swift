import Foundation
import HubStore
import Shared

/// The compliance report for a period: who reached which cluster with what, the
/// just-in-time credentials, policy coverage, audit completeness and the zero-trust
/// checklist per cluster. `tether-hub report` and the console's report page show it;
/// its JSON is this structure.
struct ComplianceReport: Codable, Sendable, Equatable {
    var generatedAt: Date
    var since: Date
    var until: Date
    var hubVersion: String
    var access: AccessSection
    var credentials: CredentialSection
    var policy: PolicySection
    var audit: AuditSection
    var checklist: [ClusterChecklist]

    struct AccessSection: Codable, Sendable, Equatable {
        /// Proxied requests by person, cluster and the roles they had.
        var rows: [AccessRow]
        var byPerson: [Total]
        var byCluster: [Total]
        /// People refused at the hub: no AccessRole reaches the cluster.
        var refusals: [Refusal]
        var requests: Int
        /// Requests the cluster's API server refused (403) plus refusals at the hub.
        var denied: Int
    }

    struct AccessRow: Codable, Sendable, Equatable {
        var user: String
        var cluster: String
        var roles: [String]
        var requests: Int
        var denied: Int
    }

    struct Total: Codable, Sendable, Equatable {
        var name: String
        var requests: Int
        var denied: Int
        /// The clusters a person reached, or the people who reached a cluster.
        var with: [String]
    }

    struct Refusal: Codable, Sendable, Equatable {
        var user: String
        var cluster: String
        var count: Int
    }

    struct CredentialSection: Codable, Sendable, Equatable {
        /// One account per session and cluster reached (an idle account re-made on
        /// the session's next request is the same account).
        var created: Int
        var deleted: Int
        var live: Int
        var longestLived: Account?
        /// Accounts of ended sessions in clusters whose agent has not been back since
        /// the end: the agent cannot have removed them yet. Empty is the goal.
        var dangling: [Account]
    }

    struct Account: Codable, Sendable, Equatable {
        var user: String
        var cluster: String
        var session: String
        var createdAt: Date
        var endedAt: Date?
        var seconds: Double
    }

    struct PolicySection: Codable, Sendable, Equatable {
        var bundles: [BundleCoverage]
        var driftEvents: Int
        var repairs: [Repair]
        /// The agents' measure, from the change seen to the object put back.
        var medianRepairSeconds: Double?
        var maxRepairSeconds: Double?
    }

    struct BundleCoverage: Codable, Sendable, Equatable {
        var name: String
        var clusters: Int
        var inSync: Int
        var pending: Int
        var failed: Int
        var drifted: Int
        var failures: [String]
    }

    struct Repair: Codable, Sendable, Equatable {
        var cluster: String
        var object: String
        var at: Date
        var message: String
        var seconds: Double?
    }

    struct AuditSection: Codable, Sendable, Equatable {
        var chain: Chain
        var clusters: [AuditCompleteness]
    }

    struct Chain: Codable, Sendable, Equatable {
        var intact: Bool
        var batchesChecked: Int
        var eventsChecked: Int
        var problem: String?
    }

    struct AuditCompleteness: Codable, Sendable, Equatable {
        var cluster: String
        var eventsReceived: Int
        /// Webhook batches the agent's full spool answered 429.
        var spoolRefused: Int
        var offline: [Period]
        var offlineSeconds: Double
    }

    struct Period: Codable, Sendable, Equatable {
        var from: Date
        /// nil: still offline at the end of the period.
        var until: Date?
    }

    struct ClusterChecklist: Codable, Sendable, Equatable {
        var cluster: String
        var passed: Bool
        var checks: [Check]
    }

    struct Check: Codable, Sendable, Equatable {
        var name: String
        var passed: Bool
        var detail: String
    }
}

extension ComplianceReport {
    static let defaultPeriod: Duration = .seconds(30 * 24 * 3600)

    /// The checklist's names, in the order the report shows them.
    static let checkNames = [
        "TLS everywhere", "API server reached only through the agent", "SSO and a second factor for every person",
        "Agent certificate fresh and rotated", "No standing human credentials", "Admission policies present", "Audit aggregated with no gap",
    ]
}

extension HubCore {
    /// The report for `since ..< until`; a period that has not ended is cut at now.
    private static func timed<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> (T, Duration) {
        let started = ContinuousClock.now
        let value = try await body()
        return (value, ContinuousClock.now - started)
    }

    private static func ms(_ duration: Duration) -> Int { Int(duration.seconds * 1000) }

    func complianceReport(since: Date, until: Date? = nil) async throws -> ComplianceReport {
        let now = clock.now()
        let until = min(until ?? now, now)
        guard since < until else { throw TetherError(.invalidArgument, "the report's period is empty: it starts at or after its end") }
        let started = ContinuousClock.now
        // The chain check reads every event; it runs beside the aggregates (the
        // store's pool gives each its own reader).
        let database = self.database
        async let verifiedChain = Self.timed { try await database.verifyAuditChain() }
        let (facts, factsTime) = try await Self.timed { try await database.reportFacts(since: since, until: until) }
        let clusters = try await database.clusters().filter { $0.createdAt < until && ($0.revokedAt.map { $0 > since } ?? true) }
        let sessions = Dictionary(try await database.sessions(now: now, includeEnded: true).map { ($0.id, $0) }) { a, _ in a }
        let online = registry.connected

        // Access.
        var byPerson: [String: ComplianceReport.Total] = [:]
        var byCluster: [String: ComplianceReport.Total] = [:]
        func add(_ totals: inout [String: ComplianceReport.Total], _ key: String, _ other: String, requests: Int, denied: Int) {
            var total = totals[key] ?? .init(name: key, requests: 0, denied: 0, with: [])
            total.requests += requests
            total.denied += denied
            if !total.with.contains(other) { total.with.append(other) }
            totals[key] = total
        }
        let rows = facts.access.map { row in
            ComplianceReport.AccessRow(user: row.user, cluster: row.cluster, roles: row.grants.isEmpty ? [] : row.grants.components(separatedBy: ", "),
                                       requests: row.requests, denied: row.denied)
        }
        for row in rows {
            add(&byPerson, row.user, row.cluster, requests: row.requests, denied: row.denied)
            add(&byCluster, row.cluster, row.user, requests: row.requests, denied: row.denied)
        }
        for refusal in facts.refusals {
            add(&byPerson, refusal.user, refusal.cluster, requests: refusal.count, denied: refusal.count)
            add(&byCluster, refusal.cluster, refusal.user, requests: refusal.count, denied: refusal.count)
        }
        let sortTotals = { (totals: [String: ComplianceReport.Total]) in
            totals.values.map { var t = $0; t.with.sort(); return t }.sorted { ($0.requests, $1.name) > ($1.requests, $0.name) }
        }
        let access = ComplianceReport.AccessSection(
            rows: rows, byPerson: sortTotals(byPerson), byCluster: sortTotals(byCluster),
            refusals: facts.refusals.map { .init(user: $0.user, cluster: $0.cluster, count: $0.count) },
            requests: rows.reduce(0) { $0 + $1.requests } + facts.refusals.reduce(0) { $0 + $1.count },
            denied: rows.reduce(0) { $0 + $1.denied } + facts.refusals.reduce(0) { $0 + $1.count })

        // Presence: offline periods per cluster, from the channel's opening and closing.
        var presenceByCluster: [String: [ReportFacts.Presence]] = [:]
        for event in facts.presence { presenceByCluster[event.cluster, default: []].append(event) }
        func offlinePeriods(_ cluster: ClusterRecord) -> [ComplianceReport.Period] {
            let events = presenceByCluster[cluster.name] ?? []
            var periods: [ComplianceReport.Period] = []
            let isOnline = (try? ClusterName(cluster.name)).map { online.contains($0) } ?? false
            // The state it began the period in: the last channel event before it, or
            // offline from its registration until its first channel.
            var offlineSince: Date?
            if let before = events.first(where: { $0.at < since }) {
                offlineSince = before.connected ? nil : since
            } else if !(events.isEmpty && isOnline) {
                offlineSince = max(since, cluster.createdAt)
            }
            for event in events where event.at >= since {
                if event.connected {
                    if let start = offlineSince { periods.append(.init(from: start, until: event.at)) }
                    offlineSince = nil
                } else if offlineSince == nil {
                    offlineSince = event.at
                }
            }
            if let start = offlineSince { periods.append(.init(from: start, until: nil)) }
            return periods
        }

        // Just-in-time accounts: one per session and cluster reached.
        var accounts: [ComplianceReport.Account] = []
        var dangling: [ComplianceReport.Account] = []
        for use in facts.sessionUses {
            let session = sessions[use.session]
            let end = session.map { $0.revokedAt ?? $0.expiresAt }.flatMap { $0 <= now ? $0 : nil }
            let account = ComplianceReport.Account(user: use.user, cluster: use.cluster, session: use.session, createdAt: use.firstAt, endedAt: end,
                                                   seconds: (end ?? now).timeIntervalSince(use.firstAt))
            accounts.append(account)
            guard let end, let name = try? ClusterName(use.cluster), !online.contains(name) else { continue }
            // Removed when the agent heard of the end (it was connected then) or at its next start.
            let events = presenceByCluster[use.cluster] ?? []
            let connectedAtEnd = events.last { $0.at <= end }?.connected ?? false
            let backSince = events.contains { $0.connected && $0.at > end }
            if !connectedAtEnd && !backSince { dangling.append(account) }
        }
        let credentials = ComplianceReport.CredentialSection(
            created: accounts.count, deleted: accounts.filter { $0.endedAt != nil }.count - dangling.count,
            live: accounts.filter { $0.endedAt == nil }.count, longestLived: accounts.max { $0.seconds < $1.seconds }, dangling: dangling)

        // Policy coverage.
        var bundles: [ComplianceReport.BundleCoverage] = []
        var desired: [String: DesiredState] = [:]
        for cluster in clusters { desired[cluster.name] = try await database.desiredState(cluster.name) }
        for (name, _, _) in try await database.bundleDocuments() {
            let status = try await policyStatus(bundle: name)
            let covered = Set(status.map(\.cluster))
            var drifted = Set<String>()
            for repair in facts.repairs where covered.contains(repair.cluster) {
                let objects = desired[repair.cluster]?.objects ?? []
                if objects.contains(where: { $0.bundle == name && $0.key == repair.object }) { drifted.insert(repair.cluster) }
            }
            let failures: [String] = status.compactMap { row in row.message.map { "\(row.cluster): \($0)" } }
            bundles.append(.init(
                name: name, clusters: status.count, inSync: status.filter { $0.state == "in-sync" }.count,
                pending: status.filter { $0.state == "pending" }.count, failed: status.filter { $0.state == "failed" }.count,
                drifted: drifted.count, failures: failures))
        }
        let seconds = facts.repairs.compactMap(\.repairSeconds).sorted()
        let policy = ComplianceReport.PolicySection(
            bundles: bundles, driftEvents: facts.repairs.count,
            repairs: facts.repairs.map { .init(cluster: $0.cluster, object: $0.object, at: $0.at, message: $0.message, seconds: $0.repairSeconds) },
            medianRepairSeconds: seconds.isEmpty ? nil : seconds[seconds.count / 2], maxRepairSeconds: seconds.last)

        // Audit completeness.
        let (verified, chainTime) = try await verifiedChain
        let chain = ComplianceReport.Chain(intact: verified.problem == nil, batchesChecked: verified.batchesChecked,
                                           eventsChecked: verified.eventsChecked, problem: verified.problem)
        var completeness: [ComplianceReport.AuditCompleteness] = []
        for cluster in clusters {
            let offline = offlinePeriods(cluster)
            completeness.append(.init(cluster: cluster.name, eventsReceived: facts.eventsReceived[cluster.name] ?? 0,
                                      spoolRefused: facts.spoolRefusals[cluster.name] ?? 0, offline: offline,
                                      offlineSeconds: offline.reduce(0) { $0 + ($1.until ?? until).timeIntervalSince($1.from) }))
        }

        // The checklist.
        let certificates = try await database.allCertificates()
        var checklist: [ComplianceReport.ClusterChecklist] = []
        for cluster in clusters {
            var checks: [ComplianceReport.Check] = []
            checks.append(.init(name: ComplianceReport.checkNames[0], passed: true,
                                detail: "agent to hub: mutual TLS 1.2+ with certificates from the hub's CA; people to hub: TLS 1.2+"))
            checks.append(.init(name: ComplianceReport.checkNames[1], passed: true,
                                detail: "the agent dials out to the hub; people's requests reach the API server only through its tunnel"))
            let mine = access.rows.filter { $0.cluster == cluster.name }
            let uses = facts.sessionUses.filter { $0.cluster == cluster.name }
            let weak = Set(uses.filter { (facts.sessionMethods[$0.session] ?? sessions[$0.session]?.method ?? "") != "sso+totp"
                && (facts.sessionMethods[$0.session] ?? sessions[$0.session]?.method ?? "") != "sso+amr" }.map(\.user)).sorted()
            checks.append(.init(name: ComplianceReport.checkNames[2], passed: weak.isEmpty,
                                detail: mine.isEmpty ? "nobody reached it in the period"
                                    : weak.isEmpty ? "\(Set(mine.map(\.user)).count) people, all signed in with SSO and a second factor"
                                    : "reached without SSO and a second factor (operator-issued sessions) by: \(weak.joined(separator: ", "))"))
            let certs = certificates.filter { $0.cluster == cluster.name && $0.revokedAt == nil }
            if let latest = certs.max(by: { $0.issuedAt < $1.issuedAt }) {
                let age = until.timeIntervalSince(latest.issuedAt)
                let lifetime = latest.notAfter.timeIntervalSince(latest.issuedAt)
                let renewals = certificates.filter { $0.cluster == cluster.name && $0.purpose == "renew" && $0.issuedAt >= since }.count
                let fresh = latest.notAfter > until && age <= lifetime
                checks.append(.init(name: ComplianceReport.checkNames[3], passed: fresh,
                                    detail: "current certificate issued \(Report.duration(age)) ago, valid \(Report.duration(lifetime)); \(renewals) rotations in the period"
                                        + (fresh ? "" : "; it has expired")))
            } else {
                checks.append(.init(name: ComplianceReport.checkNames[3], passed: false, detail: "the agent has not enrolled"))
            }
            let standing = facts.standingUsers[cluster.name] ?? []
            checks.append(.init(name: ComplianceReport.checkNames[4], passed: standing.isEmpty,
                                detail: standing.isEmpty ? "every person's request came through a just-in-time service account"
                                    : "the cluster's audit shows people acting with credentials of its own: \(standing.joined(separator: ", "))"))
            let admission = (desired[cluster.name]?.objects ?? []).filter { $0.kind == ManagedKind.validatingAdmissionPolicy.rawValue }
            checks.append(.init(name: ComplianceReport.checkNames[5], passed: !admission.isEmpty,
                                detail: admission.isEmpty ? "no ValidatingAdmissionPolicy is in any bundle for this cluster"
                                    : admission.map { "ValidatingAdmissionPolicy/\($0.name)" }.joined(separator: ", ")))
            let audit = completeness.first { $0.cluster == cluster.name }!
            var gaps: [String] = []
            if !chain.intact { gaps.append("the hash chain does not verify") }
            if audit.spoolRefused > 0 { gaps.append("the agent's spool was full and refused \(audit.spoolRefused) webhook batches") }
            if audit.eventsReceived == 0 { gaps.append("no audit events received in the period (is the API server's webhook set up?)") }
            checks.append(.init(name: ComplianceReport.checkNames[6], passed: gaps.isEmpty,
                                detail: gaps.isEmpty ? "\(audit.eventsReceived) events received, chain intact, no spool overflow"
                                    + (audit.offline.isEmpty ? "" : "; offline \(Report.duration(audit.offlineSeconds)) (spooled, nothing lost)")
                                    : gaps.joined(separator: "; ")))
            checklist.append(.init(cluster: cluster.name, passed: checks.allSatisfy(\.passed), checks: checks))
        }

        logger.notice("compliance report built", metadata: [
            "since": "\(AuditTime.format(since))", "until": "\(AuditTime.format(until))", "aggregatesMs": "\(Self.ms(factsTime))",
            "chainMs": "\(Self.ms(chainTime))", "eventsVerified": "\(verified.eventsChecked)", "totalMs": "\(Self.ms(ContinuousClock.now - started))"])
        return ComplianceReport(generatedAt: now, since: since, until: until, hubVersion: TetherVersion.current, access: access,
                                credentials: credentials, policy: policy, audit: .init(chain: chain, clusters: completeness), checklist: checklist)
    }
}

/// Formatting the report's figures.
enum Report {
    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        if s < 120 { return "\(s) s" }
        if s < 7200 { return "\(s / 60) min" }
        if s < 172_800 { return "\(s / 3600) h" }
        return "\(s / 86400) d"
    }
}
