import Dispatch
import Foundation
import Shared
import TestSupport
import Testing
@testable import TetherAgent

/// The audit spool on real files in a temporary directory, no sockets: what a
/// crash, a damaged disk, acknowledgements, a full disk and a restart leave behind.
@Suite struct AuditSpoolTests {
    /// Every payload is 10 bytes, so every frame is 34 and offsets are easy to name.
    static func payloads(_ range: ClosedRange<Int>) -> [Data] {
        range.map { Data(String(format: "event-%04d", $0).utf8) }
    }
    static let frameSize = AuditSpool.headerSize + 10

    static func segments(in dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".seg") }.sorted().map { dir + "/" + $0 }
    }

    static func size(_ path: String) throws -> Int64 {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.int64Value ?? -1
    }

    /// Everything readable after `sequence`, the way the forwarder reads: batch by batch.
    static func readAll(_ spool: AuditSpool, after sequence: UInt64 = 0, batch: Int = 7) async throws -> [AuditSpool.Event] {
        var events: [AuditSpool.Event] = []
        var cursor = sequence
        while true {
            let next = try await spool.read(after: cursor, maxEvents: batch)
            guard let last = next.last else { return events }
            events += next
            cursor = last.sequence
        }
    }

    static func flipByte(in path: String, at offset: Int64) throws {
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        let byte = try #require(try handle.read(upToCount: 1)).first!
        try handle.seek(toOffset: UInt64(offset))
        try handle.write(contentsOf: Data([byte ^ 0x5A]))
    }

    static func appendRaw(_ data: Data, to path: String) throws {
        let handle = try #require(FileHandle(forWritingAtPath: path))
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: data)
    }

    @Test(arguments: ["cut frame", "zeroed pages"])
    func tornTailIsDroppedAndNumberingContinuesAfterTheLastWholeEvent(tail: String) async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let spoolDir = dir.sub("spool")
        do {
            let spool = try AuditSpool(directory: spoolDir)
            for k in 0..<3 { try await spool.append(Self.payloads(k * 5 + 1...k * 5 + 5)) }
        }
        let segment = try #require(try Self.segments(in: spoolDir).only)
        let whole = try Self.size(segment)
        #expect(whole == 15 * Int64(Self.frameSize))
        // The crash: the fourth batch (16...20) only partly reached the disk. With
        // "cut frame", 16 and 17 are whole (kept: the sender, which got no 200,
        // sends them again and the hub drops the copies) and 18 is cut.
        var torn = Data()
        for (i, payload) in Self.payloads(16...20).enumerated() {
            AuditSpool.appendFrame(sequence: 16 + UInt64(i), receivedAtMillis: 1, payload: payload, to: &torn)
        }
        try Self.appendRaw(tail == "cut frame" ? torn.prefix(2 * Self.frameSize + 13) : Data(count: 4096), to: segment)

        let kept: UInt64 = tail == "cut frame" ? 17 : 15
        let spool = try AuditSpool(directory: spoolDir)
        #expect(spool.lastSequence == kept)
        #expect(try Self.size(segment) == Int64(kept) * Int64(Self.frameSize), "the torn bytes are cut off")
        #expect(spool.damagedFrames == 0, "a torn tail is not damage")
        #expect(try await Self.readAll(spool).map(\.sequence) == Array(1...kept))
        #expect(try await spool.append([Data("after-restart".utf8)]) == kept + 1...kept + 1)
        let events = try await Self.readAll(spool)
        #expect(events.map(\.sequence) == Array(1...kept + 1))
        #expect(events.map(\.payload) == Self.payloads(1...Int(kept)) + [Data("after-restart".utf8)])
    }

    @Test func damagedFrameInTheLastSegmentIsReportedNeverSkippedOrRenumbered() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let spoolDir = dir.sub("spool")
        do {
            let spool = try AuditSpool(directory: spoolDir)
            for k in 0..<3 { try await spool.append(Self.payloads(k * 10 + 1...k * 10 + 10)) }
        }
        let segment = try #require(try Self.segments(in: spoolDir).only)
        let size = try Self.size(segment)
        let damagedAt = Int64(14 * Self.frameSize)  // event 15
        try Self.flipByte(in: segment, at: damagedAt + Int64(AuditSpool.headerSize) + 3)

        let spool = try AuditSpool(directory: spoolDir)
        #expect(spool.lastSequence == 30, "numbering goes on after the last stored event, not after the damage")
        #expect(try Self.size(segment) == size, "nothing after the damage is cut off")
        #expect(spool.damaged == [AuditSpool.Damaged(path: segment, offset: damagedAt, sequence: 15)])
        #expect(spool.damagedFrames == 1)
        #expect(metric("tether_agent_audit_spool_damaged_frames", in: AgentMetrics().exposition(spool: spool)) == 1)

        #expect(try await spool.read(after: 0, maxEvents: 100).map(\.sequence) == Array(1...14), "what comes before the damage")
        let error = await #expect(throws: AuditSpool.Damaged.self) { try await spool.read(after: 14, maxEvents: 100) }
        #expect(error == AuditSpool.Damaged(path: segment, offset: damagedAt, sequence: 15))
        #expect(error.map { "\($0)" }?.contains("\(segment) is damaged at byte \(damagedAt): event 15") == true)
        // Reading again reports the same damage, counted once.
        await #expect(throws: AuditSpool.Damaged.self) { try await spool.read(after: 14, maxEvents: 100) }
        #expect(spool.damagedFrames == 1)

        #expect(try await spool.append(Self.payloads(31...31)) == 31...31, "a new batch is never numbered into the damaged range")
    }

    @Test func damagedFrameInAnOlderSegmentStopsReadingThere() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let spoolDir = dir.sub("spool")
        // A 5-event batch (170 bytes) fills a 100-byte segment: one segment per batch.
        let spool = try AuditSpool(directory: spoolDir, segmentSize: 100)
        for k in 0..<4 { try await spool.append(Self.payloads(k * 5 + 1...k * 5 + 5)) }
        let segments = try Self.segments(in: spoolDir)
        #expect(segments.map { ($0 as NSString).lastPathComponent } == [1, 6, 11, 16].map { String(format: "%020d.seg", $0) })
        let damagedAt = Int64(2 * Self.frameSize)  // event 8, in the segment that starts at 6
        try Self.flipByte(in: segments[1], at: damagedAt + 9)  // in the sequence number

        // Read as the forwarder reads: everything up to the damage, then the error.
        let beforeDamage = try await spool.read(after: 0, maxEvents: 100).map(\.sequence)
        #expect(beforeDamage == Array(1...7), "events 11...20 are not handed over as if 8...10 did not exist")
        let error = await #expect(throws: AuditSpool.Damaged.self) { _ = try await spool.read(after: 7, maxEvents: 100) }
        #expect(error == AuditSpool.Damaged(path: segments[1], offset: damagedAt, sequence: 8))
        // Reading through batch by batch stops at the damage with the error: nothing after it is skipped to.
        await #expect(throws: AuditSpool.Damaged.self) { _ = try await Self.readAll(spool) }
        #expect(spool.damagedFrames == 1)

        // Renumbering (which rewrites every pending event) refuses rather than drop 8...10.
        await #expect(throws: AuditSpool.Damaged.self) { try await spool.renumber(above: 100) }
        #expect(spool.lastSequence == 20)
        #expect(try Self.segments(in: spoolDir) == segments)

        let reopened = try AuditSpool(directory: spoolDir, segmentSize: 100)
        #expect(reopened.lastSequence == 20)
        #expect(try await reopened.append(Self.payloads(21...21)) == 21...21)
    }

    @Test func damageAmongAcknowledgedEventsDoesNotStopForwardingWhatFollows() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let spoolDir = dir.sub("spool")
        let spool = try AuditSpool(directory: spoolDir)
        try await spool.append(Self.payloads(1...10))
        try await spool.acknowledge(upTo: 5)
        let segment = try #require(try Self.segments(in: spoolDir).only, "not trimmed: 6...10 are pending")
        let damagedAt = Int64(2 * Self.frameSize)  // event 3, already at the hub
        try Self.flipByte(in: segment, at: damagedAt + Int64(AuditSpool.headerSize))

        #expect(try await Self.readAll(spool, after: 5, batch: 3).map(\.payload) == Self.payloads(6...10))
        let reopened = try AuditSpool(directory: spoolDir)
        #expect(reopened.lastSequence == 10)
        #expect(reopened.damaged == [AuditSpool.Damaged(path: segment, offset: damagedAt, sequence: 3)], "still reported")
        #expect(try await Self.readAll(reopened, after: 5).map(\.payload) == Self.payloads(6...10))
        // Whoever needs event 3 itself gets the error.
        await #expect(throws: AuditSpool.Damaged.self) { try await Self.readAll(reopened, after: 1) }
    }

    @Test func acknowledgedEventsAreTrimmedWithTheirSegmentsAndNumberingIsKept() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let spoolDir = dir.sub("spool")
        let spool = try AuditSpool(directory: spoolDir, segmentSize: 100)
        for k in 0..<4 { try await spool.append(Self.payloads(k * 5 + 1...k * 5 + 5)) }
        #expect(spool.sizeInBytes == 20 * Int64(Self.frameSize))

        try await spool.acknowledge(upTo: 12)
        #expect(spool.acknowledged == 12)
        let left = try Self.segments(in: spoolDir)
        #expect(left.map { ($0 as NSString).lastPathComponent } == [11, 16].map { String(format: "%020d.seg", $0) },
                "segments holding only acknowledged events are deleted")
        #expect(spool.sizeInBytes == 10 * Int64(Self.frameSize))
        #expect(try await Self.readAll(spool, after: 12).map(\.payload) == Self.payloads(13...20))

        let reopened = try AuditSpool(directory: spoolDir, segmentSize: 100)
        #expect(reopened.acknowledged == 12)
        #expect(reopened.lastSequence == 20)
        #expect(try await Self.readAll(reopened, after: 12).map(\.payload) == Self.payloads(13...20))

        try await reopened.acknowledge(upTo: 20)
        #expect(try Self.segments(in: spoolDir).isEmpty, "the last segment goes too once all of it is acknowledged")
        #expect(reopened.sizeInBytes == 0)
        #expect(reopened.oldestUnacknowledged() == nil)
        #expect(try await reopened.append(Self.payloads(21...22)) == 21...22)

        let again = try AuditSpool(directory: spoolDir, segmentSize: 100)
        #expect(again.acknowledged == 20)
        #expect(again.lastSequence == 22)
        #expect(try await Self.readAll(again, after: 20).map(\.payload) == Self.payloads(21...22))
    }

    @Test func aFullSpoolRefusesTheWholeBatchAndLosesNothing() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let spoolDir = dir.sub("spool")
        let limit = Int64(10 * Self.frameSize)
        let spool = try AuditSpool(directory: spoolDir, limit: limit)
        #expect(try await spool.append(Self.payloads(1...6)) == 1...6)
        let error = await #expect(throws: AuditSpool.Full.self) { try await spool.append(Self.payloads(7...11)) }
        #expect(error?.limit == limit)
        #expect(spool.lastSequence == 6, "nothing of the refused batch is numbered")
        #expect(spool.sizeInBytes == 6 * Int64(Self.frameSize), "or stored")
        #expect(try await spool.append(Self.payloads(7...10)) == 7...10, "what fits still goes in")

        let reopened = try AuditSpool(directory: spoolDir, limit: limit)
        #expect(try await Self.readAll(reopened).map(\.payload) == Self.payloads(1...10))
        await #expect(throws: AuditSpool.Full.self) { try await reopened.append(Self.payloads(11...11)) }
        try await reopened.acknowledge(upTo: 10)
        #expect(try await reopened.append(Self.payloads(11...11)) == 11...11, "room again once the hub has them")
    }

    @Test func aRestartKeepsTheNextSequenceAndEveryPendingEvent() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let spoolDir = dir.sub("spool")
        let arrived = Date(timeIntervalSince1970: 1_700_000_000.123)
        do {
            let spool = try AuditSpool(directory: spoolDir)
            try await spool.append(Self.payloads(1...4), receivedAt: arrived.addingTimeInterval(-60))
            try await spool.append(Self.payloads(5...9), receivedAt: arrived)
            try await spool.append(Self.payloads(10...12), receivedAt: arrived.addingTimeInterval(5))
            try await spool.acknowledge(upTo: 4)
        }
        let spool = try AuditSpool(directory: spoolDir)
        #expect(spool.acknowledged == 4)
        #expect(spool.lastSequence == 12)
        let pending = try await Self.readAll(spool, after: 4)
        #expect(pending.map(\.sequence) == Array(5...12))
        #expect(pending.map(\.payload) == Self.payloads(5...12))
        #expect(pending[0].receivedAt == arrived)
        #expect(spool.oldestUnacknowledged() == arrived)
        #expect(try await spool.append(Self.payloads(13...13)) == 13...13)
    }

    @Test func aFailedFsyncStoresNothingAndTheNextBatchTakesItsNumbers() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let failNext = Locked(false)
        let spool = try AuditSpool(directory: dir.sub("spool")) { fd in
            failNext.withLock { fail in defer { fail = false }; return fail } ? -1 : fsync(fd)
        }
        try await spool.append(Self.payloads(1...3))
        failNext.value = true
        await #expect(throws: (any Error).self) { try await spool.append(Self.payloads(4...6)) }
        #expect(spool.lastSequence == 3)
        #expect(try await spool.append(Self.payloads(7...8)) == 4...5)
        #expect(try await Self.readAll(spool).map(\.payload) == Self.payloads(1...3) + Self.payloads(7...8))
    }

    /// The metrics and the forwarder's reads never wait for an append's fsync.
    @Test func metricsAndReadsDoNotWaitForAnFsync() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let gate = DispatchSemaphore(value: 0)
        let syncing = Locked(false)
        let spool = try AuditSpool(directory: dir.sub("spool")) { fd in
            syncing.value = true
            gate.wait()
            gate.signal()
            return fsync(fd)
        }
        let append = Task { try await spool.append(Self.payloads(1...3)) }
        try await eventually("the append is in fsync") { syncing.value }

        // All answered while the fsync is stuck.
        #expect(spool.lastSequence == 0)
        #expect(spool.sizeInBytes == 0)
        #expect(spool.oldestUnacknowledged() == nil)
        #expect(AgentMetrics().exposition(spool: spool).contains("tether_agent_audit_spool_bytes 0"))
        #expect(try await spool.read(after: 0).isEmpty, "an append that has not returned is not read")

        gate.signal()
        #expect(try await append.value == 1...3)
        #expect(spool.lastSequence == 3)
        #expect(try await Self.readAll(spool).map(\.payload) == Self.payloads(1...3))
    }
}

extension Array {
    fileprivate var only: Element? { count == 1 ? first : nil }
}
