import Foundation
import Logging
import Shared

/// Applies desired states to a real API server: server-side apply under field
/// manager `tether` in the hub's order (namespaces first, policies before their
/// bindings), then prunes objects Tether owns that are no longer desired. It never
/// changes or deletes an object that does not carry Tether's ownership label
/// (`OwnedWriter` decides, from the live object, before every write).
struct KubernetesApplier: DesiredStateApplier {
    static let managedByLabel = "app.kubernetes.io/managed-by"
    static let bundleAnnotation = "tether.dev/bundle"

    let client: KubeClient
    let logger: Logger
    let state: ReconcileState

    var driftReports: DriftReports? { state.driftReports }

    func apply(revision: UInt64, objects: [DesiredObjectSpec]) async -> [AppliedResult] {
        // The drift watcher repairs against this from now on (and ignores what is pruned below).
        state.desired.value = Dictionary(objects.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        var results: [AppliedResult] = []
        var desired = Set<String>()
        for object in objects {
            let kind = object.summary.kind
            desired.insert(object.key)
            guard let resource = KubeResource.forKind(kind), KubeResource.managed.contains(resource) else {
                results.append(AppliedResult(bundle: object.bundle, object: object.key, state: .failed, message: "kind \(kind) is not managed by Tether"))
                continue
            }
            do {
                switch try await OwnedWriter(client: client).write(object, resource: resource) {
                case .refused(let message):
                    results.append(AppliedResult(bundle: object.bundle, object: object.key, state: .failed, message: message))
                case .created, .changed, .unchanged:
                    results.append(AppliedResult(bundle: object.bundle, object: object.key, state: .applied))
                }
            } catch {
                // One object failing does not stop the others.
                results.append(AppliedResult(bundle: object.bundle, object: object.key, state: .failed, message: "\(error)"))
            }
        }
        // Prune what Tether owns and no longer wants, newest kinds first (bindings
        // before what they bind, namespaces last).
        for resource in KubeResource.managed.reversed() {
            do {
                let (items, _) = try await client.list(resource, labelSelector: "\(Self.managedByLabel)=tether")
                for item in items where Self.isOwned(item) {
                    let metadata = item["metadata"] as? [String: Any] ?? [:]
                    guard let name = metadata["name"] as? String else { continue }
                    let namespace = resource.namespaced ? metadata["namespace"] as? String : nil
                    let key = ObjectKey(kind: resource.kind, namespace: namespace, name: name).description
                    guard !desired.contains(key) else { continue }
                    let bundle = (metadata["annotations"] as? [String: Any])?[Self.bundleAnnotation] as? String ?? ""
                    do {
                        // Only the version seen labelled: a relabelled or re-created object is left alone.
                        try await client.delete(resource, namespace: namespace, name: name,
                                                uid: metadata["uid"] as? String, resourceVersion: metadata["resourceVersion"] as? String)
                        logger.info("pruned an object no bundle wants any more", metadata: ["object": "\(key)", "bundle": "\(bundle)"])
                        results.append(AppliedResult(bundle: bundle, object: key, state: .pruned))
                    } catch {
                        results.append(AppliedResult(bundle: bundle, object: key, state: .failed, message: "prune failed: \(error)"))
                    }
                }
            } catch {
                logger.warning("cannot list objects to prune", metadata: ["kind": "\(resource.kind)", "error": "\(error)"])
            }
        }
        return results
    }

    static func isOwned(_ object: [String: Any]) -> Bool {
        let metadata = object["metadata"] as? [String: Any] ?? [:]
        return (metadata["labels"] as? [String: Any])?[managedByLabel] as? String == "tether"
    }
}
