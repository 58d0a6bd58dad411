import Dispatch
import Foundation
import Logging
import ServiceLifecycle
import Shared

/// Follows an API server's audit log file (`--audit-log-path`, one JSON Event per
/// line) into the spool, like `tail -F`: it survives rotation by rename (the old
/// file is read to its end first) and by copy-truncate (the file shrinks), and it
/// remembers where it was across restarts, in `audit-log-position.json` next to
/// the spool. A line is only counted as read after its event is fsynced in the
/// spool, so a crash re-reads at most the last batch (the hub drops those
/// duplicates by auditID and stage) and never skips one.
final class AuditLogFollower: Service, Sendable {
    let path: String
    let spool: AuditSpool
    let positionFile: String
    let metrics: AgentMetrics
    let logger: Logger
    let pollInterval: Duration

    struct Position: Codable, Equatable {
        var inode: UInt64
        var offset: Int64
        /// The file's first bytes once read: a copy-truncated file rewritten past our
        /// offset before we looked is still recognised as new by its different start.
        var head: Data?
    }

    static let headSize = 256
    /// The log's reads and the position file's fsync run here, off the cooperative pool.
    private let io = DispatchQueue(label: "tether.audit-log-follower")

    init(path: String, spool: AuditSpool, stateDir: String, metrics: AgentMetrics, logger: Logger, pollInterval: Duration = .milliseconds(250)) {
        self.path = path
        self.spool = spool
        self.positionFile = stateDir + "/audit-log-position.json"
        self.metrics = metrics
        self.logger = logger
        self.pollInterval = pollInterval
    }

    func run() async throws {
        var position = loadPosition()
        var fd: Int32 = -1
        var inode: UInt64 = 0
        var pending = Data()
        // Set once a rotation is seen: the old file is read to its end once more
        // before moving on, so lines written to it before the new file appeared
        // (the empty read may have come just before them) are not lost.
        var rotationSeen = false
        defer { if fd >= 0 { close(fd) } }
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if fd < 0 {
                fd = open(path, O_RDONLY)
                if fd < 0 {
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.pollInterval) }
                    continue
                }
                inode = Self.inode(of: fd)
                if position?.inode != inode {
                    position = Position(inode: inode, offset: 0)
                }
                pending = Data()
                logger.info("following audit log", metadata: ["path": "\(path)", "offset": "\(position!.offset)"])
            }
            // Copy-truncate: the file is now shorter than where we were, or starts
            // with other bytes than when we read it.
            if Self.truncated(fd: fd, since: position!) {
                logger.info("audit log was truncated; reading it from the start", metadata: ["path": "\(path)"])
                position = Position(inode: inode, offset: 0)
                pending = Data()
            }
            let readFrom = position!.offset + Int64(pending.count)
            let chunk = try await io.run { [fd] in Self.read(fd: fd, at: readFrom, max: 4 << 20) }
            // Truncated and written again while we read: the chunk may come from the
            // middle of the new content. Drop it; the next pass starts the file over.
            if !chunk.isEmpty, Self.truncated(fd: fd, since: position!) { continue }
            if !chunk.isEmpty {
                pending.append(chunk)
                // Only whole lines; a partial last line waits for its newline.
                guard let lastNewline = pending.lastIndex(of: UInt8(ascii: "\n")) else { continue }
                let complete = pending[pending.startIndex...lastNewline]
                var events: [Data] = []
                for line in complete.split(separator: UInt8(ascii: "\n")) where !line.allSatisfy({ $0 == 32 || $0 == 13 }) {
                    if let event = Self.validEvent(Data(line)) {
                        events.append(event)
                    } else {
                        metrics.auditRejected("malformed")
                        logger.warning("skipping a line of the audit log that is not an audit event", metadata: ["offset": "\(position!.offset)"])
                    }
                }
                do {
                    try await spool.append(events)
                } catch is AuditSpool.Full {
                    // Wait for the forwarder to drain; the file keeps the events meanwhile.
                    metrics.auditRejected("spool-full")
                    pending = Data()
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(1)) }
                    continue
                }
                metrics.auditReceived.increment(by: Int64(events.count))
                position!.offset += Int64(complete.count)
                if position!.head == nil, position!.offset >= Int64(Self.headSize) {
                    position!.head = Self.read(fd: fd, at: 0, max: Self.headSize)
                }
                pending = Data(pending[(lastNewline + 1)...])
                let reached = position!
                try await io.run { try self.savePosition(reached) }
                continue
            }
            // At the end: if the path now names another file, the old one was renamed
            // away and we have read all of it; move to the new one.
            if let current = Self.inode(atPath: path), current != inode {
                if !rotationSeen {
                    rotationSeen = true
                    continue
                }
                rotationSeen = false
                logger.info("audit log was rotated; following the new file", metadata: ["path": "\(path)"])
                close(fd)
                fd = -1
                position = nil
                try await io.run { try self.savePosition(Position(inode: current, offset: 0)) }
                position = Position(inode: current, offset: 0)
                continue
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.pollInterval) }
        }
    }

    /// The line if it is one audit event: a JSON object (strict, no key twice, as the
    /// webhook requires) with a non-empty `auditID` and `stage`, a `stageTimestamp`,
    /// and `kind` absent or `Event`. One pass of `JSONScanner.outline`, no Foundation parse.
    static func validEvent(_ line: Data) -> Data? {
        guard let outline = try? JSONScanner.outline(line, array: nil, fields: []), outline.isObject, outline.duplicate == nil else { return nil }
        return JSONScanner.with(line) { scanner in
            func member(_ name: String) -> Range<Int>? { outline.members.first { $0.key == name }?.range }
            if let kind = member("kind"), scanner.string(kind) != "Event" { return nil }
            for field in ["auditID", "stage"] {
                guard let value = member(field), scanner.isString(value), value.count > 2 else { return nil }
            }
            guard let time = member("stageTimestamp"), scanner.isString(time) else { return nil }
            return line
        }
    }

    /// Whether the file was truncated (copy-truncate) since `position` was read:
    /// it is now shorter, or starts with other bytes.
    private static func truncated(fd: Int32, since position: Position) -> Bool {
        size(of: fd) < position.offset || (position.head.map { read(fd: fd, at: 0, max: $0.count) != $0 } ?? false)
    }

    private func loadPosition() -> Position? {
        guard let data = FileManager.default.contents(atPath: positionFile) else { return nil }
        return try? JSONDecoder().decode(Position.self, from: data)
    }

    private func savePosition(_ position: Position) throws {
        try AtomicFile.write(try JSONEncoder().encode(position), to: positionFile, mode: 0o600)
    }

    static func inode(of fd: Int32) -> UInt64 {
        var st = stat()
        return fstat(fd, &st) == 0 ? UInt64(st.st_ino) : 0
    }

    static func inode(atPath path: String) -> UInt64? {
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_ino) : nil
    }

    static func size(of fd: Int32) -> Int64 {
        var st = stat()
        return fstat(fd, &st) == 0 ? Int64(st.st_size) : 0
    }

    static func read(fd: Int32, at offset: Int64, max: Int) -> Data {
        var buffer = [UInt8](repeating: 0, count: max)
        let n = pread(fd, &buffer, max, off_t(offset))
        return n > 0 ? Data(buffer.prefix(n)) : Data()
    }
}
