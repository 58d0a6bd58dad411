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
        case .open, .none: return nil
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
    /// `Tunnel`: an agent answering an OpenTunnel. Its first frame names the tunnel;
    /// it is handed to the request waiting for it only if that request is for this
    /// agent's own cluster. Frames then flow both ways, each side waiting for the
    /// other to take a frame before sending the next.
    func tunnel(
        request: RPCAsyncSequence<Tether_V1_TunnelFrame, any Error>,
        response: RPCWriter<Tether_V1_TunnelFrame>,
        context: ServerContext
    ) async throws {
        guard case .agent(let cluster, _, _) = try AgentPeer(context: context, ca: core.ca.certificate) else {
            throw RPCError(code: .unauthenticated, message: "an agent certificate is required")
        }
        let fromAgent = AsyncThrowingChannel<TunnelFrame, any Error>()
        let toAgent = AsyncChannel<TunnelFrame>()
        let streams = TunnelStreams(fromAgent: fromAgent, toAgent: toAgent)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                var attached = false
                do {
                    for try await frame in request {
                        if !attached {
                            guard case .open(let open) = frame.kind else {
                                throw RPCError(code: .invalidArgument, message: "the first tunnel frame must be TunnelOpen")
                            }
                            guard core.tunnels.attach(open.id, cluster: cluster, streams) else {
                                throw RPCError(code: .notFound, message: "no request is waiting for tunnel \(open.id) of cluster \(cluster)")
                            }
                            attached = true
                            continue
                        }
                        if let converted = TunnelFrame(proto: frame) { try await fromAgent.send(converted) }
                    }
                    fromAgent.finish()
                } catch {
                    fromAgent.fail(error)
                    toAgent.finish()
                    throw error
                }
            }
            group.addTask {
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
