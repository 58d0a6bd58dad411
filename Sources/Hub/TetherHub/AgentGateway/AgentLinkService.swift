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
        // One writer for the response stream; the reader and policy deliveries (straight
        // from `publish`, no task of their own) queue into it. A close from the registry
        // goes to the watchdog. Three tasks a channel (writer, reader, watchdog): at
        // 10,000 agents every task and wake-up counts.
        let (outbox, outboxWriter) = AsyncStream.makeStream(of: Tether_V1_HubMessage.self)
        let logger = {
            var logger = core.logger
            logger[metadataKey: "cluster"] = "\(cluster)"
            logger[metadataKey: "peer"] = "\(context.remotePeer)"
            return logger
        }()

        defer {
            if let id = session.registrationID {
                core.registry.unregister(cluster, id: id)
                // The agent's spare tunnels on this connection go with its channel.
                core.tunnels.closeSpares(cluster, peer: "\(context.remotePeer)")
                // Last seen at disconnect: in the next presence batch.
                core.presence.saw(cluster, agentVersion: session.agentVersion, at: core.clock.now())
                let action = Self.channelAction("disconnect", cluster)
                Task { await core.auditAfterResponse(action) }
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
                                           logger: logger)
                    // The agent half-closed: send what is already queued (a Welcome to a
                    // Hello that came just before the close), then end.
                    outboxWriter.finish()
                    return false
                }
                group.addTask {
                    try await watch(session, interval: interval)
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

    /// The audit record of a channel opening or closing (not waited for).
    static func channelAction(_ verb: String, _ cluster: ClusterName) -> HubAction {
        HubAction(verb: verb, resource: "agentchannels", name: cluster.rawValue, user: "agent:\(cluster)", code: 200, sourceIP: nil)
    }

    private func readMessages(
        _ request: RPCAsyncSequence<Tether_V1_AgentMessage, any Error>,
        outbox: AsyncStream<Tether_V1_HubMessage>.Continuation,
        cluster: ClusterName, serial: String, peer: String, session: SessionState,
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
                session.observedRevision = observedRevision
                core.presence.saw(cluster, agentVersion: agentVersion, at: core.clock.now())
                session.registrationID = core.registry.register(
                    cluster, stream: .link, peer: peer, certificateDeadline: { session.certificateDeadline }, close: { reason in
                    // The watchdog ends the channel at once, even while the writer
                    // waits on an agent that stopped reading.
                    session.close(reason)
                }, deliver: { state in
                    session.send(state, to: outbox)
                }, control: { message in
                    outbox.yield(Tether_V1_HubMessage(message))
                })
                // A removal that raced this connection's interceptor check still wins.
                guard try await core.database.standing(ofCertificate: serial) == .active else {
                    throw TetherError(.clusterRevoked, "the certificate for cluster '\(cluster)' was revoked").rpcError
                }
                // Opening and closing are in the audit log: the compliance report's
                // offline periods come from them.
                await core.auditAfterResponse(Self.channelAction("connect", cluster))
                logger.info("agent connected", metadata: ["agentVersion": "\(agentVersion)"])
                var welcome = Tether_V1_Welcome()
                welcome.protocolVersion = ProtocolVersion.current
                welcome.hubVersion = TetherVersion.current
                welcome.clusterName = cluster.rawValue
                welcome.heartbeatIntervalSeconds = core.settings.heartbeatInterval.seconds
                welcome.spareTunnels = UInt32(core.settings.spareTunnels)
                // Welcome first; then what the store has (if newer than the agent's), and
                // from then on each state `publish` hands over, newest only.
                session.welcome(.with { $0.welcome = welcome }, to: outbox)
                // The sessions live now and what they grant here: the agent removes
                // accounts and bindings that ended or changed while it was away.
                outbox.yield(Tether_V1_HubMessage(.liveSessions(try await core.liveGrants(on: cluster))))
                if let stored = try await core.database.desiredState(cluster.rawValue) { session.send(stored, to: outbox) }
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

    /// Ends the channel when the agent is silent for three intervals, its
    /// certificate runs out, or the registry closes it (removal, replacement, shutdown).
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
            if let reason = try await session.pause(for: wait) { throw reason.rpcError }
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
        /// The newest desired state published before Welcome was queued.
        var offered: DesiredState?
        var welcomed = false
        /// Set once the registry closes the channel.
        var closeReason: TetherError?
        /// The watchdog, while it pauses.
        var waiter: (id: UInt64, continuation: CheckedContinuation<TetherError?, any Error>)?
        var waiterID: UInt64 = 0
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

    /// Queues `desired` for the agent if it is newer than what the agent has or was
    /// sent; before Welcome, keeps the newest to send right after it. Under the lock,
    /// so two states racing in (the store's after Hello, one from `publish`) are
    /// queued in revision order and an older one never follows a newer.
    func send(_ desired: DesiredState, to outbox: AsyncStream<Tether_V1_HubMessage>.Continuation) {
        state.withLock { s in
            guard s.welcomed else {
                if desired.revision > s.offered?.revision ?? 0 { s.offered = desired }
                return
            }
            guard let observed = s.observedRevision, desired.revision > observed else { return }
            s.observedRevision = desired.revision
            outbox.yield(.with { $0.desired = Tether_V1_DesiredState(desired) })
        }
    }

    /// Ends the channel: wakes the watchdog with `reason`.
    func close(_ reason: TetherError) {
        let waiter = state.withLock { s -> CheckedContinuation<TetherError?, any Error>? in
            if s.closeReason == nil { s.closeReason = reason }
            defer { s.waiter = nil }
            return s.waiter?.continuation
        }
        waiter?.resume(returning: reason)
    }

    /// Waits `duration`, or less: returns the reason as soon as the channel is
    /// closed, and throws when the task is cancelled. A dispatch timer, not a task,
    /// so 10,000 idle channels cost no extra tasks.
    func pause(for duration: Duration) async throws -> TetherError? {
        let id = state.withLock { s -> UInt64 in
            s.waiterID += 1
            return s.waiterID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<TetherError?, any Error>) in
                let immediate = state.withLock { s -> Result<TetherError?, any Error>? in
                    if let reason = s.closeReason { return .success(reason) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    s.waiter = (id, continuation)
                    return nil
                }
                if let immediate { continuation.resume(with: immediate); return }
                DispatchQueue.global().asyncAfter(deadline: .now() + duration.seconds) { [self] in
                    resumeWaiter(id, with: .success(nil))
                }
            }
        } onCancel: {
            resumeWaiter(id, with: .failure(CancellationError()))
        }
    }

    private func resumeWaiter(_ id: UInt64, with result: Result<TetherError?, any Error>) {
        let waiter = state.withLock { s -> CheckedContinuation<TetherError?, any Error>? in
            guard let waiter = s.waiter, waiter.id == id else { return nil }
            s.waiter = nil
            return waiter.continuation
        }
        waiter?.resume(with: result)
    }

    /// Queues the Welcome, then any state published while it was being prepared.
    func welcome(_ message: Tether_V1_HubMessage, to outbox: AsyncStream<Tether_V1_HubMessage>.Continuation) {
        let held = state.withLock { s -> DesiredState? in
            outbox.yield(message)
            s.welcomed = true
            defer { s.offered = nil }
            return s.offered
        }
        if let held { send(held, to: outbox) }
    }
}
