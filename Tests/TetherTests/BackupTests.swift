import Foundation
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherHub

/// `tether-hub backup` and `restore`: a consistent copy of a running hub, back into
/// an empty data dir, with bad archives refused and nothing half-restored.
@Suite struct BackupTests {
    @Test func archivesRoundTripAndDamageIsRefused() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let big = Data((0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try big.write(to: URL(fileURLWithPath: dir.sub("big.bin")))
        try TarArchive.write([
            ("a.txt", 0o644, .data(Data("hello".utf8))),
            ("empty", 0o600, .data(Data())),
            ("big", 0o600, .file(dir.sub("big.bin"))),
        ], to: dir.sub("x.tar"), mode: 0o600)
        let archive = try Data(contentsOf: URL(fileURLWithPath: dir.sub("x.tar")))
        #expect(archive.count % 512 == 0)
        let entries = try TarArchive.entries(in: dir.sub("x.tar"))
        #expect(entries.map(\.name) == ["a.txt", "empty", "big"] && entries.map(\.mode) == [0o644, 0o600, 0o600])
        #expect(try TarArchive.contents(of: entries[0], in: dir.sub("x.tar")) == Data("hello".utf8))
        try TarArchive.extract(entries[2], from: dir.sub("x.tar"), to: dir.sub("big.out"), mode: 0o600)
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir.sub("big.out"))) == big, "streamed in chunks, unchanged")

        // The system's tar reads it.
        let listed = Process()
        listed.executableURL = URL(fileURLWithPath: "/bin/tar")
        listed.arguments = ["-tf", dir.sub("x.tar")]
        let pipe = Pipe()
        listed.standardOutput = pipe
        try listed.run()
        let names = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        listed.waitUntilExit()
        #expect(listed.terminationStatus == 0)
        #expect(names.split(separator: "\n") == ["a.txt", "empty", "big"])

        func refusal(_ data: Data) throws -> String? {
            try data.write(to: URL(fileURLWithPath: dir.sub("bad.tar")))
            do { _ = try TarArchive.entries(in: dir.sub("bad.tar")); return nil } catch { return "\(error)" }
        }
        #expect(try refusal(archive.prefix(archive.count - 2048))?.contains("truncated") == true)
        var damaged = archive
        damaged[10] ^= 0xFF
        #expect(try refusal(damaged)?.contains("checksum") == true)
        #expect(try refusal(Data("not a tar file at all".utf8) + Data(count: 600))?.contains("not a tar archive") == true)
        #expect(throws: TetherError.self) { try TarArchive.write([("../escape", 0o600, .data(Data()))], to: dir.sub("y.tar"), mode: 0o600) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix("y.tar") }.isEmpty, "nothing left behind")

        // Sizes over 8 GiB use the base-256 field GNU tar reads.
        let header = try TarArchive.header(name: "huge", mode: 0o600, size: 9 << 30, modified: Date())
        #expect(header[124] == 0x80)
        try (header + Data(count: 1024)).write(to: URL(fileURLWithPath: dir.sub("huge.tar")))
        #expect(throws: TetherError.self) { try TarArchive.entries(in: dir.sub("huge.tar")) }  // cut short: the size was read

        // Crafted sizes (checksums fixed up, so the size is what is judged) are
        // refused, never trapped on: octal -1, base-256 with the sign bit, Int.max.
        func crafted(_ size: [UInt8]) -> Data {
            var header = [UInt8](try! TarArchive.header(name: "x", mode: 0o600, size: 0, modified: Date()))
            for i in 0..<12 { header[124 + i] = i < size.count ? size[i] : 0 }
            for i in 148..<156 { header[i] = UInt8(ascii: " ") }
            let sum = String(header.reduce(0) { $0 + Int($1) }, radix: 8)
            let field = Array((String(repeating: "0", count: 6 - sum.count) + sum).utf8) + [0, UInt8(ascii: " ")]
            for i in 0..<8 { header[148 + i] = field[i] }
            return Data(header) + Data(count: 1024)
        }
        #expect(try refusal(crafted(Array("-1".utf8)))?.contains("negative size") == true)
        #expect(try refusal(crafted([0xFF] + Array(repeating: 0xFF, count: 11)))?.contains("negative size") == true)
        #expect(try refusal(crafted([0x80, 0, 0, 0, 0x7F] + Array(repeating: 0xFF, count: 7)))?.contains("cut short") == true)
    }

    @Test func aBackupOfARunningHubRestoresAsItWas() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: ["env": "prod"])
        let join = try await hub.join("prod-eu")
        // Writes keep going while the backup runs.
        let writer = Task {
            for i in 0..<40 { _ = try await hub.core.addCluster(ClusterName("busy-\(i)"), labels: [:]) }
        }
        var progress: [String] = []
        let summary = try HubBackup.create(dataDir: dir.sub("hub"), to: dir.sub("backup.tar")) { progress.append($0) }
        try await writer.value
        #expect(summary.files == 9 && summary.databaseBytes > 0)
        #expect(progress.contains { $0.contains("snapshotting") })
        let mode = try FileManager.default.attributesOfItem(atPath: dir.sub("backup.tar"))[.posixPermissions] as? Int
        #expect(mode == 0o600, "the archive holds the CA key")
        _ = try await hub.core.addCluster(ClusterName("after-backup"), labels: [:])
        try await hub.stop()

        _ = try HubBackup.restore(from: dir.sub("backup.tar"), dataDir: dir.sub("restored")) { _ in }
        for (name, expected) in [("ca.key", 0o600), ("hub.key", 0o600), ("session.key", 0o600), ("otp.key", 0o600), ("hub.db", 0o600), ("ca.crt", 0o644)] {
            #expect(try FileManager.default.attributesOfItem(atPath: dir.sub("restored/\(name)"))[.posixPermissions] as? Int == expected, "\(name)")
        }
        #expect(try FileManager.default.attributesOfItem(atPath: dir.sub("restored"))[.posixPermissions] as? Int == 0o700)
        for key in ["ca.key", "session.key", "otp.key"] {
            #expect(try Data(contentsOf: URL(fileURLWithPath: dir.sub("restored/\(key)"))) == Data(contentsOf: URL(fileURLWithPath: dir.sub("hub/\(key)"))), "\(key)")
        }
        let restored = try await TestHub.start(dataDir: dir.sub("restored"), listenPort: hub.agentPort)
        let names = Set(try await restored.core.clusterViews().map(\.name))
        #expect(names.contains("prod-eu") && !names.contains("after-backup"))
        // Every busy-N cluster the snapshot holds is whole: a prefix of the writer's order.
        let busy = names.filter { $0.hasPrefix("busy-") }.map { Int($0.dropFirst(5))! }.sorted()
        #expect(busy == Array(0..<busy.count))
        // The restored hub is the same CA: the join string made before the backup still enrolls.
        let agent = try TestAgent.start(stateDir: dir.sub("agent"), join: join)
        try await agent.waitUntilConnected()
        #expect(try await restored.status("prod-eu") == .online)
        try await agent.stop()
        try await restored.stop()
    }

    @Test func restoreRefusesAHubItWouldOverwriteAndBadFiles() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        _ = try HubBackup.create(dataDir: dir.sub("hub"), to: dir.sub("backup.tar")) { _ in }
        try await hub.stop()
        func refusal(_ body: () throws -> Void) -> String {
            do { try body(); return "no error" } catch { return "\(error)" }
        }
        // Onto an existing hub: refused, and that hub untouched.
        let before = try Data(contentsOf: URL(fileURLWithPath: dir.sub("hub/hub.db")))
        #expect(refusal { _ = try HubBackup.restore(from: dir.sub("backup.tar"), dataDir: dir.sub("hub")) { _ in } }.contains("already holds a hub"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir.sub("hub/hub.db"))) == before)

        let archive = try Data(contentsOf: URL(fileURLWithPath: dir.sub("backup.tar")))
        try archive.prefix(archive.count / 2).write(to: URL(fileURLWithPath: dir.sub("half.tar")))
        func data(_ entry: TarArchive.Entry) throws -> TarArchive.Source { .data(try TarArchive.contents(of: entry, in: dir.sub("backup.tar"))) }
        #expect(refusal { _ = try HubBackup.restore(from: dir.sub("half.tar"), dataDir: dir.sub("r1")) { _ in } }.contains("truncated"))
        #expect(!FileManager.default.fileExists(atPath: dir.sub("r1/hub.db")))

        // A tar that is not a backup, and a backup without its CA key.
        let entries = try TarArchive.entries(in: dir.sub("backup.tar"))
        try TarArchive.write([("notes.txt", 0o644, .data(Data("hi".utf8)))], to: dir.sub("other.tar"), mode: 0o600)
        #expect(refusal { _ = try HubBackup.restore(from: dir.sub("other.tar"), dataDir: dir.sub("r2")) { _ in } }.contains("no tether-backup.json"))
        try TarArchive.write(try entries.filter { $0.name != "ca.key" }.map { ($0.name, $0.mode, try data($0)) }, to: dir.sub("nokey.tar"), mode: 0o600)
        #expect(refusal { _ = try HubBackup.restore(from: dir.sub("nokey.tar"), dataDir: dir.sub("r3")) { _ in } }.contains("ca.key is missing"))

        // A database that is not one: refused after the integrity check, nothing left behind.
        let corrupt = try entries.map { entry -> (String, Int, TarArchive.Source) in
            (entry.name, entry.mode, entry.name == "hub.db" ? .data(Data(repeating: 0x41, count: entry.size)) : try data(entry))
        }
        try TarArchive.write(corrupt.map { (name: $0.0, mode: $0.1, source: $0.2) }, to: dir.sub("corrupt.tar"), mode: 0o600)
        let message = refusal { _ = try HubBackup.restore(from: dir.sub("corrupt.tar"), dataDir: dir.sub("r4")) { _ in } }
        #expect(message.contains("hub.db"), "\(message)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.sub("r4")).isEmpty)

        // Backing up something that is not a data dir.
        #expect(refusal { _ = try HubBackup.create(dataDir: dir.sub("r4"), to: dir.sub("x.tar")) { _ in } }.contains("has no hub.db"))
    }

    @Test func theCLIBacksUpARunningHubAndTheAgentComesBackAfterRestore() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hubBinary = try ChildProcess.binary("tether-hub")
        let agentBinary = try ChildProcess.binary("tether-agent")
        let data = dir.sub("tether-data")
        func cli(_ data: String, _ args: String...) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await runCommand(hubBinary, args + ["--credentials", data + "/admin-credentials.json"])
        }
        func status(_ data: String, _ cluster: String) async throws -> String? {
            let listed = try await cli(data, "cluster", "list", "--output", "json")
            let clusters = try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [[String: Any]] ?? []
            return clusters.first { $0["name"] as? String == cluster }?["status"] as? String
        }
        let hub = try ChildProcess(hubBinary, ["serve", "--data-dir", data, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--access-listen", "127.0.0.1:0", "--advertise", "127.0.0.1"])
        try await hub.waitForOutput(containing: "hub ready")
        #expect(try await cli(data, "cluster", "add", "prod-eu").status == 0)
        let token = try await cli(data, "token", "create", "--cluster", "prod-eu")
        let join = try JoinString(parsing: String(token.stdout.split(separator: "\n")[0]))
        #expect(token.stderr.contains("helm install tether-agent ./charts/tether-agent --namespace tether-system --create-namespace --set-string joinToken='\(join.encoded)'"))
        let agent = try ChildProcess(agentBinary, ["--state-dir", dir.sub("agent"), "--health-listen", "none", "--audit-listen", "none"],
                                     environment: ["TETHER_JOIN_TOKEN": join.encoded])
        try await eventually(timeout: .seconds(10), "online") { try await status(data, "prod-eu") == "online" }

        let backup = try await runCommand(hubBinary, ["backup", "--data-dir", data, "--to", dir.sub("hub.tar")])
        #expect(backup.status == 0, "\(backup.stderr)")
        #expect(backup.stdout.contains("wrote \(dir.sub("hub.tar"))") && backup.stderr.contains("snapshotting"))
        let again = try await runCommand(hubBinary, ["backup", "--data-dir", data, "--to", dir.sub("hub.tar")])
        #expect(again.status != 0 && again.stderr.contains("--force"))
        #expect(try await cli(data, "cluster", "add", "after-backup").status == 0)

        hub.signal(SIGTERM)
        #expect(await hub.waitForExit() == 0)
        let onto = try await runCommand(hubBinary, ["restore", "--from", dir.sub("hub.tar"), "--data-dir", data])
        #expect(onto.status != 0 && onto.stderr.contains("already holds a hub"))
        let restore = try await runCommand(hubBinary, ["restore", "--from", dir.sub("hub.tar"), "--data-dir", dir.sub("restored")])
        #expect(restore.status == 0, "\(restore.stderr)")

        // The same listener address; the agent reconnects with the certificate it holds.
        let restored = try ChildProcess(hubBinary, ["serve", "--data-dir", dir.sub("restored"), "--listen", "127.0.0.1:\(join.hub.port)",
                                                    "--admin-listen", "127.0.0.1:0", "--access-listen", "127.0.0.1:0", "--advertise", "127.0.0.1"])
        try await restored.waitForOutput(containing: "hub ready")
        try await eventually(timeout: .seconds(40), "online after restore") { try await status(dir.sub("restored"), "prod-eu") == "online" }
        #expect(try await status(dir.sub("restored"), "after-backup") == nil)
        #expect(agent.output.components(separatedBy: "enrolling").count == 2, "enrolled once, before the backup")

        agent.signal(SIGTERM)
        #expect(await agent.waitForExit() == 0)
        restored.signal(SIGTERM)
        #expect(await restored.waitForExit() == 0)
    }
}
