import Foundation
import Shared
import Synchronization

/// Which clusters have an open channel right now, and how to close each one.
///
/// One session per cluster: a new channel from the same cluster replaces the old
/// one (an agent that restarted before the hub noticed its old connection died).
/// Synchronous, so graceful shutdown can close every channel from its handler.
final class ConnectionRegistry: Sendable {
    struct Session {
        let id: UInt64
        let close: @Sendable (TetherError) -> Void
        /// Asks the session to send the cluster's latest desired state.
        let nudge: @Sendable () -> Void
    }

    private struct State {
        var sessions: [ClusterName: Session] = [:]
        var nextID: UInt64 = 1
        var opened = 0
    }

    private let state = Mutex(State())
    private let onChange: @Sendable (Int) -> Void

    init(onChange: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.onChange = onChange
    }

    /// Adds a session; returns its id for `unregister`.
    func register(_ cluster: ClusterName, close: @escaping @Sendable (TetherError) -> Void, nudge: @escaping @Sendable () -> Void = {}) -> UInt64 {
        let (id, previous, count) = state.withLock { s in
            let id = s.nextID
            s.nextID += 1
            s.opened += 1
            let previous = s.sessions[cluster]
            s.sessions[cluster] = Session(id: id, close: close, nudge: nudge)
            return (id, previous, s.sessions.count)
        }
        previous?.close(TetherError(.unavailable, "replaced by a newer connection from the same cluster"))
        onChange(count)
        return id
    }

    /// Removes a session if it is still the cluster's current one.
    func unregister(_ cluster: ClusterName, id: UInt64) {
        let count: Int? = state.withLock { s in
            guard s.sessions[cluster]?.id == id else { return nil }
            s.sessions[cluster] = nil
            return s.sessions.count
        }
        if let count { onChange(count) }
    }

    /// Closes the cluster's open channel, if any, with `reason`, and forgets it at
    /// once so the cluster no longer counts as connected while the RPC unwinds.
    func disconnect(_ cluster: ClusterName, reason: TetherError) {
        let (session, count) = state.withLock { s in
            let session = s.sessions.removeValue(forKey: cluster)
            return (session, s.sessions.count)
        }
        guard let session else { return }
        session.close(reason)
        onChange(count)
    }

    /// Nudges the cluster's session, if connected, to send its desired state.
    func nudge(_ cluster: ClusterName) {
        state.withLock { $0.sessions[cluster] }?.nudge()
    }

    /// Closes every channel: graceful shutdown.
    func closeAll(reason: TetherError) {
        for session in state.withLock({ Array($0.sessions.values) }) { session.close(reason) }
    }

    func isConnected(_ cluster: ClusterName) -> Bool { state.withLock { $0.sessions[cluster] != nil } }
    var connected: Set<ClusterName> { state.withLock { Set($0.sessions.keys) } }
    var count: Int { state.withLock { $0.sessions.count } }
    /// Sessions opened since start: a test reads it to prove a channel stayed up.
    var sessionsOpened: Int { state.withLock { $0.opened } }
}
