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

/// Audit events of proxied requests still being written. The proxy records a
/// request's event after its response has gone out, so a person's next request on
/// the same connection does not wait for the commit (an fsync) of the last one's.
/// Bounded: past `limit` in flight a request waits for its own write; shutdown
/// waits for all of them (`drained`), so a hub that stops cleanly loses none.
final class AuditBacklog: Sendable {
    private let state = Mutex<(inFlight: Int, waiters: [CheckedContinuation<Void, Never>])>((0, []))
    let limit: Int

    init(limit: Int = 10_000) { self.limit = limit }

    func reserve() -> Bool {
        state.withLock { s in
            guard s.inFlight < limit else { return false }
            s.inFlight += 1
            return true
        }
    }

    func release() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.inFlight -= 1
            guard s.inFlight == 0 else { return [] }
            defer { s.waiters.removeAll() }
            return s.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    var inFlight: Int { state.withLock { $0.inFlight } }

    /// Returns once nothing is in flight.
    func drained() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                guard s.inFlight > 0 else { return true }
                s.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }
}

/// Which person each just-in-time account name stands for (account name -> user).
final class JITPeople: Sendable {
    private let state = Mutex<(people: [String: String], loadedAt: ContinuousClock.Instant?)>(([:], nil))
    init() {}
    func add(account: String, user: String) { state.withLock { $0.people[account] = user } }
    func lookup(_ account: String) -> String? { state.withLock { $0.people[account] } }
    /// Whether a reload from the store is due (at most every 10 s).
    func reloadDue() -> Bool {
        state.withLock { s in
            guard let at = s.loadedAt, ContinuousClock.now - at < .seconds(10) else { s.loadedAt = .now; return true }
            return false
        }
    }
    func replace(_ people: [String: String]) { state.withLock { $0.people.merge(people) { _, new in new } } }
}

extension HubCore {
    /// Attributes the cluster's own audit events made with a person's just-in-time
    /// account to that person: the event (as stored and hashed) is unchanged; the
    /// person goes into its indexed acting-for user, so `audit query --user alice`
    /// finds what she did through the hub and what the cluster recorded of it.
    func attributed(_ events: [IndexedAuditEvent]) async throws -> [IndexedAuditEvent] {
        func account(_ event: IndexedAuditEvent) -> String? {
            guard event.impersonatedUser == nil, let user = event.user, user.hasPrefix("system:serviceaccount:"),
                  let name = user.split(separator: ":").last.map(String.init), JITAccountName.looksLikeOne(name) else { return nil }
            return name
        }
        let accounts = Set(events.compactMap(account))
        guard !accounts.isEmpty else { return events }
        if accounts.contains(where: { jitPeople.lookup($0) == nil }), jitPeople.reloadDue() {
            let sessions = try await database.sessions(now: clock.now(), includeEnded: true)
            jitPeople.replace(Dictionary(sessions.map { (JITAccountName.make(user: $0.user, session: $0.id), $0.user) }) { a, _ in a })
        }
        return events.map { event in
            guard let name = account(event), let person = jitPeople.lookup(name) else { return event }
            var attributed = event
            attributed.impersonatedUser = person
            return attributed
        }
    }

    /// A batch from a cluster's agent, checked and indexed, ready to store.
    struct PreparedAuditBatch: Sendable {
        var cluster: ClusterName
        var firstSequence: UInt64
        var events: [IndexedAuditEvent]
    }

    /// Stores a batch from a cluster's agent; returns the new acknowledged sequence.
    func ingestAudit(cluster: ClusterName, firstSequence: UInt64, events: [Data]) async throws -> UInt64 {
        try await storeAudit(try await prepareAudit(cluster: cluster, firstSequence: firstSequence, events: events))
    }

    /// Checks a batch's numbering and indexes its events (the CPU part of storing it,
    /// which the audit stream runs for the next batch while the last one commits).
    func prepareAudit(cluster: ClusterName, firstSequence: UInt64, events: [Data]) async throws -> PreparedAuditBatch {
        // The sequence comes from the agent: every number of the batch must fit
        // the store's signed 64-bit integers before any arithmetic on it.
        guard firstSequence >= 1, firstSequence <= UInt64(Int64.max) - UInt64(events.count) else {
            throw TetherError(.invalidArgument, "audit batch numbered from \(firstSequence): sequences run from 1 to \(Int64.max)")
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
        return PreparedAuditBatch(cluster: cluster, firstSequence: firstSequence, events: try await attributed(indexed))
    }

    /// Stores a prepared batch in one transaction; returns the new acknowledged sequence.
    func storeAudit(_ batch: PreparedAuditBatch) async throws -> UInt64 {
        if auditIngestFaults.take() {
            throw TetherError(.storage, "the audit store refused the batch (a fault injected by a test)")
        }
        let acked = try await database.ingestAudit(cluster: batch.cluster.rawValue, firstSequence: batch.firstSequence,
                                                   events: batch.events, now: clock.now())
        metrics.auditEventsStored.increment(by: Int64(batch.events.count))
        return acked
    }

    func auditAcknowledged(_ cluster: ClusterName) async throws -> UInt64 {
        try await database.auditAcknowledged(cluster.rawValue)
    }

    /// Records one of the hub's own actions in the audit log, as an
    /// audit.k8s.io/v1 Event of cluster `hub`. Failures are logged, never thrown:
    /// the action itself already happened. Awaited by callers, so an action is in
    /// the log before the caller answers.
    /// Records `action` without waiting for its commit (see `AuditBacklog`); waits
    /// only when the backlog is full.
    func auditAfterResponse(_ action: HubAction) async {
        guard auditBacklog.reserve() else { return await audit(action) }
        Task {
            await self.audit(action)
            self.auditBacklog.release()
        }
    }

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
        var objectRef: [(String, CanonicalJSON.Value)] = [("resource", .string(action.resource)), ("apiGroup", .string(action.apiGroup ?? "tether.dev"))]
        if let name = action.name { objectRef.append(("name", .string(name))) }
        if let namespace = action.namespace { objectRef.append(("namespace", .string(namespace))) }
        if action.apiGroup == nil { objectRef.append(("apiVersion", "v1")) }
        var user: [(String, CanonicalJSON.Value)] = [("username", .string(action.user))]
        if let groups = action.groups { user.append(("groups", .array(groups.map { .string($0) }))) }
        var event: [(String, CanonicalJSON.Value)] = [
            ("kind", "Event"), ("apiVersion", "audit.k8s.io/v1"), ("level", "Metadata"),
            ("auditID", .string(UUID().uuidString.lowercased())), ("stage", "ResponseComplete"),
            ("verb", .string(action.verb)), ("user", .object(user)), ("objectRef", .object(objectRef)),
            ("responseStatus", ["code": .int(action.code)]),
            ("requestReceivedTimestamp", .string(time)), ("stageTimestamp", .string(time)),
            ("userAgent", .string("tether-hub/\(TetherVersion.current)")),
        ]
        if let ip = action.sourceIP { event.append(("sourceIPs", [.string(ip)])) }
        var annotations = action.annotations
        if let message = action.message { annotations["tether.dev/message"] = message }
        if !annotations.isEmpty { event.append(("annotations", .strings(annotations))) }
        return try IndexedAuditEvent(raw: try CanonicalJSON.data(.object(event)))
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
    /// For a proxied Kubernetes request: the object's namespace and API group, the
    /// person's groups, and the session, cluster, latency and bytes as annotations.
    var namespace: String? = nil
    var apiGroup: String? = nil
    var groups: [String]? = nil
    var annotations: [String: String] = [:]
}
