import Foundation
import Logging
import GRPCCore
import HubStore
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
        // One writer for the response stream; the reader and the policy sender queue into it.
        let (outbox, outboxWriter) = AsyncStream.makeStream(of: Tether_V1_HubMessage.self)
        let policyChanged = ChangeSignal()
        let logger = {
            var logger = core.logger
            logger[metadataKey: "cluster"] = "\(cluster)"
            logger[metadataKey: "peer"] = "\(context.remotePeer)"
            return logger
        }()

        defer {
            if let id = session.registrationID {
                core.registry.unregister(cluster, id: id)
                // Last seen at disconnect: in the next presence batch.
                core.presence.saw(cluster, agentVersion: session.agentVersion, at: core.clock.now())
            }
        }
        do {
            try await withThrowingTaskGroup(of: Bool.self) { group in
                // true: the writer, which ends the channel once it has sent everything queued.
                group.addTask {
                    for await message in outbox { try await response.write(message) }
                    return true
                }
                group.addTask {
                    try await readMessages(request, outbox: outboxWriter, cluster: cluster, serial: serial, peer: "\(context.remotePeer)", session: session,
                                           closer: closer, policyChanged: policyChanged, logger: logger)
                    // The agent half-closed: send what is already queued (a Welcome to a
                    // Hello that came just before the close), then end.
                    outboxWriter.finish()
                    return false
                }
                group.addTask {
                    try await sendDesiredStates(cluster: cluster, session: session, changed: policyChanged, outbox: outboxWriter)
                    return false
                }
                group.addTask {
                    try await watch(session, interval: interval)
                    return false
                }
                group.addTask {
                    for await reason in closeSignals { throw reason.rpcError }
                    return false
                }
                while let writerDone = try await group.next(), !writerDone {}
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
        outbox: AsyncStream<Tether_V1_HubMessage>.Continuation,
        cluster: ClusterName, serial: String, peer: String, session: SessionState,
        closer: AsyncStream<TetherError>.Continuation,
        policyChanged: ChangeSignal,
        logger: Logger
    ) async throws {
        var machine = AgentSession()
        for try await message in request {
            session.heard()
            let incoming: AgentSession.Incoming
            do {
                incoming = try AgentSession.Incoming(proto: message)
            } catch let error as TetherError {
                throw error.rpcError
            }
            switch machine.receive(incoming) {
            case .none:
                continue
            case .close(let error):
                throw error.rpcError
            case .open(let agentVersion, let observedRevision):
                session.agentVersion = agentVersion
                core.presence.saw(cluster, agentVersion: agentVersion, at: core.clock.now())
                session.registrationID = core.registry.register(
                    cluster, stream: .link, peer: peer, certificateDeadline: { session.certificateDeadline }, close: { reason in
                    closer.yield(reason)
                    closer.finish()
                }, deliver: { state in
                    session.offer(state)
                    policyChanged.notify()
                })
                // A removal that raced this connection's interceptor check still wins.
                guard try await core.database.standing(ofCertificate: serial) == .active else {
                    throw TetherError(.clusterRevoked, "the certificate for cluster '\(cluster)' was revoked").rpcError
                }
                logger.info("agent connected", metadata: ["agentVersion": "\(agentVersion)"])
                var welcome = Tether_V1_Welcome()
                welcome.protocolVersion = ProtocolVersion.current
                welcome.hubVersion = TetherVersion.current
                welcome.clusterName = cluster.rawValue
                welcome.heartbeatIntervalSeconds = core.settings.heartbeatInterval.seconds
                outbox.yield(.with { $0.welcome = welcome })
                session.observedRevision = observedRevision
                policyChanged.notify()
            case .acknowledgeHeartbeat(let agentVersion):
                session.agentVersion = agentVersion
                core.presence.saw(cluster, agentVersion: agentVersion, at: core.clock.now())
                outbox.yield(.with { $0.heartbeatAck = .with { $0.hubTimeUnix = core.clock.now().timeIntervalSince1970 } })
            case .issueCertificate(let csr, let keyID):
                do {
                    let issued = try await core.renew(cluster: cluster, csrPEM: csr)
                    machine.issued(issued, keyID: keyID)
                    session.certificateDeadline = issued.notAfter
                    outbox.yield(renewed(issued))
                } catch let error as TetherError {
                    throw error.rpcError
                }
            case .sendCertificate(let issued):
                // The agent asked again for the key already signed: the same certificate.
                outbox.yield(renewed(issued))
            case .storeReport(let revision, let results):
                try await core.database.recordPolicyReport(cluster: cluster.rawValue, revision: revision, results: results, now: core.clock.now())
                for result in results where result.state == .drifted {
                    logger.notice("drift reverted in cluster", metadata: ["object": "\(result.object)", "bundle": "\(result.bundle)"])
                    // The status row keeps only the last drift; the audit log keeps every one.
                    await core.audit(HubAction(verb: "repair", resource: "policyobjects", name: result.object, user: "agent:\(cluster)", code: 200,
                                         message: "cluster \(cluster), bundle \(result.bundle): \(result.message ?? "repaired drift")"))
                }
            case .countUnknown(let firstTime):
                core.metrics.unknownAgentMessages.increment()
                if firstTime {
                    logger.notice("ignoring a message of a kind this hub does not know (newer agent?); counted in tether_agent_unknown_messages_total",
                                  metadata: ["agentVersion": "\(session.agentVersion)"])
                }
            }
        }
    }

    private func renewed(_ issued: IssuedCertificate) -> Tether_V1_HubMessage {
        .with {
            $0.renewed = .with {
                $0.certificatePem = issued.pem
                $0.caCertificatePem = (try? PKI.pem(core.ca.certificate)) ?? ""
            }
        }
    }

    /// Sends the cluster's desired state whenever it is newer than what the agent
    /// has (from its Hello, then from what was sent on this channel).
    private func sendDesiredStates(cluster: ClusterName, session: SessionState, changed: ChangeSignal,
                                   outbox: AsyncStream<Tether_V1_HubMessage>.Continuation) async throws {
        var readStore = true
        while !Task.isCancelled {
            let seen = changed.generation
            if let observed = session.observedRevision {
                // The store once, after Hello; from then on the states `publish` hands over.
                var desired = session.takeOffered()
                if readStore, let stored = try await core.database.desiredState(cluster.rawValue), stored.revision > desired?.revision ?? 0 {
                    desired = stored
                }
                readStore = false
                if let desired, desired.revision > observed {
                    outbox.yield(.with { $0.desired = Tether_V1_DesiredState(desired) })
                    session.observedRevision = desired.revision
                }
            }
            await changed.wait(after: seen)
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
        /// The newest revision the agent has or was sent on this channel.
        var observedRevision: UInt64?
        /// The newest desired state published for the cluster, not yet sent.
        var offered: DesiredState?
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

    var observedRevision: UInt64? {
        get { state.withLock { $0.observedRevision } }
        set { state.withLock { $0.observedRevision = newValue } }
    }

    /// Keeps `desired` to send unless a newer one is already waiting.
    func offer(_ desired: DesiredState) {
        state.withLock { s in
            if desired.revision > s.offered?.revision ?? 0 { s.offered = desired }
        }
    }

    func takeOffered() -> DesiredState? {
        state.withLock { s in
            defer { s.offered = nil }
            return s.offered
        }
    }
}
