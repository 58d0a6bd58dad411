import Foundation
import Shared
import TestSupport
import Testing

/// The README's flow through the built `tether-hub` and `tether-agent` binaries.
@Suite struct CLITests {
    struct ListedCluster: Decodable {
        var name: String
        var labels: [String: String]
        var status: String
        var lastSeen: String?
        var agentVersion: String?
        var certificateExpiry: String?
    }

    @Test func operatorFlowThroughTheBinaries() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hubBinary = try ChildProcess.binary("tether-hub")
        let agentBinary = try ChildProcess.binary("tether-agent")
        let data = dir.sub("tether-data")
        let credentials = data + "/admin-credentials.json"
        func cli(_ args: String...) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await runCommand(hubBinary, args + ["--credentials", credentials])
        }
        func clusters() async throws -> [ListedCluster] {
            let listed = try await cli("cluster", "list", "--output", "json")
            #expect(listed.status == 0, "\(listed.stderr)")
            return try JSONDecoder().decode([ListedCluster].self, from: Data(listed.stdout.utf8))
        }

        let hub = try ChildProcess(hubBinary, [
            "serve", "--data-dir", data, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--access-listen", "127.0.0.1:0", "--advertise", "127.0.0.1",
        ])
        try await hub.waitForOutput(containing: "hub ready")

        // Register, then a join token: the join string alone on stdout's first line.
        let added = try await cli("cluster", "add", "prod-eu", "--label", "env=prod")
        #expect(added.status == 0, "\(added.stderr)")
        #expect(try await clusters().map(\.status) == ["pending"])
        let token = try await cli("token", "create", "--cluster", "prod-eu", "--ttl", "1h")
        #expect(token.status == 0, "\(token.stderr)")
        let joinLine = try #require(token.stdout.split(separator: "\n").first.map(String.init))
        let join = try JoinString(parsing: joinLine)
        #expect(token.stderr.contains("tether-agent"))
        #expect(!token.stderr.isEmpty && !hub.output.contains(join.secret), "the secret never reaches the hub's log")

        // The agent enrolls and the cluster shows online.
        let agent = try ChildProcess(agentBinary, ["--state-dir", dir.sub("agent"), "--health-listen", "127.0.0.1:0", "--audit-listen", "127.0.0.1:0"],
                                     environment: ["TETHER_JOIN_TOKEN": joinLine])
        try await eventually(timeout: .seconds(10), "online") { try await clusters().first?.status == "online" }
        let listed = try #require(try await clusters().first)
        #expect(listed.labels == ["env": "prod"])
        #expect(listed.agentVersion == TetherVersion.current)
        #expect(listed.lastSeen != nil && listed.certificateExpiry != nil)
        let rawJSON = try await cli("cluster", "list", "--output", "json").stdout
        let keys = try (JSONSerialization.jsonObject(with: Data(rawJSON.utf8)) as! [[String: Any]]).first!.keys
        #expect(Set(keys) == ["name", "labels", "status", "lastSeen", "agentVersion", "certificateExpiry", "dataPath"])
        let table = try await cli("cluster", "list").stdout
        #expect(table.contains("NAME") && table.contains("prod-eu") && table.contains("online"))

        // Reusing the token fails with its own error.
        let reuse = try await runCommand(agentBinary, ["--state-dir", dir.sub("agent-2"), "--health-listen", "none", "--audit-listen", "none", "--join-token", joinLine])
        #expect(reuse.status != 0)
        #expect(reuse.stderr.contains("already used"))

        // SIGKILL, then start again with the same state dir and no token: back online.
        agent.signal(SIGKILL)
        _ = await agent.waitForExit()
        try await eventually(timeout: .seconds(10), "offline after kill") { try await clusters().first?.status == "offline" }
        let restarted = try ChildProcess(agentBinary, ["--state-dir", dir.sub("agent"), "--health-listen", "127.0.0.1:0", "--audit-listen", "127.0.0.1:0"])
        try await eventually(timeout: .seconds(10), "online again") { try await clusters().first?.status == "online" }
        #expect(!restarted.output.contains("enrolling"))

        // Remove: the channel is cut and the agent is told why.
        let removed = try await cli("cluster", "remove", "prod-eu")
        #expect(removed.status == 0, "\(removed.stderr)")
        #expect(try await clusters().first?.status == "revoked")
        try await restarted.waitForOutput(containing: "revoked", timeout: .seconds(5))

        // Tokens: list shows no secrets; revoke an unused one.
        _ = try await cli("cluster", "add", "staging")
        let staging = try await cli("token", "create", "--cluster", "staging")
        let stagingJoin = try JoinString(parsing: String(staging.stdout.split(separator: "\n")[0]))
        let tokens = try await cli("token", "list")
        #expect(tokens.stdout.contains(stagingJoin.tokenID) && !tokens.stdout.contains(stagingJoin.secret))
        #expect(try await cli("token", "revoke", stagingJoin.tokenID).status == 0)
        #expect(try await cli("token", "list", "--output", "json").stdout.contains("\"revoked\""))

        // Bad input gets a clear error and a non-zero exit.
        let badName = try await cli("cluster", "add", "Not_A_Label")
        #expect(badName.status != 0 && badName.stderr.contains("DNS-1123"))
        let badTTL = try await cli("token", "create", "--cluster", "staging", "--ttl", "30x")
        #expect(badTTL.status != 0 && badTTL.stderr.contains("invalid duration"))
        let unknown = try await cli("token", "create", "--cluster", "nope")
        #expect(unknown.status != 0 && unknown.stderr.contains("not found"))
        var wrong = try JSONDecoder().decode(AdminCredentials.self, from: Data(contentsOf: URL(fileURLWithPath: credentials)))
        wrong.token = AdminCredentials.newToken()
        try JSONEncoder().encode(wrong).write(to: URL(fileURLWithPath: dir.sub("wrong.json")))
        let unauthorized = try await runCommand(hubBinary, ["cluster", "list", "--credentials", dir.sub("wrong.json")])
        #expect(unauthorized.status != 0 && unauthorized.stderr.contains("admin token"))
        let missing = try await runCommand(hubBinary, ["cluster", "list", "--credentials", dir.sub("none.json")])
        #expect(missing.status != 0 && missing.stderr.contains("no credential file"))

        // SIGTERM: both exit 0.
        restarted.signal(SIGTERM)
        #expect(await restarted.waitForExit() == 0)
        hub.signal(SIGTERM)
        #expect(await hub.waitForExit() == 0)
    }
}
