import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Shared
import Synchronization
import X509

/// The agent's one outbound channel to the hub, kept up forever: enroll once if
/// there is no identity, then connect over mutual TLS, say Hello, send heartbeats,
/// renew the certificate on the channel at two thirds of its life, and reconnect with
/// capped, jittered backoff whenever the channel ends.
package final class HubLink: Service, Sendable {
    let store: any IdentityStore
    let joinString: JoinString?
    let logger: Logger
    let metrics: AgentMetrics
    let startedAt = ContinuousClock.now
    /// The hub's view of this agent, for readiness and tests.
    package let status = Locked(LinkStatus())
    /// What else runs over the channel while it is up (the audit forwarder).
    let participants: [any ChannelParticipant]
    /// Applies the desired states the hub sends.
    let applier: any DesiredStateApplier
    /// Carries people's requests that the hub tunnels to this cluster.
    let forwarder: any TunnelForwarder
    /// The channel's event loop as an executor: the hub connection lives there, and
    /// tunnels run their tasks there (see `runTunnel`).
    let loop: EventLoopTaskExecutor
    /// What renewal schedules by (virtual in tests).
    let clock: any AgentClock
    /// The key this process enrolls with, the same on every attempt (see `Enroller`).
    let enrollmentKey = P256.Signing.PrivateKey()

    package struct LinkStatus: Sendable {
        package var connected = false
        package var cluster: ClusterName?
        package var lastError: TetherError?
        package var renewals = 0
        package var channelsOpened = 0
        /// The desired-state revision last applied (told to the hub in Hello).
        package var observedRevision: UInt64 = 0
    }

    package init(store: any IdentityStore, joinString: JoinString?, logger: Logger, metrics: AgentMetrics,
         participants: [any ChannelParticipant] = [], applier: any DesiredStateApplier = NoKubernetesApplier(),
         forwarder: any TunnelForwarder = NoKubernetesForwarder(), clock: any AgentClock = SystemAgentClock(),
         loop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next()) {
        self.loop = EventLoopTaskExecutor(loop)
        self.participants = participants
        self.forwarder = forwarder
        self.clock = clock
        self.applier = applier
        self.store = store
        self.joinString = joinString
        self.logger = logger
        self.metrics = metrics
    }

    package func run() async throws {
        var backoff = Backoff()
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                let identity = try await identityForConnecting()
                status.withLock { $0.cluster = identity.cluster }
                if try await runChannel(identity) { backoff.reset() }
            } catch let error as TetherError {
                status.withLock { $0.lastError = error }
                switch error.code {
                case .tokenUnknown, .tokenUsed, .tokenExpired, .tokenRevoked, .caPinMismatch, .malformedJoinString,
                     .badCSR, .protocolMismatch, .storage:
                    // Retrying cannot fix these; exit so the operator (or kubelet) sees it.
                    logger.critical("cannot continue", metadata: ["reason": "\(error.code)", "error": "\(error.message)"])
                    throw error
                case .clusterRevoked:
                    logger.error("this cluster was removed at the hub and its certificate revoked; retrying at the slowest rate",
                                 metadata: ["error": "\(error.message)"])
                    backoff.exhaust()
                case .certificateExpired:
                    logger.error("\(error.message)")
                    backoff.exhaust()
                default:
                    logger.warning("hub channel failed", metadata: ["error": "\(error.message)"])
                }
            }
            status.withLock { $0.connected = false }
            metrics.connected.set(Int64(0))
            if Task.isShuttingDownGracefully { break }
            let delay = backoff.next()
            logger.info("reconnecting", metadata: ["in": "\(String(format: "%.1f", delay.seconds))s"])
            metrics.reconnects.increment()
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: delay) }
        }
        logger.info("hub link stopped")
    }

    /// The stored identity; enrolls first if there is none. An identity whose
    /// certificate expired while the agent was offline is replaced by enrolling
    /// again when a join token was given, and reported clearly otherwise.
    func identityForConnecting() async throws -> AgentIdentity {
        if let identity = try await store.load() {
            let notAfter = try identity.notValidAfter
            guard notAfter <= Date() else {
                if joinString != nil, status.withLock({ $0.channelsOpened == 0 }) {
                    logger.info("an identity is stored; ignoring the join token", metadata: ["identity": "\(store.location)"])
                }
                return identity
            }
            guard let joinString else {
                throw TetherError(.certificateExpired,
                    "this agent's certificate expired at \(notAfter.formatted(.iso8601)) while it was offline; it cannot reconnect. Create a new token (tether-hub token create --cluster \(identity.cluster)) and restart the agent with --join-token")
            }
            logger.warning("stored certificate expired while offline; enrolling again with the join token", metadata: ["expired": "\(notAfter)"])
            return try await enroll(joinString)
        }
        guard let joinString else {
            throw TetherError(.storage, "no identity in \(store.location) and no join token: pass --join-token (or TETHER_JOIN_TOKEN) from `tether-hub token create`")
        }
        return try await enroll(joinString)
    }

    private func enroll(_ join: JoinString) async throws -> AgentIdentity {
        let identity = try await cancelWhenGracefulShutdown {
            try await Enroller(logger: self.logger).enroll(with: join, key: self.enrollmentKey)
        }
        try await store.save(identity)
        logger.info("identity stored", metadata: ["identity": "\(store.location)"])
        return identity
    }

    /// One channel, from connect to close. Returns whether the hub welcomed us
    /// (a healthy channel resets the backoff).
    private func runChannel(_ identity: AgentIdentity) async throws -> Bool {
        let transport = try HTTP2ClientTransport.Posix(
            target: ResolvableTargets.hub(identity.hub),
            transportSecurity: TLSProfiles.agent(identity: identity),
            config: .defaults { config in
                // No gRPC compression on the channel: advertising it makes the hub keep
                // a zlib compressor (256 KiB) for every stream, 2.5 GiB at 10,000 agents.
                // Audit batches are compressed in the message instead (EventCompression).
                config.compression.algorithm = .none
                config.compression.enabledAlgorithms = .none
                config.connection.keepalive = .init(time: .seconds(30), timeout: .seconds(10), allowWithoutCalls: true)
            }, eventLoopGroup: loop.loop)
        let (outbox, outboxWriter) = AsyncStream.makeStream(of: Tether_V1_AgentMessage.self)
        let current = Locked(identity)
        var options = CallOptions.defaults
        options.waitForReady = false
        // The desired state can be large (up to WireLimits.maxDesiredStateBytes).
        // grpc-swift-nio-transport 2.9 limits what the client decodes by the
        // request limit, so both are set.
        options.maxRequestMessageBytes = WireLimits.maxMessageBytes
        options.maxResponseMessageBytes = WireLimits.maxMessageBytes
        outboxWriter.yield(.with {
            $0.hello = .with {
                $0.protocolVersion = ProtocolVersion.current
                $0.agentVersion = TetherVersion.current
                $0.uptimeSeconds = (ContinuousClock.now - startedAt).seconds
                $0.observedRevision = status.value.observedRevision
            }
        })
        do {
            return try await withGRPCClient(transport: transport) { client in
                try await withGracefulShutdownHandler {
                    try await Tether_V1_AgentLink.Client(wrapping: client).connect(
                        options: options,
                        requestProducer: { writer in
                            for await message in outbox { try await writer.write(message) }
                        },
                        onResponse: { response in
                            try await self.handle(response.messages, outbox: outboxWriter, identity: current, client: client)
                        })
                } onGracefulShutdown: {
                    // Half-close: the hub sees the agent leave cleanly and marks it offline at once.
                    outboxWriter.finish()
                }
            }
        } catch let error as RPCError {
            throw TetherError(fromHub: error)
        }
    }

    /// Reads the hub's messages; once welcomed, runs the channel's parts
    /// (heartbeats, policy, renewal, participants such as the audit forwarder) under
    /// supervision until the hub's stream ends or a part's failure closes the channel.
    private func handle(
        _ messages: RPCAsyncSequence<Tether_V1_HubMessage, any Error>,
        outbox: AsyncStream<Tether_V1_AgentMessage>.Continuation,
        identity: Locked<AgentIdentity>,
        client: GRPCClient<HTTP2ClientTransport.Posix>
    ) async throws -> Bool {
        let pendingKey = Locked<P256.Signing.PrivateKey?>(nil)
        let (desiredStates, desiredWriter) = AsyncStream.makeStream(of: Tether_V1_DesiredState.self, bufferingPolicy: .bufferingNewest(1))
        let (welcomes, welcomeWriter) = AsyncStream.makeStream(of: Tether_V1_Welcome.self, bufferingPolicy: .bufferingNewest(1))
        let (tunnels, tunnelWriter) = AsyncStream.makeStream(of: AccessMessage.self)
        let supervisor = Locked(ChannelSupervisor())
        return try await withThrowingTaskGroup(of: Void.self) { group in
            defer { group.cancelAll() }
            group.addTask {
                defer {
                    welcomeWriter.finish()
                    tunnelWriter.finish()
                }
                try await self.readMessages(messages, welcome: welcomeWriter, desired: desiredWriter, tunnels: tunnelWriter, pendingKey: pendingKey,
                                            identity: identity)
            }
            group.addTask { await self.runTunnels(tunnels, events: tunnelWriter, client: client) }
            var welcomed = false
            for await welcome in welcomes {
                welcomed = true
                let interval = Duration.milliseconds(Int64(max(welcome.heartbeatIntervalSeconds, 0.05) * 1000))
                status.withLock {
                    $0.connected = true
                    $0.lastError = nil
                    $0.channelsOpened += 1
                }
                metrics.connected.set(Int64(1))
                logger.notice("connected to hub", metadata: [
                    "cluster": "\(welcome.clusterName)", "hubVersion": "\(welcome.hubVersion)",
                    "heartbeat": "\(DurationParser.format(interval))"])
                group.addTask {
                    try await self.supervised(.heartbeat, supervisor) { try await self.sendHeartbeats(every: interval, outbox: outbox) }
                }
                group.addTask {
                    try await self.supervised(.policy, supervisor) { try await self.applyDesiredStates(desiredStates, outbox: outbox) }
                }
                if let drift = applier.driftReports {
                    group.addTask {
                        try await self.supervised(.policy, supervisor) { await self.forwardDrift(drift, outbox: outbox) }
                    }
                }
                for participant in participants {
                    group.addTask {
                        try await self.supervised(participant.part, supervisor) { try await participant.run(over: client) }
                    }
                }
                group.addTask {
                    try await self.supervised(.renewal, supervisor) {
                        try await self.renewWhenDue(identity: identity, pendingKey: pendingKey, retry: max(interval, Duration.seconds(1)), outbox: outbox)
                    }
                }
                break
            }
            // The first child to end ends the channel: the reader (the hub closed or
            // failed the stream) or a part whose failure calls for a re-dial.
            _ = try await group.next()
            return welcomed
        }
    }

    /// The hub's messages, until its stream ends: the first Welcome goes to
    /// `welcome`, desired states to the applier, renewed certificates are stored.
    private func readMessages(
        _ messages: RPCAsyncSequence<Tether_V1_HubMessage, any Error>,
        welcome: AsyncStream<Tether_V1_Welcome>.Continuation,
        desired: AsyncStream<Tether_V1_DesiredState>.Continuation,
        tunnels: AsyncStream<AccessMessage>.Continuation,
        pendingKey: Locked<P256.Signing.PrivateKey?>,
        identity: Locked<AgentIdentity>
    ) async throws {
        var welcomed = false
        for try await message in messages {
            switch message.kind {
            case .welcome(let first):
                guard !welcomed else { continue }
                welcomed = true
                welcome.yield(first)
                tunnels.yield(.spares(Int(min(first.spareTunnels, 64))))
            case .renewed(let renewed):
                guard let key = pendingKey.withLock({ $0 }) else { continue }
                try await acceptRenewal(renewed, key: key, identity: identity)
                pendingKey.withLock { $0 = nil }
            case .desired(let state):
                // Only the newest matters: a later revision replaces one not yet applied.
                desired.yield(state)
            case .openTunnel(let open):
                tunnels.yield(.open(open))
            case .sessionsEnded(let ended):
                tunnels.yield(.ended(Set(ended.sessionIds)))
            case .liveSessions(let live):
                tunnels.yield(.live(live.sessions.map(PersonGrant.init(proto:))))
            case .heartbeatAck, .none:
                continue
            }
        }
    }

    /// Runs one part of the channel and carries out what `ChannelSupervisor`
    /// decides whenever it stops while the channel is up: every stop is logged and
    /// counted in `tether_agent_channel_restarts_total{part}`, then the part is run
    /// again after a backoff, or this throws to close the channel for a re-dial.
    /// A stop because the channel is going down (cancellation) is not a failure.
    private func supervised(
        _ part: ChannelPart, _ supervisor: Locked<ChannelSupervisor>, _ body: @Sendable () async throws -> Void
    ) async throws {
        while true {
            let started = ContinuousClock.now
            let failure: String
            var fromHub = true
            do {
                try await body()
                failure = "it ended while the channel was up"
            } catch {
                if Task.isCancelled { throw CancellationError() }
                (failure, fromHub) = Self.classify(error)
            }
            try Task.checkCancellation()
            let ran = ContinuousClock.now - started
            let action = supervisor.withLock { $0.partStopped(part, after: ran, fromHub: fromHub) }
            metrics.channelPartFailed(part)
            switch action {
            case .restart(_, let delay):
                logger.warning("channel part failed; restarting it", metadata: [
                    "part": "\(part.rawValue)", "error": "\(failure)", "ranFor": "\(DurationParser.format(ran))",
                    "restartIn": "\(String(format: "%.1f", delay.seconds))s"])
                try await Task.sleep(for: delay)
            case .closeChannel:
                logger.error("channel part failed; closing the channel to re-dial the hub", metadata: [
                    "part": "\(part.rawValue)", "error": "\(failure)", "ranFor": "\(DurationParser.format(ran))"])
                // .unavailable: the link's retry loop re-dials with backoff (never an exit).
                throw TetherError(.unavailable, "the channel's \(part.rawValue) part failed (\(failure)); re-dialing")
            }
        }
    }

    private static func describe(_ error: any Error) -> String {
        if let rpc = error as? RPCError { return "\(rpc.code): \(rpc.message)" }
        if let tether = error as? TetherError { return "\(tether.code): \(tether.message)" }
        return "\(error)"
    }

    /// Applies desired states one at a time, newest first, and reports each.
    private func applyDesiredStates(_ states: AsyncStream<Tether_V1_DesiredState>, outbox: AsyncStream<Tether_V1_AgentMessage>.Continuation) async throws {
        for await desired in states {
            let objects = desired.objects.map { DesiredObjectSpec(bundle: $0.bundle, json: $0.object) }
            logger.info("applying desired state", metadata: ["revision": "\(desired.revision)", "objects": "\(objects.count)"])
            let results = await applier.apply(revision: desired.revision, objects: objects)
            status.withLock { $0.observedRevision = desired.revision }
            outbox.yield(Self.report(revision: desired.revision, results))
        }
    }

    /// Reports drift repairs with the revision they belong to.
    /// Returns only when cancelled (the channel closed); reports not yet taken wait
    /// for the next channel.
    private func forwardDrift(_ reports: DriftReports, outbox: AsyncStream<Tether_V1_AgentMessage>.Continuation) async {
        while !Task.isCancelled {
            let results = await reports.next()
            guard !results.isEmpty else { return }
            outbox.yield(Self.report(revision: status.value.observedRevision, results))
        }
    }

    /// What a channel part's failure was, and whether it came from the hub.
    /// grpc-swift wraps what a request producer throws (a damaged spool, a full
    /// disk) as `RPCError(.unknown, "Write failed.", cause:)`: the cause is judged
    /// and described, so a local failure never counts as the hub's.
    static func classify(_ error: any Error) -> (description: String, fromHub: Bool) {
        let cause = (error as? RPCError)?.cause ?? error
        return (describe(cause), cause is RPCError)
    }

    static func report(revision: UInt64, _ results: [AppliedResult]) -> Tether_V1_AgentMessage {
        .with {
            $0.report = .with { report in
                report.revision = revision
                report.results = results.map { r in
                    .with {
                        $0.bundle = r.bundle
                        $0.object = r.object
                        $0.state = r.state.rawValue
                        $0.message = r.message ?? ""
                    }
                }
            }
        }
    }

    private func sendHeartbeats(every interval: Duration, outbox: AsyncStream<Tether_V1_AgentMessage>.Continuation) async throws {
        while true {
            try await Task.sleep(for: interval)
            outbox.yield(.with {
                $0.heartbeat = .with {
                    $0.agentVersion = TetherVersion.current
                    $0.uptimeSeconds = (ContinuousClock.now - startedAt).seconds
                }
            })
        }
    }

    /// At two thirds of the certificate's life, asks for a new one for a new key on
    /// this channel; asks again every `retry` for the same key until one arrives
    /// (`RenewalSchedule`).
    private func renewWhenDue(
        identity: Locked<AgentIdentity>, pendingKey: Locked<P256.Signing.PrivateKey?>, retry: Duration,
        outbox: AsyncStream<Tether_V1_AgentMessage>.Continuation
    ) async throws {
        var schedule = RenewalSchedule(retry: retry)
        // The certificate is parsed only when it changes, not at every wake-up
        // (10,000 idle agents in one benchmark process showed it).
        var known: (certificatePEM: String, renewalDate: Date)?
        while true {
            // The reader clears the pending key once it stored the answer: start over
            // from the new certificate.
            if schedule.askedAt != nil, pendingKey.value == nil { schedule.answered() }
            let renewalDate = try identity.withLock { current in
                if let known, known.certificatePEM == current.certificatePEM { return known.renewalDate }
                let date = try current.renewalDate()
                known = (current.certificatePEM, date)
                return date
            }
            switch schedule.next(now: clock.now(), renewalDate: renewalDate) {
            case .wait(let until):
                try await clock.sleep(until: min(until, clock.now().addingTimeInterval(retry.seconds)))
            case .request(let newKey):
                let key = pendingKey.withLock { pending in
                    if newKey || pending == nil { pending = P256.Signing.PrivateKey() }
                    return pending!
                }
                let csr = try PKI.makeCSR(key: key, commonName: "tether-agent")
                logger.info("renewing certificate", metadata: ["retry": "\(!newKey)"])
                outbox.yield(.with { $0.renew = .with { $0.csrPem = csr } })
            }
        }
    }

    private func acceptRenewal(_ renewed: Tether_V1_RenewResponse, key: P256.Signing.PrivateKey, identity: Locked<AgentIdentity>) async throws {
        var next = identity.withLock { $0 }
        next.privateKeyPEM = key.pemRepresentation
        next.certificatePEM = renewed.certificatePem
        do {
            try next.validate()
        } catch {
            logger.error("hub sent an unusable renewed certificate; keeping the current one", metadata: ["error": "\(error)"])
            return
        }
        try await store.save(next)
        identity.withLock { $0 = next }
        status.withLock { $0.renewals += 1 }
        metrics.renewals.increment()
        logger.info("certificate renewed", metadata: ["notAfter": "\((try? next.notValidAfter).map { "\($0)" } ?? "?")"])
    }
}
