import Foundation
import Shared
import TestSupport
import Testing

/// `tether-hub access …` and `tether-hub session …` through the built binary, as
/// the README shows them.
@Suite struct AccessCLITests {
    @Test func accessRolesAndSessionsThroughTheBinary() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hubBinary = try ChildProcess.binary("tether-hub")
        let data = dir.sub("tether-data")
        func cli(_ args: String...) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await runCommand(hubBinary, args + ["--credentials", data + "/admin-credentials.json"])
        }
        let hub = try ChildProcess(hubBinary, [
            "serve", "--data-dir", data, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--access-listen", "127.0.0.1:0", "--advertise", "127.0.0.1",
        ])
        try await hub.waitForOutput(containing: "hub ready")
        #expect(try await cli("cluster", "add", "prod-eu", "--label", "env=prod").status == 0)
        #expect(try await cli("cluster", "add", "dev", "--label", "env=dev").status == 0)

        // A directory of roles; a bad file refuses them all, naming file and line.
        let roles = dir.sub("roles")
        try FileManager.default.createDirectory(atPath: roles, withIntermediateDirectories: true)
        try AccessRoleTests.roles.write(toFile: roles + "/a.yaml", atomically: true, encoding: .utf8)
        try "apiVersion: tether.dev/v1\nkind: AccessRole\nmetadata: {name: bad}\nspec:\n  subjects: [{kind: Robot, name: r}]\n"
            .write(toFile: roles + "/b.yaml", atomically: true, encoding: .utf8)
        let refused = try await cli("access", "apply", "-f", roles)
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("\(roles)/b.yaml: line 5: access role bad: spec.subjects[0].kind must be User or Group"), "\(refused.stderr)")
        #expect(try await cli("access", "list", "--output", "json").stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[]")
        try FileManager.default.removeItem(atPath: roles + "/b.yaml")
        let applied = try await cli("access", "apply", "-f", roles)
        #expect(applied.status == 0, "\(applied.stderr)")
        #expect(applied.stdout == "accessrole/prod-view applied\naccessrole/team-a-edit applied\n")

        let table = try await cli("access", "list").stdout
        #expect(table.contains("prod-view") && table.contains("Group developers") && table.contains("ClusterRole/view") && table.contains("4h"))
        let yaml = try await cli("access", "get", "team-a-edit").stdout
        #expect(yaml.contains("kind: AccessRole") && yaml.contains("maxSessionDuration: 4h") && yaml.contains("- deployer"))
        let who = try await cli("access", "who-can", "prod-eu")
        #expect(who.stdout.contains("developers") && who.stdout.contains("alice@example.com"), "\(who.stdout)")

        let granted = try await cli("access", "explain", "bob", "prod-eu", "--group", "developers")
        #expect(granted.status == 0)
        #expect(granted.stdout.contains("bob gets on cluster prod-eu: ClusterRole/view"))
        let denied = try await cli("access", "explain", "bob", "dev", "--group", "developers")
        #expect(denied.status == 3)
        #expect(denied.stdout.contains("gets nothing on cluster dev") && denied.stdout.contains("does not match the cluster's labels (env=dev)"))

        // A session: the credential alone on stdout, once; list never shows it.
        let created = try await cli("session", "create", "--user", "alice@example.com", "--group", "developers", "--ttl", "12h")
        #expect(created.status == 0, "\(created.stderr)")
        let credential = created.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(credential.hasPrefix("tether-session.v1.") && !credential.contains("\n"))
        #expect(created.stderr.contains("shortened by accessrole/team-a-edit"))
        let listed = try await cli("session", "list", "--output", "json")
        let sessions = try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as! [[String: Any]]
        #expect(sessions.count == 1 && sessions[0]["user"] as? String == "alice@example.com")
        #expect(!listed.stdout.contains(credential) && !hub.output.contains(credential))
        let id = try #require(sessions.first?["id"] as? String)
        #expect(try await cli("session", "revoke", id).stdout == "session/\(id) (alice@example.com) revoked\n")
        #expect(try await cli("session", "revoke", id).stderr.contains("already ended (revoked)"))
        #expect(try await cli("session", "list", "--all").stdout.contains("revoked"))
        #expect(try await cli("session", "create", "--user", "x", "--ttl", "2d").status != 0)

        #expect(try await cli("access", "delete", "prod-view").stdout == "accessrole/prod-view deleted\n")
        #expect(try await cli("access", "delete", "prod-view").stderr.contains("access role 'prod-view' not found"))
        hub.signal(SIGTERM)
        #expect(await hub.waitForExit() == 0)
    }
}
