import Foundation
import GRDB
import Shared

/// What the audit log and the registry say about a period, aggregated by SQLite
/// (the compliance report reads a million events without decoding them in Swift).
package struct ReportFacts: Sendable {
    /// Proxied Kubernetes requests of one person to one cluster with one set of grants.
    package struct Access: Sendable, Equatable {
        package var user: String
        package var cluster: String
        package var grants: String
        package var requests: Int
        /// Answered 403 by the cluster's API server (RBAC said no).
        package var denied: Int
    }

    /// A person refused at the hub (no AccessRole reaches the cluster).
    package struct Refusal: Sendable, Equatable {
        package var user: String
        package var cluster: String
        package var count: Int
    }

    /// One session's requests to one cluster: its just-in-time account's life.
    package struct SessionUse: Sendable, Equatable {
        package var session: String
        package var user: String
        package var cluster: String
        package var firstAt: Date
        package var lastAt: Date
    }

    /// An agent's channel opening or closing, as the hub logged it.
    package struct Presence: Sendable, Equatable {
        package var cluster: String
        package var connected: Bool
        package var at: Date
    }

    /// A drifted policy object the agent put back.
    package struct Repair: Sendable, Equatable {
        package var cluster: String
        package var object: String
        package var message: String
        package var at: Date
        /// How long the object was drifted, as the agent measured it (nil: not said).
        package var repairSeconds: Double?
    }

    package var access: [Access] = []
    package var refusals: [Refusal] = []
    package var sessionUses: [SessionUse] = []
    /// Channel events inside the period, and for each cluster the last one before it.
    package var presence: [Presence] = []
    package var repairs: [Repair] = []
    /// Audit events received from each cluster in the period.
    package var eventsReceived: [String: Int] = [:]
    /// Audit webhook batches each agent answered 429 (spool full), from the markers
    /// the agent writes into its stream once it has room again.
    package var spoolRefusals: [String: Int] = [:]
    /// People (not `system:` accounts) that acted in each cluster with a credential
    /// of the cluster's own: standing credentials, not Tether's just-in-time ones.
    package var standingUsers: [String: [String]] = [:]
    /// Each session's sign-in method.
    package var sessionMethods: [String: String] = [:]
}

/// The verb of the marker event an agent writes when its spool refused audit batches.
package let spoolRefusedVerb = SpoolRefusalMarker.verb
package let spoolRefusedUser = SpoolRefusalMarker.user

extension HubDatabase {
    package func reportFacts(since: Date, until: Date) async throws -> ReportFacts {
        let from = AuditTime.format(since)
        let to = AuditTime.format(until)
        return try await writer.read { db in
            var facts = ReportFacts()
            // SQLite (3.40) matches a path's key against the key as written: these
            // annotations are written by the hub and the agent with '/' unescaped.
            let annotation = { (key: String) in "json_extract(CAST(event AS TEXT), '$.annotations.\"tether.dev/\(key)\"')" }
            // Every proxied request is one hub event with its cluster, session and grants as annotations.
            let proxied = """
                SELECT user, \(annotation("cluster")) AS target, COALESCE(\(annotation("grants")), '') AS grants,
                       \(annotation("session")) AS session, code, time
                FROM auditEvents WHERE cluster = 'hub' AND time >= ? AND time < ? AND \(annotation("proxied")) = 'true'
                """
            // One pass over them: per person, cluster, grants and session, folded below
            // into accesses (person, cluster, grants) and session uses (session, cluster).
            var access: [String: ReportFacts.Access] = [:]
            var uses: [String: ReportFacts.SessionUse] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT user, target, grants, session, COUNT(*) AS requests, SUM(code = 403) AS denied, MIN(time) AS firstAt, MAX(time) AS lastAt
                FROM (\(proxied)) GROUP BY user, target, grants, session
                """, arguments: [from, to]) {
                let user: String = row["user"] ?? "", cluster: String = row["target"] ?? "", grants: String = row["grants"]
                let requests: Int = row["requests"], denied: Int = row["denied"] ?? 0
                let accessKey = "\(user)\u{0}\(cluster)\u{0}\(grants)"
                var total = access[accessKey] ?? .init(user: user, cluster: cluster, grants: grants, requests: 0, denied: 0)
                total.requests += requests
                total.denied += denied
                access[accessKey] = total
                guard let session: String = row["session"], let first = AuditTime.parse(row["firstAt"]), let last = AuditTime.parse(row["lastAt"]) else { continue }
                let key = "\(session)\u{0}\(cluster)"
                if var use = uses[key] {
                    use.firstAt = min(use.firstAt, first)
                    use.lastAt = max(use.lastAt, last)
                    uses[key] = use
                } else {
                    uses[key] = .init(session: session, user: user, cluster: cluster, firstAt: first, lastAt: last)
                }
            }
            facts.access = access.values.sorted { ($0.user, $0.cluster, $0.grants) < ($1.user, $1.cluster, $1.grants) }
            facts.sessionUses = uses.values.sorted { ($0.firstAt, $0.session, $0.cluster) < ($1.firstAt, $1.session, $1.cluster) }
            for row in try Row.fetchAll(db, sql: """
                SELECT user, name, COUNT(*) AS n FROM auditEvents
                WHERE cluster = 'hub' AND verb = 'connect' AND resource = 'clusters' AND code = 403 AND time >= ? AND time < ?
                GROUP BY user, name ORDER BY user, name
                """, arguments: [from, to]) {
                facts.refusals.append(.init(user: row["user"] ?? "", cluster: row["name"] ?? "", count: row["n"]))
            }
            // Channel events: those of the period, and the last one before it (the state it began in).
            for row in try Row.fetchAll(db, sql: """
                SELECT name, verb, time FROM auditEvents
                WHERE cluster = 'hub' AND resource = 'agentchannels' AND time >= ? AND time < ? ORDER BY time, id
                """, arguments: [from, to]) {
                guard let at = AuditTime.parse(row["time"]) else { continue }
                facts.presence.append(.init(cluster: row["name"] ?? "", connected: (row["verb"] as String?) == "connect", at: at))
            }
            var before: [ReportFacts.Presence] = []
            for row in try Row.fetchAll(db, sql: """
                SELECT name, verb, MAX(time) AS time FROM auditEvents
                WHERE cluster = 'hub' AND resource = 'agentchannels' AND time < ? GROUP BY name
                """, arguments: [from]) {
                guard let at = AuditTime.parse(row["time"]) else { continue }
                before.append(.init(cluster: row["name"] ?? "", connected: (row["verb"] as String?) == "connect", at: at))
            }
            facts.presence = before.sorted { $0.cluster < $1.cluster } + facts.presence
            for row in try Row.fetchAll(db, sql: """
                SELECT user, name, time, \(annotation("message")) AS message FROM auditEvents
                WHERE cluster = 'hub' AND verb = 'repair' AND resource = 'policyobjects' AND time >= ? AND time < ? ORDER BY time, id
                """, arguments: [from, to]) {
                guard let at = AuditTime.parse(row["time"]) else { continue }
                let agent: String = row["user"] ?? ""
                facts.repairs.append(.init(cluster: agent.hasPrefix("agent:") ? String(agent.dropFirst(6)) : agent, object: row["name"] ?? "",
                                           message: row["message"] ?? "", at: at, repairSeconds: Self.repairSeconds(row["message"] ?? "")))
            }
            // Batches carry their event count: a million events are a few hundred rows here.
            for row in try Row.fetchAll(db, sql: """
                SELECT cluster, SUM(eventCount) AS n FROM auditBatches WHERE cluster != 'hub' AND receivedAt >= ? AND receivedAt < ? GROUP BY cluster
                """, arguments: [since, until]) {
                facts.eventsReceived[row["cluster"]] = row["n"]
            }
            for row in try Row.fetchAll(db, sql: """
                SELECT cluster, SUM(CAST(COALESCE(\(annotation("refused-batches")), '1') AS INTEGER)) AS n FROM auditEvents
                WHERE user = ? AND verb = ? AND cluster != 'hub' AND time >= ? AND time < ? GROUP BY cluster
                """, arguments: [spoolRefusedUser, spoolRefusedVerb, from, to]) {
                facts.spoolRefusals[row["cluster"]] = row["n"]
            }
            // Two ranges of the user index (below and above every "system:…" name), not a scan.
            for row in try Row.fetchAll(db, sql: """
                SELECT DISTINCT cluster, user FROM auditEvents INDEXED BY auditEventsUserTime
                WHERE (user < 'system:' OR user >= 'system;') AND cluster != 'hub' AND time >= ? AND time < ?
                ORDER BY cluster, user
                """, arguments: [from, to]) {
                facts.standingUsers[row["cluster"], default: []].append(row["user"])
            }
            for row in try Row.fetchAll(db, sql: "SELECT id, method FROM sessions WHERE createdAt < ? AND expiresAt >= ?", arguments: [until, since]) {
                facts.sessionMethods[row["id"]] = row["method"]
            }
            return facts
        }
    }

    /// The agent's measure in a repair's message: "… (repaired in 12 ms)".
    package static func repairSeconds(_ message: String) -> Double? {
        guard let open = message.range(of: "(repaired in ", options: .backwards),
              let end = message[open.upperBound...].range(of: " ms)") else { return nil }
        return Double(message[open.upperBound..<end.lowerBound]).map { $0 / 1000 }
    }

    /// Certificates issued to each cluster, oldest first.
    package func allCertificates() async throws -> [CertificateRecord] {
        try await writer.read { db in try CertificateRecord.order(Column("issuedAt")).fetchAll(db) }
    }
}
