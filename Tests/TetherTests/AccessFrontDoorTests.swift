import Foundation
import Shared
import TestSupport
import Testing
import Yams
@testable import HubStore
@testable import TetherHub

/// The access listener's front door with the real kubectl: a kubeconfig from
/// `tether-hub kubeconfig`, and the refusals kubectl prints as it prints the API
/// server's own (401, 403, 404, 503), decided before anything leaves the hub.
@Suite struct AccessFrontDoorTests {
    @Test func kubectlThroughTheHubIsRefusedAsTheAPIServerWouldRefuseIt() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        defer { Task { try? await hub.stop() } }
        _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: ["env": "prod"])
        _ = try await hub.core.addCluster(ClusterName("dev"), labels: ["env": "dev"])
        try await hub.core.applyAccessRoles(try AccessRoleParser.parse(yaml: EmulatedCluster.prodView, file: "roles.yaml"))
        let endpoint = try #require(await hub.core.accessEndpoint.value)
        let (session, credential, _) = try await hub.core.createSession(user: "alice", groups: ["developers"], ttl: nil)
        let sessionFile = dir.sub("session.json")
        try SessionFile(hub: endpoint.url, user: "alice", credential: credential, expiresAt: session.expiresAt,
                        caCertificate: endpoint.caCertificate).write(to: sessionFile)

        // The kubeconfig names only what alice can reach, trusts the hub's CA, and is 0600.
        let hubBinary = try ChildProcess.binary("tether-hub")
        let kubeconfig = dir.sub("kubeconfig")
        let written = try await runCommand(hubBinary, ["kubeconfig", "--session", sessionFile, "--output", kubeconfig])
        #expect(written.status == 0, "\(written.stderr)")
        #expect(written.stderr.contains("tether-prod-eu: pending, ClusterRole/view"))
        var info = stat()
        #expect(stat(kubeconfig, &info) == 0 && info.st_mode & 0o777 == 0o600)
        let kubectl = try Tools.kubectl()
        let contexts = try await runCommand(kubectl, ["--kubeconfig", kubeconfig, "config", "get-contexts", "-o", "name"])
        #expect(contexts.stdout == "tether-prod-eu\n", "\(contexts.stderr)")

        func get(_ server: String? = nil) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await runCommand(kubectl, ["--kubeconfig", kubeconfig, "--request-timeout", "10s", "get", "pods"] + (server.map { ["--server", $0] } ?? []))
        }
        // Registered and granted, but no agent is connected.
        let offline = try await get()
        #expect(offline.status != 0)
        #expect(offline.stderr.contains("Warning: cluster prod-eu is offline (last seen never)"), "\(offline.stderr)")
        #expect(offline.stderr.contains("Error from server (ServiceUnavailable)"), "\(offline.stderr)")
        let raw = try await runCommand(kubectl, ["--kubeconfig", kubeconfig, "get", "--raw", "/clusters/prod-eu/api/v1/namespaces/default/pods"])
        #expect(raw.stderr.contains("Error from server (ServiceUnavailable): cluster prod-eu is offline (last seen never)"), "\(raw.stderr)")
        // No role on dev: kubectl's usual Forbidden line, and the refusal is audited under her name.
        let forbidden = try await get(endpoint.url + "/clusters/dev")
        #expect(forbidden.stderr.contains("Warning: user \"alice\" cannot reach cluster \"dev\": no AccessRole grants it"), "\(forbidden.stderr)")
        #expect(forbidden.stderr.contains("Error from server (Forbidden)"), "\(forbidden.stderr)")
        let refusals = try await hub.core.database.auditEvents(AuditQuery(cluster: "hub", user: "alice", resource: "clusters"))
        #expect(!refusals.isEmpty && refusals.allSatisfy { String(decoding: $0.event, as: UTF8.self).contains("\"code\":403") })
        let unknown = try await get(endpoint.url + "/clusters/nowhere")
        #expect(unknown.stderr.contains("Warning: cluster \"nowhere\" is not registered at this hub"), "\(unknown.stderr)")

        // A revoked session is refused at once; so is a missing or forged one.
        _ = try await hub.core.revokeSessions(id: session.id)
        let revoked = try await get()
        #expect(revoked.stderr.contains("error: You must be logged in to the server"), "\(revoked.stderr)")
        #expect(revoked.stderr.contains("Warning: session \(session.id) was revoked"), "\(revoked.stderr)")
        var anonymous = try SessionFile.read(sessionFile)
        anonymous.credential = ""
        await #expect(throws: TetherError.self) { let _: AccessProxy.WhoAmI = try await anonymous.get("/tether/v1/whoami") }
        let stale = try await runCommand(hubBinary, ["kubeconfig", "--session", sessionFile])
        #expect(stale.status != 0 && stale.stderr.contains("was revoked"), "\(stale.stderr)")
    }

    @Test func mergeAddsTetherContextsAndKeepsEverythingElse() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.sub("config")
        try """
            apiVersion: v1
            kind: Config
            current-context: kind-local
            clusters:
            - name: kind-local
              cluster: {server: "https://127.0.0.1:6443"}
            - name: tether-old
              cluster: {server: "https://stale"}
            contexts:
            - name: kind-local
              context: {cluster: kind-local, user: kind-local}
            users:
            - name: kind-local
              user: {token: abc}
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let file = SessionFile(hub: "https://hub.example:7443", user: "alice", credential: "tether-session.v1.x.y",
                               expiresAt: Date().addingTimeInterval(3600), caCertificate: "PEM")
        let fresh = Kubeconfig.document(for: file, clusters: ["prod-eu", "old"], plugin: .init(command: "/usr/bin/tether-hub", arguments: ["credential", "--hub", file.hub]))
        let merged = try Kubeconfig.merge(fresh, into: path)
        try Kubeconfig.write(merged, to: path)
        let back = try #require(try Yams.load(yaml: String(contentsOfFile: path, encoding: .utf8)) as? [String: Any])
        #expect(back["current-context"] as? String == "kind-local")
        let clusters = (back["clusters"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(clusters == ["kind-local", "tether-prod-eu", "tether-old"])
        let servers = (back["clusters"] as? [[String: Any]] ?? []).compactMap { ($0["cluster"] as? [String: Any])?["server"] as? String }
        #expect(servers == ["https://127.0.0.1:6443", "https://hub.example:7443/clusters/prod-eu", "https://hub.example:7443/clusters/old"])
        #expect((back["users"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String } == ["kind-local", "tether-hub.example-alice"])
        try "- not a mapping".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: TetherError.self) { try Kubeconfig.merge(fresh, into: path) }
    }
}
