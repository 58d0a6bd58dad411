import CZlib
import Foundation
import Shared
import Synchronization

/// The agent's on-disk audit spool: numbered events in append-only segment files,
/// fsynced before an append returns, trimmed only up to what the hub acknowledged.
///
/// A segment is a run of frames `[u32 length][u32 crc32][u64 sequence][u64
/// receivedAtMillis][payload]`, named after its first sequence number. A crash can
/// leave a torn frame at the end of the last segment; opening truncates it (its
/// append never returned, so the API server never got a 200 for it).
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

    let directory: String
    let limit: Int64
    let segmentSize: Int64
    private let state: Mutex<State>
    /// Moves on every append and acknowledgement: the forwarder waits on it.
    let changed = ChangeSignal()
    private let cursor = Locked<Cursor?>(nil)

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
        var writer: Int32 = -1
        /// (last sequence, arrival) of each append not yet fully acknowledged: the
        /// oldest unacknowledged event's age without touching the disk.
        var arrivals: [(last: UInt64, at: Date)] = []
    }

    static let headerSize = 24

    init(directory: String, limit: Int64 = 1 << 30, segmentSize: Int64 = 64 << 20) throws {
        self.directory = directory
        self.limit = limit
        self.segmentSize = segmentSize
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
        if let last = s.segments.last {
            // Recover the tail: find the end of the last whole frame.
            let (frames, validBytes) = try Self.scan(path: last.path)
            if validBytes < last.size {
                guard truncate(last.path, off_t(validBytes)) == 0 else {
                    throw TetherError(.storage, "cannot repair audit spool segment \(last.path): \(String(cString: strerror(errno)))")
                }
                s.segments[s.segments.count - 1].size = validBytes
            }
            if let lastFrame = frames.last {
                lastSequence = max(lastSequence, lastFrame.sequence)
            } else {
                lastSequence = max(lastSequence, last.first - 1)
            }
        }
        s.nextSequence = lastSequence + 1
        s.totalBytes = s.segments.reduce(0) { $0 + $1.size }
        if s.nextSequence - 1 > s.acknowledged, let first = s.segments.first,
           let (frame, _) = Self.firstFrame(after: s.acknowledged, in: first.path) {
            s.arrivals = [(s.nextSequence - 1, frame.receivedAt)]
        }
        state = Mutex(s)
        try trimAcknowledged()
    }

    deinit {
        state.withLock { if $0.writer >= 0 { close($0.writer) } }
    }

    /// Numbers and durably stores `payloads`; returns their sequence range. Throws
    /// `Full` (and stores nothing) when they would take the spool over its limit.
    @discardableResult
    func append(_ payloads: [Data], receivedAt: Date = Date()) throws -> ClosedRange<UInt64>? {
        guard !payloads.isEmpty else { return nil }
        let range: ClosedRange<UInt64> = try state.withLock { s in
            let bytes = Int64(payloads.reduce(0) { $0 + $1.count + Self.headerSize })
            guard s.totalBytes + bytes <= limit else { throw Full(size: s.totalBytes, limit: limit) }
            if s.writer < 0 || (s.segments.last?.size ?? 0) >= segmentSize {
                try openNewSegment(&s)
            }
            let first = s.nextSequence
            var buffer = Data(capacity: Int(bytes))
            let millis = UInt64(receivedAt.timeIntervalSince1970 * 1000)
            for (i, payload) in payloads.enumerated() {
                Self.appendFrame(sequence: first + UInt64(i), receivedAtMillis: millis, payload: payload, to: &buffer)
            }
            try Self.writeAll(fd: s.writer, buffer)
            guard fsync(s.writer) == 0 else {
                let why = String(cString: strerror(errno))
                // The bytes may be half on disk: cut them off so nothing unacknowledged to the sender survives.
                _ = ftruncate(s.writer, off_t(s.segments[s.segments.count - 1].size))
                throw TetherError(.storage, "audit spool fsync failed: \(why)")
            }
            s.segments[s.segments.count - 1].size += bytes
            s.totalBytes += bytes
            s.nextSequence = first + UInt64(payloads.count)
            s.arrivals.append((s.nextSequence - 1, receivedAt))
            return first...(s.nextSequence - 1)
        }
        changed.notify()
        return range
    }

    /// Up to `maxEvents` events after `sequence`, oldest first. Sequential reads
    /// (the forwarder's) continue from where the previous one stopped.
    func read(after sequence: UInt64, maxEvents: Int = 1000, maxBytes: Int = 4 << 20) throws -> [Event] {
        let segments = state.withLock { $0.segments }
        guard !segments.isEmpty else { return [] }
        var index = segments.lastIndex(where: { $0.first <= sequence + 1 }) ?? 0
        var offset: Int64 = 0
        if let c = cursor.value, c.path == segments[index].path, c.nextSequence == sequence + 1 {
            offset = c.offset
        }
        var result: [Event] = []
        var bytes = 0
        while index < segments.count {
            let path = segments[index].path
            let fd = open(path, O_RDONLY)
            guard fd >= 0 else {
                // Trimmed under us: the caller asked for something already acknowledged.
                if errno == ENOENT { index += 1; offset = 0; continue }
                throw TetherError(.storage, "cannot read audit spool segment \(path): \(String(cString: strerror(errno)))")
            }
            defer { close(fd) }
            while result.count < maxEvents, bytes < maxBytes, let (frame, next) = Self.readFrame(fd: fd, at: offset) {
                offset = next
                if frame.sequence > sequence {
                    result.append(frame)
                    bytes += frame.payload.count
                }
            }
            cursor.value = Cursor(path: path, offset: offset, nextSequence: (result.last?.sequence ?? sequence) + 1)
            if result.count >= maxEvents || bytes >= maxBytes { break }
            index += 1
            offset = 0
        }
        return result
    }

    private struct Cursor: Sendable {
        var path: String
        var offset: Int64
        var nextSequence: UInt64
    }

    /// One whole, checksummed frame at `offset`, or nil at the end (or at a torn tail).
    static func readFrame(fd: Int32, at offset: Int64) -> (Event, Int64)? {
        var header = [UInt8](repeating: 0, count: headerSize)
        guard pread(fd, &header, headerSize, off_t(offset)) == headerSize else { return nil }
        let length = header.withUnsafeBufferPointer { Int(get32($0, 0)) }
        var payload = [UInt8](repeating: 0, count: length)
        if length > 0 {
            guard pread(fd, &payload, length, off_t(offset) + off_t(headerSize)) == length else { return nil }
        }
        let (crc, sequence, millis) = header.withUnsafeBufferPointer { ($0.count == 24 ? get32($0, 4) : 0, get64($0, 8), get64($0, 16)) }
        guard CRC32.update(CRC32.update(0, header[8..<24]), payload) == crc else { return nil }
        return (Event(sequence: sequence, receivedAt: Date(timeIntervalSince1970: Double(millis) / 1000), payload: Data(payload)),
                offset + Int64(headerSize + length))
    }

    /// Records that the hub stored everything up to `sequence` and deletes
    /// segments holding nothing newer.
    func acknowledge(upTo sequence: UInt64) throws {
        let moved: Bool = state.withLock { s in
            guard sequence > s.acknowledged else { return false }
            s.acknowledged = min(sequence, s.nextSequence - 1)
            let acked = s.acknowledged
            s.arrivals.removeAll { $0.last <= acked }
            return true
        }
        guard moved else { return }
        try AtomicFile.write(Data("\(acknowledged)\n".utf8), to: directory + "/acknowledged", mode: 0o600)
        try trimAcknowledged()
        changed.notify()
    }

    /// Renumbers every pending event to follow `floor`, the hub's last stored sequence:
    /// for an agent that lost its state dir while the hub kept its log (so new events
    /// are not taken for ones the hub already has), and for a hub restored from a
    /// backup older than what this agent had acknowledged (so the hub sees no gap).
    /// Rewrites pending events into a new segment.
    func renumber(above floor: UInt64) throws {
        let renumbered: Bool = try state.withLock { s in
            // Either the hub is ahead of everything here (this state dir was lost), or
            // behind what it already acknowledged (the hub was restored from a backup).
            guard s.nextSequence <= floor || floor < s.acknowledged else { return false }
            var pending: [Event] = []
            for segment in s.segments {
                pending += try Self.scan(path: segment.path).frames.filter { $0.sequence > s.acknowledged }
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
            if s.writer >= 0 { close(s.writer); s.writer = -1 }
            for segment in s.segments where segment.path != path { unlink(segment.path) }
            s.segments = [Segment(first: floor + 1, path: path, size: Int64(buffer.count))]
            s.totalBytes = Int64(buffer.count)
            s.nextSequence = floor + 1 + UInt64(pending.count)
            s.acknowledged = floor
            s.arrivals = pending.isEmpty ? [] : [(s.nextSequence - 1, pending[0].receivedAt)]
            s.writer = open(path, O_WRONLY | O_APPEND, 0o600)
            try AtomicFile.write(Data("\(floor)\n".utf8), to: directory + "/acknowledged", mode: 0o600)
            return true
        }
        if renumbered {
            cursor.value = nil
            changed.notify()
        }
    }

    private func trimAcknowledged() throws {
        state.withLock { s in
            // A segment can go when the next one starts at or before acked+1.
            while s.segments.count > 1, s.segments[1].first <= s.acknowledged + 1 {
                let gone = s.segments.removeFirst()
                unlink(gone.path)
                s.totalBytes -= gone.size
            }
            // The last segment goes too once all of it is acknowledged; the next
            // append starts a new one. (Acknowledged bytes never count against the limit.)
            if let last = s.segments.last, s.segments.count == 1, s.nextSequence - 1 <= s.acknowledged {
                if s.writer >= 0 { close(s.writer); s.writer = -1 }
                unlink(last.path)
                s.totalBytes -= last.size
                s.segments.removeAll()
            }
        }
    }

    var acknowledged: UInt64 { state.withLock { $0.acknowledged } }
    var lastSequence: UInt64 { state.withLock { $0.nextSequence - 1 } }
    var sizeInBytes: Int64 { state.withLock { $0.totalBytes } }

    /// When the oldest unacknowledged event arrived, if any (from memory: a metrics
    /// scrape must not read the disk or disturb the forwarder's read position).
    func oldestUnacknowledged() -> Date? {
        state.withLock { $0.arrivals.first?.at }
    }

    private static func firstFrame(after sequence: UInt64, in path: String) -> (Event, Int64)? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var offset: Int64 = 0
        while let (frame, next) = readFrame(fd: fd, at: offset) {
            if frame.sequence > sequence { return (frame, next) }
            offset = next
        }
        return nil
    }

    // MARK: Files

    private func openNewSegment(_ s: inout State) throws {
        if s.writer >= 0 { close(s.writer) }
        let path = directory + "/" + String(format: "%020llu", s.nextSequence) + ".seg"
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        guard fd >= 0 else { throw TetherError(.storage, "cannot create audit spool segment \(path): \(String(cString: strerror(errno)))") }
        s.writer = fd
        if s.segments.last?.path != path {
            s.segments.append(Segment(first: s.nextSequence, path: path, size: 0))
        }
        let dir = open(directory, O_RDONLY)
        if dir >= 0 { fsync(dir); close(dir) }
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

    /// Every whole, checksummed frame of a segment and where the last one ends.
    static func scan(path: String) throws -> (frames: [Event], validBytes: Int64) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TetherError(.storage, "cannot read audit spool segment \(path)")
        }
        var frames: [Event] = []
        var offset = 0
        return data.withUnsafeBytes { raw -> ([Event], Int64) in
            let bytes = raw.bindMemory(to: UInt8.self)
            while offset + headerSize <= bytes.count {
                let length = Int(get32(bytes, offset))
                guard offset + headerSize + length <= bytes.count else { break }
                let crc = get32(bytes, offset + 4)
                var check = CRC32.update(0, UnsafeBufferPointer(rebasing: bytes[(offset + 8)..<(offset + 24)]))
                check = CRC32.update(check, UnsafeBufferPointer(rebasing: bytes[(offset + 24)..<(offset + 24 + length)]))
                guard check == crc else { break }
                frames.append(Event(
                    sequence: get64(bytes, offset + 8),
                    receivedAt: Date(timeIntervalSince1970: Double(get64(bytes, offset + 16)) / 1000),
                    payload: Data(bytes[(offset + 24)..<(offset + 24 + length)])))
                offset += headerSize + length
            }
            return (frames, Int64(offset))
        }
    }

    private static func writeAll(fd: Int32, _ data: Data) throws {
        try data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
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
    private static func get32(_ b: UnsafeBufferPointer<UInt8>, _ i: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(b[i + $1]) << (8 * $1) }
    }
    private static func get64(_ b: UnsafeBufferPointer<UInt8>, _ i: Int) -> UInt64 {
        (0..<8).reduce(0) { $0 | UInt64(b[i + $1]) << (8 * $1) }
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
