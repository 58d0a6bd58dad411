import NIOCore
import NIOSSL
import NIOTLS
import Synchronization

/// How long a new connection may take to prove itself, and how many may be
/// trying at once, on one listener.
///
/// A connection is *pending* from accept until its first bytes of application
/// data arrive (after the TLS handshake on a TLS listener). Without these
/// bounds, plain TCP connections and truncated ClientHellos stayed open forever
/// and each held a file descriptor and memory.
public struct ConnectionLimits: Sendable, Equatable {
    /// The TLS handshake must complete within this (a TLS listener only).
    public var handshakeTimeout: Duration
    /// After the handshake (or from accept, without TLS), the peer's first bytes
    /// must arrive within this.
    public var firstBytesTimeout: Duration
    /// At most this many pending connections; more are closed at accept.
    public var maxPending: Int

    public init(handshakeTimeout: Duration = .seconds(5), firstBytesTimeout: Duration = .seconds(10), maxPending: Int = 512) {
        self.handshakeTimeout = handshakeTimeout
        self.firstBytesTimeout = firstBytesTimeout
        self.maxPending = maxPending
    }

    /// The defaults: 5 s handshake, 10 s to the first bytes, 512 pending.
    public static let defaults = ConnectionLimits()
}

/// Why a connection was closed before it proved itself.
public enum ConnectionRefusal: String, Sendable, CaseIterable {
    /// The TLS handshake did not complete in time.
    case handshakeTimeout = "handshake-timeout"
    /// No application data arrived in time.
    case firstBytesTimeout = "first-bytes-timeout"
    /// Too many connections were already pending.
    case tooManyPending = "too-many-pending"
}

/// The shared state of one listener's guards: the pending count and a hook for
/// metrics and logs.
public final class ConnectionGuard: Sendable {
    public let limits: ConnectionLimits
    private let pendingCount = Atomic<Int>(0)
    private let onRefusal: @Sendable (ConnectionRefusal, String) -> Void
    private let onPendingChange: @Sendable (Int) -> Void

    /// `onRefusal` receives the reason and the peer's address for every
    /// connection closed by a limit; `onPendingChange` each change of the pending
    /// count (+1, -1: deltas, which add up right whatever thread reports them).
    public init(
        limits: ConnectionLimits = .defaults,
        onPendingChange: @escaping @Sendable (Int) -> Void = { _ in },
        onRefusal: @escaping @Sendable (ConnectionRefusal, String) -> Void = { _, _ in }
    ) {
        self.limits = limits
        self.onPendingChange = onPendingChange
        self.onRefusal = onRefusal
    }

    /// Connections accepted that have not yet sent application data.
    public var pending: Int { pendingCount.load(ordering: .relaxed) }

    /// A handler for one accepted connection. On a TLS listener it goes right
    /// after the TLS handler, so that it sees the handshake's completion and the
    /// first decrypted bytes; without TLS, first in the pipeline.
    public func handler(tls: Bool) -> ChannelHandler {
        ConnectionGuardHandler(guard: self, tls: tls)
    }

    /// Adds `handler(tls:)` to `channel` in the right place: after its
    /// `NIOSSLServerHandler` if it has one, else first.
    public func install(on channel: any Channel) throws {
        let pipeline = channel.pipeline.syncOperations
        if let ssl = try? pipeline.handler(type: NIOSSLServerHandler.self) {
            try pipeline.addHandler(handler(tls: true), position: .after(ssl))
        } else {
            try pipeline.addHandler(handler(tls: false), position: .first)
        }
    }

    fileprivate func admit() -> Bool {
        let now = pendingCount.wrappingAdd(1, ordering: .relaxed).newValue
        if now > limits.maxPending {
            pendingCount.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        onPendingChange(1)
        return true
    }

    fileprivate func release() {
        pendingCount.wrappingSubtract(1, ordering: .relaxed)
        onPendingChange(-1)
    }

    fileprivate func refused(_ why: ConnectionRefusal, peer: String) {
        onRefusal(why, peer)
    }
}

/// Enforces `ConnectionLimits` on one connection; lives on its event loop.
final class ConnectionGuardHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias InboundOut = NIOAny

    private enum State {
        case idle
        case handshaking(Scheduled<Void>)
        case awaitingBytes(Scheduled<Void>)
        case established
        case closed
    }

    private let `guard`: ConnectionGuard
    private let tls: Bool
    private var state = State.idle

    init(guard: ConnectionGuard, tls: Bool) {
        self.guard = `guard`
        self.tls = tls
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshaking(let deadline) = state, let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent {
            deadline.cancel()
            state = .awaitingBytes(schedule(context, after: self.guard.limits.firstBytesTimeout, .firstBytesTimeout))
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .awaitingBytes(let deadline) = state {
            deadline.cancel()
            state = .established
            self.guard.release()
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        finish()
    }

    private func start(_ context: ChannelHandlerContext) {
        guard case .idle = state else { return }
        guard self.guard.admit() else {
            state = .closed
            self.guard.refused(.tooManyPending, peer: Self.peer(context))
            context.close(promise: nil)
            return
        }
        state = tls
            ? .handshaking(schedule(context, after: self.guard.limits.handshakeTimeout, .handshakeTimeout))
            : .awaitingBytes(schedule(context, after: self.guard.limits.firstBytesTimeout, .firstBytesTimeout))
    }

    /// Leaves the pending set (if still in it) when the connection ends.
    private func finish() {
        switch state {
        case .handshaking(let deadline), .awaitingBytes(let deadline):
            deadline.cancel()
            self.guard.release()
        case .idle, .established, .closed:
            break
        }
        state = .closed
    }

    private func schedule(_ context: ChannelHandlerContext, after delay: Duration, _ why: ConnectionRefusal) -> Scheduled<Void> {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        return context.eventLoop.scheduleTask(in: TimeAmount(delay)) {
            let (handler, context) = loopBound.value
            handler.expire(context, why)
        }
    }

    private func expire(_ context: ChannelHandlerContext, _ why: ConnectionRefusal) {
        switch state {
        case .handshaking, .awaitingBytes:
            self.guard.release()
            state = .closed
            self.guard.refused(why, peer: Self.peer(context))
            context.close(promise: nil)
        case .idle, .established, .closed:
            break
        }
    }

    private static func peer(_ context: ChannelHandlerContext) -> String {
        context.channel.remoteAddress.map { "\($0)" } ?? "?"
    }
}
