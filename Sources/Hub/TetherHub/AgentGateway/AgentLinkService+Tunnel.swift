import AsyncAlgorithms
import Foundation
import GRPCCore
import HubStore
import NIOCore
import Shared

extension Tether_V1_OpenTunnel {
    init(_ request: TunnelRequest) {
        self.init()
        id = request.id
        method = request.method
        path = request.path
        headers = request.headers.map { header in .with { $0.name = header.name; $0.value = header.value } }
        upgrade = request.upgrade ?? ""
        bodyless = request.bodyless && request.upgrade == nil
        if let session = request.session {
            grant = Tether_V1_AccessGrant(session: session, grants: request.grants)
        } else {
            probe = true
        }
    }
}

extension Tether_V1_AccessGrant {
    init(session: SessionRecord, grants: AccessGrants) {
        self.init()
        user = session.user
        groups = session.groups
        sessionID = session.id
        sessionExpiresUnix = Int64(session.expiresAt.timeIntervalSince1970)
        clusterRoles = grants.clusterRoles.sorted()
        namespaces = grants.namespaces.keys.sorted().map { name in
            .with {
                $0.namespace = name
                $0.clusterRoles = grants.namespaces[name]!.clusterRoles.sorted()
                $0.roles = grants.namespaces[name]!.roles.sorted()
            }
        }
    }
}

extension Tether_V1_HubMessage {
    init(_ message: ControlMessage) {
        self.init()
        switch message {
        case .openTunnel(let request): openTunnel = Tether_V1_OpenTunnel(request)
        case .sessionsEnded(let ids): sessionsEnded = .with { $0.sessionIds = ids }
        case .liveSessions(let live): liveSessions = .with { $0.sessions = live.map { Tether_V1_AccessGrant(session: $0.session, grants: $0.grants) } }
        }
    }
}

extension TunnelFrame {
    init?(proto frame: Tether_V1_TunnelFrame) {
        switch frame.kind {
        case .body(let data): self = .body(ByteBuffer(bytes: data))
        case .end(let end): self = .end(error: end.error.isEmpty ? nil : end.error)
        case .response(let head): self = .response(status: Int(head.status), headers: head.headers.map { ($0.name, $0.value) })
        case .open, .request, .none: return nil
        }
    }

    var proto: Tether_V1_TunnelFrame {
        switch self {
        case .body(let buffer): .with { $0.body = Data(buffer: buffer) }
        case .end(let error): .with { $0.end = .with { $0.error = error ?? "" } }
        case .response(let status, let headers):
            .with { $0.response = .with { head in
                head.status = UInt32(status)
                head.headers = headers.map { h in .with { $0.name = h.name; $0.value = h.value } }
            } }
        }
    }
}

extension AgentLinkService {
    /// What the writer of a `Tunnel` RPC learns from its first frame.
    private enum TunnelStart: Sendable {
        /// Answers an OpenTunnel: the request already waits for its frames.
        case attached
        /// A spare claimed by a request: that request goes to the agent first.
        case claimed(TunnelRequest)
    }

    /// `Tunnel`: an agent answering an OpenTunnel, or opening a spare ahead of any
    /// request. Its first frame says which. An answer is handed to the request
    /// waiting for it only if that request is for this agent's own cluster; a spare
    /// waits in the broker, for this cluster only, until a request claims it (its
    /// first frame to the agent is then the request) or it is withdrawn (idle for
    /// `spareTunnelIdle`, the pool full, the channel gone). Frames then flow both
    /// ways, each side waiting for the other to take a frame before sending the next.
    func tunnel(
        request: RPCAsyncSequence<Tether_V1_TunnelFrame, any Error>,
        response: RPCWriter<Tether_V1_TunnelFrame>,
        context: ServerContext
    ) async throws {
        guard case .agent(let cluster, _, _) = try AgentPeer(context: context, ca: core.ca.certificate) else {
            throw RPCError(code: .unauthenticated, message: "an agent certificate is required")
        }
        let peer = "\(context.remotePeer)"
        let fromAgent = AsyncThrowingChannel<TunnelFrame, any Error>()
        let toAgent = AsyncChannel<TunnelFrame>()
        let streams = TunnelStreams(fromAgent: fromAgent, toAgent: toAgent)
        let (starts, start) = AsyncStream.makeStream(of: TunnelStart.self, bufferingPolicy: .bufferingNewest(1))
        let core = self.core
        let spareID = Locked<UInt64?>(nil)
        // Ends an unclaimed spare after its idle time; cancelled once claimed or over.
        let reaper = Locked<Task<Void, Never>?>(nil)
        defer {
            reaper.withLock { $0 }?.cancel()
            if let id = spareID.withLock({ $0 }) { core.tunnels.withdrawSpare(cluster, id: id) }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                var opened = false
                do {
                    for try await frame in request {
                        if !opened {
                            guard case .open(let open) = frame.kind else {
                                throw RPCError(code: .invalidArgument, message: "the first tunnel frame must be TunnelOpen")
                            }
                            opened = true
                            if open.spare {
                                guard let id = core.tunnels.offerSpare(cluster, peer: peer, limit: core.settings.spareTunnels, streams: streams, start: { claim in
                                    if let claim { start.yield(.claimed(claim)) }
                                    start.finish()
                                }) else {
                                    throw RPCError(code: .resourceExhausted, message: "cluster \(cluster) already holds \(core.settings.spareTunnels) spare tunnels")
                                }
                                spareID.withLock { $0 = id }
                                let idle = core.settings.spareTunnelIdle
                                reaper.withLock { $0 = Task {
                                    guard (try? await Task.sleep(for: idle)) != nil else { return }
                                    core.tunnels.withdrawSpare(cluster, id: id)
                                } }
                            } else {
                                guard core.tunnels.attach(open.id, cluster: cluster, streams) else {
                                    throw RPCError(code: .notFound, message: "no request is waiting for tunnel \(open.id) of cluster \(cluster)")
                                }
                                start.yield(.attached)
                                start.finish()
                            }
                            continue
                        }
                        if let converted = TunnelFrame(proto: frame) { try await fromAgent.send(converted) }
                    }
                    fromAgent.finish()
                } catch {
                    fromAgent.fail(error)
                    toAgent.finish()
                    start.finish()
                    throw error
                }
                // The agent ended its side before it was told anything: nothing to write.
                start.finish()
            }
            group.addTask {
                var first = starts.makeAsyncIterator()
                switch await first.next() {
                case .attached?: break
                case .claimed(let claim)?:
                    reaper.withLock { $0 }?.cancel()
                    try await response.write(.with { $0.request = Tether_V1_OpenTunnel(claim) })
                case nil:
                    // Withdrawn (or the agent's side ended first): the agent is told,
                    // ends its side, and the RPC ends.
                    toAgent.finish()
                    try? await response.write(.with { $0.end = .with { $0.error = "spare tunnel withdrawn" } })
                    throw RPCError(code: .unavailable, message: "spare tunnel withdrawn")
                }
                for await frame in toAgent {
                    try await response.write(frame.proto)
                    // The person went away: end the RPC, which cancels the agent's request.
                    if case .end(let error?) = frame { throw RPCError(code: .cancelled, message: error) }
                }
            }
            // Done when the agent has ended its side and the proxy stopped sending.
            try await group.waitForAll()
        }
    }
}
