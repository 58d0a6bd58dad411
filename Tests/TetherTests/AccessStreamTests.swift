import Foundation
import KubeEmulator
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherAgent
@testable import TetherHub

/// Streams through the hub: exec over WebSocket (an HTTP upgrade carried as raw
/// bytes), log follows, two people on one cluster, an agent restarting under a watch.
@Suite(.serialized) struct AccessStreamTests {
    typealias Fixture = AccessTunnelTests.Fixture

    static func pod(_ name: String, containers: [String] = ["app"]) -> JSON {
        ["apiVersion": "v1", "kind": "Pod", "metadata": ["name": .string(name), "namespace": "default"],
         "spec": ["containers": .array(containers.map { ["name": .string($0), "image": "nginx:1.27", "ports": [["containerPort": 80]]] })]]
    }

    @Test func kubectlExecOverWebSocketPassesThroughTheHub() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let fixture = try await Fixture.start(dir)
        _ = try fixture.emulator.put(Self.pod("web"))

        let echoed = try await fixture.kubectl(["exec", "web", "-n", "default", "--", "echo", "hello", "from", "web"])
        #expect(echoed.status == 0, "\(echoed.stderr)")
        #expect(echoed.stdout == "hello from web\n", "\(echoed.stdout)")

        // stdin reaches the container and its output comes back (cat).
        let catted = try await fixture.kubectl(["exec", "-i", "web", "-n", "default", "--", "cat"], input: "line one\nline two\n")
        #expect(catted.status == 0, "\(catted.stderr)")
        #expect(catted.stdout == "line one\nline two\n", "\(catted.stdout)")

        // The exit code travels in the final Status; kubectl exits with it.
        let failed = try await fixture.kubectl(["exec", "web", "-n", "default", "--", "sh", "-c", "exit 3"])
        #expect(failed.status == 3, "\(failed.stdout) \(failed.stderr)")
        #expect(failed.stderr.contains("command terminated with exit code 3"), "\(failed.stderr)")

        // A refused upgrade comes back unchanged (here the API server's 400), so
        // kubectl falls back to SPDY, is refused again, and prints the API server's own message.
        let refusedExec = try await fixture.kubectl(["exec", "web", "-n", "default", "-c", "db", "--", "true"])
        #expect(refusedExec.status != 0)
        #expect(refusedExec.stderr.contains("container db is not valid for pod web"), "\(refusedExec.stderr)")

        // The API server saw the person's service account asking to create pods/exec
        // (a WebSocket upgrade is a GET; create is checked as for SPDY's POST).
        let account = JITAccounts.accountName(user: "alice@example.com", session: fixture.session.id)
        let checks = fixture.emulator.authorizationChecks(userAgentPrefix: "kubectl").filter { $0.subresource == "exec" }
        #expect(checks.contains { $0.verb == "create" && $0.name == "web" })
        #expect(checks.allSatisfy { $0.user == "system:serviceaccount:default:\(account)" }, "\(checks.map(\.user))")

        // The hub audited the exec as create on pods/exec, switched to the WebSocket protocol.
        func audited(_ name: String) async throws -> [(code: Int?, annotations: [String: String])] {
            try await fixture.hub.core.database.auditEvents(AuditQuery(cluster: "hub", user: "alice@example.com", verb: "create",
                                                                       resource: "pods/exec", namespace: "default", name: name)).map { record in
                let event = try JSONSerialization.jsonObject(with: record.event) as? [String: Any] ?? [:]
                return ((event["responseStatus"] as? [String: Any])?["code"] as? Int, event["annotations"] as? [String: String] ?? [:])
            }
        }
        // A request is audited once its response has ended at the hub, which can be
        // just after kubectl has read the refusal and exited: wait for all five.
        try await eventually(timeout: .seconds(10), "the five exec attempts audited") { try await audited("web").count >= 5 }
        let execs = try await audited("web")
        let switched = execs.filter { $0.code == 101 }
        #expect(switched.count == 3, "\(execs)")
        #expect(switched.allSatisfy { $0.annotations["tether.dev/upgrade"]?.lowercased() == "websocket" }, "\(switched)")
        // kubectl tried WebSocket, was refused, and fell back to SPDY: both refusals audited.
        let refused = execs.filter { $0.code == 400 }.compactMap { $0.annotations["tether.dev/upgrade"] }
        #expect(refused.map { $0.lowercased() }.sorted() == ["spdy/3.1", "websocket"], "\(execs)")
        #expect(fixture.hub.core.metrics.exposition().contains(#"tether_access_requests_total{cluster="prod-eu",code="101"}"#))
        // A tunnel is counted closed once its response has ended at the hub, which can
        // be just after kubectl has read it and exited.
        try await eventually(timeout: .seconds(5), "every tunnel closed") { fixture.hub.core.metrics.exposition().contains("tether_access_tunnels_open 0") }
        try await fixture.stop()
    }

    /// kubectl's first choice, SPDY tunneled in WebSocket, and plain SPDY/3.1 (its
    /// fallback, or with the tunnel turned off): both are upgrades the hub carries as bytes.
    @Test(arguments: ["websocket", "SPDY/3.1"]) func kubectlPortForwardPassesThroughTheHub(upgrade: String) async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let fixture = try await Fixture.start(dir)
        _ = try fixture.emulator.put(Self.pod("web"))
        let forward = try ChildProcess(try Tools.kubectl(), ["--kubeconfig", fixture.kubeconfig, "port-forward", "-n", "default", "pod/web", ":80"],
                                       environment: ["HOME": dir.path, "KUBECTL_PORT_FORWARD_WEBSOCKETS": upgrade == "websocket" ? "true" : "false"])
        try await forward.waitForOutput(containing: "-> 80", timeout: .seconds(20))
        let line = try #require(forward.output.split(separator: "\n").first { $0.hasPrefix("Forwarding from 127.0.0.1:") })
        let local = try #require(Int(line.dropFirst("Forwarding from 127.0.0.1:".count).split(separator: " ")[0]))
        // Bytes to the pod's port 80 and back (the emulated container echoes),
        // through kubectl, the hub, the tunnel, the agent and the API server.
        #expect(try await tcpExchange(port: local, send: "hello port 80\n", expected: 14) == "hello port 80\n")
        #expect(try await tcpExchange(port: local, send: "again\n", expected: 6) == "again\n")

        let account = JITAccounts.accountName(user: "alice@example.com", session: fixture.session.id)
        let checks = fixture.emulator.authorizationChecks(userAgentPrefix: "kubectl").filter { $0.subresource == "portforward" }
        #expect(checks.contains { $0.verb == "create" } && checks.allSatisfy { $0.user == "system:serviceaccount:default:\(account)" }, "\(checks)")
        forward.signal(SIGTERM)
        _ = await forward.waitForExit()
        try await eventually(timeout: .seconds(5), "the port-forward audited") {
            let events = try await fixture.hub.core.database.auditEvents(AuditQuery(cluster: "hub", user: "alice@example.com", verb: "create",
                                                                                    resource: "pods/portforward", namespace: "default", name: "web"))
            return events.contains { record in
                let event = try? JSONSerialization.jsonObject(with: record.event) as? [String: Any]
                return (event?["responseStatus"] as? [String: Any])?["code"] as? Int == 101
                    && (event?["annotations"] as? [String: String])?["tether.dev/upgrade"]?.lowercased() == upgrade.lowercased()
            }
        }
        try await fixture.stop()
    }

    @Test func kubectlLogsFollowStreamsLinesAsTheyAreWritten() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let fixture = try await Fixture.start(dir)
        _ = try fixture.emulator.put(Self.pod("web"))
        fixture.emulator.appendLog(namespace: "default", pod: "web", container: "app", "starting")
        fixture.emulator.appendLog(namespace: "default", pod: "web", container: "app", "ready")

        let logs = try await fixture.kubectl(["logs", "web", "-n", "default"])
        #expect(logs.status == 0, "\(logs.stderr)")
        #expect(logs.stdout == "starting\nready\n", "\(logs.stdout)")

        let follower = try ChildProcess(try Tools.kubectl(), ["--kubeconfig", fixture.kubeconfig, "logs", "-f", "web", "-n", "default"],
                                        environment: ["HOME": dir.path])
        try await follower.waitForOutput(containing: "ready", timeout: .seconds(20))
        // A line written while kubectl follows arrives without the stream ending.
        fixture.emulator.appendLog(namespace: "default", pod: "web", container: "app", "GET /healthz 200")
        try await follower.waitForOutput(containing: "GET /healthz 200", timeout: .seconds(10))
        #expect(follower.process.isRunning)
        // The container ends (its pod is deleted): the follow ends and kubectl exits cleanly.
        try fixture.emulator.delete(.pods, namespace: "default", name: "web")
        let status = await follower.waitForExit()
        #expect(status == 0, "\(follower.output)")
        try await fixture.stop()
    }

    @Test func twoPeopleOnOneClusterGetSeparateAccounts() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let fixture = try await Fixture.start(dir)
        let (bob, bobCredential, _) = try await fixture.hub.core.createSession(user: "bob@example.com", groups: ["developers"], ttl: .seconds(3600))
        let bobSession = dir.sub("bob.session")
        try SessionFile(hub: fixture.endpoint.url, user: bob.user, credential: bobCredential, expiresAt: bob.expiresAt,
                        caCertificate: fixture.endpoint.caCertificate).write(to: bobSession)
        let bobKubeconfig = dir.sub("bob-kubeconfig")
        let written = try await runCommand(try ChildProcess.binary("tether-hub"), ["kubeconfig", "--session", bobSession, "--output", bobKubeconfig])
        #expect(written.status == 0, "\(written.stderr)")

        let alice = try await fixture.kubectl(["get", "configmaps", "-n", "default", "-o", "name"])
        #expect(alice.status == 0, "\(alice.stderr)")
        let bobs = try await runCommand(try Tools.kubectl(), ["--kubeconfig", bobKubeconfig, "get", "configmaps", "-n", "default", "-o", "name"],
                                        environment: ["HOME": dir.path])
        #expect(bobs.status == 0, "\(bobs.stderr)")

        let aliceAccount = JITAccounts.accountName(user: "alice@example.com", session: fixture.session.id)
        let bobAccount = JITAccounts.accountName(user: "bob@example.com", session: bob.id)
        #expect(aliceAccount != bobAccount)
        #expect(fixture.emulator.object(.serviceAccounts, namespace: "default", name: aliceAccount) != nil)
        #expect(fixture.emulator.object(.serviceAccounts, namespace: "default", name: bobAccount) != nil)
        let users = Set(fixture.emulator.authorizationChecks(userAgentPrefix: "kubectl").map(\.user))
        #expect(users == ["system:serviceaccount:default:\(aliceAccount)", "system:serviceaccount:default:\(bobAccount)"], "\(users)")

        // Ending bob's session removes his account only.
        _ = try await fixture.hub.core.revokeSessions(id: bob.id)
        try await eventually(timeout: .seconds(5), "bob's account deleted") {
            fixture.emulator.object(.serviceAccounts, namespace: "default", name: bobAccount) == nil
        }
        #expect(fixture.emulator.object(.serviceAccounts, namespace: "default", name: aliceAccount) != nil)
        try await fixture.stop()
    }

    @Test func anAgentRestartEndsKubectlsWatchCleanly() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let fixture = try await Fixture.start(dir)
        let watcher = try ChildProcess(try Tools.kubectl(), ["--kubeconfig", fixture.kubeconfig, "get", "configmaps", "-n", "default", "-w", "-o", "name"],
                                       environment: ["HOME": dir.path])
        try await eventually("the watch is open") { fixture.emulator.authorizationChecks(userAgentPrefix: "kubectl").contains { $0.verb == "watch" } }
        _ = try fixture.emulator.put(["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "before", "namespace": "default"]])
        try await watcher.waitForOutput(containing: "configmap/before", timeout: .seconds(10))

        // The agent goes away mid-watch: kubectl's watch ends as a closed watch
        // does (exit 0, no decode error), not hanging and not with a broken stream.
        await fixture.agent.shutdown()
        try await fixture.agentTask.value
        let status = await watcher.waitForExit()
        #expect(status == 0, "\(watcher.output)")
        #expect(!watcher.output.contains("error"), "\(watcher.output)")

        // A new agent process on the same state directory serves the next request.
        var config = AgentConfiguration(stateDirectory: dir.sub("agent"), joinString: nil)
        config.healthListen = nil
        config.auditListen = nil
        config.kubernetes = try KubeConnection.kubeconfig(path: dir.sub("emulator-kubeconfig"))
        let restarted = try AgentRuntime(configuration: config, logger: testLogger)
        let task = Task { try await restarted.run() }
        try await eventually("agent online again") { try await fixture.hub.status("prod-eu") == .online }
        let got = try await fixture.kubectl(["get", "configmap", "before", "-n", "default", "-o", "name"])
        #expect(got.status == 0 && got.stdout == "configmap/before\n", "\(got.stderr)")
        await restarted.shutdown()
        try await task.value
        try await fixture.hub.stop()
        await fixture.emulator.stop()
    }
}
