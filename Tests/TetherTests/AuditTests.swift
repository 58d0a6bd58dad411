import AsyncHTTPClient
import Foundation
import NIOCore
import NIOSSL
import Shared
import TestSupport
import Testing
import X509
@testable import TetherAgent
@testable import HubStore
@testable import TetherHub

/// The audit pipeline end to end on loopback: the real API server's webhook bodies
/// posted over HTTPS to a real agent, forwarded over its channel to a real hub.
@Suite struct AuditTests {
    static func webhookFixtures() throws -> [(name: String, body: Data)] {
        try Fixtures.files(in: "audit/webhook").map { ($0.lastPathComponent, try Data(contentsOf: $0)) }
    }

    static func items(_ body: Data) throws -> [[String: Any]] {
        try (JSONSerialization.jsonObject(with: body) as! [String: Any])["items"] as! [[String: Any]]
    }

    /// Posts to the agent's webhook like the API server does: HTTPS, trusting the
    /// CA from `audit-kubeconfig`, with the webhook token.
    struct Webhook {
        let client: HTTPClient
        let url: String
        let token: String

        init(agent: TestAgent) async throws {
            let endpoint = try #require(agent.runtime.endpoint)
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(endpoint.caPEM.utf8)))
            client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
            url = "https://127.0.0.1:\(await agent.runtime.auditAddress.value.port!)/audit"
            token = endpoint.token
        }

        func post(_ body: Data, token: String? = nil) async throws -> (Int, String) {
            var request = HTTPClientRequest(url: url)
            request.method = .POST
            request.headers.add(name: "Authorization", value: "Bearer \(token ?? self.token)")
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
            let response = try await client.execute(request, timeout: .seconds(60))
            let text = String(buffer: try await response.body.collect(upTo: 1 << 20))
            return (Int(response.status.code), text)
        }

        func shutdown() async throws { try await client.shutdown() }
    }

    /// Runs `body` with a webhook client that is shut down however `body` ends.
    func withWebhook(_ agent: TestAgent, _ body: (Webhook) async throws -> Void) async throws {
        let webhook = try await Webhook(agent: agent)
        do {
            try await body(webhook)
        } catch {
            try? await webhook.shutdown()
            throw error
        }
        try await webhook.shutdown()
    }

    /// A copy of real events under fresh audit IDs, as an EventList body.
    static func eventList(from template: [[String: Any]], count: Int) throws -> Data {
        var items: [[String: Any]] = []
        for i in 0..<count {
            var event = template[i % template.count]
            event["auditID"] = UUID().uuidString.lowercased()
            items.append(event)
        }
        return try JSONSerialization.data(withJSONObject: ["kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": [:], "items": items])
    }

    /// Stores every webhook fixture as one batch each, as an agent would send them.
    @discardableResult
    static func ingestFixtures(into core: HubCore) async throws -> [[String: Any]] {
        var sequence: UInt64 = 1
        var all: [[String: Any]] = []
        for (_, body) in try webhookFixtures() {
            let items = try Self.items(body)
            let raws = try items.map { try JSONSerialization.data(withJSONObject: $0) }
            _ = try await core.ingestAudit(cluster: ClusterName("prod-eu"), firstSequence: sequence, events: raws)
            sequence += UInt64(raws.count)
            all += items
        }
        return all
    }

    func stored(_ hub: TestHub, cluster: String) async throws -> [StoredAuditEvent] {
        try await hub.core.database.auditEvents(AuditQuery(cluster: cluster, limit: 1_000_000, afterID: 0))
    }

    @Test func everyFixtureIsStoredAndRoundTripsThroughExportUnchanged() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        // The webhook bodies through the webhook, the log backend's file through --audit-log-file.
        let logFile = try Fixtures.url("audit/log/audit.log").path
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try hub.join("prod-eu"), audit: true, auditLogFile: logFile)
        var expected: [String: [String: Any]] = [:]
        let logLines = try AuditLogFollowerTests.realLines()
        for line in logLines {
            let item = try JSONSerialization.jsonObject(with: line) as! [String: Any]
            expected["\(item["auditID"]!)/\(item["stage"]!)"] = item
        }
        let fixtures = try Self.webhookFixtures()
        for (_, body) in fixtures {
            for item in try Self.items(body) { expected["\(item["auditID"]!)/\(item["stage"]!)"] = item }
        }
        let total = UInt64(expected.count)
        try await agent.waitUntilConnected()
        try await withWebhook(agent) { webhook in
            for (name, body) in fixtures {
                let (status, text) = try await webhook.post(body)
                #expect(status == 200, "\(name): \(text)")
            }
            try await eventually("agent spooled every event") { agent.runtime.spool.lastSequence == total }
            try await eventually("hub has every event") { try await hub.core.auditAcknowledged(ClusterName("prod-eu")) == total }

            // Export through the admin API, as `tether-hub audit export` does.
            let client = try AdminClient(credentialsPath: hub.dataDir + "/admin-credentials.json")
            var exported = Data()
            try await client.stream("/v1/audit/export?cluster=prod-eu") { exported.append(contentsOf: $0.readableBytesView) }
            let lines = exported.split(separator: UInt8(ascii: "\n"))
            #expect(lines.count == expected.count)
            for line in lines {
                let record = try JSONSerialization.jsonObject(with: Data(line)) as! [String: Any]
                #expect(record["cluster"] as? String == "prod-eu")
                let event = record["event"] as! [String: Any]
                let original = try #require(expected["\(event["auditID"]!)/\(event["stage"]!)"])
                #expect(NSDictionary(dictionary: event).isEqual(to: original), "event \(event["auditID"]!) changed in transit")
            }
            #expect(try await hub.core.database.verifyAuditChain().problem == nil)
        }
        try await agent.stop()
        try await hub.stop()
    }

    @Test func badBodiesAreRefusedAndNothingIsStored() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try hub.join("prod-eu"), audit: true)
        try await withWebhook(agent) { webhook in
            let real = try #require(try Self.webhookFixtures().first).body
            var wrongKind = try JSONSerialization.jsonObject(with: real) as! [String: Any]
            wrongKind["kind"] = "PodList"
            var wrongVersion = wrongKind
            wrongVersion["kind"] = "EventList"
            wrongVersion["apiVersion"] = "audit.k8s.io/v1beta1"
            var missingID = try JSONSerialization.jsonObject(with: real) as! [String: Any]
            var items = missingID["items"] as! [[String: Any]]
            items[1].removeValue(forKey: "auditID")
            missingID["items"] = items
            let cases: [(String, Data, Int, String)] = [
                ("malformed", Data("{not json".utf8), 400, "not an audit.k8s.io/v1 EventList"),
                ("truncated", real.prefix(real.count / 2), 400, "malformed"),
                ("wrong kind", try JSONSerialization.data(withJSONObject: wrongKind), 400, "kind must be EventList"),
                ("wrong version", try JSONSerialization.data(withJSONObject: wrongVersion), 400, "apiVersion must be audit.k8s.io/v1"),
                ("event without auditID", try JSONSerialization.data(withJSONObject: missingID), 400, "items[1] has no auditID"),
                // Checked against one `items`, it would have been stored from the other.
                ("items twice", Data(String(decoding: real, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).dropLast().utf8)
                    + Data(#","items":[{"event":"1"}]}"#.utf8),
                 400, "duplicate key items"),
                ("auditID twice", Data(String(decoding: real, as: UTF8.self)
                    .replacingOccurrences(of: #""auditID":"#, with: #""auditID":"00000000-0000-0000-0000-000000000000","auditID":"#).utf8),
                 400, "duplicate key items[0].auditID"),
                ("oversized", Data(repeating: UInt8(ascii: " "), count: (10 << 20) + 1), 413, "10 MiB"),
            ]
            for (name, body, status, fragment) in cases {
                let (code, text) = try await webhook.post(body)
                #expect(code == status, "\(name)")
                #expect(text.contains(fragment), "\(name): \(text)")
            }
            let (unauthorized, _) = try await webhook.post(real, token: "wrong")
            #expect(unauthorized == 401)
            #expect(agent.runtime.spool.lastSequence == 0, "nothing stored")
            let metrics = agent.runtime.metrics.exposition()
            #expect(metrics.contains(#"tether_agent_audit_batches_rejected_total{reason="malformed"} 7"#))
            #expect(metrics.contains(#"tether_agent_audit_batches_rejected_total{reason="oversized"} 1"#))
            #expect(metrics.contains(#"tether_agent_audit_batches_rejected_total{reason="unauthorized"} 1"#))
        }
        try await agent.stop()
        await #expect(try stored(hub, cluster: "prod-eu").isEmpty)
        try await hub.stop()
    }

    @Test func tenThousandEventsWhileTheHubIsDownArriveExactlyOnce() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let first = try await TestHub.start(dataDir: dir.sub("hub"))
        let port = first.agentPort
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try first.join("prod-eu"), audit: true)
        try await agent.waitUntilConnected()
        try await first.stop()

        let hub = Locked<TestHub?>(nil)
        try await withWebhook(agent) { webhook in
            let template = try Self.items(try Self.webhookFixtures().first { $0.name.hasPrefix("rbac") }!.body)
            for _ in 0..<25 {
                let (status, _) = try await webhook.post(try Self.eventList(from: template, count: 400))
                #expect(status == 200)
            }
            #expect(agent.runtime.spool.lastSequence == 10_000)
            #expect(agent.runtime.spool.acknowledged == 0)

            let restarted = try await TestHub.start(dataDir: dir.sub("hub"), listenPort: port)
            hub.value = restarted
            try await eventually(timeout: .seconds(60), "all delivered") { try await restarted.core.auditAcknowledged(ClusterName("prod-eu")) == 10_000 }
            let events = try await stored(restarted, cluster: "prod-eu")
            #expect(events.count == 10_000)
            #expect(Set(events.map(\.sequence)) == Set(1...10_000))
            try await eventually("spool trimmed to the ack") { agent.runtime.spool.acknowledged == 10_000 }
            await #expect(try restarted.core.database.verifyAuditChain().problem == nil)
        }
        try await agent.stop()
        try await hub.value?.stop()
    }

    @Test func aHubRestoredFromAnOlderBackupGetsNewEventsWithoutAGap() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let first = try await TestHub.start(dataDir: dir.sub("hub"))
        let port = first.agentPort
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try first.join("prod-eu"), audit: true)
        try await agent.waitUntilConnected()
        let hub = Locked<TestHub?>(nil)
        try await withWebhook(agent) { webhook in
            let template = try Self.items(try Self.webhookFixtures().first!.body)
            #expect(try await webhook.post(try Self.eventList(from: template, count: 300)).0 == 200)
            try await eventually("first events stored") { try await first.core.auditAcknowledged(ClusterName("prod-eu")) == 300 }
            _ = try HubBackup.create(dataDir: dir.sub("hub"), to: dir.sub("backup.tar")) { _ in }
            // Acknowledged (and trimmed at the agent) after the backup: gone with the restore.
            #expect(try await webhook.post(try Self.eventList(from: template, count: 200)).0 == 200)
            try await eventually("spool trimmed") { agent.runtime.spool.acknowledged == 500 }
            try await first.stop()
            // Spooled while the hub is down.
            #expect(try await webhook.post(try Self.eventList(from: template, count: 100)).0 == 200)

            _ = try HubBackup.restore(from: dir.sub("backup.tar"), dataDir: dir.sub("restored")) { _ in }
            let restored = try await TestHub.start(dataDir: dir.sub("restored"), listenPort: port)
            hub.value = restored
            // The hub has 300; the agent renumbers its 100 pending events to 301...400.
            try await eventually(timeout: .seconds(60), "pending events delivered") {
                try await restored.core.auditAcknowledged(ClusterName("prod-eu")) == 400
            }
            #expect(try await webhook.post(try Self.eventList(from: template, count: 50)).0 == 200)
            try await eventually("new events delivered") { try await restored.core.auditAcknowledged(ClusterName("prod-eu")) == 450 }
            let events = try await stored(restored, cluster: "prod-eu")
            #expect(events.count == 450)
            #expect(Set(events.map(\.sequence)) == Set(1...450))
            await #expect(try restored.core.database.verifyAuditChain().problem == nil)
        }
        try await agent.stop()
        try await hub.value?.stop()
    }

    @Test func aFullSpoolAnswers429AndLosesNothingItAccepted() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let first = try await TestHub.start(dataDir: dir.sub("hub"))
        let port = first.agentPort
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try first.join("prod-eu"), audit: true, spoolLimit: 256 << 10)
        try await agent.waitUntilConnected()
        try await first.stop()
        let hub = Locked<TestHub?>(nil)
        try await withWebhook(agent) { webhook in
            let template = try Self.items(try Self.webhookFixtures().first!.body)
            var accepted = 0
            var refused = 0
            while refused < 3 {
                let (status, text) = try await webhook.post(try Self.eventList(from: template, count: 20))
                if status == 200 { accepted += 20 } else {
                    #expect(status == 429, "\(text)")
                    refused += 1
                }
                #expect(accepted < 100_000)
            }
            #expect(accepted > 0)
            #expect(agent.runtime.metrics.exposition().contains(#"tether_agent_audit_batches_rejected_total{reason="spool-full"} 3"#))

            let restarted = try await TestHub.start(dataDir: dir.sub("hub"), listenPort: port)
            hub.value = restarted
            try await eventually(timeout: .seconds(30), "accepted events delivered") {
                try await restarted.core.auditAcknowledged(ClusterName("prod-eu")) == UInt64(accepted)
            }
            await #expect(try stored(restarted, cluster: "prod-eu").count == accepted)
            // Once drained (acknowledged, then trimmed: the trim follows the ack), the
            // webhook accepts again.
            try await eventually("spool drained") { agent.runtime.spool.acknowledged == UInt64(accepted) }
            try await eventually("the webhook accepts again") { try await webhook.post(try Self.eventList(from: template, count: 20)).0 == 200 }
            // The refusals are in the stream itself, ahead of that batch: the hub's report shows them.
            let exposition = agent.runtime.metrics.exposition()
            let line = try #require(exposition.split(separator: "\n").first { $0.hasPrefix(#"tether_agent_audit_batches_rejected_total{reason="spool-full"}"#) })
            let refusedTotal = try #require(Int(line.split(separator: " ").last ?? ""))
            #expect(refusedTotal >= 3)
            try await eventually("the spool-refused marker stored") {
                try await restarted.core.database.auditEvents(AuditQuery(cluster: "prod-eu", verb: spoolRefusedVerb)).count == 1
            }
            let report = try await restarted.core.complianceReport(since: Date().addingTimeInterval(-3600))
            #expect(report.audit.clusters.first { $0.cluster == "prod-eu" }?.spoolRefused == refusedTotal)
            #expect(report.checklist.first { $0.cluster == "prod-eu" }?.checks.last?.detail.contains("refused \(refusedTotal) webhook batches") == true)
        }
        try await agent.stop()
        try await hub.value?.stop()
    }

    @Test func theWebhookCertificateCoversTheServiceNamesAndExtraSANs() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // As the chart runs it: --audit-san for the release's Service and a fixed ClusterIP.
        let command = try RunCommand.parse([
            "--state-dir", dir.sub("agent"), "--audit-san", "edge-tether-agent.edge-system.svc", "--audit-san", "10.96.0.44",
        ])
        #expect(command.auditSan == ["edge-tether-agent.edge-system.svc", "10.96.0.44"])
        #expect(throws: (any Error).self) { try RunCommand.parse(["--state-dir", dir.sub("agent"), "--audit-san", "not a name"]) }
        #expect(throws: (any Error).self) { try RunCommand.parse(["--state-dir", dir.sub("agent"), "--audit-san", ""]) }

        let names = AuditEndpoint.defaultNames(namespace: "edge-system") + command.auditSan
        let endpoint = try AuditEndpoint.load(stateDir: dir.sub("agent"), names: names, certFile: nil, keyFile: nil)
        let certificate = try Certificate(pemEncoded: endpoint.certificateChainPEM[0])
        let sans = try #require(try certificate.extensions.subjectAlternativeNames)
        var dns: Set<String> = [], ips: Set<[UInt8]> = []
        for name in sans {
            switch name {
            case .dnsName(let n): dns.insert(n)
            case .ipAddress(let bytes): ips.insert(Array(bytes.bytes))
            default: break
            }
        }
        #expect(dns.isSuperset(of: ["tether-agent.edge-system.svc", "edge-tether-agent.edge-system.svc", "localhost"]))
        #expect(ips == [[10, 96, 0, 44], [127, 0, 0, 1]])
        // The CA and token survive a restart (a new serving certificate, same trust).
        let again = try AuditEndpoint.load(stateDir: dir.sub("agent"), names: names, certFile: nil, keyFile: nil)
        #expect(again.caPEM == endpoint.caPEM && again.token == endpoint.token)
    }

    @Test func queriesFilterByEachField() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        let all = try await Self.ingestFixtures(into: hub.core)
        func count(_ predicate: ([String: Any]) -> Bool) -> Int { all.filter(predicate).count }
        func query(_ q: AuditQuery) async throws -> [[String: Any]] {
            var q = q
            q.limit = 100_000
            return try await hub.core.database.auditEvents(q).map { try JSONSerialization.jsonObject(with: $0.event) as! [String: Any] }
        }
        let ref = { (e: [String: Any]) in e["objectRef"] as? [String: Any] ?? [:] }
        let user = { (e: [String: Any]) in (e["user"] as? [String: Any])?["username"] as? String }

        let patches = try await query(AuditQuery(cluster: "prod-eu", verb: "patch", resource: "clusterroles"))
        #expect(patches.count == count { $0["verb"] as? String == "patch" && ref($0)["resource"] as? String == "clusterroles" })
        #expect(!patches.isEmpty)
        let someUser = try #require(all.compactMap(user).first { $0.hasPrefix("system:serviceaccount") } ?? all.compactMap(user).first)
        await #expect(try query(AuditQuery(user: someUser)).count == count { user($0) == someUser || (($0["impersonatedUser"] as? [String: Any])?["username"] as? String) == someUser })
        let namespace = try #require(all.compactMap { ref($0)["namespace"] as? String }.first)
        await #expect(try query(AuditQuery(namespace: namespace)).count == count { ref($0)["namespace"] as? String == namespace })
        await #expect(try query(AuditQuery(cluster: "other")).isEmpty)
        let times = all.compactMap { $0["stageTimestamp"] as? String }.sorted()
        let middle = times[times.count / 2]
        let since = try #require(AuditTime.parse(middle))
        await #expect(try query(AuditQuery(since: since)).count == times.filter { $0 >= middle }.count)
        await #expect(try query(AuditQuery(until: since)).count == times.filter { $0 < middle }.count)
        let denied = try await query(AuditQuery(resource: "configmaps")).filter { ($0["responseStatus"] as? [String: Any])?["code"] as? Int == 422 }
        #expect(!denied.isEmpty, "the VAP denial fixture is findable")
    }

    @Test func verifyFindsARowAlteredOrDeletedWithTheSqliteShell() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        try await Self.ingestFixtures(into: hub.core)
        try await hub.stop()
        let db = hub.dataDir + "/hub.db"
        let hubBinary = try ChildProcess.binary("tether-hub")
        func verify() async throws -> (Int32, String) {
            let running = try await TestHub.start(dataDir: hub.dataDir)
            let result = try await runCommand(hubBinary, ["audit", "verify", "--credentials", hub.dataDir + "/admin-credentials.json"])
            try await running.stop()
            return (result.status, result.stdout + result.stderr)
        }
        func sqlite(_ sql: String) async throws {
            let result = try await runCommand("/usr/bin/sqlite3", [db, sql])
            #expect(result.status == 0, "\(result.stderr)")
        }
        let intact = try await verify()
        #expect(intact.0 == 0, "\(intact.1)")
        #expect(intact.1.contains("chain intact"))

        // Altered: one event's user rewritten in batch 3.
        try await sqlite("UPDATE auditEvents SET event = replace(event, '\"admin\"', '\"someone-else\"') WHERE id = (SELECT MIN(id) FROM auditEvents WHERE batch = 3)")
        let altered = try await verify()
        #expect(altered.0 != 0)
        #expect(altered.1.contains("batch 3"), "\(altered.1)")
        #expect(altered.1.contains("changed"))
    }

    @Test func verifyFindsADeletedRowAndADeletedBatch() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        try await Self.ingestFixtures(into: hub.core)
        try await hub.stop()
        let db = hub.dataDir + "/hub.db"
        func sqlite(_ sql: String) async throws { _ = try await runCommand("/usr/bin/sqlite3", [db, sql]) }
        func problem() async throws -> String? { try await HubDatabase(path: db).verifyAuditChain().problem }

        try await sqlite("DELETE FROM auditEvents WHERE id = (SELECT MAX(id) FROM auditEvents WHERE batch = 5)")
        #expect(try await problem()?.contains("batch 5") == true)
        try await sqlite("DELETE FROM auditEvents WHERE batch = 5; DELETE FROM auditBatches WHERE id = 5")
        let gone = try await problem()
        #expect(gone?.contains("batch 6") == true, "the batch after the deleted one no longer follows: \(gone ?? "nil")")
    }

    /// The chain check hashes slices of batches side by side: it must agree with the
    /// one-snapshot check on an intact log and find a change in any slice.
    @Test(arguments: [2, 3, 5])
    func slicedVerificationFindsAChangeInAnySlice(parallelism: Int) async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.sub("hub.db")
        let db = try HubDatabase(path: path)
        var sequence: UInt64 = 1
        for _ in 0..<3 {
            for (_, body) in try Self.webhookFixtures() {
                let events = try Self.items(body).map { try IndexedAuditEvent(raw: JSONSerialization.data(withJSONObject: $0)) }
                _ = try await db.ingestAudit(cluster: "c", firstSequence: sequence, events: events, now: Date())
                sequence += UInt64(events.count)
            }
        }
        let whole = try await db.verifyAuditChainInOneSnapshot()
        let sliced = try await db.verifyAuditChain(parallelism: parallelism)
        #expect(whole.problem == nil && sliced.problem == nil)
        #expect(sliced.batchesChecked == whole.batchesChecked && sliced.eventsChecked == whole.eventsChecked && whole.batchesChecked >= 6)
        let batches = try await runCommand("/usr/bin/sqlite3", [path, "SELECT id FROM auditBatches WHERE eventCount > 0 ORDER BY id"]).stdout
            .split(separator: "\n").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        // The first, a middle and the last batch: the first and the last slice at least.
        for batch in [batches.first!, batches[batches.count / 2], batches.last!] {
            let copy = dir.sub("tampered-\(batch).db")
            let copied = try await runCommand("/usr/bin/sqlite3", [path, "VACUUM INTO '\(copy)'"])
            #expect(copied.status == 0, "\(copied.stderr)")
            let changed = try await runCommand("/usr/bin/sqlite3", [copy, """
                UPDATE auditEvents SET event = CAST(replace(CAST(event AS TEXT), '"', ' "') AS BLOB) \
                WHERE id = (SELECT MAX(id) FROM auditEvents WHERE batch = \(batch)); SELECT changes();
                """])
            #expect(changed.status == 0 && changed.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "1", "\(changed)")
            let tampered = try HubDatabase(path: copy)
            let problem = try await tampered.verifyAuditChain(parallelism: parallelism).problem
            #expect(problem?.contains("batch \(batch) ") == true && problem?.contains("changed") == true, "\(problem ?? "nil")")
            #expect(problem == (try await tampered.verifyAuditChainInOneSnapshot().problem))
        }
    }

    @Test func retentionPrunesWholeBatchesAndVerificationStillHolds() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let db = try HubDatabase(path: dir.sub("hub.db"))
        let fixtures = try Self.webhookFixtures()
        var sequence: UInt64 = 1
        let start = Date().addingTimeInterval(-100 * 86_400)
        for (i, (_, body)) in fixtures.enumerated() {
            let events = try Self.items(body).map { try IndexedAuditEvent(raw: JSONSerialization.data(withJSONObject: $0)) }
            _ = try await db.ingestAudit(cluster: "c", firstSequence: sequence, events: events, now: start.addingTimeInterval(Double(i) * 20 * 86_400))
            sequence += UInt64(events.count)
        }
        let before = try await db.verifyAuditChain()
        let pruned = try await db.pruneAudit(before: Date().addingTimeInterval(-90 * 86_400))
        #expect(pruned > 0)
        let after = try await db.verifyAuditChain()
        #expect(after.problem == nil)
        #expect(after.batchesChecked < before.batchesChecked)
        await #expect(try db.auditAcknowledged("c") == sequence - 1, "the cursor is not rewound by pruning")
    }
}
