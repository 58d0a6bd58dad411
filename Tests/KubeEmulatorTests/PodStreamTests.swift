import Foundation
import KubeEmulator
import Testing
import TestSupport

/// kubectl exec and logs straight against the emulator: its WebSocket exec and
/// log streams behave as kube-apiserver's do for the real client.
@Suite(.serialized) struct PodStreamTests {
    static let pod: JSON = ["apiVersion": "v1", "kind": "Pod", "metadata": ["name": "web", "namespace": "default"],
                            "spec": ["containers": [["name": "app", "image": "nginx:1.27", "ports": [["containerPort": 80]]],
                                                    ["name": "sidecar", "image": "envoy:1.31"]]]]

    /// An emulator with the pod `web`, and a kubeconfig for it in a fresh directory.
    static func start() async throws -> (KubeEmulator, TemporaryDirectory, String) {
        let emulator = try await KubeEmulator.start()
        let dir = try TemporaryDirectory()
        let kubeconfig = dir.sub("kubeconfig")
        try emulator.writeKubeconfig(to: kubeconfig)
        _ = try emulator.put(Self.pod)
        return (emulator, dir, kubeconfig)
    }

    @Test func execOverWebSocketRunsTheBuiltInCommands() async throws {
        let (emulator, dir, kubeconfig) = try await Self.start()
        defer { dir.remove() }
        func kubectl(_ args: String...) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await KubectlTests.run(kubeconfig, args)
        }
        let echoed = try await kubectl("exec", "web", "-c", "app", "--", "echo", "hi")
        #expect(echoed.status == 0, "\(echoed.stderr)")
        #expect(echoed.stdout == "hi\n")
        let host = try await kubectl("exec", "web", "-c", "sidecar", "--", "hostname")
        #expect(host.stdout == "web\n", "\(host.stderr)")
        let missing = try await kubectl("exec", "web", "-c", "app", "--", "htop")
        #expect(missing.status == 126, "\(missing.stderr)")
        #expect(missing.stderr.contains(#"exec: "htop": executable file not found in $PATH"#), "\(missing.stderr)")
        let badContainer = try await kubectl("exec", "web", "-c", "db", "--", "true")
        #expect(badContainer.status != 0)
        #expect(badContainer.stderr.contains("container db is not valid for pod web"), "\(badContainer.stderr)")

        // The WebSocket handshake is a GET; get and create are both checked.
        let checks = emulator.authorizationChecks(userAgentPrefix: "kubectl").filter { $0.subresource == "exec" }
        #expect(checks.contains { $0.verb == "get" } && checks.contains { $0.verb == "create" }, "\(checks)")
        await emulator.stop()
    }

    @Test func logsFollowEndsWhenThePodGoes() async throws {
        let (emulator, dir, kubeconfig) = try await Self.start()
        defer { dir.remove() }
        for i in 1...5 { emulator.appendLog(namespace: "default", pod: "web", container: "app", "line \(i)") }
        let tail = try await KubectlTests.run(kubeconfig, ["logs", "web", "-c", "app", "--tail", "2"])
        #expect(tail.stdout == "line 4\nline 5\n", "\(tail.stderr)")
        await emulator.stop()
    }

    /// kubectl tries SPDY tunneled in WebSocket first; with the tunnel turned off it
    /// upgrades to SPDY/3.1 directly. Both reach the same streams.
    @Test(arguments: [true, false]) func portForwardReachesTheContainersPort(webSocket: Bool) async throws {
        let (emulator, dir, kubeconfig) = try await Self.start()
        defer { dir.remove() }
        let forward = try ChildProcess(try Tools.kubectl(), ["--kubeconfig", kubeconfig, "port-forward", "pod/web", ":80", ":81"],
                                       environment: ["HOME": dir.path, "KUBECTL_PORT_FORWARD_WEBSOCKETS": webSocket ? "true" : "false"])
        try await forward.waitForOutput(containing: "-> 81", timeout: .seconds(20))
        let ports = forward.output.split(separator: "\n").compactMap { line -> (Int, Int)? in
            // "Forwarding from 127.0.0.1:43567 -> 80"
            guard line.hasPrefix("Forwarding from 127.0.0.1:") else { return nil }
            let parts = line.dropFirst("Forwarding from 127.0.0.1:".count).split(separator: " ")
            guard parts.count == 3, let local = Int(parts[0]), let remote = Int(parts[2]) else { return nil }
            return (local, remote)
        }
        let local80 = try #require(ports.first { $0.1 == 80 }?.0, "\(forward.output)")
        let local81 = try #require(ports.first { $0.1 == 81 }?.0, "\(forward.output)")
        // The container's port 80 echoes; two connections, one after the other.
        #expect(try await tcpExchange(port: local80, send: "ping\n", expected: 5) == "ping\n")
        #expect(try await tcpExchange(port: local80, send: "second\n", expected: 7) == "second\n")
        // Nothing listens on 81: the kubelet's error reaches kubectl, and the connection closes.
        #expect(try await tcpExchange(port: local81, send: "x", expected: 1) == "")
        try await forward.waitForOutput(containing: "connection refused", timeout: .seconds(10))
        let checks = emulator.authorizationChecks(userAgentPrefix: "kubectl").filter { $0.subresource == "portforward" }
        #expect(checks.contains { $0.verb == "create" }, "\(checks)")
        // The WebSocket handshake is a GET (get, then create, checked); SPDY's is a POST.
        #expect(checks.contains { $0.verb == "get" } == webSocket, "\(checks)")
        forward.signal(SIGTERM)
        _ = await forward.waitForExit()
        await emulator.stop()
    }
}
