import Foundation
import Shared

/// One object of a desired state, as the agent receives it.
package struct DesiredObjectSpec: Sendable, Equatable {
    package var bundle: String
    /// The object, JSON, including Tether's ownership label and annotation.
    package var json: Data

    var summary: (kind: String, namespace: String?, name: String) {
        let object = (try? JSONSerialization.jsonObject(with: json)) as? [String: Any] ?? [:]
        let key = ObjectKey(object: object)
        return (key.kind.isEmpty ? "?" : key.kind, key.namespace, key.name.isEmpty ? "?" : key.name)
    }

    /// `Kind/name` or `Kind/namespace/name`, as the hub keys objects.
    package var key: String {
        let s = summary
        return ObjectKey(kind: s.kind, namespace: s.namespace, name: s.name).description
    }
}

/// What became of one object.
package struct AppliedResult: Sendable, Equatable {
    package typealias State = ObjectState
    package var bundle: String
    package var object: String
    package var state: State
    package var message: String?

    package init(bundle: String, object: String, state: State, message: String? = nil) {
        self.bundle = bundle
        self.object = object
        self.state = state
        self.message = message
    }
}

/// Makes the cluster match a desired state and says, object by object, what it did.
package protocol DesiredStateApplier: Sendable {
    func apply(revision: UInt64, objects: [DesiredObjectSpec]) async -> [AppliedResult]
    /// Repairs made between revisions (drift), to report to the hub.
    var driftReports: DriftReports? { get }
}

extension DesiredStateApplier {
    package var driftReports: DriftReports? { nil }
}

/// For an agent with no Kubernetes API configured (neither in-cluster nor
/// `--kubeconfig`): it keeps its channel and audit running and reports every object
/// as failed, with the reason, instead of exiting.
package struct NoKubernetesApplier: DesiredStateApplier {
    package init() {}

    static let reason = "no Kubernetes API configured"

    package func apply(revision: UInt64, objects: [DesiredObjectSpec]) async -> [AppliedResult] {
        objects.map { AppliedResult(bundle: $0.bundle, object: $0.key, state: .failed, message: Self.reason) }
    }
}
