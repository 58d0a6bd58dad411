import AsyncAlgorithms
import Foundation
import HubStore
import NIOCore
import Shared
import Synchronization

/// One proxied request as the hub asks an agent to carry it (the gateway turns it
/// into `OpenTunnel`).
struct TunnelRequest: Sendable {
    var id: String
    var method: String
    /// Path and query as the API server sees them.
    var path: String
    var headers: [(name: String, value: String)]
    /// The person's session and grants; nil for the hub's own data-path probe,
    /// which the agent sends with no credential at all.
    var session: SessionRecord?
    var grants: AccessGrants
    /// The protocol of a connection upgrade (exec, attach, port-forward), or nil.
    var upgrade: String? = nil
    /// No request body: the agent sends it on without waiting for the end frame.
    var bodyless = false
}

/// A frame of a tunnel, either way (domain form of `TunnelFrame`).
enum TunnelFrame: Sendable {
    case body(ByteBuffer)
    /// No more body from this side; an error ends the tunnel as failed.
    case end(error: String?)
    case response(status: Int, headers: [(name: String, value: String)])
}

/// A tunnel once its agent opened the RPC: frames from the agent, and where to
/// send frames to it. Both are channels with no buffer: a sender waits until the
/// other side takes the frame, so a person who stops reading stops the agent's
/// stream (HTTP/2 flow control of that one RPC) and nothing piles up at the hub.
struct TunnelStreams: Sendable {
    let fromAgent: AsyncThrowingChannel<TunnelFrame, any Error>
    let toAgent: AsyncChannel<TunnelFrame>
    /// A spare: its agent knows `bodyless`, so a request without a body needs no
    /// end frame from the hub (agents from before `bodyless` wait for one).
    var isSpare = false
}

/// Matches the agents' `Tunnel` RPCs to the requests waiting for them, and keeps
/// the idle spare tunnels agents open ahead of requests.
final class TunnelBroker: Sendable {
    private struct Waiter {
        let cluster: ClusterName
        let continuation: CheckedContinuation<TunnelStreams, any Error>
        /// Fails the wait at its deadline; cancelled once the wait ends otherwise.
        var timeout: Task<Void, Never>?
    }
    private let waiting = Mutex<[String: Waiter]>([:])

    /// An idle spare `Tunnel` RPC: `start` hands it the request it carries (its
    /// first frame to the agent), or nil to withdraw it (its RPC then ends).
    struct Spare: Sendable {
        let id: UInt64
        /// The agent's TLS connection: a spare serves only while that connection
        /// carries the cluster's current channel.
        let peer: String
        let streams: TunnelStreams
        let start: @Sendable (TunnelRequest?) -> Void
    }
    private struct SparePool {
        var next: UInt64 = 1
        var byCluster: [ClusterName: [Spare]] = [:]
        /// Spares of all clusters (kept, not summed: it is read on every change).
        var total = 0
    }
    private let spares = Mutex(SparePool())
    /// Told the new total whenever spares are added or taken (the metric).
    private let onSpareCount: @Sendable (Int) -> Void

    init(onSpareCount: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.onSpareCount = onSpareCount
    }

    /// Idle spares kept for `cluster` now.
    func spareCount(_ cluster: ClusterName) -> Int { spares.withLock { $0.byCluster[cluster]?.count ?? 0 } }

    /// Idle spares for all clusters.
    var spareTotal: Int { spares.withLock { $0.total } }

    /// Changes the pool under its lock; `body` returns its result and how many
    /// spares it added (negative: took). The new total is reported.
    private func changingSpares<R>(_ body: (inout SparePool) -> (R, Int)) -> R {
        spares.withLock { pool in
            let (result, delta) = body(&pool)
            if delta != 0 {
                pool.total += delta
                onSpareCount(pool.total)
            }
            return result
        }
    }

    /// Keeps an agent's spare until a request claims it or it is withdrawn; nil when
    /// the cluster already has `limit` (the RPC is then ended).
    func offerSpare(_ cluster: ClusterName, peer: String, limit: Int, streams: TunnelStreams,
                    start: @escaping @Sendable (TunnelRequest?) -> Void) -> UInt64? {
        changingSpares { state -> (UInt64?, Int) in
            guard (state.byCluster[cluster]?.count ?? 0) < limit else { return (nil, 0) }
            let id = state.next
            state.next += 1
            state.byCluster[cluster, default: []].append(Spare(id: id, peer: peer, streams: streams, start: start))
            return (id, 1)
        }
    }

    /// Takes the spare out of the pool if a request has not claimed it yet, and
    /// ends it; false when it was already claimed (or gone).
    @discardableResult
    func withdrawSpare(_ cluster: ClusterName, id: UInt64) -> Bool {
        let spare = changingSpares { state -> (Spare?, Int) in
            guard let index = state.byCluster[cluster]?.firstIndex(where: { $0.id == id }) else { return (nil, 0) }
            let spare = state.byCluster[cluster]!.remove(at: index)
            if state.byCluster[cluster]!.isEmpty { state.byCluster[cluster] = nil }
            return (spare, -1)
        }
        spare?.start(nil)
        return spare != nil
    }

    /// Ends the spares a cluster's agent opened on the connection `peer` (the
    /// channel on it closed).
    func closeSpares(_ cluster: ClusterName, peer: String) {
        let closed = changingSpares { state -> ([Spare], Int) in
            let all = state.byCluster[cluster] ?? []
            let kept = all.filter { $0.peer != peer }
            state.byCluster[cluster] = kept.isEmpty ? nil : kept
            return (all.filter { $0.peer == peer }, kept.count - all.count)
        }
        for spare in closed { spare.start(nil) }
    }

    /// A spare for `request`, started (the request is its first frame to the agent),
    /// or nil when the cluster has none. Spares whose connection no longer carries
    /// the cluster's channel (`isCurrent` says) are ended on the way.
    func claimSpare(_ cluster: ClusterName, for request: TunnelRequest, isCurrent: (String) -> Bool) -> TunnelStreams? {
        while let spare = changingSpares({ state -> (Spare?, Int) in
            guard let spare = state.byCluster[cluster]?.popLast() else { return (nil, 0) }
            if state.byCluster[cluster]!.isEmpty { state.byCluster[cluster] = nil }
            return (spare, -1)
        }) {
            guard isCurrent(spare.peer) else {
                spare.start(nil)
                continue
            }
            spare.start(request)
            var streams = spare.streams
            streams.isSpare = true
            return streams
        }
        return nil
    }

    static func newID() -> String { UUID().uuidString.lowercased() }

    /// Asks for a tunnel (`ask` sends OpenTunnel; false: the cluster has no link) and
    /// waits up to `timeout` for the agent to open it.
    func open(_ id: String, cluster: ClusterName, timeout: Duration, ask: () -> Bool) async throws -> TunnelStreams {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<TunnelStreams, any Error>) in
                waiting.withLock { $0[id] = Waiter(cluster: cluster, continuation: continuation) }
                guard ask() else {
                    fail(id, TetherError(.unavailable, "cluster \(cluster) is offline"))
                    return
                }
                let timer = Task { [self] in
                    guard (try? await Task.sleep(for: timeout)) != nil else { return }
                    fail(id, TetherError(.unavailable, "the agent of cluster \(cluster) did not open the tunnel within \(DurationParser.format(timeout))"))
                }
                let stillWaiting = waiting.withLock { table -> Bool in
                    guard table[id] != nil else { return false }
                    table[id]!.timeout = timer
                    return true
                }
                if !stillWaiting { timer.cancel() }
            }
        } onCancel: {
            fail(id, CancellationError())
        }
    }

    private func fail(_ id: String, _ error: any Error) {
        guard let waiter = waiting.withLock({ $0.removeValue(forKey: id) }) else { return }
        waiter.timeout?.cancel()
        waiter.continuation.resume(throwing: error)
    }

    /// Hands an agent's RPC to the request waiting for it; false when none is
    /// (unknown id, timed out, or asked of another cluster: an agent cannot answer
    /// a tunnel meant for someone else's cluster).
    func attach(_ id: String, cluster: ClusterName, _ streams: TunnelStreams) -> Bool {
        let waiter = waiting.withLock { table -> Waiter? in
            guard let waiter = table[id], waiter.cluster == cluster else { return nil }
            table[id] = nil
            return waiter
        }
        waiter?.timeout?.cancel()
        waiter?.continuation.resume(returning: streams)
        return waiter != nil
    }
}

extension HubCore {
    /// A tunnel carrying `request` to `cluster`'s agent: one of its idle spares when
    /// it has one (no round trip on the channel, no new stream), else asked for with
    /// `OpenTunnel` and waited for up to 10 s. The hub's own probe never takes a
    /// spare (its requests would keep every cluster's spares alive).
    func openTunnel(_ request: TunnelRequest, to cluster: ClusterName) async throws -> TunnelStreams {
        let now = clock.now()
        let registry = self.registry
        if request.session != nil, let streams = tunnels.claimSpare(cluster, for: request, isCurrent: { peer in
            registry.linkCertificateDeadline(cluster, peer: peer).map { $0 > now } ?? false
        }) {
            metrics.tunnelsBySpare.increment()
            return streams
        }
        let streams = try await tunnels.open(request.id, cluster: cluster, timeout: .seconds(10)) { registry.openTunnel(cluster, request) }
        metrics.tunnelsAsked.increment()
        return streams
    }
}
