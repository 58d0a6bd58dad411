import AsyncHTTPClient
import BenchSupport
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL
import Shared
import Synchronization
import TetherAgent

/// Fleet-scale benchmark of the hub with the real agent code (`TetherAgent`'s
/// `HubLink`: enrollment, mutual TLS, Hello, heartbeats, desired states, reports),
/// thousands of agents in this process against a real `tether-hub` process.
///
///     swift build -c release   # every product; several --product flags build only the last
///     .build/release/tether-bench-fanout --agents 1000,10000          # fan-out, then a hub restart
///     .build/release/tether-bench-fanout --heartbeat --agents 1000     # presence load
///
/// Fan-out mode, per agent count: registers the clusters, starts the agents,
/// applies a bundle and times its arrival at every agent; then restarts the hub
/// (SIGTERM, start on the same data dir and port) and times the reconnect storm
/// until every agent is connected again, and a second bundle change after it.
/// Last, removes up to 20 clusters one at a time and times each removal's cut: from
/// the admin call to its agent seeing the channel closed (the goal is within 1 s).
///
/// Heartbeat mode: the hub asks for a heartbeat every second; for `--duration`
/// seconds (60) `cluster list` runs in a loop. Prints SQLite commits per second from
/// presence, admin latency and hub memory.
@main
struct FanoutBenchmark {
    struct Options {
        var counts = [1000]
        var bin: String
        var heartbeat = false
        var restart = true
        var duration = 60
        var startRate = 1000
        var settle = 3
    }

    static func main() async throws {
        var options = Options(bin: URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path)
        var args = CommandLine.arguments.dropFirst()
        while let key = args.popFirst() {
            switch key {
            case "--agents": options.counts = (args.popFirst() ?? "").split(separator: ",").compactMap { Int($0) }
            case "--bin": options.bin = args.popFirst() ?? options.bin
            case "--heartbeat": options.heartbeat = true
            case "--no-restart": options.restart = false
            case "--duration": options.duration = Int(args.popFirst() ?? "") ?? options.duration
            case "--start-rate": options.startRate = Int(args.popFirst() ?? "") ?? options.startRate
            case "--settle": options.settle = Int(args.popFirst() ?? "") ?? options.settle
            case "--help", "-h":
                say("""
                    usage: tether-bench-fanout [--agents N[,N...]] [--heartbeat [--duration S]] [--no-restart] [--start-rate PER_S] [--settle S] [--bin DIR]
                      fan-out (default): bundle change -> every agent, then a hub restart and the reconnect storm
                      --heartbeat: agents heartbeat every second while `cluster list` loops; SQLite commits/s from presence, admin latency
                      --settle S: seconds to wait after the agents connect before measuring (3); prints the CPU the idle fleet uses
                    """)
                return
            default:
                throw BenchError("unknown option \(key); see --help")
            }
        }
        guard !options.counts.isEmpty else { throw BenchError("--agents needs a count") }
        for n in options.counts {
            if options.heartbeat { try await heartbeat(agents: n, options: options) } else { try await fanout(agents: n, options: options) }
        }
    }

    // MARK: Fan-out and reconnect storm

    static func fanout(agents n: Int, options: Options) async throws {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("tether-fanout-\(getpid())-\(n)").path
        defer { try? FileManager.default.removeItem(atPath: work) }
        var hub = try await HubProcess.start(bin: options.bin, dataDir: work, listen: "127.0.0.1:0", heartbeat: nil)
        say("fan-out to \(n) agents")
        let joins = try await hub.register(n)
        let fleet = Fleet(joins: joins)
        let agents = Task { try await fleet.run(startRate: options.startRate) }
        defer { agents.cancel() }
        let enrolled = try await fleet.waitConnected(n, since: .now, timeout: .seconds(900), what: "enrolled and connected")
        say(String(format: "  %d agents enrolled and connected in %.1f s (started at %d/s)", n, enrolled, options.startRate))
        // The hub is still closing the last enrollment connections (TLS shutdown of
        // thousands of them shows in a profile): measure the change, not that tail.
        try await settle(options.settle, hub: hub)

        try await change(revision: 1, fleet: fleet, hub: hub, n: n)
        if options.restart {
            let joinPort = joins[0].hub.port
            hub.stop()
            let storm = ContinuousClock.now
            hub = try await HubProcess.start(bin: options.bin, dataDir: work, listen: "127.0.0.1:\(joinPort)", heartbeat: nil)
            let startup = (ContinuousClock.now - storm).seconds
            let reconnected = try await fleet.waitConnected(n, since: storm, timeout: .seconds(600), what: "reconnected after the hub restart")
            say(String(format: "  hub restart: all %d agents connected %.1f s after the restart (hub up in %.1f s); hub peak memory %d MiB",
                         n, reconnected, startup, hub.peakMemoryKiB / 1024))
            try await settle(options.settle, hub: hub)
            try await change(revision: 2, fleet: fleet, hub: hub, n: n)
        }
        try await removalCuts(fleet: fleet, hub: hub, n: n)
        say(String(format: "  benchmark process (the %d agents) peak memory %d MiB", n, peakMemoryKiB(getpid()) / 1024))
        agents.cancel()
        _ = await agents.result
        hub.stop()
    }

    /// Waits `seconds` with the fleet connected and idle, and prints the CPU the hub
    /// and this process (the agents) used in that time, in cores.
    static func settle(_ seconds: Int, hub: HubProcess) async throws {
        let start = ContinuousClock.now
        let (hubBefore, selfBefore) = (cpuSeconds(hub.process.processIdentifier), cpuSeconds(getpid()))
        try await Task.sleep(for: .seconds(seconds))
        let wall = (ContinuousClock.now - start).seconds
        say(String(format: "  idle fleet over %d s: hub %.2f cores, agents (this process) %.2f cores", seconds,
                     (cpuSeconds(hub.process.processIdentifier) - hubBefore) / wall, (cpuSeconds(getpid()) - selfBefore) / wall))
    }

    /// Applies a bundle that changes every cluster's desired state to `revision` and
    /// prints how long it took to reach the agents.
    static func change(revision: UInt64, fleet: Fleet, hub: HubProcess, n: Int) async throws {
        fleet.expect(revision: revision)
        let yaml = """
            apiVersion: tether.dev/v1
            kind: PolicyBundle
            metadata: {name: fanout}
            spec:
              clusterSelector: {matchLabels: {env: prod}}
              resources:
                - apiVersion: rbac.authorization.k8s.io/v1
                  kind: ClusterRole
                  metadata: {name: view-pods-\(revision)}
                  rules: [{apiGroups: [""], resources: [pods], verbs: [get, list, watch]}]
            """
        let (hubCPU, selfCPU) = (cpuSeconds(hub.process.processIdentifier), cpuSeconds(getpid()))
        let start = ContinuousClock.now
        _ = try await hub.call(.POST, "/v1/policies", ["files": [["name": "fanout.yaml", "yaml": yaml]]])
        let applied = ContinuousClock.now
        let deadline = start + .seconds(300)
        while fleet.arrivals.count < n {
            try await Task.sleep(for: .milliseconds(5))
            if ContinuousClock.now > deadline { throw BenchError("only \(fleet.arrivals.count) of \(n) agents got revision \(revision)") }
        }
        let latencies = fleet.arrivals.values.map { ($0 - start).seconds * 1000 }.sorted()
        say(String(format: "  CPU from the change to the last arrival: hub %.2f s, agents (this process) %.2f s",
                     cpuSeconds(hub.process.processIdentifier) - hubCPU, cpuSeconds(getpid()) - selfCPU))
        say(String(format: "  bundle change (revision %d) -> %d agents: first %.1f ms, p50 %.1f ms, p99 %.1f ms, max %.1f ms (apply call %.1f ms); hub memory now %d MiB, peak %d MiB",
                     revision, n, latencies.first!, percentile(latencies, 0.5), percentile(latencies, 0.99), latencies.last!, (applied - start).seconds * 1000,
                     hub.memoryKiB / 1024, hub.peakMemoryKiB / 1024))
    }

    /// Removes the last (up to) 20 clusters, one at a time, and prints how long each
    /// took to cut its agent's channel: from the `DELETE` to the agent seeing it closed.
    static func removalCuts(fleet: Fleet, hub: HubProcess, n: Int) async throws {
        var cuts: [Double] = []
        for i in stride(from: n - 1, through: max(0, n - 20), by: -1) {
            guard fleet.links[i].status.value.connected else { throw BenchError("agent \(i) is not connected before its removal") }
            let start = ContinuousClock.now
            _ = try await hub.request(.DELETE, "/v1/clusters/edge-\(i)", nil)
            while fleet.links[i].status.value.connected {
                guard ContinuousClock.now - start < .seconds(30) else { throw BenchError("removing edge-\(i) did not cut its channel within 30 s") }
                try await Task.sleep(for: .milliseconds(1))
            }
            cuts.append((ContinuousClock.now - start).seconds * 1000)
        }
        cuts.sort()
        say(String(format: "  cluster removal cuts its agent's channel (%d removals, one at a time): p50 %.1f ms, max %.1f ms",
                     cuts.count, percentile(cuts, 0.5), cuts.last ?? 0))
    }

    // MARK: Heartbeat load

    static func heartbeat(agents n: Int, options: Options) async throws {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("tether-heartbeat-\(getpid())-\(n)").path
        defer { try? FileManager.default.removeItem(atPath: work) }
        let hub = try await HubProcess.start(bin: options.bin, dataDir: work, listen: "127.0.0.1:0", heartbeat: "1s")
        say("heartbeat load: \(n) agents heartbeating every 1 s for \(options.duration) s while `cluster list` loops")
        let joins = try await hub.register(n)
        let fleet = Fleet(joins: joins)
        let agents = Task { try await fleet.run(startRate: options.startRate) }
        defer { agents.cancel() }
        _ = try await fleet.waitConnected(n, since: .now, timeout: .seconds(900), what: "connected")
        // Let the enrollment burst settle before measuring.
        try await Task.sleep(for: .seconds(3))
        let commitsBefore = try await hub.metric("tether_presence_commits_total")
        let start = ContinuousClock.now
        var latencies: [Double] = []
        var listed = 0
        while ContinuousClock.now - start < .seconds(options.duration) {
            let t = ContinuousClock.now
            let clusters = try await hub.get("/v1/clusters")
            latencies.append((ContinuousClock.now - t).seconds * 1000)
            listed = clusters.count
        }
        let elapsed = (ContinuousClock.now - start).seconds
        let commits = try await hub.metric("tether_presence_commits_total") - commitsBefore
        latencies.sort()
        say(String(format: "  presence: %.2f SQLite commits/s (%.0f commits in %.1f s for %d agents at 1 heartbeat/s)", commits / elapsed, commits, elapsed, n))
        say(String(format: "  cluster list (%d clusters): %d calls, p50 %.1f ms, p99 %.1f ms, max %.1f ms", listed, latencies.count,
                     percentile(latencies, 0.5), percentile(latencies, 0.99), latencies.last ?? 0))
        say(String(format: "  hub memory now %d MiB, peak %d MiB; agents online at the end: %d of %d", hub.memoryKiB / 1024, hub.peakMemoryKiB / 1024,
                     fleet.connectedCount, n))
        agents.cancel()
        _ = await agents.result
        hub.stop()
    }

    static func percentile(_ sorted: [Double], _ q: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))]
    }
}

/// N real agents (`HubLink`) in this process, each with its identity in memory and
/// an applier that records when each desired-state revision arrived.
final class Fleet: Sendable {
    let links: [HubLink]
    let recorder = ArrivalRecorder()
    /// Agents whose link stopped for good (a refusal retrying cannot fix), by error.
    let stopped = Mutex<[String: Int]>([:])

    init(joins: [JoinString]) {
        // One metrics registry for all: the benchmark reads no agent metrics.
        let metrics = AgentMetrics()
        let logger = Logger(label: "bench-agent", factory: { _ in SwiftLogNoOpLogHandler() })
        let recorder = self.recorder
        links = joins.enumerated().map { i, join in
            HubLink(store: MemoryIdentityStore(), joinString: join, logger: logger, metrics: metrics,
                    applier: RecordingApplier(index: i, recorder: recorder))
        }
    }

    func expect(revision: UInt64) { recorder.expect(revision: revision) }
    var arrivals: [Int: ContinuousClock.Instant] { recorder.arrivals }
    var connectedCount: Int { links.reduce(0) { $0 + ($1.status.value.connected ? 1 : 0) } }

    /// Runs every agent until cancelled, starting `startRate` a second.
    func run(startRate: Int) async throws {
        try await withThrowingDiscardingTaskGroup { group in
            let gap = Duration.nanoseconds(1_000_000_000 / Int64(max(startRate, 1)))
            for link in links {
                group.addTask {
                    do {
                        try await link.run()
                    } catch {
                        guard !(error is CancellationError) else { return }
                        self.stopped.withLock { $0["\(error)", default: 0] += 1 }
                    }
                }
                try await Task.sleep(for: gap)
            }
        }
    }

    /// Seconds from `since` until `n` agents are connected.
    func waitConnected(_ n: Int, since: ContinuousClock.Instant, timeout: Duration, what: String) async throws -> Double {
        var lastPrint = ContinuousClock.now
        while true {
            let connected = connectedCount
            if connected >= n { return (ContinuousClock.now - since).seconds }
            if ContinuousClock.now - since > timeout { throw BenchError("only \(connected) of \(n) agents \(what) after \(timeout)") }
            if ContinuousClock.now - lastPrint > .seconds(5) {
                let gone = stopped.withLock { $0 }
                say("    \(connected) of \(n) \(what) (\(Int((ContinuousClock.now - since).seconds)) s)"
                      + (gone.isEmpty ? "" : "; stopped for good: \(gone)"))
                lastPrint = .now
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// When each agent first got the revision the benchmark waits for.
final class ArrivalRecorder: Sendable {
    private let state = Mutex((wanted: UInt64.max, arrived: [Int: ContinuousClock.Instant]()))

    func expect(revision: UInt64) { state.withLock { $0 = (revision, [:]) } }

    func saw(_ index: Int, revision: UInt64) {
        let now = ContinuousClock.now
        state.withLock { s in
            if revision >= s.wanted, s.arrived[index] == nil { s.arrived[index] = now }
        }
    }

    var arrivals: [Int: ContinuousClock.Instant] { state.withLock { $0.arrived } }
}

/// Records each revision it is asked to apply; applies nothing (no Kubernetes).
struct RecordingApplier: DesiredStateApplier {
    let index: Int
    let recorder: ArrivalRecorder

    func apply(revision: UInt64, objects: [DesiredObjectSpec]) async -> [AppliedResult] {
        recorder.saw(index, revision: revision)
        return objects.map { AppliedResult(bundle: $0.bundle, object: $0.key, state: .applied) }
    }
}

/// A `tether-hub serve` child process and its admin API.
struct HubProcess {
    let process: Process
    let credentials: AdminCredentials
    let admin: HTTPClient

    static func start(bin: String, dataDir: String, listen: String, heartbeat: String?) async throws -> HubProcess {
        let credentialsPath = dataDir + "/admin-credentials.json"
        try? FileManager.default.removeItem(atPath: credentialsPath)
        let hub = Process()
        hub.executableURL = URL(fileURLWithPath: bin + "/tether-hub")
        // TETHER_BENCH_HUB_LOG=FILE keeps the hub's info log (timings of each apply).
        let log = ProcessInfo.processInfo.environment["TETHER_BENCH_HUB_LOG"]
        hub.arguments = ["serve", "--data-dir", dataDir, "--listen", listen, "--admin-listen", "127.0.0.1:0", "--access-listen", "127.0.0.1:0", "--advertise", "127.0.0.1",
                         "--log-level", log == nil ? "error" : "info"]
            + (heartbeat.map { ["--heartbeat-interval", $0] } ?? [])
        if let log, FileManager.default.fileExists(atPath: log) || FileManager.default.createFile(atPath: log, contents: nil),
           let handle = FileHandle(forWritingAtPath: log) {
            handle.seekToEndOfFile()
            hub.standardError = handle
        } else {
            hub.standardError = FileHandle.nullDevice
        }
        hub.standardOutput = FileHandle.nullDevice
        try hub.run()
        var credentials: AdminCredentials?
        let deadline = ContinuousClock.now + .seconds(60)
        while credentials == nil {
            credentials = FileManager.default.contents(atPath: credentialsPath).flatMap { try? JSONDecoder().decode(AdminCredentials.self, from: $0) }
            if credentials != nil { break }
            guard hub.isRunning, ContinuousClock.now < deadline else { throw BenchError("hub did not start (\(bin)/tether-hub)") }
            try await Task.sleep(for: .milliseconds(20))
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(credentials!.caCertificate.utf8)))
        return HubProcess(process: hub, credentials: credentials!, admin: HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls)))
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
        try? admin.syncShutdown()
    }

    var memoryKiB: Int { readStatus(process.processIdentifier, "VmRSS:") }
    var peakMemoryKiB: Int { readStatus(process.processIdentifier, "VmHWM:") }

    func request(_ method: HTTPMethod, _ path: String, _ body: [String: Any]?) async throws -> Data {
        var request = HTTPClientRequest(url: credentials.server + path)
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(credentials.token)")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
        }
        let response = try await admin.execute(request, timeout: .seconds(120))
        let data = Data(buffer: try await response.body.collect(upTo: 256 << 20))
        guard (200..<300).contains(response.status.code) else { throw BenchError("\(method) \(path): \(String(decoding: data, as: UTF8.self))") }
        return data
    }

    @discardableResult
    func call(_ method: HTTPMethod, _ path: String, _ body: [String: Any]) async throws -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: try await request(method, path, body))) as? [String: Any] ?? [:]
    }

    func get(_ path: String) async throws -> [Any] {
        (try JSONSerialization.jsonObject(with: try await request(.GET, path, nil))) as? [Any] ?? []
    }

    /// A counter's value from the admin listener's /metrics.
    func metric(_ name: String) async throws -> Double {
        let text = String(decoding: try await request(.GET, "/metrics", nil), as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name + " ") }), let value = Double(line.split(separator: " ").last ?? "") else {
            throw BenchError("no metric \(name) on the hub")
        }
        return value
    }

    /// Adds `n` clusters labelled env=prod and a join token for each, 8 calls at a time.
    func register(_ n: Int) async throws -> [JoinString] {
        let start = ContinuousClock.now
        var joins = [JoinString?](repeating: nil, count: n)
        try await withThrowingTaskGroup(of: (Int, JoinString).self) { group in
            var next = 0
            func add() {
                let i = next
                next += 1
                group.addTask {
                    try await call(.POST, "/v1/clusters", ["name": "edge-\(i)", "labels": ["env": "prod"]])
                    let created = try await call(.POST, "/v1/tokens", ["cluster": "edge-\(i)"])
                    return (i, try JoinString(parsing: created["joinString"] as? String ?? ""))
                }
            }
            for _ in 0..<min(8, n) { add() }
            var done = 0
            while let (i, join) = try await group.next() {
                joins[i] = join
                done += 1
                if done % 2000 == 0 { say("    \(done) of \(n) clusters registered") }
                if next < n { add() }
            }
        }
        say(String(format: "  %d clusters and join tokens registered in %.1f s", n, (ContinuousClock.now - start).seconds))
        return joins.map { $0! }
    }
}

func peakMemoryKiB(_ pid: Int32) -> Int { readStatus(pid, "VmHWM:") }

/// User plus system CPU time of a process so far (from /proc/PID/stat).
func cpuSeconds(_ pid: Int32) -> Double {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return 0 }
    // Fields after the command: state is field 3; utime and stime are fields 14 and 15.
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// One line to standard output, unbuffered: progress appears as it happens, also
/// through a pipe.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
