import Foundation
import Shared

/// Keeps the agent's identity in a Secret in its own namespace
/// (`--identity-secret`), so a rescheduled pod keeps its identity. Written with
/// server-side apply as field manager `tether`, in one request.
struct SecretIdentityStore: IdentityStore {
    let client: KubeClient
    let namespace: String
    let name: String
    static let key = "identity.json"

    var location: String { "secret \(namespace)/\(name)" }

    func load() async throws -> AgentIdentity? {
        guard let secret = try await client.secretData(namespace: namespace, name: name) else { return nil }
        guard let data = secret[Self.key] else {
            throw TetherError(.storage, "\(location) exists but has no \(Self.key); delete it and enroll again with a new join token")
        }
        let identity: AgentIdentity
        do {
            identity = try JSONDecoder().decode(AgentIdentity.self, from: data)
            try identity.validate()
        } catch {
            throw TetherError(.storage, "\(location) holds an unusable identity (\(error)); delete it and enroll again with a new join token")
        }
        return identity
    }

    func save(_ identity: AgentIdentity) async throws {
        try await client.applySecret(namespace: namespace, name: name, data: [Self.key: try JSONEncoder().encode(identity)])
    }
}
