import AsyncHTTPClient
import Foundation
import NIOCore
import NIOSSL
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherHub

/// The agent binary killed with SIGKILL while it forwards: after a restart nothing
/// is lost and nothing is stored twice. Forward batches are made small
/// (`TETHER_AUDIT_FORWARD_BATCH`) so that the 10,000 events take many batches and
/// the kill lands between them, not after the whole spool went in one.
@Suite struct AuditCrashTests {
    @Test func sigkillMidForwardLosesAndDuplicatesNothing() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let agentBinary = try ChildProcess.binary("tether-agent")
        let state = dir.sub("agent")
        let first = try await TestHub.start(dataDir: dir.sub("hub"))
        let port = first.agentPort
        let cluster = try ClusterName("prod-eu")
        let args = ["--state-dir", state, "--health-listen", "none", "--audit-listen", "127.0.0.1:0"]
        let environment = ["TETHER_AUDIT_FORWARD_BATCH": "20"]
        var agent = try await ChildProcess(agentBinary, args + ["--join-token", try first.join("prod-eu").encoded], environment: environment)
        try await eventually("online") { try await first.status("prod-eu") == .online }
        try await agent.waitForOutput(containing: "audit webhook listening")
        try await first.stop()

        // 10,000 events while the hub is down, through the real HTTPS webhook.
        let auditPort = try #require(Self.port(in: agent.output))
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(state + "/audit-ca.crt"))
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
        let token = try String(contentsOfFile: state + "/audit-webhook-token", encoding: .utf8)
        let template = try AuditTests.items(try AuditTests.webhookFixtures().first { $0.name.hasPrefix("vap") }!.body)
        do {
            for _ in 0..<25 {
                var request = HTTPClientRequest(url: "https://127.0.0.1:\(auditPort)/audit")
                request.method = .POST
                request.headers.add(name: "Authorization", value: "Bearer \(token)")
                request.body = .bytes(ByteBuffer(bytes: try AuditTests.eventList(from: template, count: 400)))
                let response = try await client.execute(request, timeout: .seconds(60))
                #expect(response.status.code == 200)
            }
        } catch {
            try? await client.shutdown()
            throw error
        }
        try await client.shutdown()

        // The hub comes back; kill the agent as soon as the first batch is acknowledged.
        let hub = try await TestHub.start(dataDir: dir.sub("hub"), listenPort: port)
        try await eventually(timeout: .seconds(30), "forwarding started") { try await hub.core.auditAcknowledged(cluster) > 0 }
        agent.signal(SIGKILL)
        _ = await agent.waitForExit()
        let atKill = try await hub.core.auditAcknowledged(cluster)
        print("audit crash test: hub had \(atKill) of 10000 events when the agent was killed")
        #expect(atKill < 10_000, "the kill landed mid-forward")

        agent = try ChildProcess(agentBinary, args, environment: environment)
        try await eventually(timeout: .seconds(60), "all delivered after restart") { try await hub.core.auditAcknowledged(cluster) == 10_000 }
        let events = try await hub.core.database.auditEvents(AuditQuery(cluster: "prod-eu", limit: 1_000_000, afterID: 0))
        #expect(events.count == 10_000)
        #expect(Set(events.map(\.sequence)).count == 10_000)
        let ids = try events.map { try (JSONSerialization.jsonObject(with: $0.event) as! [String: Any])["auditID"] as! String }
        #expect(Set(ids).count == 10_000, "no event stored twice")
        #expect(try await hub.core.database.verifyAuditChain().problem == nil)
        agent.signal(SIGTERM)
        #expect(await agent.waitForExit() == 0)
        try await hub.stop()
    }

    static func port(in output: String) -> Int? {
        guard let line = output.split(separator: "\n").first(where: { $0.contains("audit webhook listening") }),
              let range = line.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression)
        else { return nil }
        return Int(line[range].split(separator: ":").last!)
    }
}
