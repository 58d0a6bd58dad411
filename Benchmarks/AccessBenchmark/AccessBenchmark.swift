import AsyncHTTPClient
import BenchSupport
import Foundation
import KubeEmulator
import NIOCore
import NIOHTTP1
import NIOSSL
import Shared

/// Access through the hub, measured: a real `tether-hub` and `tether-agent`
/// (processes) in front of the Kubernetes API emulator (in this process).
///
///     swift build -c release
///     .build/release/tether-bench-access [--requests 1000] [--clients 100] [--seconds 5] [--sessions 20] [--events 2000]
///                                        [--spare-tunnels N] [--idle S] [--idle-only] [--bin DIR]
///
/// Prints: added latency of a GET through hub, tunnel and agent against the same GET
/// straight to the API server (p50/p99), measured interleaved and back to back, and
/// how many of those tunnels were the agent's idle spares (`--spare-tunnels`, passed
/// to the hub; 0 turns them off); requests per second through one agent with
/// `--clients` concurrent clients; watch events per second through one tunnel;
/// first-request latency (a new session: just-in-time account, bindings and token);
/// the agent's memory idle after connecting and after the load (anonymous and file-backed).
/// `--idle S` keeps the connected agent idle for S seconds first (default 3) and prints its
/// memory each minute of that, to see it stay flat; `--idle-only` stops after the idle figure.
@main
struct AccessBenchmark {
    static func main() async throws {
        var requests = 1000, clients = 100, seconds = 5, sessions = 20, events = 2000
        var spareTunnels: Int?
        var idle = 3, idleOnly = false
        var bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        var args = CommandLine.arguments.dropFirst()
        while let key = args.popFirst() {
            let value = { Int(args.popFirst() ?? "") ?? 0 }
            switch key {
            case "--requests": requests = value()
            case "--clients": clients = value()
            case "--seconds": seconds = value()
            case "--sessions": sessions = value()
            case "--events": events = value()
            case "--spare-tunnels": spareTunnels = value()
            case "--idle": idle = value()
            case "--idle-only": idleOnly = true
            case "--bin": bin = args.popFirst() ?? bin
            case "--help", "-h":
                say("usage: tether-bench-access [--requests N] [--clients N] [--seconds S] [--sessions N] [--events N] [--spare-tunnels N] [--idle S] [--idle-only] [--bin DIR]")
                return
            default: throw BenchError("unknown option \(key); see --help")
            }
        }
        guard requests > 0, clients > 0, seconds > 0, sessions > 0, events > 0, idle > 0 else { throw BenchError("counts must be positive") }
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("tether-access-bench-\(getpid())").path
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }

        let emulator = try await KubeEmulator.start()
        try emulator.writeKubeconfig(to: work + "/emulator.kubeconfig")
        _ = try emulator.put(try JSON.parse(JSONSerialization.data(withJSONObject: [
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "probe", "namespace": "default"], "data": ["a": "b"],
        ])))
        let hub = try await Hub.start(bin: bin, dataDir: work + "/hub", extra: spareTunnels.map { ["--spare-tunnels", "\($0)"] } ?? [])
        defer { hub.stop() }
        _ = try await hub.admin(.POST, "/v1/clusters", ["name": "bench", "labels": ["env": "bench"]])
        let token = try JSONSerialization.jsonObject(with: try await hub.admin(.POST, "/v1/tokens", ["cluster": "bench"])) as? [String: Any] ?? [:]
        _ = try await hub.admin(.POST, "/v1/access/roles", ["files": [["name": "bench.yaml", "yaml": """
            apiVersion: tether.dev/v1
            kind: AccessRole
            metadata: {name: bench}
            spec:
              subjects: [{kind: Group, name: bench}]
              clusterSelector: {matchLabels: {env: bench}}
              clusterRoles: [view]
              namespaces: [{name: default, clusterRoles: [edit]}]
            """]]])
        let agent = Process()
        agent.executableURL = URL(fileURLWithPath: bin + "/tether-agent")
        agent.arguments = ["--state-dir", work + "/agent", "--kubeconfig", work + "/emulator.kubeconfig", "--health-listen", "none",
                           "--audit-listen", "none", "--log-level", "error"]
        agent.environment = ProcessInfo.processInfo.environment.merging(["TETHER_JOIN_TOKEN": token["joinString"] as? String ?? ""]) { _, b in b }
        agent.standardOutput = FileHandle.nullDevice
        agent.standardError = FileHandle.nullDevice
        try agent.run()
        defer { agent.terminate(); agent.waitUntilExit() }
        let deadline = ContinuousClock.now + .seconds(60)
        while true {
            let clusters = try JSONSerialization.jsonObject(with: try await hub.admin(.GET, "/v1/clusters", nil)) as? [[String: Any]] ?? []
            if clusters.first?["status"] as? String == "online" { break }
            guard ContinuousClock.now < deadline else { throw BenchError("the agent did not connect within 60 s") }
            try await Task.sleep(for: .milliseconds(50))
        }

        // The agent connected, enrolled and watching the API server, before any access:
        // what an idle agent holds. (A benchmark pause, not a synchronisation.)
        let idleStart = ContinuousClock.now
        for minute in stride(from: 60, to: idle, by: 60) {
            try await Task.sleep(until: idleStart + .seconds(minute))
            say("  agent memory idle for \(minute / 60) min: " + memorySummary(agent.processIdentifier))
        }
        try await Task.sleep(until: idleStart + .seconds(idle))
        let idleAgent = memorySummary(agent.processIdentifier)
        if idleOnly {
            say("  agent memory idle after connecting (\(idle) s): " + idleAgent)
            return
        }

        let person = try await hub.session("alice")
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(person.ca.utf8)) + NIOSSLCertificate.fromPEMBytes(Array(emulator.caPEM.utf8)))
        let client = HTTPClient(eventLoopGroupProvider: .singleton,
                                configuration: .init(tlsConfiguration: tls, connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: clients)))
        let path = "/api/v1/namespaces/default/configmaps/probe"
        func get(_ url: String, _ bearer: String) async throws -> Double {
            var request = HTTPClientRequest(url: url)
            request.headers.add(name: "Authorization", value: "Bearer \(bearer)")
            let started = ContinuousClock.now
            let response = try await client.execute(request, timeout: .seconds(30))
            _ = try await response.body.collect(upTo: 1 << 20)
            guard response.status.code == 200 else { throw BenchError("GET \(url) answered \(response.status.code)") }
            return (ContinuousClock.now - started).seconds * 1000
        }
        let viaHub = person.hub + "/clusters/bench" + path
        say("access through hub, tunnel and agent, against the API emulator (release build, this machine)")
        // Warm both paths: the session's account is made on its first request.
        for _ in 0..<20 { _ = try await get(emulator.url.absoluteString + path, emulator.token); _ = try await get(viaHub, person.credential) }
        let tunnelsBefore = try await hub.tunnelCounts()
        // Two ways, and they differ on this machine. Interleaved (a direct GET, then one
        // through the hub): the hub and agent finish their work after a response (the
        // audit event, the spare's replacement) during the direct GET, which that work
        // slows. Back to back (all direct GETs, then all through the hub, as kubectl's
        // discovery sends them): that work competes with the next request instead.
        var direct: [Double] = [], proxied: [Double] = []
        for _ in 0..<requests {
            direct.append(try await get(emulator.url.absoluteString + path, emulator.token))
            proxied.append(try await get(viaHub, person.credential))
        }
        func report(_ label: String, _ direct: [Double], _ proxied: [Double]) {
            let (direct, proxied) = (direct.sorted(), proxied.sorted())
            say(String(format: "  GET, %d sequential, %@: direct p50 %.2f ms, p99 %.2f ms; through the hub p50 %.2f ms, p99 %.2f ms; added p50 %.2f ms, p99 %.2f ms",
                       requests, label, pct(direct, 0.5), pct(direct, 0.99), pct(proxied, 0.5), pct(proxied, 0.99),
                       pct(proxied, 0.5) - pct(direct, 0.5), pct(proxied, 0.99) - pct(direct, 0.99)))
        }
        report("interleaved", direct, proxied)
        var directRun: [Double] = [], proxiedRun: [Double] = []
        for _ in 0..<requests { directRun.append(try await get(emulator.url.absoluteString + path, emulator.token)) }
        for _ in 0..<requests { proxiedRun.append(try await get(viaHub, person.credential)) }
        report("back to back", directRun, proxiedRun)
        let tunnelsAfter = try await hub.tunnelCounts()
        say("  tunnels for the GETs through the hub: \(tunnelsAfter.spare - tunnelsBefore.spare) on an idle spare, \(tunnelsAfter.asked - tunnelsBefore.asked) asked for on the channel")

        let counted = Counter()
        let stop = ContinuousClock.now + .seconds(seconds)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<clients {
                group.addTask {
                    while ContinuousClock.now < stop {
                        _ = try await get(viaHub, person.credential)
                        counted.add()
                    }
                }
            }
            try await group.waitForAll()
        }
        say(String(format: "  %d concurrent clients through one agent: %.0f requests/s over %d s", clients, Double(counted.value) / Double(seconds), seconds))

        var watch = HTTPClientRequest(url: person.hub + "/clusters/bench/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=0")
        watch.headers.add(name: "Authorization", value: "Bearer \(person.credential)")
        let stream = try await client.execute(watch, timeout: .hours(1))
        let writer = Task {
            for i in 0..<events {
                _ = try emulator.put(try JSON.parse(JSONSerialization.data(withJSONObject: [
                    "apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "w-\(i)", "namespace": "default"], "data": ["i": "\(i)"],
                ])))
            }
        }
        let watchStart = ContinuousClock.now
        var seen = 0
        var pending = ""
        for try await chunk in stream.body {
            pending += String(buffer: chunk)
            while let newline = pending.firstIndex(of: "\n") {
                if pending[..<newline].contains("\"w-") { seen += 1 }
                pending = String(pending[pending.index(after: newline)...])
            }
            if seen >= events { break }
        }
        try await writer.value
        say(String(format: "  watch through one tunnel: %d events in %.2f s, %.0f events/s (the emulator writing them as fast as it can)",
                   seen, (ContinuousClock.now - watchStart).seconds, Double(seen) / (ContinuousClock.now - watchStart).seconds))

        var first: [Double] = []
        for i in 0..<sessions {
            let fresh = try await hub.session("user-\(i)")
            first.append(try await get(viaHub, fresh.credential))
        }
        first.sort()
        say(String(format: "  first request of a new session (just-in-time account, bindings, token), %d sessions: p50 %.1f ms, p99 %.1f ms, max %.1f ms",
                   sessions, pct(first, 0.5), pct(first, 0.99), first.last ?? 0))
        say("  agent memory idle after connecting: " + idleAgent)
        say("  agent memory after the load above: " + memorySummary(agent.processIdentifier))
        try await client.shutdown()
        await emulator.stop()
    }

    static func pct(_ sorted: [Double], _ q: Double) -> Double {
        sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int((Double(sorted.count) * q).rounded(.up)) - 1)]
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}

/// A `tether-hub serve` child process, its admin API and its access listener.
struct Hub {
    let process: Process
    let credentials: AdminCredentials
    let client: HTTPClient

    struct Person {
        var hub: String
        var credential: String
        var ca: String
    }

    static func start(bin: String, dataDir: String, extra: [String]) async throws -> Hub {
        let hub = Process()
        hub.executableURL = URL(fileURLWithPath: bin + "/tether-hub")
        hub.arguments = ["serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                         "--access-listen", "127.0.0.1:0", "--advertise", "127.0.0.1", "--log-level", "error"] + extra
        hub.standardOutput = FileHandle.nullDevice
        hub.standardError = FileHandle.nullDevice
        try hub.run()
        var credentials: AdminCredentials?
        let deadline = ContinuousClock.now + .seconds(60)
        while credentials == nil {
            credentials = FileManager.default.contents(atPath: dataDir + "/admin-credentials.json").flatMap { try? JSONDecoder().decode(AdminCredentials.self, from: $0) }
            guard credentials != nil || (hub.isRunning && ContinuousClock.now < deadline) else { throw BenchError("hub did not start (\(bin)/tether-hub)") }
            if credentials == nil { try await Task.sleep(for: .milliseconds(20)) }
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(credentials!.caCertificate.utf8)))
        return Hub(process: hub, credentials: credentials!, client: HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls)))
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
        try? client.syncShutdown()
    }

    func admin(_ method: HTTPMethod, _ path: String, _ body: [String: Any]?) async throws -> Data {
        var request = HTTPClientRequest(url: credentials.server + path)
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(credentials.token)")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
        }
        let response = try await client.execute(request, timeout: .seconds(60))
        let data = Data(buffer: try await response.body.collect(upTo: 16 << 20))
        guard (200..<300).contains(response.status.code) else { throw BenchError("\(method) \(path): \(String(decoding: data, as: UTF8.self))") }
        return data
    }

    /// The hub's `tether_access_tunnels_total` by path, from its `/metrics`.
    func tunnelCounts() async throws -> (spare: Int, asked: Int) {
        let text = String(decoding: try await admin(.GET, "/metrics", nil), as: UTF8.self)
        func value(_ path: String) -> Int {
            text.split(separator: "\n").first { $0.hasPrefix("tether_access_tunnels_total{path=\"\(path)\"}") }
                .flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
        }
        return (value("spare"), value("asked"))
    }

    /// A new operator-issued session in group `bench`.
    func session(_ user: String) async throws -> Person {
        let created = try JSONSerialization.jsonObject(with: try await admin(.POST, "/v1/sessions", ["user": user, "groups": ["bench"]])) as? [String: Any] ?? [:]
        guard let hub = created["hub"] as? String, let credential = created["credential"] as? String else { throw BenchError("no session: \(created)") }
        return Person(hub: hub, credential: credential, ca: created["caCertificate"] as? String ?? "")
    }
}

func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
