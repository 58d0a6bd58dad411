import Foundation
import Shared

/// What the API server holds under a desired object's name, as far as Tether's right
/// to write it goes. Ownership is a proof read from the live object, never assumed
/// from the desired state: a bundle may name anything, including `cluster-admin`.
enum Ownership: Equatable, Sendable {
    /// Nothing there (404): Tether may create it, without `force`, so that whatever
    /// another manager creates in the meantime is never overwritten.
    case absent
    /// Carries `app.kubernetes.io/managed-by: tether` at this resourceVersion: Tether
    /// may force-apply it, with this resourceVersion as precondition, so the write
    /// lands on exactly the version that carried the label.
    case owned(resourceVersion: String)
    /// Exists without the label (someone else's, or the label was taken off): never written.
    case foreign

    init(live: [String: Any]?) {
        guard let live else {
            self = .absent
            return
        }
        let metadata = live["metadata"] as? [String: Any] ?? [:]
        guard KubernetesApplier.isOwned(live), let rv = metadata["resourceVersion"] as? String, !rv.isEmpty else {
            self = .foreign
            return
        }
        self = .owned(resourceVersion: rv)
    }
}

/// What writing one desired object did.
enum WriteOutcome: Equatable, Sendable {
    /// It was absent and now exists.
    case created
    /// It was Tether's and the apply changed nothing (no new resourceVersion).
    case unchanged
    /// It was Tether's and differed from the desired state: put back.
    case changed
    /// It is not Tether's: nothing was written. The message says why.
    case refused(String)
}

/// Writes desired objects only where the API server proves Tether may (`Ownership`).
/// Every write path of the reconciler goes through here: the applier, the drift
/// watcher's relist and its watch events.
struct OwnedWriter: Sendable {
    let client: KubeClient
    /// How often to look again when the object changes between the read and the write.
    var attempts = 3

    /// Makes the live object match `spec` if it is Tether's or absent. `seen` is the
    /// live object already in hand (a watch event's); nil reads it first.
    func write(_ spec: DesiredObjectSpec, resource: KubeResource, seen: [String: Any]? = nil) async throws -> WriteOutcome {
        let (_, namespace, name) = spec.summary
        var object = try JSONSerialization.jsonObject(with: spec.json) as? [String: Any] ?? [:]
        var live = seen
        if live == nil { live = try await client.get(resource, namespace: namespace, name: name) }
        for _ in 0..<attempts {
            let ownership = Ownership(live: live)
            do {
                switch ownership {
                case .foreign:
                    return .refused(Self.foreignMessage(spec.key))
                case .absent:
                    var metadata = object["metadata"] as? [String: Any] ?? [:]
                    metadata["resourceVersion"] = nil
                    object["metadata"] = metadata
                    _ = try await client.apply(try ApplyPatchBody(object: object), resource: resource, namespace: namespace, name: name, force: false)
                    return .created
                case .owned(let resourceVersion):
                    var metadata = object["metadata"] as? [String: Any] ?? [:]
                    metadata["resourceVersion"] = resourceVersion
                    object["metadata"] = metadata
                    let applied = try await client.apply(try ApplyPatchBody(object: object), resource: resource, namespace: namespace, name: name, force: true)
                    let after = (applied["metadata"] as? [String: Any])?["resourceVersion"] as? String
                    return after == resourceVersion ? .unchanged : .changed
                }
            } catch let error as KubeAPIError where error.code == 409 || (error.code == 404 && ownership != .absent) {
                // Changed, created or deleted by someone else between our read and our
                // write: the precondition held and nothing was written. Read again. (A 404
                // on create is the namespace missing: that is the answer.)
                live = try await client.get(resource, namespace: namespace, name: name)
            }
        }
        // Not `.unavailable` (the API server out of reach, which stops a whole relist):
        // this one object is contended; the others go on.
        throw TetherError(.conflict, "\(spec.key) kept changing in the cluster while Tether applied it; trying again on the next change")
    }

    static func foreignMessage(_ key: String) -> String {
        "\(key) already exists and is not managed by Tether (no \(KubernetesApplier.managedByLabel)=tether label); not touching it"
    }
}
