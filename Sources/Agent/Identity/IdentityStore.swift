import Foundation
import Shared

/// Where an agent keeps its identity between runs. Behind a protocol so that, in a
/// cluster, it can live in a Kubernetes Secret and survive pod rescheduling.
protocol IdentityStore: Sendable {
    /// The stored identity, nil if there is none yet. Throws when something is
    /// stored but unreadable: a damaged identity is never silently replaced.
    func load() throws -> AgentIdentity?
    /// Replaces the stored identity in one step.
    func save(_ identity: AgentIdentity) throws
    /// Where it is, for log lines.
    var location: String { get }
}

/// Keeps the identity as one JSON file (mode 0600) in the state dir (mode 0700),
/// written atomically so key and certificate can never be torn apart.
struct FileIdentityStore: IdentityStore {
    let directory: String
    var path: String { directory + "/identity.json" }
    var location: String { path }

    func load() throws -> AgentIdentity? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let identity: AgentIdentity
        do {
            identity = try JSONDecoder().decode(AgentIdentity.self, from: data)
        } catch {
            throw TetherError(.storage, "identity file \(path) is unreadable (\(error)); move it aside and enroll again with a new join token")
        }
        do {
            try identity.validate()
        } catch let error as TetherError {
            throw TetherError(.storage, "identity file \(path) is inconsistent: \(error.message); move it aside and enroll again with a new join token")
        }
        return identity
    }

    func save(_ identity: AgentIdentity) throws {
        let fm = FileManager.default
        if !fm.fileExists(atPath: directory) {
            try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        try fm.setAttributes([.posixPermissions: 0o700], ofItemAtPath: directory)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try encoder.encode(identity), to: path, mode: 0o600)
    }
}

/// Atomic file replacement: temporary file, fsync, rename, fsync of the directory.
enum AtomicFile {
    static func write(_ data: Data, to path: String, mode: mode_t) throws {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode)
        guard fd >= 0 else { throw error("open", path) }
        var ok = data.withUnsafeBytes { raw -> Bool in
            var offset = 0
            while offset < raw.count {
                let n = Foundation.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
        ok = ok && fchmod(fd, mode) == 0 && fsync(fd) == 0
        close(fd)
        guard ok, rename(tmp, path) == 0 else {
            let failure = error("write", path)
            unlink(tmp)
            throw failure
        }
        let dir = open((path as NSString).deletingLastPathComponent, O_RDONLY)
        if dir >= 0 {
            fsync(dir)
            close(dir)
        }
    }

    private static func error(_ op: String, _ path: String) -> TetherError {
        TetherError(.storage, "cannot \(op) \(path): \(String(cString: strerror(errno)))")
    }
}
