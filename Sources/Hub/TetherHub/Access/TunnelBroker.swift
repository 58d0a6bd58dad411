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
}

/// Matches the agents' `Tunnel` RPCs to the requests waiting for them.
final class TunnelBroker: Sendable {
    private struct Waiter {
        let cluster: ClusterName
        let continuation: CheckedContinuation<TunnelStreams, any Error>
        /// Fails the wait at its deadline; cancelled once the wait ends otherwise.
        var timeout: Task<Void, Never>?
    }
    private let waiting = Mutex<[String: Waiter]>([:])

    init() {}

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
