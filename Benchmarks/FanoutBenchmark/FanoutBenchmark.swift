import AsyncHTTPClient
import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL
import Shared

/// Policy fan-out benchmark: one bundle change reaching N connected agents.
/// Runs a real `tether-hub` process and N minimal in-process agents (real
/// enrollment, real mTLS channels, no Kubernetes), applies a bundle through the
/// admin API and times, per agent, the arrival of the new desired state.
///
///     swift build -c release   # every product; several --product flags build only the last
///     .build/release/tether-bench-fanout --agents 100,1000
@main
struct FanoutBenchmark {
    static func main() async throws {
        var options = [String: String]()
        var args = CommandLine.arguments.dropFirst()
        while let key = args.popFirst(), let value = args.popFirst() { options[String(key.dropFirst(2))] = value }
        let counts = (options["agents"] ?? "100,1000").split(separator: ",").compactMap { Int($0) }
        let bin = options["bin"] ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        for n in counts { try await run(agents: n, bin: bin) }
    }

    static func run(agents n: Int, bin: String) async throws {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("tether-fanout-\(getpid())-\(n)").path
        defer { try? FileManager.default.removeItem(atPath: work) }
        let hub = Process()
        hub.executableURL = URL(fileURLWithPath: bin + "/tether-hub")
        hub.arguments = ["serve", "--data-dir", work, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--advertise", "127.0.0.1", "--log-level", "warning"]
        hub.standardError = FileHandle.nullDevice
        try hub.run()
        defer { hub.terminate() }
        let credentialsPath = work + "/admin-credentials.json"
        var credentials: AdminCredentials?
        for _ in 0..<600 where credentials == nil {
            credentials = (FileManager.default.contents(atPath: credentialsPath)).flatMap { try? JSONDecoder().decode(AdminCredentials.self, from: $0) }
            if credentials == nil { try await Task.sleep(for: .milliseconds(50)) }
        }
        guard let credentials else { throw BenchError("hub did not start") }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(credentials.caCertificate.utf8)))
        let admin = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
        defer { Task { try? await admin.shutdown() } }
        func call(_ method: HTTPMethod, _ path: String, _ body: [String: Any]) async throws -> [String: Any] {
            var request = HTTPClientRequest(url: credentials.server + path)
            request.method = method
            request.headers.add(name: "Authorization", value: "Bearer \(credentials.token)")
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
            let response = try await admin.execute(request, timeout: .seconds(120))
            let data = Data(buffer: try await response.body.collect(upTo: 16 << 20))
            guard (200..<300).contains(response.status.code) else { throw BenchError("\(path): \(String(decoding: data, as: UTF8.self))") }
            return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
        }

        print("fan-out to \(n) agents: enrolling...")
        var joins: [JoinString] = []
        for i in 0..<n {
            _ = try await call(.POST, "/v1/clusters", ["name": "edge-\(i)", "labels": ["env": "prod"]])
            let created = try await call(.POST, "/v1/tokens", ["cluster": "edge-\(i)"])
            joins.append(try JoinString(parsing: created["joinString"] as! String))
        }
        let arrivals = Locked<[Int: ContinuousClock.Instant]>([:])
        let revisionWanted = Locked<UInt64>(UInt64.max)
        let connected = Locked(0)
        let agents = Task {
            try await withThrowingDiscardingTaskGroup { group in
                for (i, join) in joins.enumerated() {
                    group.addTask {
                        try await MiniAgent.run(join: join) { revision in
                            if revision >= revisionWanted.value { arrivals.withLock { if $0[i] == nil { $0[i] = .now } } }
                        } onWelcome: { connected.withLock { $0 += 1 } }
                    }
                }
            }
        }
        while connected.value < n { try await Task.sleep(for: .milliseconds(50)) }
        print("  \(n) agents connected; applying a bundle...")
        revisionWanted.value = 1
        let yaml = """
            apiVersion: tether.dev/v1
            kind: PolicyBundle
            metadata: {name: fanout}
            spec:
              clusterSelector: {matchLabels: {env: prod}}
              resources:
                - apiVersion: rbac.authorization.k8s.io/v1
                  kind: ClusterRole
                  metadata: {name: view-pods}
                  rules: [{apiGroups: [""], resources: [pods], verbs: [get, list, watch]}]
            """
        let start = ContinuousClock.now
        _ = try await call(.POST, "/v1/policies", ["files": [["name": "fanout.yaml", "yaml": yaml]]])
        let applied = ContinuousClock.now
        while arrivals.value.count < n {
            try await Task.sleep(for: .milliseconds(5))
            if ContinuousClock.now - start > .seconds(300) { throw BenchError("only \(arrivals.value.count) of \(n) agents got the bundle") }
        }
        let latencies = arrivals.value.values.map { ($0 - start).seconds * 1000 }.sorted()
        func p(_ q: Double) -> Double { latencies[min(latencies.count - 1, Int(Double(latencies.count) * q))] }
        print(String(format: "  bundle change -> N agents: p50 %.1f ms, p99 %.1f ms, max %.1f ms (apply call %.1f ms); hub peak memory %d MiB",
                     p(0.5), p(0.99), latencies.last!, (applied - start).seconds * 1000, peakMemory(hub.processIdentifier) / 1024))
        agents.cancel()
        _ = await agents.result
    }

    static func peakMemory(_ pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") })
        else { return 0 }
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
}

/// Just enough of an agent: enroll, open the channel, say Hello, and report each
/// desired-state revision that arrives.
enum MiniAgent {
    static func run(join: JoinString, onDesired: @escaping @Sendable (UInt64) -> Void, onWelcome: @escaping @Sendable () -> Void) async throws {
        let key = P256.Signing.PrivateKey()
        let failure = VerificationFailure()
        let enrollTransport = try HTTP2ClientTransport.Posix(
            target: ResolvableTargets.hub(join.hub),
            transportSecurity: TLSProfiles.enrollment(pin: join.caHash, host: join.hub.host, bootstrap: try PKI.makeBootstrapCertificate(key: key), key: key, failure: failure))
        let response = try await withGRPCClient(transport: enrollTransport) { client in
            try await Tether_V1_Enrollment.Client(wrapping: client).enroll(.with {
                $0.protocolVersion = ProtocolVersion.current
                $0.tokenID = join.tokenID
                $0.tokenSecret = join.secret
                $0.csrPem = try PKI.makeCSR(key: key, commonName: "bench")
            })
        }
        let identity = AgentIdentity(cluster: try ClusterName(response.clusterName), hub: join.hub, privateKeyPEM: key.pemRepresentation,
                                     certificatePEM: response.certificatePem, caCertificatePEM: response.caCertificatePem)
        let transport = try HTTP2ClientTransport.Posix(target: ResolvableTargets.hub(join.hub), transportSecurity: TLSProfiles.agent(identity: identity))
        try await withGRPCClient(transport: transport) { client in
            try await Tether_V1_AgentLink.Client(wrapping: client).connect(
                requestProducer: { writer in
                    try await writer.write(.with { $0.hello = .with { $0.protocolVersion = ProtocolVersion.current; $0.agentVersion = "bench" } })
                    while true {
                        try await Task.sleep(for: .seconds(5))
                        try await writer.write(.with { $0.heartbeat = .with { $0.agentVersion = "bench" } })
                    }
                },
                onResponse: { response in
                    for try await message in response.messages {
                        switch message.kind {
                        case .welcome: onWelcome()
                        case .desired(let desired): onDesired(desired.revision)
                        default: continue
                        }
                    }
                })
        }
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
