import Foundation
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherHub

/// The compliance report against a seeded history whose figures are known: accesses
/// (one denied by the API server, two refused at the hub), three just-in-time
/// accounts (one dangling: its cluster went offline before the session ended),
/// drift repairs, channel gaps, a full spool and a standing credential.
@Suite struct ReportTests {
    static let day: TimeInterval = 86_400

    struct Seeded {
        let hub: TestHub
        let clock: HubClock
        let now: Date
        let bob: SessionRecord
        let carol: SessionRecord
    }

    static func seed(_ dir: TemporaryDirectory) async throws -> Seeded {
        let clock = HubClock()
        let hub = try await TestHub.start(dataDir: dir.sub("hub"), clock: clock)
        let core = hub.core
        for (name, env) in [("prod-eu", "prod"), ("prod-us", "prod"), ("staging", "staging")] {
            _ = try await core.addCluster(ClusterName(name), labels: ["env": env])
        }
        _ = try await core.applyBundles(try PolicyParser.parse(yaml: """
            apiVersion: tether.dev/v1
            kind: PolicyBundle
            metadata: {name: guard}
            spec:
              clusterSelector: {matchLabels: {env: prod}}
              resources:
                - apiVersion: rbac.authorization.k8s.io/v1
                  kind: ClusterRole
                  metadata: {name: view-pods}
                  rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
                - apiVersion: admissionregistration.k8s.io/v1
                  kind: ValidatingAdmissionPolicy
                  metadata: {name: no-privileged}
                  spec:
                    matchConstraints: {resourceRules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]}
                    validations: [{expression: "true"}]
            """, file: "guard.yaml"))
        // Twenty days later: every seeded event falls after the clusters were registered.
        clock.advance(by: 20 * day)
        let now = clock.now()
        func at(_ ago: TimeInterval) -> Date { now.addingTimeInterval(-ago) }
        func record(_ action: HubAction, _ time: Date) async throws {
            try await core.database.appendHubAudit(try core.auditEvent(action, at: time), now: time)
        }
        let bob = try await core.createSession(user: "bob@example.com", groups: ["developers"], ttl: .seconds(8 * 3600), method: "sso+totp").session
        let carol = try await core.createSession(user: "carol", groups: [], ttl: .seconds(8 * 3600)).session
        func request(_ session: SessionRecord, _ cluster: String, grants: String, code: Int, _ time: Date) async throws {
            try await record(HubAction(verb: "get", resource: "pods", name: nil, user: session.user, code: code, sourceIP: nil, namespace: "default",
                                       apiGroup: "", groups: session.groups,
                                       annotations: ["tether.dev/cluster": cluster, "tether.dev/session": session.id, "tether.dev/proxied": "true",
                                                     "tether.dev/grants": grants]), time)
        }
        // Channels: prod-eu up since day 19; prod-us down 2 h on day 5 and since an hour ago; staging never.
        for (cluster, verb, ago) in [("prod-eu", "connect", 19 * day), ("prod-us", "connect", 19 * day), ("prod-us", "disconnect", 5 * day),
                                     ("prod-us", "connect", 5 * day - 7200), ("prod-us", "disconnect", 3600)] {
            try await record(AgentLinkService.channelAction(verb, try ClusterName(cluster)), at(ago))
        }
        for i in 0..<5 { try await request(bob, "prod-eu", grants: "ClusterRole/view", code: i == 4 ? 403 : 200, at(2 * day - Double(i) * 60)) }
        for i in 0..<2 { try await request(bob, "prod-us", grants: "ClusterRole/view", code: 200, at(day - Double(i) * 60)) }
        for i in 0..<3 { try await request(carol, "prod-us", grants: "ClusterRole/edit", code: 200, at(3 * 3600 - Double(i) * 60)) }
        for i in 0..<2 {
            try await record(HubAction(verb: "connect", resource: "clusters", name: "staging", user: "dave", code: 403, sourceIP: nil,
                                       message: "no AccessRole grants dave access"), at(day + Double(i)))
        }
        for (ago, ms) in [(3 * day, 40), (2 * day, 120)] {
            try await record(HubAction(verb: "repair", resource: "policyobjects", name: "ClusterRole/view-pods", user: "agent:prod-eu", code: 200,
                                       sourceIP: nil, message: "cluster prod-eu, bundle guard: reverted a change made in the cluster (repaired in \(ms) ms)"), at(ago))
        }
        // A session that ended after its cluster went offline: its account cannot have been removed yet.
        _ = try await core.revokeSessions(id: carol.id)
        // The clusters' own audit events.
        func event(_ user: String, _ time: Date, verb: String = "get", annotations: [String: String] = [:]) throws -> Data {
            var object: [String: Any] = ["kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": UUID().uuidString.lowercased(),
                                         "stage": "ResponseComplete", "verb": verb, "user": ["username": user],
                                         "requestReceivedTimestamp": AuditTime.format(time), "stageTimestamp": AuditTime.format(time)]
            if !annotations.isEmpty { object["annotations"] = annotations }
            // As the agent writes its markers (and the API server its events): '/' not escaped.
            return try JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])
        }
        _ = try await core.ingestAudit(cluster: ClusterName("prod-eu"), firstSequence: 1, events: [
            try event("system:serviceaccount:tether-system:tether-bob-1a2b3c", at(2 * day)), try event("system:kube-controller-manager", at(day)),
            try event("system:node:worker-1", at(3600)),
        ])
        _ = try await core.ingestAudit(cluster: ClusterName("staging"), firstSequence: 1, events: [
            try event("kubernetes-admin", at(4 * day)), try event("system:apiserver", at(day)),
        ])
        _ = try await core.ingestAudit(cluster: ClusterName("prod-us"), firstSequence: 1, events: [
            try event("system:tether-agent", at(6 * day), verb: spoolRefusedVerb, annotations: ["tether.dev/refused-batches": "4"]),
        ])
        return Seeded(hub: hub, clock: clock, now: now, bob: bob, carol: carol)
    }

    @Test func figuresMatchTheSeededHistoryInJSONAndInThePage() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let seeded = try await Self.seed(dir)
        let report = try await seeded.hub.core.complianceReport(since: seeded.now.addingTimeInterval(-30 * Self.day))

        // Who reached what.
        #expect(report.access.requests == 12)
        #expect(report.access.denied == 3)
        #expect(report.access.rows == [
            .init(user: "bob@example.com", cluster: "prod-eu", roles: ["ClusterRole/view"], requests: 5, denied: 1),
            .init(user: "bob@example.com", cluster: "prod-us", roles: ["ClusterRole/view"], requests: 2, denied: 0),
            .init(user: "carol", cluster: "prod-us", roles: ["ClusterRole/edit"], requests: 3, denied: 0),
        ])
        #expect(report.access.refusals == [.init(user: "dave", cluster: "staging", count: 2)])
        #expect(report.access.byPerson.map(\.name) == ["bob@example.com", "carol", "dave"])
        #expect(report.access.byPerson.map(\.requests) == [7, 3, 2])
        #expect(report.access.byCluster.first { $0.name == "prod-us" }?.with == ["bob@example.com", "carol"])

        // Just-in-time accounts: bob's two live, carol's dangling in prod-us.
        #expect(report.credentials.created == 3)
        #expect(report.credentials.live == 2)
        #expect(report.credentials.deleted == 0)
        #expect(report.credentials.dangling.map { "\($0.user)@\($0.cluster)" } == ["carol@prod-us"])
        #expect(report.credentials.longestLived?.user == "bob@example.com" && report.credentials.longestLived?.cluster == "prod-eu")
        // Live: it runs from its first request (two days before the seed's end) to the report's making.
        let bobLived = report.generatedAt.timeIntervalSince(seeded.now) + 2 * Self.day
        #expect(abs((report.credentials.longestLived?.seconds ?? 0) - bobLived) < 0.01)

        // Policy: one bundle on the two prod clusters (no agent reported yet), two drifts repaired.
        #expect(report.policy.bundles == [.init(name: "guard", clusters: 2, inSync: 0, pending: 2, failed: 0, drifted: 1, failures: [])])
        #expect(report.policy.driftEvents == 2)
        #expect(report.policy.medianRepairSeconds == 0.12 && report.policy.maxRepairSeconds == 0.12)
        #expect(HubDatabase.repairSeconds("reverted a change made in the cluster (repaired in 7 ms)") == 0.007)
        #expect(HubDatabase.repairSeconds("reverted a change made in the cluster") == nil)

        // Audit completeness.
        #expect(report.audit.chain.intact)
        let audit = Dictionary(uniqueKeysWithValues: report.audit.clusters.map { ($0.cluster, $0) })
        #expect(audit["prod-eu"]?.eventsReceived == 3 && audit["staging"]?.eventsReceived == 2 && audit["prod-us"]?.eventsReceived == 1)
        #expect(audit["prod-us"]?.spoolRefused == 4 && audit["prod-eu"]?.spoolRefused == 0)
        // prod-us: registration to its first channel (a day), 2 h on day 5, the last hour.
        #expect(audit["prod-us"]?.offline.count == 3)
        // Exact figures from the registration times and the report's end (the seed's own
        // run time moves both, however slow the machine).
        let registered = Dictionary(uniqueKeysWithValues: try await seeded.hub.core.database.clusters().map { ($0.name, $0.createdAt) })
        let prodUSOffline = seeded.now.addingTimeInterval(-19 * Self.day).timeIntervalSince(try #require(registered["prod-us"]))
            + 7200 + report.until.timeIntervalSince(seeded.now.addingTimeInterval(-3600))
        #expect(prodUSOffline > Self.day && prodUSOffline < Self.day + 7200 + 3600 + 600)
        #expect(abs((audit["prod-us"]?.offlineSeconds ?? 0) - prodUSOffline) < 0.01)
        #expect(audit["prod-us"]?.offline.last?.until == nil)
        let stagingOffline = report.until.timeIntervalSince(try #require(registered["staging"]))
        #expect(stagingOffline > 20 * Self.day && stagingOffline < 20 * Self.day + 600)
        #expect(abs((audit["staging"]?.offlineSeconds ?? 0) - stagingOffline) < 0.01)

        // The checklist.
        func check(_ cluster: String, _ index: Int) -> ComplianceReport.Check? {
            report.checklist.first { $0.cluster == cluster }?.checks.first { $0.name == ComplianceReport.checkNames[index] }
        }
        #expect(check("prod-eu", 2)?.passed == true)
        #expect(check("prod-us", 2)?.passed == false && check("prod-us", 2)?.detail.contains("carol") == true)
        #expect(check("prod-eu", 3)?.passed == false)  // no agent ever enrolled in this seed
        #expect(check("staging", 4)?.passed == false && check("staging", 4)?.detail.contains("kubernetes-admin") == true)
        #expect(check("prod-eu", 4)?.passed == true)
        #expect(check("prod-eu", 5)?.passed == true && check("staging", 5)?.passed == false)
        #expect(check("prod-us", 6)?.passed == false && check("prod-us", 6)?.detail.contains("refused 4") == true)
        #expect(check("prod-eu", 6)?.passed == true)
        #expect(report.checklist.allSatisfy { !$0.passed })

        // The JSON the CLI writes carries the same figures.
        let json = try JSONEncoder.tether.encode(report)
        let decoded = try JSONDecoder.tether.decode(ComplianceReport.self, from: json)
        #expect(decoded.access == report.access && decoded.credentials.dangling.count == 1)

        // The page shows them, escaped, with its charts and print stylesheet.
        let page = report.standaloneHTML()
        for figure in ["<span id=\"total-requests\">12</span>", "<span id=\"total-denied\">3</span>", "<span id=\"jit-created\">3</span>",
                       "<span id=\"jit-dangling\">1</span>", "<span id=\"drift-events\">2</span>", "@media print", "<svg", "kubernetes-admin",
                       "median <strong>120 ms</strong>", "id=\"checklist-staging\""] {
            #expect(page.contains(figure), "the page lacks \(figure)")
        }
        #expect(page.contains("<td>carol</td><td>prod-us</td>"))
        try await seeded.hub.stop()
    }

    @Test func theCLIWritesHTMLAndJSONAndRefusesABadPeriod() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let seeded = try await Self.seed(dir)
        let credentials = seeded.hub.dataDir + "/admin-credentials.json"
        let cli = try ChildProcess.binary("tether-hub")
        // The CLI asks the hub, whose clock is 20 days ahead: an explicit period.
        let since = AuditTime.format(seeded.now.addingTimeInterval(-30 * Self.day))
        let json = try await runCommand(cli, ["report", "--since", since, "--format", "json", "--output", dir.sub("r.json"), "--credentials", credentials])
        #expect(json.status == 0, "\(json.stderr)")
        #expect(json.stderr.contains("12 requests") && json.stderr.contains("chain intact"), "\(json.stderr)")
        let report = try JSONDecoder.tether.decode(ComplianceReport.self, from: Data(contentsOf: URL(fileURLWithPath: dir.sub("r.json"))))
        #expect(report.access.requests == 12 && report.credentials.dangling.count == 1)
        let html = try await runCommand(cli, ["report", "--since", since, "--output", dir.sub("r.html"), "--credentials", credentials])
        #expect(html.status == 0, "\(html.stderr)")
        let page = try String(contentsOfFile: dir.sub("r.html"), encoding: .utf8)
        #expect(page.hasPrefix("<!doctype html>") && page.contains("<span id=\"total-requests\">12</span>") && !page.contains("<script"))
        let bad = try await runCommand(cli, ["report", "--since", "yesterday", "--credentials", credentials])
        #expect(bad.status != 0 && bad.stderr.contains("'yesterday' is not a duration"), "\(bad.stderr)")
        try await seeded.hub.stop()
    }
}
