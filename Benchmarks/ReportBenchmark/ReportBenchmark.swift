import BenchSupport
import Foundation
import HubStore
import Shared

/// Compliance-report benchmark: a real `tether-hub` whose database holds 30 days of
/// 100 clusters and 1,000,000 audit events (the clusters' own events plus the hub's
/// proxied requests of 200 people, channel gaps, drift repairs and refusals), then
/// `tether-hub report` for the last 30 days, as HTML and as JSON, timed end to end
/// (process start, admin API, every aggregate, the full hash-chain verification, the
/// page). Goal: under 2 s.
///
///     swift build -c release
///     .build/release/tether-bench-report [--events 1000000] [--clusters 100] [--people 200] [--runs 3]
@main
struct ReportBenchmark {
    static func main() async throws {
        var options = [String: String]()
        var args = CommandLine.arguments.dropFirst()
        while let key = args.popFirst() {
            guard key.hasPrefix("--"), let value = args.popFirst() else {
                print("usage: tether-bench-report [--events N] [--clusters N] [--people N] [--runs N] [--bin DIR] [--keep DIR]")
                print("  --keep DIR: seed the history into DIR and keep it; a later run with the same DIR reuses it")
                exit(2)
            }
            options[String(key.dropFirst(2))] = value
        }
        let totalEvents = Int(options["events"] ?? "1000000")!
        let clusters = Int(options["clusters"] ?? "100")!
        let people = Int(options["people"] ?? "200")!
        let runs = Int(options["runs"] ?? "3")!
        let bin = options["bin"] ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        let keep = options["keep"]
        let work = keep ?? FileManager.default.temporaryDirectory.appendingPathComponent("tether-bench-report-\(getpid())").path
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { if keep == nil { try? FileManager.default.removeItem(atPath: work) } }
        let dataDir = work + "/hub"
        let reuse = keep != nil && FileManager.default.fileExists(atPath: dataDir + "/seeded.json")
        let serve = ["serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--access-listen", "none",
                     "--advertise", "127.0.0.1"]

        let seeded: (cluster: Int, hub: Int)
        if reuse, let data = FileManager.default.contents(atPath: dataDir + "/seeded.json"),
           let counts = try JSONSerialization.jsonObject(with: data) as? [String: Int] {
            seeded = (counts["cluster"] ?? 0, counts["hub"] ?? 0)
            print("reusing the history seeded in \(dataDir): \(seeded.cluster + seeded.hub) audit events")
        } else {
            // A first start makes the data dir (CA, keys, database); the history goes in while it is stopped.
            let first = try Child(bin + "/tether-hub", serve + ["--log-level", "notice"])
            _ = try await first.waitFor("hub ready")
            await first.stop()

            let seeding = ContinuousClock.now
            let counts = try await seed(database: HubDatabase(path: dataDir + "/hub.db"), events: totalEvents, clusters: clusters, people: people)
            let seedSeconds = (ContinuousClock.now - seeding).seconds
            let dbBytes = (try? FileManager.default.attributesOfItem(atPath: dataDir + "/hub.db")[.size] as? Int) ?? 0
            print(String(format: "seeded: %d clusters, %d people, %d audit events (%d from clusters, %d hub), database %.0f MiB, in %.1f s",
                         clusters, people, counts.cluster + counts.hub, counts.cluster, counts.hub, Double(dbBytes) / 1_048_576, seedSeconds))
            seeded = counts
            if keep != nil {
                try JSONSerialization.data(withJSONObject: ["cluster": counts.cluster, "hub": counts.hub]).write(to: URL(fileURLWithPath: dataDir + "/seeded.json"))
            }
        }

        let hub = try Child(bin + "/tether-hub", serve + ["--log-level", "notice"])
        defer { hub.kill() }
        _ = try await hub.waitFor("hub ready")
        let credentials = dataDir + "/admin-credentials.json"
        var html: [Double] = []
        var json: [Double] = []
        for run in 1...runs {
            for format in ["html", "json"] {
                let output = work + "/report.\(format)"
                let started = ContinuousClock.now
                let summary = try Self.run(bin + "/tether-hub", ["report", "--since", "30d", "--format", format, "--output", output, "--credentials", credentials])
                let seconds = (ContinuousClock.now - started).seconds
                let size = (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0
                print(String(format: "run %d %@: %.3f s, %d KiB; %@", run, format, seconds, size / 1024,
                             summary.trimmingCharacters(in: .whitespacesAndNewlines).components(separatedBy: ": ").dropFirst().joined(separator: ": ")))
                if format == "html" { html.append(seconds) } else { json.append(seconds) }
            }
        }
        // The hub's own account of each report: aggregates and chain check (they run side by side).
        for line in hub.output.value.split(separator: "\n") where line.contains("compliance report built") {
            let fields = ["aggregatesMs", "chainMs", "eventsVerified", "totalMs"].compactMap { key -> String? in
                guard let range = line.range(of: "\(key)=") else { return nil }
                return "\(key) " + line[range.upperBound...].prefix { $0 != " " }
            }
            print("hub: " + fields.joined(separator: ", "))
        }
        let median = { (values: [Double]) in values.sorted()[values.count / 2] }
        print(String(format: "report: 30 days, %d clusters, %d events: html median %.3f s (best %.3f), json median %.3f s (best %.3f); goal < 2 s",
                     clusters, seeded.cluster + seeded.hub, median(html), html.min()!, median(json), json.min()!))
        await hub.stop()
    }

    /// The history: returns how many cluster and hub events were stored.
    static func seed(database: HubDatabase, events total: Int, clusters: Int, people: Int) async throws -> (cluster: Int, hub: Int) {
        let now = Date()
        let day: TimeInterval = 86_400
        let start = now.addingTimeInterval(-30 * day)
        let names = (0..<clusters).map { String(format: "cluster-%03d", $0) }
        for (i, name) in names.enumerated() {
            _ = try await database.addCluster(try ClusterName(name), labels: ["env": i % 4 == 0 ? "staging" : "prod", "region": ["eu", "us", "ap"][i % 3]],
                                              now: start.addingTimeInterval(-day))
        }
        // Sessions: one per person per day they worked (a third of the days).
        var sessions: [(id: String, user: String)] = []
        for p in 0..<people {
            for d in stride(from: p % 3, to: 30, by: 3) {
                let created = start.addingTimeInterval(Double(d) * day + 8 * 3600)
                let record = SessionRecord(id: "s\(p)d\(d)", user: "person-\(p)@example.com", groups: ["developers"],
                                           method: p % 10 == 0 ? "operator" : "sso+totp", issuedBy: p % 10 == 0 ? "operator" : "person-\(p)@example.com",
                                           createdAt: created, expiresAt: created.addingTimeInterval(8 * 3600))
                try await database.createSession(record)
                sessions.append((record.id, record.user))
            }
        }

        // The hub's own log: a tenth of the events, proxied requests with channel gaps, repairs, refusals.
        let hubTotal = total / 10
        var hubEvents: [(Date, Data)] = []
        hubEvents.reserveCapacity(hubTotal)
        for (i, name) in names.enumerated() {
            hubEvents.append((start.addingTimeInterval(60), hubEvent(verb: "connect", resource: "agentchannels", name: name, user: "agent:\(name)", code: 200, annotations: [:],
                                                                   at: start.addingTimeInterval(60))))
            if i % 10 == 0 {
                let down = start.addingTimeInterval(Double(i % 30) * day + 3600)
                hubEvents.append((down, hubEvent(verb: "disconnect", resource: "agentchannels", name: name, user: "agent:\(name)", code: 200, annotations: [:], at: down)))
                let up = down.addingTimeInterval(5400)
                hubEvents.append((up, hubEvent(verb: "connect", resource: "agentchannels", name: name, user: "agent:\(name)", code: 200, annotations: [:], at: up)))
            }
        }
        for i in 0..<500 {
            let at = start.addingTimeInterval(Double(i) * 30 * day / 500)
            let name = names[i % names.count]
            hubEvents.append((at, hubEvent(verb: "repair", resource: "policyobjects", name: "ClusterRole/view-pods", user: "agent:\(name)", code: 200,
                                           annotations: ["tether.dev/message": "cluster \(name), bundle guard: reverted a change made in the cluster (repaired in \(20 + i % 80) ms)"], at: at)))
        }
        var rng = SystemRandomNumberGenerator()
        while hubEvents.count < hubTotal {
            let session = sessions[Int.random(in: 0..<sessions.count, using: &rng)]
            let d = Int(session.id.split(separator: "d").last!)!
            let at = start.addingTimeInterval(Double(d) * day + 8 * 3600 + Double.random(in: 0..<(8 * 3600), using: &rng))
            let cluster = names[(Int(session.user.dropFirst(7).prefix { $0 != "@" })! * 7 + hubEvents.count % 3) % names.count]
            let denied = hubEvents.count % 50 == 0
            if hubEvents.count % 400 == 0 {
                hubEvents.append((at, hubEvent(verb: "connect", resource: "clusters", name: cluster, user: session.user, code: 403,
                                               annotations: ["tether.dev/message": "no AccessRole grants \(session.user) access"], at: at)))
                continue
            }
            hubEvents.append((at, hubEvent(verb: "get", resource: "pods", name: nil, user: session.user, code: denied ? 403 : 200, annotations: [
                "tether.dev/cluster": cluster, "tether.dev/session": session.id, "tether.dev/proxied": "true", "tether.dev/grants": "ClusterRole/view",
                "tether.dev/latency-ms": "3", "tether.dev/response-bytes": "2048",
            ], at: at)))
        }
        hubEvents.sort { $0.0 < $1.0 }
        var sequence = try await database.auditAcknowledged("hub")
        for chunk in stride(from: 0, to: hubEvents.count, by: 10_000) {
            let slice = hubEvents[chunk..<min(chunk + 10_000, hubEvents.count)]
            let indexed = try slice.map { try IndexedAuditEvent(raw: $0.1) }
            sequence = try await database.ingestAudit(cluster: "hub", firstSequence: sequence + 1, events: indexed, now: slice.last!.0)
        }

        // The clusters' own events, in batches of 5,000 spread over the 30 days.
        let clusterTotal = total - hubEvents.count
        let perCluster = clusterTotal / clusters
        let batch = 5_000
        var stored = 0
        for (i, name) in names.enumerated() {
            let count = i == clusters - 1 ? clusterTotal - perCluster * (clusters - 1) : perCluster
            var next: UInt64 = 1
            for first in stride(from: 0, to: count, by: batch) {
                let n = min(batch, count - first)
                let batchTime = start.addingTimeInterval(30 * day * Double(first + n) / Double(count) - 1)
                var indexed: [IndexedAuditEvent] = []
                indexed.reserveCapacity(n)
                for k in 0..<n {
                    let at = start.addingTimeInterval(30 * day * Double(first + k) / Double(count))
                    let user = k % 50 == 0 ? "system:serviceaccount:tether-system:tether-person-\(k % people)-0a1b2c"
                        : (i % 25 == 0 && k % 997 == 0) ? "kubernetes-admin" : "system:serviceaccount:kube-system:replicaset-controller"
                    indexed.append(try IndexedAuditEvent(raw: clusterEvent(user: user, namespace: "ns-\(k % 20)", at: at)))
                }
                next = try await database.ingestAudit(cluster: name, firstSequence: next, events: indexed, now: batchTime) + 1
                stored += n
            }
        }
        return (stored, hubEvents.count)
    }

    static func hubEvent(verb: String, resource: String, name: String?, user: String, code: Int, annotations: [String: String], at: Date) -> Data {
        let time = AuditTime.format(at)
        var event: [String: Any] = [
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": UUID().uuidString.lowercased(), "stage": "ResponseComplete",
            "verb": verb, "user": ["username": user, "groups": ["developers"]],
            "objectRef": ["resource": resource, "name": name, "apiGroup": "tether.dev", "apiVersion": "v1"].compactMapValues { $0 },
            "responseStatus": ["code": code], "requestReceivedTimestamp": time, "stageTimestamp": time, "userAgent": "tether-hub/bench",
        ]
        if !annotations.isEmpty { event["annotations"] = annotations }
        return try! JSONSerialization.data(withJSONObject: event, options: [.sortedKeys, .withoutEscapingSlashes])
    }

    /// A Metadata-level event shaped like the real API server's (about 900 bytes).
    static func clusterEvent(user: String, namespace: String, at: Date) -> Data {
        let time = AuditTime.format(at)
        return Data("""
            {"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"\(UUID().uuidString.lowercased())","stage":"ResponseComplete",\
            "requestURI":"/api/v1/namespaces/\(namespace)/pods?limit=500","verb":"list","user":{"username":"\(user)",\
            "uid":"3b6f2a1e-8c4d-4f7a-9e2b-5d1c0a9f8e7d","groups":["system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated"]},\
            "sourceIPs":["10.0.0.12"],"userAgent":"kube-controller-manager/v1.36.0 (linux/amd64) kubernetes/3c5f1f2/system:serviceaccount:kube-system:replicaset-controller",\
            "objectRef":{"resource":"pods","namespace":"\(namespace)","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},\
            "requestReceivedTimestamp":"\(time)","stageTimestamp":"\(time)","annotations":{"authorization.k8s.io/decision":"allow",\
            "authorization.k8s.io/reason":"RBAC: allowed by ClusterRoleBinding \\"system:controller:replicaset-controller\\" of ClusterRole \\"system:controller:replicaset-controller\\" to ServiceAccount \\"replicaset-controller/kube-system\\""}}
            """.utf8)
    }

    @discardableResult
    static func run(_ exe: String, _ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        let err = Pipe()
        p.standardOutput = FileHandle.nullDevice
        p.standardError = err
        try p.run()
        let data = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard p.terminationStatus == 0 else { throw BenchError("\(exe) \(args.joined(separator: " ")) failed: \(text)") }
        // The CLI's last line: what it wrote and the figures.
        return text.split(separator: "\n").last.map(String.init) ?? ""
    }
}
