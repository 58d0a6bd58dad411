import Foundation
import HubStore
import Shared
import Synchronization

/// Test hook: makes the next `HubCore.ingestAudit` calls fail before storing
/// anything, as a busy or failing database would, so tests can watch agents
/// recover. Nothing but tests arms it.
final class AuditIngestFaults: Sendable {
    private let state = Mutex((armed: 0, fired: 0))

    init() {}

    /// Refuses the next `count` batches.
    func refuseNext(_ count: Int = 1) { state.withLock { $0.armed += count } }

    /// Batches refused so far.
    var refused: Int { state.withLock { $0.fired } }

    /// Whether to refuse this batch (consumes one armed fault).
    func take() -> Bool {
        state.withLock { s in
            guard s.armed > 0 else { return false }
            s.armed -= 1
            s.fired += 1
            return true
        }
    }
}

extension HubCore {
    /// Stores a batch from a cluster's agent; returns the new acknowledged sequence.
    func ingestAudit(cluster: ClusterName, firstSequence: UInt64, events: [Data]) async throws -> UInt64 {
        // The sequence comes from the agent: every number of the batch must fit
        // the store's signed 64-bit integers before any arithmetic on it.
        guard firstSequence >= 1, firstSequence <= UInt64(Int64.max) - UInt64(events.count) else {
            throw TetherError(.invalidArgument, "audit batch numbered from \(firstSequence): sequences run from 1 to \(Int64.max)")
        }
        if auditIngestFaults.take() {
            throw TetherError(.storage, "the audit store refused the batch (a fault injected by a test)")
        }
        let indexed = events.enumerated().map { i, raw in
            do {
                return try IndexedAuditEvent(raw: raw)
            } catch {
                // Keep it anyway (nothing is dropped); index what we can.
                logger.warning("storing an audit event the hub cannot index", metadata: [
                    "cluster": "\(cluster)", "sequence": "\(firstSequence + UInt64(i))", "error": "\(error)"])
                return IndexedAuditEvent(unindexable: raw, sequence: firstSequence + UInt64(i), now: clock.now())
            }
        }
        let acked = try await database.ingestAudit(cluster: cluster.rawValue, firstSequence: firstSequence, events: indexed, now: clock.now())
        metrics.auditEventsStored.increment(by: Int64(events.count))
        return acked
    }

    func auditAcknowledged(_ cluster: ClusterName) async throws -> UInt64 {
        try await database.auditAcknowledged(cluster.rawValue)
    }

    /// Records one of the hub's own actions in the audit log, as an
    /// audit.k8s.io/v1 Event of cluster `hub`. Failures are logged, never thrown:
    /// the action itself already happened. Awaited by callers, so an action is in
    /// the log before the caller answers.
    func audit(_ action: HubAction) async {
        do {
            try await database.appendHubAudit(try auditEvent(action, at: clock.now()), now: clock.now())
        } catch {
            logger.error("cannot record hub action in the audit log", metadata: ["action": "\(action.verb) \(action.resource)", "error": "\(error)"])
        }
    }

    /// The audit event for one of the hub's own actions, for a store call that
    /// writes it in the same transaction as the change itself.
    func auditEvent(_ action: HubAction, at now: Date) throws -> IndexedAuditEvent {
        let time = AuditTime.format(now)
        var event: [String: Any] = [
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": UUID().uuidString.lowercased(), "stage": "ResponseComplete",
            "verb": action.verb, "user": ["username": action.user],
            "objectRef": ["resource": action.resource, "name": action.name, "apiGroup": "tether.dev", "apiVersion": "v1"]
                .compactMapValues { $0 },
            "responseStatus": ["code": action.code] as [String: Any],
            "requestReceivedTimestamp": time, "stageTimestamp": time,
            "userAgent": "tether-hub/\(TetherVersion.current)",
        ]
        if let ip = action.sourceIP { event["sourceIPs"] = [ip] }
        if let message = action.message { event["annotations"] = ["tether.dev/message": message] }
        let raw = try JSONSerialization.data(withJSONObject: event, options: [.sortedKeys, .withoutEscapingSlashes])
        return try IndexedAuditEvent(raw: raw)
    }
}

/// One of the hub's own actions, for its audit log.
struct HubAction: Sendable {
    var verb: String
    var resource: String
    var name: String?
    var user: String
    var code: Int
    var sourceIP: String?
    var message: String?
}
