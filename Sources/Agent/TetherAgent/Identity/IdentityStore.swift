import Foundation
import Shared

/// Where an agent keeps its identity between runs. Behind a protocol so that, in a
/// cluster, it can live in a Kubernetes Secret and survive pod rescheduling.
package protocol IdentityStore: Sendable {
    /// The stored identity, nil if there is none yet. Throws when something is
    /// stored but unreadable: a damaged identity is never silently replaced.
    func load() async throws -> AgentIdentity?
    /// Replaces the stored identity in one step.
    func save(_ identity: AgentIdentity) async throws
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


/// Keeps the identity in memory only: for benchmarks that run thousands of real
/// agents in one process. An agent using it enrolls again after a restart.
package final class MemoryIdentityStore: IdentityStore {
    private let identity = Locked<AgentIdentity?>(nil)

    package init() {}

    package func load() -> AgentIdentity? { identity.value }
    package func save(_ identity: AgentIdentity) { self.identity.value = identity }
    package var location: String { "memory" }
}
