import Foundation
import Logging
import Shared
import TestSupport
import Testing
@testable import TetherAgent

/// Following an API server audit log file through rotation and restarts, with the
/// real log backend's output.
@Suite struct AuditLogFollowerTests {
    static func realLines() throws -> [Data] {
        let url = try Fixtures.url("audit/log/audit.log")
        return try Data(contentsOf: url).split(separator: UInt8(ascii: "\n")).map { Data($0) }
    }

    func append(_ lines: ArraySlice<Data>, to path: String) throws {
        if !FileManager.default.fileExists(atPath: path) { FileManager.default.createFile(atPath: path, contents: nil) }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.seekToEnd()
        for line in lines { try handle.write(contentsOf: line + Data([10])) }
        try handle.close()
    }

    final class Running: Sendable {
        let task: Task<Void, any Error>
        init(_ follower: AuditLogFollower) { task = Task { try await follower.run() } }
        func stop() async { task.cancel(); _ = await task.result }
    }

    func follower(_ dir: TemporaryDirectory, _ spool: AuditSpool) -> AuditLogFollower {
        AuditLogFollower(path: dir.sub("audit.log"), spool: spool, stateDir: dir.path, metrics: AgentMetrics(),
                         logger: testLogger, pollInterval: .milliseconds(20))
    }

    func spooled(_ spool: AuditSpool) async throws -> [Data] {
        try await spool.read(after: 0, maxEvents: 100_000, maxBytes: 1 << 30).map(\.payload)
    }

    @Test func followsRenameAndCopyTruncateAndResumesAfterRestartWithoutDuplicates() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let lines = try Self.realLines()
        #expect(lines.count == 800)
        let log = dir.sub("audit.log")
        let spool = try AuditSpool(directory: dir.sub("spool"))

        // Lines written before and while it runs.
        try append(lines[0..<100], to: log)
        var running = Running(follower(dir, spool))
        try await eventually("first 100") { spool.lastSequence == 100 }
        try append(lines[100..<200], to: log)
        try await eventually("200") { spool.lastSequence == 200 }

        // Rotation by rename: more lines land in the old file, then a new file appears.
        try append(lines[200..<250], to: log)
        try FileManager.default.moveItem(atPath: log, toPath: log + ".1")
        try append(lines[250..<300], to: log + ".1")
        try append(lines[300..<400], to: log)
        try await eventually("400 after rename") { spool.lastSequence == 400 }

        // Restart: the position is remembered; nothing is read twice.
        await running.stop()
        try append(lines[400..<500], to: log)
        running = Running(follower(dir, spool))
        try await eventually("500 after restart") { spool.lastSequence == 500 }

        // Copy-truncate: the file is copied away and emptied, then written again.
        try FileManager.default.copyItem(atPath: log, toPath: log + ".2")
        try Data().write(to: URL(fileURLWithPath: log))
        try await Task.yield()
        try append(lines[500..<800], to: log)
        try await eventually("800 after truncate") { spool.lastSequence == 800 }
        await running.stop()

        let stored = try await spooled(spool)
        #expect(stored == Array(lines), "every line once, in order")
    }

    @Test func skipsLinesThatAreNotEventsAndWaitsForPartialLines() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let lines = try Self.realLines()
        let log = dir.sub("audit.log")
        let spool = try AuditSpool(directory: dir.sub("spool"))
        // Not JSON, an object that is no event, an event with its auditID twice, one that
        // is no audit Event: skipped.
        var twice = lines[0]
        twice.replaceSubrange(twice.range(of: Data(#""auditID":"#.utf8))!, with: Data(#""auditID":"x","auditID":"#.utf8))
        let notEvent = Data(String(decoding: lines[0], as: UTF8.self).replacingOccurrences(of: #""kind":"Event""#, with: #""kind":"Pod""#).utf8)
        #expect(notEvent != lines[0], "control: the real line has kind Event")
        try append([lines[0], Data("not json".utf8), Data(#"{"kind":"Event"}"#.utf8), twice, notEvent, lines[1]], to: log)
        // Half a line: not read until its newline arrives.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        try handle.seekToEnd()
        try handle.write(contentsOf: lines[2].prefix(50))
        let running = Running(follower(dir, spool))
        try await eventually("two valid lines") { spool.lastSequence == 2 }
        try handle.write(contentsOf: lines[2].dropFirst(50) + Data([10]))
        try handle.close()
        try await eventually("third after its newline") { spool.lastSequence == 3 }
        await running.stop()
        #expect(try await spooled(spool) == [lines[0], lines[1], lines[2]])
    }
}
