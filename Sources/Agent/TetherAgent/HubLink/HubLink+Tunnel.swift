import AsyncAlgorithms
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import Shared
import Synchronization

extension TunnelRequest {
    init(proto open: Tether_V1_OpenTunnel) {
        self.init(id: open.id, method: open.method, path: open.path, headers: open.headers.map { ($0.name, $0.value) },
                  grant: PersonGrant(proto: open.grant), probe: open.probe, upgrade: open.upgrade.isEmpty ? nil : open.upgrade,
                  bodyless: open.bodyless && open.upgrade.isEmpty)
    }
}

extension PersonGrant {
    init(proto grant: Tether_V1_AccessGrant) {
        var namespaces: [String: (clusterRoles: [String], roles: [String])] = [:]
        for ns in grant.namespaces { namespaces[ns.namespace] = (ns.clusterRoles, ns.roles) }
        self.init(user: grant.user, groups: grant.groups, sessionID: grant.sessionID,
                  sessionExpires: Date(timeIntervalSince1970: TimeInterval(grant.sessionExpiresUnix)),
                  clusterRoles: grant.clusterRoles, namespaces: namespaces)
    }
}

extension HubLink {
    /// The largest request body carried (an apply of a large object; exec and
    /// port-forward stream instead).
    static let maxTunnelRequestBody = 16 << 20

    /// What the hub says about people's access on the channel, and what the
    /// tunnels report back to the loop that runs them.
    enum AccessMessage: Sendable {
        case open(Tether_V1_OpenTunnel)
        case ended(Set<String>)
        case live([PersonGrant])
        /// The Welcome's spare count: idle tunnels to keep open while people use the cluster.
        case spares(Int)
        /// A claimed spare's request is over, or a second old: another is opened in
        /// its place.
        case spareClaimed
        /// A spare ended unclaimed: the hub withdrew it (unused for its idle time)
        /// or it failed. It is not replaced until the cluster's next request.
        case spareEnded
    }

    /// Runs every tunnel the hub asks for, each on its own RPC, concurrently, and
    /// the deletions of ended sessions' accounts, for as long as the channel is up.
    /// While people use the cluster it keeps up to the hub's spare count of idle
    /// tunnels open: a request on one needs no OpenTunnel round trip and no new
    /// stream. Spares are opened on a request and replaced after they carry one;
    /// ones the hub ends for idleness are not, so an idle cluster holds none.
    func runTunnels(_ messages: AsyncStream<AccessMessage>, events: AsyncStream<AccessMessage>.Continuation,
                    client: GRPCClient<HTTP2ClientTransport.Posix>) async {
        let forwarder = self.forwarder
        var target = 0
        var spares = 0
        await withDiscardingTaskGroup { group in
            for await message in messages {
                var topUp = false
                switch message {
                case .open(let open):
                    group.addTask { await self.runTunnel(open, client: client) }
                    // People's requests, not the hub's probe, keep spares open.
                    topUp = !open.probe
                case .ended(let ids): group.addTask { await forwarder.sessionsEnded(ids) }
                case .live(let grants): group.addTask { await forwarder.liveSessions(grants) }
                case .spares(let count): target = count
                case .spareClaimed:
                    spares -= 1
                    topUp = true
                case .spareEnded: spares -= 1
                }
                while topUp && spares < target {
                    spares += 1
                    group.addTask {
                        let claimed = await self.runTunnel(nil, client: client) { events.yield(.spareClaimed) }
                        if !claimed { events.yield(.spareEnded) }
                    }
                }
                metrics.spareTunnels.set(Int64(spares))
            }
        }
        metrics.spareTunnels.set(Int64(0))
    }

    /// One tunnel: opens the RPC, reads the request body, forwards it, streams the
    /// response back. `asked` is the hub's OpenTunnel; nil opens a spare, which
    /// waits for its request as the hub's first frame on it (`claimed` is called
    /// once that request is over, or a second after it came, whichever is first).
    /// The hub ending the stream early (the person went away) cancels the request
    /// to the API server. Returns whether the tunnel carried a request.
    ///
    /// Its tasks run on the channel's event loop (`loop`), where the hub connection
    /// and the connections to the API server do their I/O: a frame read from the hub
    /// reaches the forward, and the API server's answer the hub, without waking
    /// another thread at each step (each wake-up costs tens to hundreds of
    /// microseconds on a small VM; a request used to take about a dozen).
    @discardableResult
    func runTunnel(_ asked: Tether_V1_OpenTunnel?, client: GRPCClient<HTTP2ClientTransport.Posix>,
                   claimed: @escaping @Sendable () -> Void = {}) async -> Bool {
        await withTaskExecutorPreference(loop) { await carryTunnel(asked, client: client, claimed: claimed) }
    }

    private func carryTunnel(_ asked: Tether_V1_OpenTunnel?, client: GRPCClient<HTTP2ClientTransport.Posix>,
                             claimed: @escaping @Sendable () -> Void) async -> Bool {
        let name = asked?.id ?? "spare-" + UUID().uuidString.lowercased()
        // The request: the OpenTunnel, or a spare's first frame from the hub.
        let (requests, requestWriter) = AsyncStream.makeStream(of: Tether_V1_OpenTunnel.self, bufferingPolicy: .bufferingNewest(1))
        if let asked {
            requestWriter.yield(asked)
            requestWriter.finish()
        }
        // Whether the hub's body frames are the request's (nil until it is known).
        let bodyless = Locked<Bool?>(asked.map { $0.bodyless && $0.upgrade.isEmpty })
        let carried = Locked<String?>(asked?.id)
        // A claimed spare is replaced once its request is over, or after a second
        // (a watch, an exec): opening the next spare is work on this same loop, kept
        // off the request's own path.
        let replace = Locked<(claimed: (@Sendable () -> Void)?, timer: Task<Void, Never>?)>((nil, nil))
        let replaceOnce: @Sendable () -> Void = {
            let (claimed, timer) = replace.withLock { state in
                defer { state = (nil, nil) }
                return state
            }
            timer?.cancel()
            claimed?()
        }
        defer { replaceOnce() }
        // No buffer: the hub's next frame is read from the RPC only once this one
        // is taken, so a slow API server holds the person back (HTTP/2 flow
        // control of this RPC), and nothing piles up in the agent.
        let fromHub = AsyncChannel<TunnelInput>()
        let forwarding = ForwardingTask()
        var options = CallOptions.defaults
        options.waitForReady = false
        options.maxRequestMessageBytes = WireLimits.maxMessageBytes
        options.maxResponseMessageBytes = WireLimits.maxMessageBytes
        do {
            try await Tether_V1_AgentLink.Client(wrapping: client).tunnel(
                options: options,
                requestProducer: { writer in
                    try await writer.write(.with { $0.open = .with { $0.id = name; $0.spare = asked == nil } })
                    var next = requests.makeAsyncIterator()
                    // A spare the hub withdrew: it ends without a request.
                    guard let open = await next.next() else { return }
                    let request = TunnelRequest(proto: open)
                    let forwarder = self.forwarder
                    let emit: @Sendable (TunnelEvent) async throws -> Void = { event in
                        switch event {
                        case .head(let status, let headers):
                            try await writer.write(.with {
                                $0.response = .with { head in
                                    head.status = UInt32(status)
                                    head.headers = headers.map { h in .with { $0.name = h.name; $0.value = h.value } }
                                }
                            })
                        case .body(let chunk):
                            try await writer.write(.with { $0.body = Data(buffer: chunk) })
                        }
                    }
                    let task: Task<Void, any Error>
                    if request.upgrade != nil {
                        // exec, attach, port-forward: sent at once; what the hub sends
                        // after the 101 is the connection's bytes.
                        task = Task(executorPreference: self.loop) { try await forwarder.upgrade(request, input: fromHub, emit: emit) }
                    } else if request.bodyless {
                        // Nothing to wait for: the request goes out as the tunnel opens
                        // (the hub's end frame, when it comes, is not needed).
                        fromHub.finish()
                        task = Task(executorPreference: self.loop) { try await forwarder.forward(request, body: ByteBuffer(), emit: emit) }
                    } else {
                        var body = ByteBuffer()
                        var complete = false
                        // Later frames (a cancellation) are not waited for: the channel ends here.
                        defer { fromHub.finish() }
                        loop: for await event in fromHub {
                            switch event {
                            case .body(let chunk):
                                guard body.readableBytes + chunk.readableBytes <= Self.maxTunnelRequestBody else {
                                    try await writer.write(.with { $0.end = .with { $0.error = "request body over \(ByteCount.format(Self.maxTunnelRequestBody))" } })
                                    return
                                }
                                body.writeImmutableBuffer(chunk)
                            case .end:
                                complete = true
                                break loop
                            case .cancelled: return
                            }
                        }
                        guard complete else { return }
                        let request = request
                        task = Task(executorPreference: self.loop) { try await forwarder.forward(request, body: body, emit: emit) }
                    }
                    forwarding.started(task)
                    do {
                        try await withTaskCancellationHandler { try await task.value } onCancel: { task.cancel() }
                        try await writer.write(.with { $0.end = .init() })
                    } catch {
                        if !forwarding.isCancelled {
                            self.logger.warning("tunneled request failed", metadata: ["tunnel": "\(open.id)", "error": "\(error)"])
                            try? await writer.write(.with { $0.end = .with { $0.error = "\(error)" } })
                        }
                    }
                    fromHub.finish()
                },
                onResponse: { response in
                    // The hub ended the stream: nothing more will be read.
                    defer {
                        requestWriter.finish()
                        fromHub.finish()
                        forwarding.cancel()
                    }
                    for try await frame in response.messages {
                        switch frame.kind {
                        case .request(let open):
                            // A spare's request, once: the hub's first frame on it.
                            guard asked == nil, carried.withLock({ $0 }) == nil else { continue }
                            bodyless.withLock { $0 = open.bodyless && open.upgrade.isEmpty }
                            carried.withLock { $0 = open.id }
                            let timer = Task(executorPreference: self.loop) {
                                guard (try? await Task.sleep(for: .seconds(1))) != nil else { return }
                                replaceOnce()
                            }
                            replace.withLock { $0 = (claimed, timer) }
                            requestWriter.yield(open)
                            requestWriter.finish()
                        case .body(let data):
                            if bodyless.withLock({ $0 }) == false { await fromHub.send(.body(ByteBuffer(bytes: data))) }
                        case .end(let end):
                            if end.error.isEmpty {
                                if bodyless.withLock({ $0 }) == false { await fromHub.send(.end) }
                            } else {
                                // The person went away (or the hub withdrew a spare): stop
                                // first (nobody may be reading).
                                forwarding.cancel()
                                fromHub.finish()
                                requestWriter.finish()
                            }
                        case .open, .response, .none: continue
                        }
                    }
                })
        } catch {
            logger.info("tunnel ended", metadata: ["tunnel": "\(carried.withLock { $0 } ?? name)", "reason": "\(error)"])
        }
        return carried.withLock { $0 } != nil
    }
}

/// The forward of one tunnel, cancellable from the side that reads the hub's frames,
/// also before it has started.
final class ForwardingTask: Sendable {
    private let state = Mutex<(task: Task<Void, any Error>?, cancelled: Bool)>((nil, false))

    func started(_ task: Task<Void, any Error>) {
        let cancelled = state.withLock { s -> Bool in
            s.task = task
            return s.cancelled
        }
        if cancelled { task.cancel() }
    }

    func cancel() {
        state.withLock { s -> Task<Void, any Error>? in
            s.cancelled = true
            return s.task
        }?.cancel()
    }

    var isCancelled: Bool { state.withLock { $0.cancelled } }
}
