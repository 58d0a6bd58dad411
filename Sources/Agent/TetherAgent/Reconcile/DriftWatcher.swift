import Foundation
import Logging
import ServiceLifecycle
import Shared

/// What the applier last made desired, shared with the drift watcher.
final class ReconcileState: Sendable {
    /// Object key (`Kind/name`, `Kind/namespace/name`) to its spec.
    let desired = Locked<[String: DesiredObjectSpec]>([:])
    /// Drift repairs, for the hub; kept while the channel is down.
    let driftReports = DriftReports()
}

/// Drift repairs waiting for the hub, kept across channels.
///
/// Not an `AsyncStream`: each channel's reader is cancelled when the channel
/// closes, and cancelling a stream's consumer finishes the stream for good, so
/// after the first reconnect no report was ever sent again (and the supervisor
/// read the ended reader as a failing part and re-dialled forever).
package final class DriftReports: Sendable {
    /// The newest reports kept while nobody takes them.
    static let limit = 1000
    private let pending = Locked<[AppliedResult]>([])
    private let changed = ChangeSignal()

    init() {}

    func add(_ results: [AppliedResult]) {
        pending.withLock { $0 = Array(($0 + results).suffix(Self.limit)) }
        changed.notify()
    }

    /// Waits for reports and takes them all; returns an empty list only when the
    /// task is cancelled (what was waiting stays for the next channel).
    func next() async -> [AppliedResult] {
        while !Task.isCancelled {
            let seen = changed.generation
            let taken = pending.withLock { all -> [AppliedResult] in
                defer { all = [] }
                return all
            }
            if !taken.isEmpty { return taken }
            await changed.wait(after: seen)
        }
        return []
    }
}

/// Watches every managed kind (objects labelled as Tether's) and puts back any
/// desired object that was edited or deleted by hand, reporting each repair. Every
/// write goes through `OwnedWriter`: an object missing from the labelled list, or
/// gone from the watch, is read first, re-created only if really absent, and left
/// alone (reported failed, every time it is looked at) if it exists without
/// Tether's label. The watch ends when the server says (its timeout, a restart, a
/// 410): then the watcher lists again, which also catches what changed meanwhile.
struct DriftWatcher: Service {
    let client: KubeClient
    let state: ReconcileState
    let logger: Logger
    var retryDelay: Duration = .seconds(1)

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                for resource in KubeResource.managed {
                    group.addTask { await watchLoop(resource) }
                }
            }
        }
    }

    private func watchLoop(_ resource: KubeResource) async {
        let selector = "\(KubernetesApplier.managedByLabel)=tether"
        defer { logger.trace("drift watch loop ended", metadata: ["kind": "\(resource.kind)"]) }
        while !Task.isCancelled {
            do {
                let (items, resourceVersion) = try await client.list(resource, labelSelector: selector)
                // Everything desired of this kind: what is listed may have been edited,
                // what is not listed was deleted, unlabelled, or never Tether's.
                let listed = Dictionary(items.map { (Self.key(resource, $0), $0) }, uniquingKeysWith: { a, _ in a })
                for key in state.desired.value.keys.sorted() where key.hasPrefix(resource.kind + "/") {
                    try await repair(key, seen: listed[key])
                }
                logger.trace("drift watch opening", metadata: ["kind": "\(resource.kind)"])
                try await client.watch(resource, resourceVersion: resourceVersion, labelSelector: selector) { event in
                    let key = Self.key(resource, event.object)
                    switch event.type {
                    case "MODIFIED":
                        try await repair(key, seen: event.object)
                    case "DELETED":
                        // Deleted, or its label taken off (it left the selector): read it again.
                        try await repair(key, seen: nil)
                    default:
                        break
                    }
                }
                logger.debug("watch ended by the server; listing again", metadata: ["kind": "\(resource.kind)"])
            } catch is CancellationError {
                return
            } catch let error as KubeAPIError where error.code == 410 {
                logger.debug("watch expired; listing again", metadata: ["kind": "\(resource.kind)", "error": "\(error)"])
                continue
            } catch {
                if Task.isCancelled { return }
                logger.warning("watch failed; retrying", metadata: ["kind": "\(resource.kind)", "error": "\(error)"])
                try? await Task.sleep(for: retryDelay)
            }
        }
    }

    /// Makes a desired object match again, if it is Tether's or absent, and reports
    /// what was done: drift put back, or a refusal. An API server out of reach is not
    /// the object's failure: it is thrown, and the loop lists again when it is back.
    private func repair(_ key: String, seen: [String: Any]?) async throws {
        guard let spec = state.desired.value[key] else { return }
        guard let resource = KubeResource.forKind(spec.summary.kind) else { return }
        let started = ContinuousClock.now
        var result: AppliedResult
        do {
            switch try await OwnedWriter(client: client).write(spec, resource: resource, seen: seen) {
            case .unchanged:
                return
            case .created:
                result = AppliedResult(bundle: spec.bundle, object: key, state: .drifted, message: "re-created after it was deleted in the cluster")
            case .changed:
                result = AppliedResult(bundle: spec.bundle, object: key, state: .drifted, message: "reverted a change made in the cluster")
            case .refused(let message):
                logger.warning("not repairing an object Tether does not own", metadata: ["object": "\(key)", "bundle": "\(spec.bundle)"])
                result = AppliedResult(bundle: spec.bundle, object: key, state: .failed, message: message)
            }
        } catch is CancellationError {
            throw CancellationError()  // shutting down: nothing to report
        } catch let error as TetherError where error.code == .unavailable {
            throw error
        } catch {
            logger.warning("cannot repair drift", metadata: ["object": "\(key)", "error": "\(error)"])
            result = AppliedResult(bundle: spec.bundle, object: key, state: .failed, message: "drift repair failed: \(error)")
        }
        if result.state == .drifted {
            // How long the object stayed wrong after the watch showed it (the compliance report's time to repair).
            let ms = Int(((ContinuousClock.now - started).seconds * 1000).rounded(.up))
            result.message = (result.message ?? "repaired drift") + " (repaired in \(ms) ms)"
            logger.notice("drift repaired", metadata: ["object": "\(key)", "bundle": "\(spec.bundle)", "action": "\(result.message ?? "")"])
        }
        state.driftReports.add([result])
    }

    static func key(_ resource: KubeResource, _ object: [String: Any]) -> String {
        let metadata = object["metadata"] as? [String: Any] ?? [:]
        let namespace = resource.namespaced ? metadata["namespace"] as? String : nil
        return ObjectKey(kind: resource.kind, namespace: namespace, name: metadata["name"] as? String ?? "?").description
    }
}
