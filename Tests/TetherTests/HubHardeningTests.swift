import Foundation
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherHub

/// Hostile or mistaken input never traps the hub or the CLI; the data dir is used by
/// one hub at a time and refused when its secrets are exposed.
@Suite struct HubHardeningTests {
    // MARK: Numbers from clients

    @Test func durationsTooLargeToHoldAreRefusedNotTrapped() throws {
        for text in ["1000000000000000000000d", "106752999999999d", String(repeating: "9", count: 400) + "s", "36501d"] {
            let error = #expect(throws: TetherError.self, "\(text.prefix(30))") { try DurationParser.parse(text) }
            #expect(error?.code == .invalidArgument)
            #expect(error?.message.contains("at most") == true || error?.message.contains("invalid duration") == true, "\(error?.message ?? "")")
        }
        #expect(try DurationParser.parse("36500d") == DurationParser.maximum)
        #expect(try DurationParser.parse("1h30m") == .seconds(5400))
        #expect(throws: TetherError.self) { try DurationParser.parse("٣s") }  // non-ASCII digits
        for seconds in [1e19, .infinity, -.infinity, .nan, 0, -5, Double.greatestFiniteMagnitude] {
            #expect(throws: TetherError.self, "\(seconds)") { try DurationParser.duration(seconds: seconds, field: "ttlSeconds") }
        }
        #expect(try DurationParser.duration(seconds: 1.5, field: "x") == .milliseconds(1500))
    }

    @Test func theAdminAPIRefusesATokenTTLTooLargeForAnInteger() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: [:])
        let client = try AdminClient(credentialsPath: dir.sub("hub") + "/admin-credentials.json")
        for ttl: Double in [1e19, 1e300, -1, 8 * 86_400] {
            let error = await #expect(throws: TetherError.self, "\(ttl)") {
                let _: CreatedToken = try await client.call(.POST, "/v1/tokens", body: CreateTokenRequest(cluster: "prod-eu", ttlSeconds: ttl))
            }
            #expect(error?.code == .invalidArgument, "\(error?.message ?? "")")
        }
        // Still serving, and nothing was created by the refused calls.
        let tokens: [TokenView] = try await client.call(.GET, "/v1/tokens")
        #expect(tokens.isEmpty)
        let created: CreatedToken = try await client.call(.POST, "/v1/tokens", body: CreateTokenRequest(cluster: "prod-eu", ttlSeconds: 3600))
        #expect(created.token.cluster == "prod-eu")
        try await hub.stop()
    }

    @Test func theCLIRefusesAHugeTTLWithAClearError() async throws {
        let result = try await runCommand(try ChildProcess.binary("tether-hub"), [
            "token", "create", "--cluster", "prod-eu", "--ttl", "1000000000000000000000d", "--credentials", "/nonexistent/credentials.json",
        ])
        #expect(result.status == 1, "an error exit, not a trap (a signal): \(result.stderr)")
        #expect(result.stderr.contains("at most 36500d"), "\(result.stderr)")
        #expect(!result.stderr.contains("Fatal error"))

        // Every option that takes a duration goes through the same check.
        for args in [
            ["serve", "--data-dir", "/nonexistent/data", "--heartbeat-interval", "99999999999999999999d"],
            ["serve", "--data-dir", "/nonexistent/data", "--certificate-lifetime", "1e400d"],
            ["serve", "--data-dir", "/nonexistent/data", "--audit-retention", String(repeating: "9", count: 400) + "s"],
            ["audit", "query", "--since", "99999999999999999999d", "--credentials", "/nonexistent/credentials.json"],
        ] {
            let refused = try await runCommand(try ChildProcess.binary("tether-hub"), args)
            #expect(refused.status != 0 && refused.status < 64 || refused.status == 64, "\(args): \(refused.stderr)")
            #expect(refused.stderr.contains("too long") || refused.stderr.contains("invalid duration"), "\(args): \(refused.stderr)")
            #expect(!refused.stderr.contains("Fatal error"))
        }
    }

    @Test func yamlNumbersJSONCannotHoldAreRefused() throws {
        for value in [".nan", ".inf", "-.inf", "1e400", "99999999999999999999999"] {
            let yaml = PolicyDistributionTests.bundle("b", selector: "{}", roles: ["view"]) + "\n      x-number: \(value)"
            do {
                let bundle = try PolicyParser.parse(yaml: yaml, file: "f.yaml")
                // What is accepted is stored as valid JSON.
                _ = try JSONSerialization.jsonObject(with: try #require(bundle.first).canonicalJSON())
            } catch let error as TetherError {
                #expect(error.message == "f.yaml: line 7: bundle b: resources[0] (ClusterRole/view): contains values that are not JSON (dates, binary, or numbers such as .nan, .inf or 1e400); quote them", "\(value): \(error.message)")
            }
        }
    }

    @Test func anAgentReportForARevisionBeyondSQLiteIntegersIsRefused() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let database = try HubDatabase(path: dir.sub("hub.db"))
        _ = try await database.addCluster(ClusterName("prod-eu"), labels: [:], now: Date())
        let error = await #expect(throws: TetherError.self) {
            try await database.recordPolicyReport(cluster: "prod-eu", revision: UInt64.max, results: [], now: Date())
        }
        #expect(error?.code == .invalidArgument)
        #expect(try await database.observedRevision("prod-eu") == nil, "nothing stored")
    }

    @Test func anAuditBatchNumberedPastSQLiteIntegersIsRefusedNotTrapped() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: [:])
        // An event the hub cannot index takes the path that computed a sequence first.
        for first in [UInt64.max, UInt64(Int64.max), 0] {
            let error = await #expect(throws: TetherError.self, "\(first)") {
                _ = try await hub.core.ingestAudit(cluster: ClusterName("prod-eu"), firstSequence: first, events: [Data("not an event".utf8)])
            }
            #expect(error?.code == .invalidArgument)
        }
        #expect(try await hub.core.auditAcknowledged(ClusterName("prod-eu")) == 0, "nothing stored")
        try await hub.stop()
    }

    @Test func anOversizedAdminRequestGets413NamingTheLimit() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        let client = try AdminClient(credentialsPath: dir.sub("hub") + "/admin-credentials.json")
        let big = AdminServer.ApplyRequest(files: [.init(name: "big.yaml", yaml: String(repeating: "# padding\n", count: 300_000))])
        let error = await #expect(throws: TetherError.self) {
            let _: AdminServer.ApplyResult = try await client.call(.POST, "/v1/policies", body: big)
        }
        #expect(error?.code == .payloadTooLarge, "\(error?.message ?? "")")
        #expect(error?.message.contains("limit of 2.0 MiB (2097152 bytes)") == true, "\(error?.message ?? "")")
        #expect(APIError(TetherError(.payloadTooLarge, "")).status == .contentTooLarge)
        // The hub keeps serving.
        let tokens: [TokenView] = try await client.call(.GET, "/v1/tokens")
        #expect(tokens.isEmpty)
        try await hub.stop()
    }

    // MARK: The data dir

    /// Runs `tether-hub serve` expecting it to refuse to start: waits for it to exit
    /// (a hub that starts instead fails the wait) and returns its status and output.
    static func refusedServe(dataDir: String) async throws -> (status: Int32, output: String) {
        let child = try ChildProcess(try ChildProcess.binary("tether-hub"), [
            "serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--access-listen", "127.0.0.1:0", "--advertise", "127.0.0.1",
        ])
        try await eventually(timeout: .seconds(30), "the second hub to exit; it printed:\n\(child.output)") { !child.process.isRunning }
        let status = await child.waitForExit()
        // The pipe is read asynchronously: wait for the whole error line, not just the exit.
        try await eventually(timeout: .seconds(5), "the refusal's full line; got:\n\(child.output)") {
            child.output.contains("Error: ") && child.output.hasSuffix("\n")
        }
        return (status, child.output)
    }

    static func serve(_ dataDir: String) throws -> ChildProcess {
        try ChildProcess(try ChildProcess.binary("tether-hub"), [
            "serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--access-listen", "127.0.0.1:0", "--advertise", "127.0.0.1",
        ])
    }

    @Test func aSecondHubOnTheSameDataDirRefusesAndNamesTheFirst() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.sub("tether-data")
        let credentials = data + "/admin-credentials.json"
        let first = try Self.serve(data)
        try await first.waitForOutput(containing: "hub ready")
        let before = try Data(contentsOf: URL(fileURLWithPath: credentials))

        let second = try await Self.refusedServe(dataDir: data)
        #expect(second.status != 0)
        #expect(second.output.contains("in use by another tether-hub (pid \(first.process.processIdentifier)"), "\(second.output)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: credentials)) == before, "the first hub's credential file is untouched")
        let listed = try await runCommand(try ChildProcess.binary("tether-hub"), ["cluster", "list", "--credentials", credentials])
        #expect(listed.status == 0, "the first hub still answers with its credentials: \(listed.stderr)")

        // The lock goes with the process: after the first exits, a new hub starts.
        first.signal(SIGTERM)
        #expect(await first.waitForExit() == 0)
        let third = try Self.serve(data)
        try await third.waitForOutput(containing: "hub ready")
        third.signal(SIGTERM)
        #expect(await third.waitForExit() == 0)
    }

    @Test func exposedSecretsAndAForeignDataDirAreRefusedWithTheFix() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.sub("tether-data")
        let hub = try await TestHub.start(dataDir: data)
        try await hub.stop()
        let fm = FileManager.default

        try fm.setAttributes([.posixPermissions: 0o644], ofItemAtPath: data + "/ca.key")
        try fm.setAttributes([.posixPermissions: 0o640], ofItemAtPath: data + "/admin-credentials.json")
        let exposed = try await Self.refusedServe(dataDir: data)
        #expect(exposed.status != 0)
        #expect(exposed.output.contains("chmod 600 \(data)/ca.key \(data)/admin-credentials.json"), "\(exposed.output)")
        #expect(!exposed.output.contains("hub.key (mode"), "hub.key is 0600 and not named")
        // Nothing was rewritten on the way out.
        #expect((try fm.attributesOfItem(atPath: data + "/ca.key")[.posixPermissions] as? NSNumber)?.intValue == 0o644)

        try fm.setAttributes([.posixPermissions: 0o600], ofItemAtPath: data + "/ca.key")
        try fm.setAttributes([.posixPermissions: 0o600], ofItemAtPath: data + "/admin-credentials.json")
        #expect(chown(data, 65534, 65534) == 0, "the tests run as root")
        let foreign = try await Self.refusedServe(dataDir: data)
        #expect(foreign.status != 0)
        let me = String(cString: getpwuid(geteuid())!.pointee.pw_name)
        #expect(foreign.output.contains("chown -R \(me) \(data)"), "\(foreign.output)")
        #expect(foreign.output.contains("belongs to user nobody (uid 65534)"), "\(foreign.output)")

        // After the fix the hub starts again.
        #expect(chown(data, geteuid(), getegid()) == 0)
        let fixed = try Self.serve(data)
        try await fixed.waitForOutput(containing: "hub ready")
        fixed.signal(SIGTERM)
        #expect(await fixed.waitForExit() == 0)
    }
}
