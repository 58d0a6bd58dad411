import CZlib
import Dispatch
import Foundation
import Shared
import Synchronization

/// The agent's on-disk audit spool: numbered events in append-only segment files,
/// fsynced before an append returns, trimmed only up to what the hub acknowledged.
///
/// A segment is a run of frames `[u32 length][u32 crc32][u64 sequence][u64
/// receivedAtMillis][payload]`, named after its first sequence number. A crash can
/// leave a torn frame at the end of the last segment; opening truncates it (its
/// append never returned, so the API server never got a 200 for it). A frame that
/// fails its checksum *before* the end (a damaged disk, a stray write) is never
/// skipped and never renumbered over: reading stops there with `Damaged`.
///
/// File I/O runs on the spool's own dispatch queues, never on the cooperative pool:
/// appends (write, fsync, new segments) and the trim of the segment being written
/// on `writes`, the acknowledged mark and the trim of older segments on `acks`,
/// forwarding reads on `reads`. The mutex guards memory only and is never held
/// across a system call, so the metrics (`sizeInBytes`, `oldestUnacknowledged`, ...)
/// never wait on the disk.
final class AuditSpool: Sendable {
    struct Event: Sendable, Equatable {
        var sequence: UInt64
        var receivedAt: Date
        var payload: Data
    }

    struct Full: Error, CustomStringConvertible {
        var size: Int64
        var limit: Int64
        var description: String { "audit spool is full (\(size) of \(limit) bytes)" }
    }

    /// A frame that is not the torn tail of an interrupted append fails its checksum
    /// (or breaks the numbering): the events from `sequence` on in this segment cannot
    /// be read. Forwarding must stop here rather than skip them.
    struct Damaged: Error, Hashable, CustomStringConvertible {
        /// The segment file.
        var path: String
        /// Where the damaged frame starts in it.
        var offset: Int64
        /// The sequence number the damaged frame should hold: the first event that cannot be read.
        var sequence: UInt64
        var description: String {
            "audit spool segment \(path) is damaged at byte \(offset): event \(sequence) (and any after it in that segment) cannot be read; forwarding stops there rather than skip or renumber events"
        }
    }

    let directory: String
    let limit: Int64
    let segmentSize: Int64
    private let state: Mutex<State>
    /// Moves on every append and acknowledgement: the forwarder waits on it.
    let changed = ChangeSignal()
    private let cursor = Locked<Cursor?>(nil)
    private let damages = Mutex<Set<Damaged>>([])
    private let writes = DispatchQueue(label: "tether.audit-spool.writes")
    private let acks = DispatchQueue(label: "tether.audit-spool.acks")
    private let reads = DispatchQueue(label: "tether.audit-spool.reads")
    /// Test seam: what an append calls to make its bytes durable.
    private let sync: @Sendable (Int32) -> Int32

    private struct Segment {
        var first: UInt64
        var path: String
        var size: Int64
    }

    private struct State {
        var segments: [Segment] = []
        var nextSequence: UInt64 = 1
        var acknowledged: UInt64 = 0
        var totalBytes: Int64 = 0
        /// Only `writes` opens, writes to and closes it (`renumber` too, holding both queues).
        var writer: Int32 = -1
        /// (last sequence, arrival) of each append not yet fully acknowledged: the
        /// oldest unacknowledged event's age without touching the disk.
        var arrivals: [(last: UInt64, at: Date)] = []
    }

    static let headerSize = 24

    /// Opens (or creates) the spool in `directory`: reads the acknowledged mark,
    /// lists the segments and repairs a torn tail of the last one. Runs before the
    /// agent serves anything, so its I/O may block the caller.
    init(directory: String, limit: Int64 = 1 << 30, segmentSize: Int64 = 64 << 20,
         sync: @escaping @Sendable (Int32) -> Int32 = { fsync($0) }) throws {
        self.directory = directory
        self.limit = limit
        self.segmentSize = segmentSize
        self.sync = sync
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var s = State()
        if let data = fm.contents(atPath: directory + "/acknowledged"), let text = String(data: data, encoding: .utf8),
           let acked = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            s.acknowledged = acked
        }
        let names = try fm.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".seg") }
        for name in names {
            guard let first = UInt64(name.dropLast(4)) else { continue }
            let path = directory + "/" + name
            let size = (try fm.attributesOfItem(atPath: path)[.size] as? NSNumber)?.int64Value ?? 0
            s.segments.append(Segment(first: first, path: path, size: size))
        }
        s.segments.sort { $0.first < $1.first }
        var lastSequence = s.acknowledged
        var found: [Damaged] = []
        if let last = s.segments.last {
            // Recover the tail: find the end of the last whole frame. Damage before it
            // stays in place (and is reported when read); only a torn tail goes.
            let scanned = try Self.scan(path: last.path, first: last.first, collect: false)
            found = scanned.damages
            if scanned.validBytes < last.size {
                guard truncate(last.path, off_t(scanned.validBytes)) == 0 else {
                    throw TetherError(.storage, "cannot repair audit spool segment \(last.path): \(String(cString: strerror(errno)))")
                }
                s.segments[s.segments.count - 1].size = scanned.validBytes
            }
            lastSequence = max(lastSequence, scanned.lastSequence ?? last.first - 1)
        }
        s.nextSequence = lastSequence + 1
        s.totalBytes = s.segments.reduce(0) { $0 + $1.size }
        if s.nextSequence - 1 > s.acknowledged, let first = s.segments.first,
           let (frame, _) = Self.firstFrame(after: s.acknowledged, in: first.path) {
            s.arrivals = [(s.nextSequence - 1, frame.receivedAt)]
        }
        state = Mutex(s)
        damages.withLock { $0.formUnion(found) }
        for path in trimOlder() { unlink(path) }
        try trimLast()
    }

    deinit {
        state.withLock { if $0.writer >= 0 { close($0.writer) } }
    }

    /// Numbers and durably stores `payloads`; returns their sequence range. Throws
    /// `Full` (and stores nothing) when they would take the spool over its limit.
    /// One write and one fsync per call, off the cooperative pool.
    @discardableResult
    func append(_ payloads: [Data], receivedAt: Date = Date()) async throws -> ClosedRange<UInt64>? {
        guard !payloads.isEmpty else { return nil }
        let range = try await writes.run { try self.appendNow(payloads, receivedAt: receivedAt) }
        changed.notify()
        return range
    }

    /// On `writes` only: the sole mover of `nextSequence`, the writer and the last
    /// segment's size, so what it read under the lock still holds after the I/O.
    private func appendNow(_ payloads: [Data], receivedAt: Date) throws -> ClosedRange<UInt64> {
        let bytes = Int64(payloads.reduce(0) { $0 + $1.count + Self.headerSize })
        let (needsSegment, first) = try state.withLock { s in
            guard s.totalBytes + bytes <= limit else { throw Full(size: s.totalBytes, limit: limit) }
            return (s.writer < 0 || (s.segments.last?.size ?? 0) >= segmentSize, s.nextSequence)
        }
        if needsSegment { try openNewSegment(first: first) }
        let (writer, size) = state.withLock { ($0.writer, $0.segments[$0.segments.count - 1].size) }
        var buffer = Data(capacity: Int(bytes))
        let millis = UInt64(receivedAt.timeIntervalSince1970 * 1000)
        for (i, payload) in payloads.enumerated() {
            Self.appendFrame(sequence: first + UInt64(i), receivedAtMillis: millis, payload: payload, to: &buffer)
        }
        do {
            try Self.writeAll(fd: writer, buffer)
            guard sync(writer) == 0 else { throw TetherError(.storage, "audit spool fsync failed: \(String(cString: strerror(errno)))") }
        } catch {
            // The bytes may be half on disk: cut them off so nothing unacknowledged to
            // the sender survives, and the next append starts on a frame boundary.
            _ = ftruncate(writer, off_t(size))
            throw error
        }
        let last = first + UInt64(payloads.count) - 1
        state.withLock { s in
            s.segments[s.segments.count - 1].size += bytes
            s.totalBytes += bytes
            s.nextSequence = last + 1
            s.arrivals.append((last, receivedAt))
        }
        return first...last
    }

    /// Up to `maxEvents` events after `sequence`, oldest first. Sequential reads
    /// (the forwarder's) continue from where the previous one stopped. Throws
    /// `Damaged` on reaching a damaged frame (after returning the events before it).
    func read(after sequence: UInt64, maxEvents: Int = 1000, maxBytes: Int = 4 << 20) async throws -> [Event] {
        try await reads.run { try self.readNow(after: sequence, maxEvents: maxEvents, maxBytes: maxBytes) }
    }

    private func readNow(after sequence: UInt64, maxEvents: Int, maxBytes: Int) throws -> [Event] {
        // Sizes count only appends that returned: everything below them is whole.
        let segments = state.withLock { $0.segments }
        guard !segments.isEmpty else { return [] }
        var index = segments.lastIndex(where: { $0.first <= sequence + 1 }) ?? 0
        var offset: Int64 = 0
        var expected = segments[index].first
        if let c = cursor.value, c.path == segments[index].path, c.nextSequence == sequence + 1 {
            offset = c.offset
            expected = c.nextSequence
        }
        var result: [Event] = []
        var bytes = 0
        var chunk: [UInt8] = []
        while index < segments.count {
            let segment = segments[index]
            let fd = open(segment.path, O_RDONLY)
            guard fd >= 0 else {
                // Trimmed under us: the caller asked for something already acknowledged.
                if errno == ENOENT {
                    index += 1
                    offset = 0
                    if index < segments.count { expected = segments[index].first }
                    continue
                }
                throw TetherError(.storage, "cannot read audit spool segment \(segment.path): \(String(cString: strerror(errno)))")
            }
            defer { close(fd) }
            var damaged: Damaged?
            reading: while offset < segment.size, result.count < maxEvents, bytes < maxBytes {
                // One pread per chunk of frames, not per frame.
                guard Self.preadAll(fd: fd, into: &chunk, count: Int(min(segment.size - offset, Int64(Self.readChunk))), at: offset) else {
                    damaged = Damaged(path: segment.path, offset: offset, sequence: expected)
                    break
                }
                var local = 0
                parsing: while result.count < maxEvents, bytes < maxBytes, offset + Int64(local) < segment.size {
                    switch chunk.withUnsafeBytes({ Self.parseFrame($0, at: local, collect: true) }) {
                    case .frame(let frame, let end) where frame.sequence == expected || offset + Int64(local) == 0:
                        local = end
                        expected = frame.sequence + 1
                        if frame.sequence > sequence {
                            result.append(frame)
                            bytes += frame.payload.count
                        }
                    case .incomplete(let needed) where offset + Int64(local) + Int64(needed) <= segment.size:
                        if local > 0 { break parsing }  // read on from this frame's start
                        // A frame bigger than a chunk: read all of it.
                        guard Self.preadAll(fd: fd, into: &chunk, count: needed, at: offset) else {
                            damaged = Damaged(path: segment.path, offset: offset, sequence: expected)
                            break reading
                        }
                    default:
                        // Below the size of appends that returned, so not a torn write.
                        damaged = Damaged(path: segment.path, offset: offset + Int64(local), sequence: expected)
                        offset += Int64(local)
                        break reading
                    }
                }
                offset += Int64(local)
            }
            cursor.value = Cursor(path: segment.path, offset: offset, nextSequence: expected)
            if let found = damaged, found.sequence <= sequence,
               let after = try Self.framesPastDamage(in: segment, after: sequence, maxEvents: maxEvents, maxBytes: maxBytes) {
                // The damage is among events the caller already has (acknowledged, its
                // segment not yet trimmed): what it asks for lies whole beyond it.
                damages.withLock { $0.formUnion(after.damages) }
                cursor.value = nil
                result = after.frames
                if !result.isEmpty { return result }
                index += 1
                offset = 0
                if index < segments.count { expected = segments[index].first }
                continue
            }
            if let damaged {
                damages.withLock { _ = $0.insert(damaged) }
                // Hand over what came before it first; the next read starts at the damage.
                if result.isEmpty { throw damaged }
                return result
            }
            if result.count >= maxEvents || bytes >= maxBytes { break }
            index += 1
            offset = 0
            if index < segments.count { expected = segments[index].first }
        }
        return result
    }

    static let readChunk = 1 << 20

    /// Up to `maxEvents` frames (and about `maxBytes`) after `sequence` of a segment damaged only before
    /// `sequence + 1`, found by scanning past the damage; nil if any of the events
    /// after `sequence` cannot be read.
    private static func framesPastDamage(in segment: Segment, after sequence: UInt64, maxEvents: Int, maxBytes: Int) throws
        -> (frames: [Event], damages: [Damaged])? {
        let scanned = try scan(path: segment.path, first: segment.first, collect: true, upTo: segment.size)
        guard scanned.validBytes == segment.size else { return nil }
        let wanted = scanned.frames.drop { $0.sequence <= sequence }
        let last = scanned.lastSequence ?? 0
        if wanted.isEmpty {
            guard last <= sequence else { return nil }
        } else {
            // Whole and in order from sequence + 1: no gap left by the damage.
            guard wanted.first!.sequence == sequence + 1, UInt64(wanted.count) == last - sequence else { return nil }
        }
        var frames: [Event] = []
        var bytes = 0
        for frame in wanted where frames.count < maxEvents && bytes < maxBytes {
            frames.append(frame)
            bytes += frame.payload.count
        }
        return (frames, scanned.damages)
    }

    private struct Cursor: Sendable {
        var path: String
        var offset: Int64
        var nextSequence: UInt64
    }

    /// Records that the hub stored everything up to `sequence` and deletes
    /// segments holding nothing newer.
    func acknowledge(upTo sequence: UInt64) async throws {
        let moved = try await acks.run { () throws -> Bool in
            let acked: UInt64? = self.state.withLock { s in
                guard sequence > s.acknowledged else { return nil }
                s.acknowledged = min(sequence, s.nextSequence - 1)
                let acked = s.acknowledged
                s.arrivals.removeAll { $0.last <= acked }
                return acked
            }
            guard let acked else { return false }
            try AtomicFile.write(Data("\(acked)\n".utf8), to: self.directory + "/acknowledged", mode: 0o600)
            for path in self.trimOlder() { unlink(path) }
            return true
        }
        guard moved else { return }
        // The segment being written goes only on `writes`, between two appends.
        if state.withLock({ $0.segments.count == 1 && $0.nextSequence - 1 <= $0.acknowledged }) {
            try await writes.run { try self.trimLast() }
        }
        changed.notify()
    }

    /// Renumbers every pending event to follow `floor`, the hub's last stored sequence:
    /// for an agent that lost its state dir while the hub kept its log (so new events
    /// are not taken for ones the hub already has), and for a hub restored from a
    /// backup older than what this agent had acknowledged (so the hub sees no gap).
    /// Rewrites pending events into a new segment; throws `Damaged` (and changes
    /// nothing) if a pending event cannot be read.
    func renumber(above floor: UInt64) async throws {
        let renumbered = try await writes.run {
            try self.acks.sync { try self.renumberNow(above: floor) }
        }
        if renumbered {
            cursor.value = nil
            changed.notify()
        }
    }

    /// Holding both `writes` and `acks`: nothing else touches the segments meanwhile.
    private func renumberNow(above floor: UInt64) throws -> Bool {
        let (segments, acknowledged, nextSequence, writer) = state.withLock { ($0.segments, $0.acknowledged, $0.nextSequence, $0.writer) }
        // Either the hub is ahead of everything here (this state dir was lost), or
        // behind what it already acknowledged (the hub was restored from a backup).
        guard nextSequence <= floor || floor < acknowledged else { return false }
        var pending: [Event] = []
        for segment in segments {
            let scanned = try Self.scan(path: segment.path, first: segment.first, collect: true, upTo: segment.size)
            if let damaged = scanned.damages.first ?? (scanned.validBytes < segment.size
                ? Damaged(path: segment.path, offset: scanned.validBytes, sequence: (scanned.lastSequence ?? segment.first - 1) + 1) : nil) {
                damages.withLock { _ = $0.insert(damaged) }
                throw damaged
            }
            pending += scanned.frames.filter { $0.sequence > acknowledged }
        }
        // The new segment is durable before the old ones go: a crash in between
        // leaves duplicates (the hub drops them by auditID and stage), never a loss.
        var buffer = Data()
        for (i, event) in pending.enumerated() {
            Self.appendFrame(sequence: floor + 1 + UInt64(i), receivedAtMillis: UInt64(event.receivedAt.timeIntervalSince1970 * 1000),
                             payload: event.payload, to: &buffer)
        }
        let path = directory + "/" + String(format: "%020llu", floor + 1) + ".seg"
        try AtomicFile.write(buffer, to: path, mode: 0o600)
        if writer >= 0 { close(writer) }
        for segment in segments where segment.path != path { unlink(segment.path) }
        let newWriter = open(path, O_WRONLY | O_APPEND, 0o600)
        state.withLock { s in
            s.writer = newWriter
            s.segments = [Segment(first: floor + 1, path: path, size: Int64(buffer.count))]
            s.totalBytes = Int64(buffer.count)
            s.nextSequence = floor + 1 + UInt64(pending.count)
            s.acknowledged = floor
            s.arrivals = pending.isEmpty ? [] : [(s.nextSequence - 1, pending[0].receivedAt)]
        }
        try AtomicFile.write(Data("\(floor)\n".utf8), to: directory + "/acknowledged", mode: 0o600)
        return true
    }

    /// Takes the wholly acknowledged segments before the last one out of the state
    /// and returns their paths for the caller to unlink (outside the lock).
    private func trimOlder() -> [String] {
        state.withLock { s in
            var gone: [String] = []
            // A segment can go when the next one starts at or before acked+1.
            while s.segments.count > 1, s.segments[1].first <= s.acknowledged + 1 {
                let segment = s.segments.removeFirst()
                s.totalBytes -= segment.size
                gone.append(segment.path)
            }
            return gone
        }
    }

    /// The last segment goes too once all of it is acknowledged; the next append
    /// starts a new one. (Acknowledged bytes never count against the limit.) On
    /// `writes` only (or in `init`), since it closes the writer.
    private func trimLast() throws {
        let gone: (path: String, writer: Int32)? = state.withLock { s in
            guard let last = s.segments.last, s.segments.count == 1, s.nextSequence - 1 <= s.acknowledged else { return nil }
            let writer = s.writer
            s.writer = -1
            s.totalBytes -= last.size
            s.segments.removeAll()
            return (last.path, writer)
        }
        guard let gone else { return }
        if gone.writer >= 0 { close(gone.writer) }
        unlink(gone.path)
    }

    var acknowledged: UInt64 { state.withLock { $0.acknowledged } }
    var lastSequence: UInt64 { state.withLock { $0.nextSequence - 1 } }
    var sizeInBytes: Int64 { state.withLock { $0.totalBytes } }
    /// Damaged frames found so far (each counted once however often it is read):
    /// for a metric, from memory.
    var damagedFrames: Int { damages.withLock { $0.count } }
    /// The damaged frames found so far, in file and offset order.
    var damaged: [Damaged] { damages.withLock { $0.sorted { ($0.path, $0.offset) < ($1.path, $1.offset) } } }

    /// When the oldest unacknowledged event arrived, if any (from memory: a metrics
    /// scrape must not read the disk or disturb the forwarder's read position).
    func oldestUnacknowledged() -> Date? {
        state.withLock { $0.arrivals.first?.at }
    }

    private static func firstFrame(after sequence: UInt64, in path: String) -> (Event, Int64)? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return data.withUnsafeBytes { raw -> (Event, Int64)? in
            var offset = 0
            while case .frame(let frame, let end) = parseFrame(raw, at: offset, collect: false) {
                if frame.sequence > sequence {
                    guard case .frame(let whole, _) = parseFrame(raw, at: offset, collect: true) else { return nil }
                    return (whole, Int64(end))
                }
                offset = end
            }
            return nil
        }
    }

    // MARK: Files

    /// On `writes` only.
    private func openNewSegment(first: UInt64) throws {
        let path = directory + "/" + String(format: "%020llu", first) + ".seg"
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        guard fd >= 0 else { throw TetherError(.storage, "cannot create audit spool segment \(path): \(String(cString: strerror(errno)))") }
        let dir = open(directory, O_RDONLY)
        if dir >= 0 { _ = sync(dir); close(dir) }
        let old: Int32 = state.withLock { s in
            let old = s.writer
            s.writer = fd
            if s.segments.last?.path != path {
                s.segments.append(Segment(first: first, path: path, size: 0))
            }
            return old
        }
        if old >= 0 { close(old) }
    }

    static func appendFrame(sequence: UInt64, receivedAtMillis: UInt64, payload: Data, to buffer: inout Data) {
        var header = [UInt8](repeating: 0, count: headerSize)
        put32(UInt32(payload.count), into: &header, at: 0)
        put64(sequence, into: &header, at: 8)
        put64(receivedAtMillis, into: &header, at: 16)
        var crc = CRC32.update(0, header[8..<24])
        crc = CRC32.update(crc, payload)
        put32(crc, into: &header, at: 4)
        buffer.append(contentsOf: header)
        buffer.append(payload)
    }

    enum Parsed {
        /// A whole frame that checks out, and where the next one starts.
        case frame(Event, end: Int)
        /// The buffer ends inside this frame; `needed` bytes from its start would hold it.
        case incomplete(needed: Int)
        /// The checksum does not match.
        case bad
    }

    /// The frame at `offset` in `bytes`; its payload copied only if `collect`.
    static func parseFrame(_ bytes: UnsafeRawBufferPointer, at offset: Int, collect: Bool) -> Parsed {
        guard offset + headerSize <= bytes.count else { return .incomplete(needed: headerSize) }
        let length = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
        guard offset + headerSize + length <= bytes.count else { return .incomplete(needed: headerSize + length) }
        let crc = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))
        let check = CRC32.update(CRC32.update(0, UnsafeRawBufferPointer(rebasing: bytes[(offset + 8)..<(offset + 24)])),
                                 UnsafeRawBufferPointer(rebasing: bytes[(offset + 24)..<(offset + 24 + length)]))
        guard check == crc else { return .bad }
        let sequence = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self))
        let millis = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 16, as: UInt64.self))
        return .frame(Event(sequence: sequence, receivedAt: Date(timeIntervalSince1970: Double(millis) / 1000),
                            payload: collect ? Data(bytes[(offset + 24)..<(offset + 24 + length)]) : Data()),
                      end: offset + headerSize + length)
    }

    /// Every whole, checksummed frame of a segment (payloads only if `collect`), the
    /// last sequence, and where the valid data ends. A bad frame followed later by a
    /// whole frame that continues the numbering is damage (recorded, and scanning
    /// goes on from there); a bad or cut frame with nothing valid after it is the
    /// torn tail of an interrupted append, and `validBytes` stops before it.
    static func scan(path: String, first: UInt64, collect: Bool, upTo size: Int64? = nil) throws
        -> (frames: [Event], lastSequence: UInt64?, validBytes: Int64, damages: [Damaged]) {
        guard var data = FileManager.default.contents(atPath: path) else {
            throw TetherError(.storage, "cannot read audit spool segment \(path)")
        }
        if let size, Int64(data.count) > size { data = data.prefix(Int(size)) }
        return data.withUnsafeBytes { bytes in
            var frames: [Event] = []
            var damages: [Damaged] = []
            var offset = 0
            var expected = first
            var last: UInt64?
            while offset < bytes.count {
                if case .frame(let frame, let end) = parseFrame(bytes, at: offset, collect: collect),
                   frame.sequence == expected || offset == 0 {
                    if collect { frames.append(frame) }
                    last = frame.sequence
                    expected = frame.sequence + 1
                    offset = end
                    continue
                }
                guard let (resumed, sequence) = resync(bytes, from: offset + 1, atLeast: expected) else { break }
                damages.append(Damaged(path: path, offset: Int64(offset), sequence: expected))
                offset = resumed
                expected = sequence
            }
            return (frames, last, Int64(offset), damages)
        }
    }

    /// The first offset after `start` holding a whole, checksummed frame numbered
    /// `atLeast` or later (and no later than the bytes left could number).
    private static func resync(_ bytes: UnsafeRawBufferPointer, from start: Int, atLeast: UInt64) -> (Int, UInt64)? {
        var p = start
        while p + headerSize <= bytes.count {
            let sequence = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: p + 8, as: UInt64.self))
            if sequence >= atLeast, sequence - atLeast <= UInt64(bytes.count - p) / UInt64(headerSize),
               case .frame = parseFrame(bytes, at: p, collect: false) {
                return (p, sequence)
            }
            p += 1
        }
        return nil
    }

    /// Fills `buffer` with exactly `count` bytes at `offset`; false if the file ends first.
    private static func preadAll(fd: Int32, into buffer: inout [UInt8], count: Int, at offset: Int64) -> Bool {
        if buffer.count != count { buffer = [UInt8](repeating: 0, count: count) }
        var done = 0
        while done < count {
            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }

    private static func writeAll(fd: Int32, _ data: Data) throws {
        try data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw TetherError(.storage, "audit spool write failed: \(String(cString: strerror(errno)))") }
                offset += n
            }
        }
    }

    private static func put32(_ v: UInt32, into b: inout [UInt8], at i: Int) {
        for k in 0..<4 { b[i + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) }
    }
    private static func put64(_ v: UInt64, into b: inout [UInt8], at i: Int) {
        for k in 0..<8 { b[i + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) }
    }
}

/// CRC-32 (IEEE), for spotting torn or damaged spool frames: zlib's, which is
/// many times faster than a table walk in Swift on this hot path.
enum CRC32 {
    static func update(_ crc: UInt32, _ bytes: some ContiguousBytes) -> UInt32 {
        bytes.withUnsafeBytes { raw in
            UInt32(truncatingIfNeeded: crc32(uLong(crc), raw.bindMemory(to: Bytef.self).baseAddress, uInt(raw.count)))
        }
    }
}
