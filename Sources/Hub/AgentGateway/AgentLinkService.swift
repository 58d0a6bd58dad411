import Foundation
import Logging
import GRPCCore
import Shared
import Synchronization

/// `tether.v1.AgentLink`: one long-lived channel per agent. Tracks presence,
/// heartbeats and renewals; closes the channel when the cluster is removed, when
/// the agent falls silent for three heartbeat intervals, or when the certificate the
/// channel was opened with (or last renewed on it) expires.
struct AgentLinkService: Tether_V1_AgentLink.SimpleServiceProtocol {
    let core: HubCore

    func connect(
        request: RPCAsyncSequence<Tether_V1_AgentMessage, any Error>,
        response: RPCWriter<Tether_V1_HubMessage>,
        context: ServerContext
    ) async throws {
        guard case .agent(let cluster, let serial, let certificate) = try AgentPeer(context: context, ca: core.ca.certificate) else {
            throw RPCError(code: .unauthenticated, message: "an agent certificate is required")
        }
        let interval = core.settings.heartbeatInterval
        let session = SessionState(certificateDeadline: certificate.notValidAfter)
        let (closeSignals, closer) = AsyncStream.makeStream(of: TetherError.self)
        let logger = {
            var logger = core.logger
            logger[metadataKey: "cluster"] = "\(cluster)"
            logger[metadataKey: "peer"] = "\(context.remotePeer)"
            return logger
        }()

        defer {
            if let id = session.registrationID {
                core.registry.unregister(cluster, id: id)
                try? core.database.recordHeartbeat(cluster, agentVersion: session.agentVersion, now: core.clock.now())
            }
        }
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await readMessages(request, response: response, cluster: cluster, serial: serial, session: session, closer: closer, logger: logger)
                }
                group.addTask {
                    try await watch(session, interval: interval)
                }
                group.addTask {
                    for await reason in closeSignals { throw reason.rpcError }
                }
                _ = try await group.next()
                group.cancelAll()
            }
            logger.info("agent disconnected", metadata: ["reason": "agent closed the channel"])
        } catch {
            logger.info("agent disconnected", metadata: ["reason": "\((error as? RPCError)?.message ?? "\(error)")"])
            throw error
        }
    }

    private func readMessages(
        _ request: RPCAsyncSequence<Tether_V1_AgentMessage, any Error>,
        response: RPCWriter<Tether_V1_HubMessage>,
        cluster: ClusterName, serial: String, session: SessionState,
        closer: AsyncStream<TetherError>.Continuation,
        logger: Logger
    ) async throws {
        var sawHello = false
        for try await message in request {
            session.heard()
            switch message.kind {
            case .hello(let hello):
                guard !sawHello else { continue }
                guard ProtocolVersion.supported.contains(hello.protocolVersion) else {
                    throw TetherError(.protocolMismatch,
                        "agent speaks protocol v\(hello.protocolVersion); this hub speaks v\(ProtocolVersion.supported.lowerBound)-v\(ProtocolVersion.supported.upperBound); upgrade the older side").rpcError
                }
                sawHello = true
                session.agentVersion = hello.agentVersion
                try core.database.recordHeartbeat(cluster, agentVersion: hello.agentVersion, now: core.clock.now())
                session.registrationID = core.registry.register(cluster) { reason in
                    closer.yield(reason)
                    closer.finish()
                }
                // A removal that raced this connection's interceptor check still wins.
                guard try core.database.standing(ofCertificate: serial) == .active else {
                    throw TetherError(.clusterRevoked, "the certificate for cluster '\(cluster)' was revoked").rpcError
                }
                logger.info("agent connected", metadata: ["agentVersion": "\(hello.agentVersion)"])
                var welcome = Tether_V1_Welcome()
                welcome.protocolVersion = ProtocolVersion.current
                welcome.hubVersion = TetherVersion.current
                welcome.clusterName = cluster.rawValue
                welcome.heartbeatIntervalSeconds = core.settings.heartbeatInterval.seconds
                try await response.write(.with { $0.welcome = welcome })
            case .heartbeat(let heartbeat) where sawHello:
                session.agentVersion = heartbeat.agentVersion
                try core.database.recordHeartbeat(cluster, agentVersion: heartbeat.agentVersion, now: core.clock.now())
                try await response.write(.with { $0.heartbeatAck = .with { $0.hubTimeUnix = core.clock.now().timeIntervalSince1970 } })
            case .renew(let renew) where sawHello:
                do {
                    let issued = try core.renew(cluster: cluster, csrPEM: renew.csrPem)
                    session.certificateDeadline = issued.notAfter
                    try await response.write(.with {
                        $0.renewed = .with {
                            $0.certificatePem = issued.pem
                            $0.caCertificatePem = (try? PKI.pem(core.ca.certificate)) ?? ""
                        }
                    })
                } catch let error as TetherError {
                    throw error.rpcError
                }
            default:
                throw RPCError(code: .failedPrecondition, message: "the first message on a channel must be Hello")
            }
        }
    }

    /// Ends the channel when the agent is silent for three intervals or its
    /// certificate runs out.
    private func watch(_ session: SessionState, interval: Duration) async throws {
        let limit = interval * 3
        while true {
            let silent = ContinuousClock.now - session.lastHeard
            if silent >= limit {
                throw RPCError(code: .deadlineExceeded, message: "no message for \(DurationParser.format(silent)) (3 heartbeat intervals); closing")
            }
            let untilExpiry = session.certificateDeadline.timeIntervalSince(core.clock.now())
            if untilExpiry <= 0 {
                throw TetherError(.certificateExpired, "the channel's certificate expired without renewal").rpcError
            }
            let wait = min(limit - silent, .milliseconds(Int64(untilExpiry * 1000) + 1))
            try await Task.sleep(for: wait)
        }
    }
}

/// What one channel's reader and watchdog share.
final class SessionState: Sendable {
    private struct State {
        var lastHeard = ContinuousClock.now
        var certificateDeadline: Date
        var agentVersion = ""
        var registrationID: UInt64?
    }

    private let state: Mutex<State>

    init(certificateDeadline: Date) {
        state = Mutex(State(certificateDeadline: certificateDeadline))
    }

    func heard() { state.withLock { $0.lastHeard = .now } }
    var lastHeard: ContinuousClock.Instant { state.withLock { $0.lastHeard } }

    var certificateDeadline: Date {
        get { state.withLock { $0.certificateDeadline } }
        set { state.withLock { $0.certificateDeadline = newValue } }
    }

    var agentVersion: String {
        get { state.withLock { $0.agentVersion } }
        set { state.withLock { $0.agentVersion = newValue } }
    }

    var registrationID: UInt64? {
        get { state.withLock { $0.registrationID } }
        set { state.withLock { $0.registrationID = newValue } }
    }
}
