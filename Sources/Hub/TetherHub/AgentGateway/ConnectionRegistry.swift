import Foundation
import HubStore
import Shared
import Synchronization

/// What the hub tells an agent on its channel besides policy.
enum ControlMessage: Sendable {
    case openTunnel(TunnelRequest)
    /// Delete these sessions' just-in-time accounts now.
    case sessionsEnded([String])
    /// Every live session with a grant on the cluster, and the grant: delete the
    /// accounts of any other and the bindings no longer granted.
    case liveSessions([(session: SessionRecord, grants: AccessGrants)])
}

/// One of the per-cluster streams an agent keeps open to the hub.
enum AgentStream: String, CaseIterable, Sendable {
    /// `Connect`: presence, heartbeats, policy, renewal.
    case link
    /// `StreamAudit`: the cluster's audit events.
    case audit
}

/// The table of open per-cluster streams, as a value: events in, the streams to
/// close out. `ConnectionRegistry` holds it under a lock and closes what it returns,
/// outside the lock. No sockets here.
///
/// One stream of each kind per cluster: a new one replaces the old (an agent that
/// restarted before the hub noticed its old connection died, or an audit stream
/// the agent restarted on its channel). A cluster is connected while its link is
/// open.
struct ConnectionTable {
    struct Registration {
        let id: UInt64
        let stream: AgentStream
        /// The connection's remote address: streams of one agent channel share it.
        let peer: String
        let close: @Sendable (TetherError) -> Void
        /// Hands the session the cluster's new desired state to send (links only).
        let deliver: @Sendable (DesiredState) -> Void
        /// Sends the agent a control message (links only).
        let control: @Sendable (ControlMessage) -> Void
        /// When the certificate the stream lives on runs out (as renewed on a link).
        let certificateDeadline: @Sendable () -> Date?
    }

    private(set) var clusters: [ClusterName: [AgentStream: Registration]] = [:]
    private var nextID: UInt64 = 1
    /// Links opened since start.
    private(set) var linksOpened = 0
    /// Clusters with an open link (kept, not counted, so a reconnect storm of
    /// thousands of agents stays linear).
    private(set) var linkCount = 0

    /// Adds a stream; returns its id and the stream of the same kind it replaces.
    mutating func register(
        _ cluster: ClusterName, stream: AgentStream, peer: String,
        close: @escaping @Sendable (TetherError) -> Void, deliver: @escaping @Sendable (DesiredState) -> Void,
        control: @escaping @Sendable (ControlMessage) -> Void = { _ in },
        certificateDeadline: @escaping @Sendable () -> Date?
    ) -> (id: UInt64, replaced: Registration?) {
        let id = nextID
        nextID += 1
        if stream == .link { linksOpened += 1 }
        let registration = Registration(id: id, stream: stream, peer: peer, close: close, deliver: deliver, control: control,
                                        certificateDeadline: certificateDeadline)
        let replaced = clusters[cluster, default: [:]].updateValue(registration, forKey: stream)
        if stream == .link, replaced == nil { linkCount += 1 }
        return (id, replaced)
    }

    /// Removes a stream if it is still the cluster's current one of its kind;
    /// returns which kind it was.
    mutating func unregister(_ cluster: ClusterName, id: UInt64) -> AgentStream? {
        guard let streams = clusters[cluster], let (kind, _) = streams.first(where: { $0.value.id == id }) else { return nil }
        clusters[cluster]![kind] = nil
        if clusters[cluster]!.isEmpty { clusters[cluster] = nil }
        if kind == .link { linkCount -= 1 }
        return kind
    }

    /// Forgets every stream of the cluster; returns them to be closed.
    mutating func removeAll(_ cluster: ClusterName) -> [Registration] {
        guard let streams = clusters.removeValue(forKey: cluster) else { return [] }
        if streams[.link] != nil { linkCount -= 1 }
        return Array(streams.values)
    }

    var all: [Registration] { clusters.values.flatMap(\.values) }

    func registration(_ cluster: ClusterName, _ stream: AgentStream) -> Registration? { clusters[cluster]?[stream] }
}

/// Which clusters have open streams right now, and how to close each one.
/// Every per-cluster stream (the link and the audit stream) is registered, so a
/// removal closes all of them. Synchronous, so graceful shutdown can close every
/// stream from its handler.
final class ConnectionRegistry: Sendable {
    typealias Session = ConnectionTable.Registration

    private let table = Mutex(ConnectionTable())
    private let onChange: @Sendable (Int) -> Void

    init(onChange: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.onChange = onChange
    }

    /// Adds a stream; returns its id for `unregister`. A stream of the same kind
    /// from the same cluster is closed: it was replaced.
    func register(
        _ cluster: ClusterName, stream: AgentStream = .link, peer: String = "",
        certificateDeadline: @escaping @Sendable () -> Date? = { nil },
        close: @escaping @Sendable (TetherError) -> Void, deliver: @escaping @Sendable (DesiredState) -> Void = { _ in },
        control: @escaping @Sendable (ControlMessage) -> Void = { _ in }
    ) -> UInt64 {
        let (id, previous, count) = table.withLock { t in
            let (id, previous) = t.register(cluster, stream: stream, peer: peer, close: close, deliver: deliver, control: control,
                                            certificateDeadline: certificateDeadline)
            return (id, previous, t.linkCount)
        }
        previous?.close(TetherError(.unavailable, "replaced by a newer \(stream.rawValue) stream from the same cluster"))
        if stream == .link { onChange(count) }
        return id
    }

    /// Removes a stream if it is still the cluster's current one of its kind.
    func unregister(_ cluster: ClusterName, id: UInt64) {
        let (kind, count) = table.withLock { t in (t.unregister(cluster, id: id), t.linkCount) }
        if kind == .link { onChange(count) }
    }

    /// Closes every open stream of the cluster with `reason`, and forgets them at
    /// once so the cluster no longer counts as connected while the RPCs unwind.
    func disconnect(_ cluster: ClusterName, reason: TetherError) {
        let (sessions, count) = table.withLock { t in (t.removeAll(cluster), t.linkCount) }
        guard !sessions.isEmpty else { return }
        for session in sessions { session.close(reason) }
        onChange(count)
    }

    /// Hands the cluster's link, if connected, its new desired state to send.
    func publish(_ cluster: ClusterName, _ state: DesiredState) {
        table.withLock { $0.registration(cluster, .link) }?.deliver(state)
    }

    /// Asks the cluster's link, if connected, to open a tunnel; false when there is none.
    func openTunnel(_ cluster: ClusterName, _ request: TunnelRequest) -> Bool {
        guard let link = table.withLock({ $0.registration(cluster, .link) }) else { return false }
        link.control(.openTunnel(request))
        return true
    }

    /// Sends one cluster's agent, if connected, a control message.
    @discardableResult
    func control(_ cluster: ClusterName, _ message: ControlMessage) -> Bool {
        guard let link = table.withLock({ $0.registration(cluster, .link) }) else { return false }
        link.control(message)
        return true
    }

    /// Sends every connected agent a control message.
    func broadcast(_ message: ControlMessage) {
        for link in table.withLock({ $0.all.filter { $0.stream == .link } }) { link.control(message) }
    }

    /// Closes every stream: graceful shutdown.
    func closeAll(reason: TetherError) {
        for session in table.withLock({ $0.all }) { session.close(reason) }
    }

    /// When the certificate of the cluster's link on connection `peer` runs out, as
    /// renewed on that link; nil if no link of the cluster is on that connection.
    func linkCertificateDeadline(_ cluster: ClusterName, peer: String) -> Date? {
        guard let link = table.withLock({ $0.registration(cluster, .link) }), link.peer == peer else { return nil }
        return link.certificateDeadline()
    }

    func isConnected(_ cluster: ClusterName) -> Bool { table.withLock { $0.registration(cluster, .link) != nil } }
    func isOpen(_ cluster: ClusterName, _ stream: AgentStream) -> Bool { table.withLock { $0.registration(cluster, stream) != nil } }
    var connected: Set<ClusterName> { table.withLock { t in Set(t.clusters.filter { $0.value[.link] != nil }.keys) } }
    var count: Int { table.withLock { $0.linkCount } }
    /// Links opened since start: a test reads it to prove a channel stayed up.
    var sessionsOpened: Int { table.withLock { $0.linksOpened } }
}
