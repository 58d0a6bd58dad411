import AsyncHTTPClient
import CZlib
import BenchSupport
import Foundation
import NIOCore
import NIOSSL
import Shared
import SwiftProtobuf

/// End-to-end audit benchmark: a load generator posts real-shaped EventLists to a
/// real `tether-agent`'s webhook over HTTPS; the agent forwards to a real
/// `tether-hub` on loopback. Prints sustained events/s stored at the hub, p50/p99
/// from webhook 200 to stored, peak memory of both, and wire bytes per event.
///
///     swift build -c release   # every product; several --product flags build only the last
///     .build/release/tether-bench-audit [--events 200000] [--batch 400] [--concurrency 8]
@main
struct AuditBenchmark {
    static func main() async throws {
        var options = [String: String]()
        var args = CommandLine.arguments.dropFirst()
        while let key = args.popFirst() {
            guard key.hasPrefix("--"), let value = args.popFirst() else {
                print("usage: tether-bench-audit [--events N] [--batch N] [--concurrency N] [--bin DIR]")
                exit(2)
            }
            options[String(key.dropFirst(2))] = value
        }
        let totalEvents = Int(options["events"] ?? "200000")!
        let batch = Int(options["batch"] ?? "400")!
        let concurrency = Int(options["concurrency"] ?? "8")!
        let bin = options["bin"] ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        // The real API server's webhook bodies, kept in the repository (Tests/Fixtures).
        let fixtures = options["fixtures"] ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../Tests/Fixtures/audit/webhook").standardized.path
        let batches = totalEvents / batch

        let work = FileManager.default.temporaryDirectory.appendingPathComponent("tether-bench-\(getpid())").path
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }

        // Hub and agent, as processes.
        let hub = try Child(bin + "/tether-hub", ["serve", "--data-dir", work + "/hub", "--listen", "127.0.0.1:0",
                                                   "--admin-listen", "127.0.0.1:0", "--access-listen", "127.0.0.1:0", "--advertise", "127.0.0.1", "--log-level", "notice"])
        defer { hub.kill() }
        let ready = try await hub.waitFor("hub ready")
        let credentials = work + "/hub/admin-credentials.json"
        _ = ready
        try run(bin + "/tether-hub", ["cluster", "add", "bench", "--credentials", credentials])
        let join = try run(bin + "/tether-hub", ["token", "create", "--cluster", "bench", "--credentials", credentials])
            .split(separator: "\n")[0]
        let agent = try Child(bin + "/tether-agent", ["--state-dir", work + "/agent", "--join-token", String(join),
                                                       "--audit-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--log-level", "notice"])
        defer { agent.kill() }
        let auditPort = try await port(of: agent, after: "audit webhook listening")
        let healthPort = try await port(of: agent, after: "health endpoint listening")
        _ = try await agent.waitFor("connected to hub")

        // Real events under fresh audit IDs, built before the clock starts.
        let template = try realEvents(in: fixtures)
        print("preparing \(batches) batches of \(batch) events from \(template.count) real events...")
        let bodies = (0..<batches).map { b in eventList(template, count: batch, seed: b) }
        let meanEventBytes = bodies.reduce(0) { $0 + $1.count } / max(1, batches * batch)

        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(work + "/agent/audit-ca.crt"))
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
        let plain = HTTPClient(eventLoopGroupProvider: .singleton)
        let token = try String(contentsOfFile: work + "/agent/audit-webhook-token", encoding: .utf8)

        // Poll the agent's acknowledged sequence to time each batch from 200 to stored.
        let acks = Locked<[(ContinuousClock.Instant, UInt64)]>([])
        let done = Locked(false)
        let poller = Task {
            while !done.value {
                if let acked = try? await metric(plain, port: healthPort, "tether_agent_audit_acknowledged_sequence") {
                    acks.withLock { $0.append((.now, UInt64(acked))) }
                }
                try? await Task.sleep(for: .milliseconds(2))
            }
        }

        print("posting \(batches * batch) events, \(concurrency) connections...")
        let start = ContinuousClock.now
        let accepted = Locked<[(ContinuousClock.Instant, UInt64)]>([])
        // `tether-hub backup` of the running hub once half the events are accepted:
        // how long it takes under load, and whether the hub keeps storing meanwhile.
        let backup = Task.detached { () throws -> (ContinuousClock.Instant, ContinuousClock.Instant, Int) in
            while accepted.value.count < batches / 2 { try await Task.sleep(for: .milliseconds(10)) }
            let begin = ContinuousClock.now
            _ = try run(bin + "/tether-hub", ["backup", "--data-dir", work + "/hub", "--to", work + "/backup.tar"])
            let size = (try FileManager.default.attributesOfItem(atPath: work + "/backup.tar")[.size] as? Int) ?? 0
            return (begin, ContinuousClock.now, size)
        }
        let next = Locked(0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    while true {
                        let i = next.withLock { n -> Int in defer { n += 1 }; return n }
                        guard i < bodies.count else { return }
                        var request = HTTPClientRequest(url: "https://127.0.0.1:\(auditPort)/audit")
                        request.method = .POST
                        request.headers.add(name: "Authorization", value: "Bearer \(token)")
                        request.body = .bytes(ByteBuffer(bytes: bodies[i]))
                        while true {
                            let response = try await client.execute(request, timeout: .seconds(60))
                            let text = String(buffer: try await response.body.collect(upTo: 1 << 16))
                            if response.status.code == 200 {
                                let last = (try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any])["lastSequence"] as! Int
                                accepted.withLock { $0.append((.now, UInt64(last))) }
                                break
                            }
                            guard response.status.code == 429 else { throw BenchError("webhook answered \(response.status): \(text)") }
                            try await Task.sleep(for: .milliseconds(50))
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let posted = ContinuousClock.now
        let total = UInt64(batches * batch)
        while (acks.value.last?.1 ?? 0) < total {
            try await Task.sleep(for: .milliseconds(5))
            if ContinuousClock.now - posted > .seconds(600) { throw BenchError("hub did not catch up in 10 minutes") }
        }
        let stored = acks.value.first { $0.1 >= total }!.0
        done.value = true
        await poller.value
        let (backupStart, backupEnd, backupBytes) = try await backup.value
        let during = acks.value.filter { $0.0 >= backupStart && $0.0 <= backupEnd }
        let storedDuringBackup = during.count >= 2 ? Double(during.last!.1 - during.first!.1) / (during.last!.0 - during.first!.0).seconds : .nan
        // The same run without the backup's window: the rate the store keeps up on its own.
        let backupEvents = during.count >= 2 ? Double(during.last!.1 - during.first!.1) : 0
        let backupSeconds = during.count >= 2 ? (during.last!.0 - during.first!.0).seconds : 0

        // Latency from 200 to stored, per batch.
        let ackLog = acks.value
        var latencies: [Double] = []
        for (time, last) in accepted.value {
            if let hit = ackLog.first(where: { $0.0 >= time && $0.1 >= last }) {
                latencies.append((hit.0 - time).seconds * 1000)
            }
        }
        latencies.sort()
        let hubIngested = try await metric(plain, port: nil, "tether_audit_events_ingested_total", credentials: credentials, hubAdmin: ready)

        // Bytes on the wire per event for one forwarded batch (the gRPC message body).
        let sample = Tether_V1_AuditBatch.with {
            $0.firstSequence = 1
            $0.events = eventList(template, count: 1000, seed: 999_999, itemsOnly: true)
        }
        let serialized = try sample.serializedBytes() as [UInt8]
        // What the agent sends: the same events compressed in the message (zlib level 1).
        let sent = try Tether_V1_AuditBatch.with {
            $0.firstSequence = 1
            $0.compressedEvents = try EventCompression.compress(sample.events)
            $0.eventCount = UInt32(sample.events.count)
        }.serializedBytes() as [UInt8]

        let elapsed = (stored - start).seconds
        print("""

        audit pipeline benchmark (\(batches * batch) events, batches of \(batch), \(concurrency) webhook connections, mean event \(meanEventBytes) B)
          webhook accepted:        \(String(format: "%.0f", Double(total) / (posted - start).seconds)) events/s (fsynced in the agent's spool)
          sustained stored at hub: \(String(format: "%.0f", Double(total) / elapsed)) events/s (\(String(format: "%.2f", elapsed)) s for all)
          stored outside backup:   \(String(format: "%.0f", (Double(total) - backupEvents) / (elapsed - backupSeconds))) events/s (the same run less the \(String(format: "%.2f", backupSeconds)) s a backup ran)
          webhook 200 -> stored:   p50 \(String(format: "%.1f", percentile(latencies, 0.50))) ms, p99 \(String(format: "%.1f", percentile(latencies, 0.99))) ms (\(latencies.count) batches)
          peak memory (VmHWM):     agent \(peakMemory(agent.pid) / 1024) MiB, hub \(peakMemory(hub.pid) / 1024) MiB
          wire bytes per event:    \(serialized.count / 1000) B uncompressed, \(sent.count / 1000) B as the agent sends them (compressed_events, zlib level 1: \(String(format: "%.1f", Double(serialized.count) / Double(sent.count)))x), per 1000-event AuditBatch message
          hub ingested counter:    \(Int(hubIngested)) agent events
          backup while loading:    \(String(format: "%.2f", (backupEnd - backupStart).seconds)) s for a \(backupBytes / (1 << 20)) MiB archive; hub stored \(String(format: "%.0f", storedDuringBackup)) events/s meanwhile
        """)
        try await client.shutdown()
        try await plain.shutdown()
    }

    static func percentile(_ sorted: [Double], _ p: Double) -> Double {
        guard !sorted.isEmpty else { return .nan }
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }

    static func realEvents(in dir: String) throws -> [Data] {
        guard FileManager.default.fileExists(atPath: dir) else {
            throw BenchError("fixtures missing: \(dir) (pass --fixtures DIR with the API server's webhook bodies)")
        }
        var events: [Data] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: dir).sorted() where name.hasSuffix(".json") {
            let body = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + name))
            let items = (try JSONSerialization.jsonObject(with: body) as! [String: Any])["items"] as! [[String: Any]]
            for item in items {
                var copy = item
                copy["auditID"] = "00000000-0000-0000-0000-000000000000"
                if copy["requestReceivedTimestamp"] != nil { copy["requestReceivedTimestamp"] = requestTimePlaceholder }
                copy["stageTimestamp"] = stageTimePlaceholder
                events.append(try JSONSerialization.data(withJSONObject: copy, options: [.sortedKeys, .withoutEscapingSlashes]))
            }
        }
        guard !events.isEmpty else { throw BenchError("no webhook bodies (*.json) in \(dir)") }
        return events
    }

    /// Events with unique audit IDs written into the placeholder, cheaply.
    static func eventList(_ template: [Data], count: Int, seed: Int) -> [UInt8] {
        var out = Array(#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#.utf8)
        for (i, event) in eventList(template, count: count, seed: seed, itemsOnly: true).enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            out += event
        }
        out += Array("]}".utf8)
        return out
    }

    static let requestTimePlaceholder = "1111-11-11T11:11:11.111111Z"
    static let stageTimePlaceholder = "2222-12-22T22:22:22.222222Z"

    /// Events as a real API server writes them: each under a random UUIDv4 audit ID
    /// (from a fixed seed, so runs repeat), and with timestamps that move on 20 µs an
    /// event (a cluster at 50,000 events/s).
    static func eventList(_ template: [Data], count: Int, seed: Int, itemsOnly: Bool) -> [Data] {
        let placeholder = Data("00000000-0000-0000-0000-000000000000".utf8)
        let requestPlaceholder = Data(requestTimePlaceholder.utf8), stagePlaceholder = Data(stageTimePlaceholder.utf8)
        let base = Date(timeIntervalSince1970: 1_796_000_000)
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return (0..<count).map { i in
            let n = seed * count + i
            var event = template[n % template.count]
            var mix = UInt64(n) &* 0x9E37_79B9_7F4A_7C15 &+ 0xD1B5_4A32_D192_ED03
            func next() -> UInt64 {
                mix = (mix ^ (mix >> 30)) &* 0xBF58_476D_1CE4_E5B9
                mix = (mix ^ (mix >> 27)) &* 0x94D0_49BB_1331_11EB
                mix ^= mix >> 31
                return mix
            }
            let (a, b) = (next(), next())
            let id = String(format: "%08x-%04x-4%03x-%04x-%012llx", UInt32(a >> 32), UInt16((a >> 16) & 0xFFFF), UInt16(a & 0xFFF),
                            UInt16(0x8000 | (b >> 48) & 0x3FFF), b & 0xFFFF_FFFF_FFFF)
            if let r = event.range(of: placeholder) { event.replaceSubrange(r, with: Data(id.utf8)) }
            let micros = n * 20
            let time = formatter.string(from: base.addingTimeInterval(Double(micros / 1_000_000))).dropLast()
                + String(format: ".%06dZ", micros % 1_000_000)
            for p in [requestPlaceholder, stagePlaceholder] {
                if let r = event.range(of: p) { event.replaceSubrange(r, with: Data(time.utf8)) }
            }
            return event
        }
    }

    static func peakMemory(_ pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") })
        else { return 0 }
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }

    static func metric(_ client: HTTPClient, port: Int?, _ name: String, credentials: String? = nil, hubAdmin: String? = nil) async throws -> Double {
        var url = "http://127.0.0.1:\(port ?? 0)/metrics"
        var c = client
        var owned: HTTPClient?
        if let credentials {
            let creds = try JSONDecoder().decode(AdminCredentials.self, from: Data(contentsOf: URL(fileURLWithPath: credentials)))
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(creds.caCertificate.utf8)))
            owned = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
            c = owned!
            url = creds.server + "/metrics"
        }
        defer { if let owned { Task { try? await owned.shutdown() } } }
        let response = try await c.execute(HTTPClientRequest(url: url), timeout: .seconds(5))
        let text = String(buffer: try await response.body.collect(upTo: 1 << 20))
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.split(separator: " ").last!) ?? 0
        }
        throw BenchError("no \(name) in /metrics")
    }

    static func port(of child: Child, after marker: String) async throws -> Int {
        let line = try await child.waitFor(marker)
        guard let range = line.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression),
              let port = Int(line[range].split(separator: ":").last!)
        else { throw BenchError("no port in: \(line)") }
        return port
    }

    @discardableResult
    static func run(_ exe: String, _ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw BenchError("\(exe) \(args) failed") }
        return String(decoding: data, as: UTF8.self)
    }
}
