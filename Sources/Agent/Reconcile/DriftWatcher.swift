import Foundation
import Logging
import ServiceLifecycle
import Shared

/// What the applier last made desired, shared with the drift watcher.
final class ReconcileState: Sendable {
    /// Object key (`Kind/name`, `Kind/namespace/name`) to its spec.
    let desired = Locked<[String: DesiredObjectSpec]>([:])
    /// Drift repairs, for the hub; kept while the channel is down.
    let driftReports: AsyncStream<[AppliedResult]>
    let driftWriter: AsyncStream<[AppliedResult]>.Continuation

    init() {
        (driftReports, driftWriter) = AsyncStream.makeStream(of: [AppliedResult].self, bufferingPolicy: .bufferingNewest(1000))
    }
}

/// Watches every managed kind (objects labelled as Tether's) and puts back any
/// desired object that was edited or deleted by hand, reporting each repair.
struct DriftWatcher: Service {
    let client: KubeClient
    let state: ReconcileState
    let logger: Logger
    var retryDelay: Duration = .seconds(1)

    func run() async throws {
        try? await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                for resource in KubeResource.managed {
                    group.addTask { await watchLoop(resource) }
                }
            }
        }
    }

    private func watchLoop(_ resource: KubeResource) async {
        let selector = "\(KubernetesApplier.managedByLabel)=tether"
        while !Task.isCancelled {
            do {
                let (items, resourceVersion) = try await client.list(resource, labelSelector: selector)
                // Desired objects of this kind that are gone (deleted while we were not watching).
                let present = Set(items.map { Self.key(resource, $0) })
                for (key, _) in state.desired.value where key.hasPrefix(resource.kind + "/") && !present.contains(key) {
                    await repair(key, observedResourceVersion: nil, deleted: true)
                }
                try await client.watch(resource, resourceVersion: resourceVersion, labelSelector: selector) { event in
                    let key = Self.key(resource, event.object)
                    switch event.type {
                    case "MODIFIED":
                        await repair(key, observedResourceVersion: (event.object["metadata"] as? [String: Any])?["resourceVersion"] as? String, deleted: false)
                    case "DELETED":
                        await repair(key, observedResourceVersion: nil, deleted: true)
                    default:
                        break
                    }
                }
            } catch is CancellationError {
                return
            } catch let error as KubeAPIError where error.code == 410 {
                continue  // too old: list again
            } catch {
                if Task.isCancelled { return }
                logger.warning("watch failed; retrying", metadata: ["kind": "\(resource.kind)", "error": "\(error)"])
                try? await Task.sleep(for: retryDelay)
            }
        }
    }

    /// Re-applies a desired object. If that changed it (its resourceVersion moved),
    /// someone had changed or deleted it: report the drift.
    private func repair(_ key: String, observedResourceVersion: String?, deleted: Bool) async {
        guard let spec = state.desired.value[key] else { return }
        let (kind, namespace, name) = spec.summary
        guard let resource = KubeResource.forKind(kind) else { return }
        do {
            let applied = try await client.apply(spec.json, resource: resource, namespace: namespace, name: name)
            let newVersion = (applied["metadata"] as? [String: Any])?["resourceVersion"] as? String
            guard deleted || newVersion != observedResourceVersion else { return }
            let what = deleted ? "re-created after it was deleted in the cluster" : "reverted a change made in the cluster"
            logger.notice("drift repaired", metadata: ["object": "\(key)", "bundle": "\(spec.bundle)", "action": "\(what)"])
            state.driftWriter.yield([AppliedResult(bundle: spec.bundle, object: key, state: .drifted, message: what)])
        } catch {
            logger.warning("cannot repair drift", metadata: ["object": "\(key)", "error": "\(error)"])
            state.driftWriter.yield([AppliedResult(bundle: spec.bundle, object: key, state: .failed, message: "drift repair failed: \(error)")])
        }
    }

    static func key(_ resource: KubeResource, _ object: [String: Any]) -> String {
        let metadata = object["metadata"] as? [String: Any] ?? [:]
        let namespace = resource.namespaced ? metadata["namespace"] as? String : nil
        return [resource.kind, namespace, metadata["name"] as? String ?? "?"].compactMap { $0 }.joined(separator: "/")
    }
}
