import AsyncHTTPClient
import Foundation
import KubeEmulator
import NIOCore
import NIOSSL
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherAgent
@testable import TetherHub

/// kubectl through hub, tunnel and agent to the API emulator, with a just-in-time
/// service account bound to exactly the person's roles.
@Suite(.serialized) struct AccessTunnelTests {
    /// An emulated cluster `prod-eu` with its agent connected to a hub, an AccessRole
    /// for group developers, and alice's session with a kubeconfig for it.
    struct Fixture {
        let dir: TemporaryDirectory
        let emulator: KubeEmulator
        let hub: TestHub
        let agent: AgentRuntime
        let agentTask: Task<Void, any Error>
        let session: SessionRecord
        let credential: String
        let endpoint: AccessEndpoint
        let kubeconfig: String

        static func start(_ dir: TemporaryDirectory, spareTunnelIdle: Duration = .seconds(300)) async throws -> Fixture {
            let cluster = try await EmulatedCluster.start(dir, spareTunnelIdle: spareTunnelIdle, roles: """
                apiVersion: tether.dev/v1
                kind: AccessRole
                metadata: {name: prod-view}
                spec:
                  subjects: [{kind: Group, name: developers}]
                  clusterSelector: {matchLabels: {env: prod}}
                  clusterRoles: [view]
                  namespaces: [{name: default, clusterRoles: [edit]}]
                """)
            let (emulator, hub, agent, agentTask, endpoint) = (cluster.emulator, cluster.hub, cluster.agent, cluster.agentTask, cluster.endpoint)
            let (session, credential, _) = try await hub.core.createSession(user: "alice@example.com", groups: ["developers"], ttl: .seconds(3600))
            let sessionFile = dir.sub("alice.session")
            try SessionFile(hub: endpoint.url, user: session.user, credential: credential, expiresAt: session.expiresAt,
                            caCertificate: endpoint.caCertificate).write(to: sessionFile)
            let kubeconfig = dir.sub("kubeconfig")
            let written = try await runCommand(try ChildProcess.binary("tether-hub"), ["kubeconfig", "--session", sessionFile, "--output", kubeconfig])
            #expect(written.status == 0, "\(written.stderr)")
            return Fixture(dir: dir, emulator: emulator, hub: hub, agent: agent, agentTask: agentTask, session: session, credential: credential,
                           endpoint: endpoint, kubeconfig: kubeconfig)
        }

        func kubectl(_ args: [String], input: String? = nil) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await runCommand(try Tools.kubectl(), ["--kubeconfig", kubeconfig, "--request-timeout", "20s"] + args, environment: ["HOME": dir.path],
                                 input: input)
        }

        func stop() async throws {
            await agent.shutdown()
            try await agentTask.value
            try await hub.stop()
            await emulator.stop()
        }
    }

    @Test func kubectlReachesTheClusterAsThePersonsJustInTimeAccount() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let fixture = try await Fixture.start(dir)
        let (emulator, hub, session) = (fixture.emulator, fixture.hub, fixture.session)
        func run(_ args: String...) async throws -> (status: Int32, stdout: String, stderr: String) { try await fixture.kubectl(args) }

        // Write, read, list and delete, as alice.
        let manifest = dir.sub("cm.yaml")
        try "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes, namespace: default}\ndata: {who: alice}\n"
            .write(toFile: manifest, atomically: true, encoding: .utf8)
        let applied = try await run("apply", "-f", manifest)
        #expect(applied.status == 0, "\(applied.stderr)")
        #expect(applied.stdout.contains("configmap/notes created"), "\(applied.stdout)")
        let got = try await run("get", "configmap", "notes", "-n", "default", "-o", "jsonpath={.data.who}")
        #expect(got.status == 0 && got.stdout == "alice", "\(got.stderr)")
        let listed = try await run("get", "namespaces", "-o", "name")
        #expect(listed.status == 0 && listed.stdout.contains("namespace/default"), "\(listed.stderr)")

        // The cluster saw the person's service account, never the agent's credentials.
        let account = JITAccounts.accountName(user: "alice@example.com", session: session.id)
        let checks = emulator.authorizationChecks(userAgentPrefix: "kubectl")
        #expect(!checks.isEmpty)
        #expect(checks.allSatisfy { $0.user == "system:serviceaccount:default:\(account)" }, "\(checks.map(\.user))")
        let sa = try #require(emulator.object(.serviceAccounts, namespace: "default", name: account))
        #expect(sa[path: ["metadata", "labels", "app.kubernetes.io/managed-by"]]?.string == "tether")
        #expect(sa[path: ["metadata", "annotations", "tether.dev/session"]]?.string == session.id)
        #expect(sa[path: ["metadata", "annotations", "tether.dev/user"]]?.string == "alice@example.com")
        // Bound to exactly the roles the AccessRole grants.
        let bindings = emulator.objects(.clusterRoleBindings).filter { $0[path: ["metadata", "name"]]?.string?.hasPrefix(account) == true }
        #expect(bindings.compactMap { $0[path: ["roleRef", "name"]]?.string } == ["view"])
        let roleBindings = emulator.objects(.roleBindings, namespace: "default").filter { $0[path: ["metadata", "name"]]?.string?.hasPrefix(account) == true }
        #expect(roleBindings.compactMap { $0[path: ["roleRef", "name"]]?.string } == ["edit"])

        // Metrics: requests by cluster and code at the hub; accounts made at the agent.
        #expect(hub.core.metrics.exposition().contains(#"tether_access_requests_total{cluster="prod-eu",code="200"}"#))
        try await eventually(timeout: .seconds(5), "every tunnel closed") { hub.core.metrics.exposition().contains("tether_access_tunnels_open 0") }
        #expect(fixture.agent.metrics.exposition().contains("tether_agent_jit_accounts_created_total 1"))
        #expect(fixture.agent.metrics.exposition().contains("tether_agent_jit_first_request_seconds_count 1"))

        let deleted = try await run("delete", "configmap", "notes", "-n", "default")
        #expect(deleted.status == 0 && deleted.stdout.contains("deleted"), "\(deleted.stderr)")
        #expect(emulator.object(.configMaps, namespace: "default", name: "notes") == nil)

        // Every proxied request is in the hub's audit log under her name (written
        // once its response went out: wait for those writes, not for a time).
        await hub.core.auditBacklog.drained()
        let audited = try await hub.core.database.auditEvents(AuditQuery(cluster: "hub", user: "alice@example.com", verb: "delete",
                                                                         resource: "configmaps", namespace: "default", name: "notes"))
        #expect(audited.count == 1)
        let record = try #require(audited.first.flatMap { try JSONSerialization.jsonObject(with: $0.event) as? [String: Any] })
        let annotations = record["annotations"] as? [String: String] ?? [:]
        #expect(annotations["tether.dev/cluster"] == "prod-eu" && annotations["tether.dev/session"] == session.id)
        #expect(annotations["tether.dev/latency-ms"] != nil && annotations["tether.dev/response-bytes"] != nil)
        #expect((record["user"] as? [String: Any])?["groups"] as? [String] == ["developers"])
        #expect((record["responseStatus"] as? [String: Any])?["code"] as? Int == 200)

        // A role change at the hub reaches the cluster by itself, within 5 s.
        try await hub.core.applyAccessRoles(try AccessRoleParser.parse(yaml: """
            apiVersion: tether.dev/v1
            kind: AccessRole
            metadata: {name: prod-view}
            spec:
              subjects: [{kind: Group, name: developers}]
              clusterSelector: {matchLabels: {env: prod}}
              clusterRoles: [admin]
            """, file: "roles.yaml"))
        try await eventually(timeout: .seconds(5), "bindings follow the role change") {
            emulator.objects(.clusterRoleBindings).filter { $0[path: ["metadata", "name"]]?.string?.hasPrefix(account) == true }
                .compactMap { $0[path: ["roleRef", "name"]]?.string } == ["admin"]
                && emulator.objects(.roleBindings, namespace: "default").allSatisfy { $0[path: ["metadata", "name"]]?.string?.hasPrefix(account) != true }
        }

        // Revoking the session deletes the account and its bindings within 5 s, and
        // its token stops working at the API server.
        let tokenBefore = emulator.authorizationChecks(userAgentPrefix: "kubectl").count
        _ = try await hub.core.revokeSessions(id: session.id)
        try await eventually(timeout: .seconds(5), "account deleted") {
            emulator.object(.serviceAccounts, namespace: "default", name: account) == nil
                && emulator.objects(.clusterRoleBindings).allSatisfy { $0[path: ["metadata", "name"]]?.string?.hasPrefix(account) != true }
                && emulator.objects(.roleBindings, namespace: "default").allSatisfy { $0[path: ["metadata", "name"]]?.string?.hasPrefix(account) != true }
        }
        // Counted once the last binding is gone, just after the objects vanish.
        try await eventually(timeout: .seconds(5), "removal counted") {
            fixture.agent.metrics.exposition().contains("tether_agent_jit_accounts_removed_total 1")
        }
        let refused = try await run("get", "namespaces")
        #expect(refused.status != 0 && refused.stderr.contains("was revoked"), "\(refused.stderr)")
        #expect(emulator.authorizationChecks(userAgentPrefix: "kubectl").count == tokenBefore, "nothing reached the cluster after the revocation")

        try await fixture.stop()
    }

    @Test func aWatchStreamsAndOneNobodyReadsDoesNotDelayAnotherRequest() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let fixture = try await Fixture.start(dir)
        func configMap(_ name: String, size: Int = 10) throws -> JSON {
            try JSON.parse(JSONSerialization.data(withJSONObject: [
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": name, "namespace": "default"],
                "data": ["blob": String(repeating: "x", count: size)],
            ]))
        }
        // kubectl get -w through the hub receives events as they happen.
        let watcher = try ChildProcess(try Tools.kubectl(), ["--kubeconfig", fixture.kubeconfig, "get", "configmaps", "-n", "default", "-w", "-o", "name"], environment: ["HOME": dir.path])
        try await eventually("the watch is open") { fixture.emulator.authorizationChecks(userAgentPrefix: "kubectl").contains { $0.verb == "watch" } }
        _ = try fixture.emulator.put(try configMap("first"))
        try await watcher.waitForOutput(containing: "configmap/first", timeout: .seconds(10))

        // A watch whose reader never reads, while the cluster writes far more than any
        // window holds: the other person's requests go through regardless.
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array((fixture.endpoint.caCertificate ?? "").utf8)))
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
        var stalled = HTTPClientRequest(url: fixture.endpoint.url + "/clusters/prod-eu/api/v1/namespaces/default/configmaps?watch=true")
        stalled.headers.add(name: "Authorization", value: "Bearer \(fixture.credential)")
        let response = try await client.execute(stalled, timeout: .seconds(30))
        #expect(response.status.code == 200)
        for i in 0..<120 { _ = try fixture.emulator.put(try configMap("big-\(i)", size: 200_000)) }
        for i in 0..<10 {
            let got = try await fixture.kubectl(["get", "configmap", "big-\(i)", "-n", "default", "-o", "name"])
            #expect(got.status == 0 && got.stdout == "configmap/big-\(i)\n", "\(got.stderr)")
        }
        try await watcher.waitForOutput(containing: "configmap/big-119", timeout: .seconds(20))
        watcher.signal(SIGTERM)
        _ = await watcher.waitForExit()
        _ = response
        try await client.shutdown()
        try await fixture.stop()
    }

    /// Spare tunnels: none while nobody uses the cluster; opened on a request, after
    /// which a request rides one (no OpenTunnel asked); ended by the hub when unused
    /// for their idle time and not replaced (the hub's probe opens none); gone with
    /// the agent's channel.
    @Test func requestsRideSpareTunnelsThatEndWhenIdle() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let fixture = try await Fixture.start(dir, spareTunnelIdle: .seconds(3))
        let cluster = try ClusterName("prod-eu")
        let (hub, agent) = (fixture.hub.core, fixture.agent)
        func hubCounts() -> (spare: Int, asked: Int) {
            let text = hub.metrics.exposition()
            func value(_ path: String) -> Int {
                text.split(separator: "\n").first { $0.hasPrefix("tether_access_tunnels_total{path=\"\(path)\"}") }
                    .flatMap { Int($0.split(separator: " ").last ?? "") } ?? -1
            }
            return (value("spare"), value("asked"))
        }
        func agentSpares(_ n: Int) -> Bool {
            agent.metrics.exposition().split(separator: "\n").first { $0.hasPrefix("tether_agent_spare_tunnels ") }
                .flatMap { Double($0.split(separator: " ").last ?? "") } == Double(n)
        }
        #expect(hub.tunnels.spareCount(cluster) == 0 && agentSpares(0), "no spares before anyone uses the cluster")
        #expect(hubCounts() == (0, 0))
        // One request each (`--raw` takes the path from the server's root, prefix included).
        func raw(_ path: String) async throws {
            let got = try await fixture.kubectl(["get", "--raw", "/clusters/prod-eu" + path])
            #expect(got.status == 0, "\(got.stderr)")
        }

        // The first request is asked for on the channel; the agent then opens its spares.
        try await raw("/api/v1/namespaces/default/configmaps")
        #expect(hubCounts().asked >= 1)
        try await eventually(timeout: .seconds(10), "the agent holds 4 spares") { hub.tunnels.spareCount(cluster) == HubSettings.defaultSpareTunnels }
        let before = hubCounts()
        try await raw("/api/v1/namespaces/default/configmaps")
        let after = hubCounts()
        #expect(after.spare == before.spare + 1 && after.asked == before.asked, "\(before) -> \(after)")
        // The claimed spare is replaced.
        try await eventually(timeout: .seconds(10), "the pool is full again") { hub.tunnels.spareCount(cluster) == HubSettings.defaultSpareTunnels }

        // Unused for 3 s: the hub ends them, and the agent does not open new ones.
        try await eventually(timeout: .seconds(15), "idle spares ended (hub \(hub.tunnels.spareCount(cluster)), agent \(agent.metrics.exposition().split(separator: "\n").filter { $0.hasPrefix("tether_agent_spare") }))") { hub.tunnels.spareCount(cluster) == 0 && agentSpares(0) }
        #expect(hub.metrics.exposition().split(separator: "\n").contains { $0 == "tether_access_spare_tunnels 0" || $0 == "tether_access_spare_tunnels 0.0" })
        // The hub's data-path probe neither takes a spare nor makes the agent open any.
        #expect(await hub.probeDataPath(cluster).ok)
        #expect(agentSpares(0) && hub.tunnels.spareCount(cluster) == 0, "the probe opened spares")
        let idle = hubCounts()
        try await raw("/api/v1/namespaces/default/configmaps")
        #expect(hubCounts().asked == idle.asked + 1, "after the idle time a request is asked for again")

        // The channel's end takes its spares along.
        try await eventually(timeout: .seconds(10), "spares again") { hub.tunnels.spareCount(cluster) == HubSettings.defaultSpareTunnels }
        await agent.shutdown()
        try await fixture.agentTask.value
        try await eventually(timeout: .seconds(5), "the agent's spares are gone") { hub.tunnels.spareTotal == 0 }
        try await fixture.hub.stop()
        await fixture.emulator.stop()
    }

    @Test func theHubProbesEachClustersDataPathThroughItsAgent() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let fixture = try await Fixture.start(dir)
        let cluster = try ClusterName("prod-eu")
        let ok = await fixture.hub.core.probeDataPath(cluster)
        #expect(ok.ok, "\(ok.summary)")
        #expect(try await fixture.hub.core.clusterViews().first?.dataPath?.hasPrefix("ok (") == true)
        // The probe carries no credential at all (the emulator, like --anonymous-auth=false,
        // answers 401, which still proves the API server is reachable).
        #expect(Set(fixture.emulator.anonymousRequests) == ["/readyz"])
        await fixture.emulator.stop()
        let failing = await fixture.hub.core.probeDataPath(cluster)
        #expect(!failing.ok)
        #expect(failing.summary.hasPrefix("failing: API server answered 502: the agent cannot reach this cluster's API server"), "\(failing.summary)")
        #expect(try await fixture.hub.status("prod-eu") == .online, "the channel is up; the data path is what fails")
        await fixture.agent.shutdown()
        try await fixture.agentTask.value
        try await fixture.hub.stop()
    }

    @Test func theSweepRemovesAccountsOfSessionsTheHubNoLongerLists() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let emulator = try await KubeEmulator.start()
        try emulator.writeKubeconfig(to: dir.sub("kubeconfig"))
        let client = try KubeClient(connection: try KubeConnection.kubeconfig(path: dir.sub("kubeconfig")))
        let accounts = JITAccounts(client: client, namespace: "default", logger: testLogger)
        func grant(_ session: String, expires: Date) -> PersonGrant {
            PersonGrant(user: "bob", groups: [], sessionID: session, sessionExpires: expires, clusterRoles: ["view"], namespaces: [:])
        }
        _ = try await accounts.token(for: grant("live", expires: Date().addingTimeInterval(3600)))
        _ = try await accounts.token(for: grant("gone", expires: Date().addingTimeInterval(3600)))
        _ = try await accounts.token(for: grant("expired", expires: Date().addingTimeInterval(-5)))
        // Someone else's account with a similar name is never touched.
        _ = try emulator.put(["apiVersion": "v1", "kind": "ServiceAccount",
                              "metadata": ["name": "tether-bob-lookalike", "namespace": "default", "labels": ["tether.dev/jit": "true"]]])
        #expect(emulator.objects(.serviceAccounts, namespace: "default").count == 4)

        let forwarder = try KubeForwarder(connection: try KubeConnection.kubeconfig(path: dir.sub("kubeconfig")), accounts: accounts, logger: testLogger)
        let live = JITAccounts.accountName(user: "bob", session: "live")
        // The hub lists "live" (now granted edit, no longer view) and "expired"; "gone" is not listed.
        var changed = grant("live", expires: Date().addingTimeInterval(3600))
        changed.clusterRoles = ["edit"]
        await forwarder.liveSessions([changed, grant("expired", expires: Date().addingTimeInterval(-5))])
        let left = Set(emulator.objects(.serviceAccounts, namespace: "default").compactMap { $0[path: ["metadata", "name"]]?.string })
        #expect(left == [live, "tether-bob-lookalike"])
        #expect(emulator.objects(.clusterRoleBindings).compactMap { $0[path: ["metadata", "name"]]?.string } == ["\(live)-edit"])
        // A session the hub lists that never reached this cluster gets no account here.
        await forwarder.liveSessions([changed, grant("elsewhere", expires: Date().addingTimeInterval(3600))])
        #expect(emulator.objects(.serviceAccounts, namespace: "default").count == 2)
        // An account idle past --jit-idle is deleted though its session lives; the
        // next request makes it again.
        let impatient = JITAccounts(client: client, namespace: "default", logger: testLogger, idle: .zero)
        await impatient.reconcile(live: ["live": changed])
        #expect(emulator.object(.serviceAccounts, namespace: "default", name: live) == nil)
        _ = try await impatient.token(for: changed)
        #expect(emulator.object(.serviceAccounts, namespace: "default", name: live) != nil)
        try await forwarder.shutdown()
        try await client.shutdown()
        await emulator.stop()
    }

    @Test func accountNamesAreDNSLabelsPerSession() {
        let a = JITAccounts.accountName(user: "Alice.Smith@Example.COM", session: "s1")
        #expect(a.hasPrefix("tether-alice-smith-example-com-") && a.count <= 63)
        #expect(a != JITAccounts.accountName(user: "Alice.Smith@Example.COM", session: "s2"))
        #expect(JITAccounts.accountName(user: "\u{1F600}", session: "s1").hasPrefix("tether-"))
        let long = JITAccounts.accountName(user: String(repeating: "x", count: 300), session: "s1")
        #expect(long.count <= 63)
    }

    @Test func theAgentNeverForwardsCredentialsOrImpersonation() {
        let kept = KubeForwarder.forwardedHeaders([
            ("Authorization", "Bearer stolen"), ("Impersonate-User", "root"), ("impersonate-group", "system:masters"),
            ("Impersonate-Extra-scopes", "x"), ("Accept", "application/json"), ("Connection", "close"), ("User-Agent", "kubectl/v1.36"),
        ])
        #expect(kept.map(\.name) == ["Accept", "User-Agent"])
    }
}

@Suite struct KubeRequestInfoTests {
    @Test(arguments: [
        ("GET", "/api/v1/namespaces", KubeRequestInfo(verb: "list", apiGroup: "", resource: "namespaces")),
        ("GET", "/api/v1/namespaces/default", KubeRequestInfo(verb: "get", apiGroup: "", resource: "namespaces", name: "default")),
        ("GET", "/api/v1/namespaces/default/configmaps?limit=500", KubeRequestInfo(verb: "list", apiGroup: "", resource: "configmaps", namespace: "default")),
        ("GET", "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=5",
         KubeRequestInfo(verb: "watch", apiGroup: "", resource: "configmaps", namespace: "default")),
        ("PATCH", "/api/v1/namespaces/default/configmaps/notes", KubeRequestInfo(verb: "patch", apiGroup: "", resource: "configmaps", namespace: "default", name: "notes")),
        ("GET", "/api/v1/namespaces/default/pods/web/log?follow=true", KubeRequestInfo(verb: "get", apiGroup: "", resource: "pods/log", namespace: "default", name: "web")),
        ("POST", "/apis/apps/v1/namespaces/team-a/deployments", KubeRequestInfo(verb: "create", apiGroup: "apps", resource: "deployments", namespace: "team-a")),
        ("DELETE", "/api/v1/namespaces/default/configmaps", KubeRequestInfo(verb: "deletecollection", apiGroup: "", resource: "configmaps", namespace: "default")),
        ("PUT", "/apis/rbac.authorization.k8s.io/v1/clusterroles/view", KubeRequestInfo(verb: "update", apiGroup: "rbac.authorization.k8s.io", resource: "clusterroles", name: "view")),
        ("GET", "/version", KubeRequestInfo(verb: "get")),
        ("GET", "/api", KubeRequestInfo(verb: "get")),
        ("GET", "/apis/apps/v1", KubeRequestInfo(verb: "get")),
    ])
    func readsTheRequestAsTheAPIServerDoes(_ method: String, _ path: String, _ expected: KubeRequestInfo) {
        #expect(KubeRequestInfo(method: method, path: path) == expected)
    }
}
