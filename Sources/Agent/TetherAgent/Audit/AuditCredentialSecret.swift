import Foundation
import Logging
import Shared

/// Keeps the audit webhook's credentials (the token the API server sends and the CA it
/// trusts: `audit-webhook-token`, `audit-ca.crt`, `audit-ca.key` in the state dir) in a
/// Secret in the agent's namespace as well (`--audit-secret`). A rescheduled pod with an
/// empty state dir then serves the webhook with the credentials the API server's
/// webhook kubeconfig already holds. Written with server-side apply as `tether`.
struct AuditCredentialSecret {
    let client: KubeClient
    let namespace: String
    let name: String

    static let files: [(key: String, mode: mode_t)] = [("audit-webhook-token", 0o600), ("audit-ca.crt", 0o644), ("audit-ca.key", 0o600)]

    var location: String { "secret \(namespace)/\(name)" }

    /// The Secret's credentials into the state dir (the Secret wins: it is what the
    /// API server was given), new ones made if neither has any, and the state dir's
    /// back into the Secret when they differ (first start, or a CA renewed near expiry).
    func sync(stateDir: String, logger: Logger) async throws {
        let existing = try await client.secretData(namespace: namespace, name: name)
        var stored: [String: Data] = [:]
        if let existing {
            for file in Self.files {
                guard let bytes = existing[file.key], !bytes.isEmpty else {
                    throw TetherError(.storage, "\(location) exists but has no \(file.key); delete it to make new webhook credentials (and give the API server the new `tether-agent audit-kubeconfig`)")
                }
                stored[file.key] = bytes
            }
            try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            for file in Self.files {
                try AtomicFile.write(stored[file.key]!, to: stateDir + "/" + file.key, mode: file.mode)
            }
        }
        // Makes the token and CA if missing; renews a CA within 30 days of expiry.
        _ = try AuditEndpoint.load(stateDir: stateDir, names: ["localhost"], certFile: nil, keyFile: nil)
        var current: [String: Data] = [:]
        for file in Self.files {
            guard let bytes = FileManager.default.contents(atPath: stateDir + "/" + file.key) else {
                throw TetherError(.storage, "cannot read \(stateDir)/\(file.key)")
            }
            current[file.key] = bytes
        }
        guard current != stored else { return }
        try await client.applySecret(namespace: namespace, name: name, data: current)
        logger.notice("audit webhook credentials saved", metadata: ["secret": "\(namespace)/\(name)", "new": "\(existing == nil)"])
    }
}
