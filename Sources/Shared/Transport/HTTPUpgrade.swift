import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

// HTTP/1.1 connection upgrades (`Connection: Upgrade`) carried as raw bytes.
//
// kubectl's exec, attach and port-forward upgrade an HTTP/1.1 request to
// WebSocket (`v5.channel.k8s.io`, `SPDY/3.1+portforward.k8s.io`) or SPDY/3.1. A
// proxy that understood those protocols would have to speak each of them; this
// one does what kube-apiserver's own UpgradeAwareHandler does: it passes the
// request head on, hands the answer back, and after `101 Switching Protocols`
// copies bytes both ways without looking at them. An answer other than 101 (the
// upstream refused the upgrade) goes back with its status and body unchanged, so
// the client can fall back (kubectl retries a refused WebSocket with SPDY).

/// A Hummingbird HTTP/1.1 child channel whose upgrade requests are taken out of
/// the router and handed to `handler`, with the connection; every other request
/// goes to the router as before.
public struct UpgradingChannel<Base: ServerChildChannel>: ServerChildChannel {
    public typealias Value = Base.Value
    let base: Base
    let handler: UpgradeHandler

    public init(_ base: Base, handler: @escaping UpgradeHandler) {
        self.base = base
        self.handler = handler
    }

    public func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let handler = self.handler
        return base.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let pipeline = channel.pipeline.syncOperations
            let decoder = try pipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
            try pipeline.addHandler(UpgradeInterceptor(handler: handler), position: .after(decoder))
            return value
        }
    }

    public func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

/// Receives an upgrade request's head and the exchange to answer it on. It runs
/// for as long as the upgraded connection lasts; the connection is closed when it
/// returns.
public typealias UpgradeHandler = @Sendable (HTTPRequestHead, UpgradeExchange) async -> Void

extension HTTPHeaders {
    /// `Connection` lists `upgrade` and an `Upgrade` header names a protocol.
    public var upgradeProtocol: String? {
        let connection = self[canonicalForm: "connection"].map { $0.lowercased() }
        guard connection.contains("upgrade"), let upgrade = self.first(name: "upgrade"), !upgrade.isEmpty else { return nil }
        return upgrade
    }
}

/// Sits after the HTTP/1.1 decoder: passes ordinary requests on to Hummingbird and
/// keeps an upgrade request (head and end) for the upgrade handler.
final class UpgradeInterceptor: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State { case passing, intercepting(HTTPRequestHead), handed }
    private var state = State.passing
    let handler: UpgradeHandler

    init(handler: @escaping UpgradeHandler) { self.handler = handler }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch (state, part) {
        case (.passing, .head(let head)) where head.headers.upgradeProtocol != nil:
            state = .intercepting(head)
        case (.passing, _):
            context.fireChannelRead(data)
        case (.intercepting(let head), .end):
            state = .handed
            let exchange = UpgradeExchange(context: context, handler: self)
            let handler = self.handler
            Task {
                await handler(head, exchange)
                await exchange.close()
            }
        case (.intercepting, .body), (.intercepting, .head), (.handed, _):
            // An upgrade request carries no body; nothing more is read as HTTP.
            break
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        context.write(data, promise: promise)
    }
}

/// The answer side of one upgrade request: either a plain response (a refusal),
/// or `101` and then raw bytes both ways.
public final class UpgradeExchange: Sendable {
    private let loop: any EventLoop
    private let context: NIOLoopBound<ChannelHandlerContext>
    private let interceptor: NIOLoopBound<UpgradeInterceptor>
    private let channel: any Channel

    init(context: ChannelHandlerContext, handler: UpgradeInterceptor) {
        loop = context.eventLoop
        self.context = NIOLoopBound(context, eventLoop: context.eventLoop)
        interceptor = NIOLoopBound(handler, eventLoop: context.eventLoop)
        channel = context.channel
    }

    /// The peer's address, for the audit log.
    public var remoteAddress: SocketAddress? { channel.remoteAddress }

    /// Starts a plain response (no upgrade). Write its body with `write`; the
    /// connection closes when the handler returns.
    public func respond(status: HTTPResponseStatus, headers: HTTPHeaders) async throws {
        var headers = headers
        headers.remove(name: "content-length")
        headers.remove(name: "transfer-encoding")
        headers.replaceOrAdd(name: "connection", value: "close")
        let head = HTTPResponseHead(version: .http1_1, status: status, headers: headers)
        try await loop.flatSubmit { [context] in
            context.value.writeAndFlush(NIOAny(HTTPServerResponsePart.head(head)))
        }.get()
    }

    /// A chunk of a plain response's body.
    public func write(_ chunk: ByteBuffer) async throws {
        try await loop.flatSubmit { [context] in
            context.value.writeAndFlush(NIOAny(HTTPServerResponsePart.body(.byteBuffer(chunk))))
        }.get()
    }

    /// Ends a plain response.
    public func end() async throws {
        try await loop.flatSubmit { [context] in
            context.value.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)))
        }.get()
    }

    /// Sends `101 Switching Protocols` with `headers`, takes the HTTP/1.1 handlers
    /// out of the connection, and returns it as a raw byte stream.
    public func switchProtocols(headers: HTTPHeaders) async throws -> RawConnection {
        var headers = headers
        headers.remove(name: "content-length")
        headers.remove(name: "transfer-encoding")
        let head = HTTPResponseHead(version: .http1_1, status: .switchingProtocols, headers: headers)
        return try await loop.flatSubmit { [context, interceptor, channel] () -> EventLoopFuture<RawConnection> in
            let ctx = context.value
            return ctx.writeAndFlush(NIOAny(HTTPServerResponsePart.head(head))).flatMapThrowing {
                let pipeline = channel.pipeline.syncOperations
                let relay = RawRelayHandler()
                try pipeline.addHandler(relay, position: .after(interceptor.value))
                // Only the HTTP/1.1 codec and this interceptor leave; Hummingbird's
                // handlers stay behind the relay and see nothing more.
                pipeline.removeHandler(interceptor.value, promise: nil)
                pipeline.removeHandler(try pipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self), promise: nil)
                pipeline.removeHandler(try pipeline.handler(type: HTTPResponseEncoder.self), promise: nil)
                return RawConnection(relay: relay, channel: channel)
            }
        }.get()
    }

    func close() async {
        try? await channel.close(mode: .all)
    }
}

/// A connection after `101 Switching Protocols`: bytes in and out, read one chunk
/// at a time (nothing is read from the socket until asked for, so a slow reader
/// holds the peer back instead of filling memory).
public final class RawConnection: Sendable {
    private let relay: NIOLoopBound<RawRelayHandler>
    private let channel: any Channel

    init(relay: RawRelayHandler, channel: any Channel) {
        self.relay = NIOLoopBound(relay, eventLoop: channel.eventLoop)
        self.channel = channel
    }

    /// The next bytes the peer sent; nil once it closed.
    public func read() async throws -> ByteBuffer? {
        try await channel.eventLoop.flatSubmit { [relay, channel] in relay.value.next(on: channel.eventLoop) }.get()
    }

    /// Writes and flushes; returns when the bytes are handed to the socket.
    public func write(_ bytes: ByteBuffer) async throws {
        try await channel.eventLoop.flatSubmit { [relay, channel] in relay.value.write(bytes, on: channel.eventLoop) }.get()
    }

    /// Closes the connection. Reads waiting end at once (with what arrived before),
    /// without waiting for the peer's TLS close_notify.
    public func close() async {
        abort()
    }

    /// Closes without waiting (from a cancellation handler).
    public func abort() {
        let relay = self.relay
        channel.eventLoop.execute { relay.value.closeLocally() }
        channel.close(mode: .all, promise: nil)
    }
}

/// The byte pump behind a `RawConnection`, with reads on demand (autoRead off).
final class RawRelayHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var context: ChannelHandlerContext?
    private var buffered = CircularBuffer<ByteBuffer>()
    private var waiter: EventLoopPromise<ByteBuffer?>?
    private var ended = false
    private var failure: (any Error)?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        finish(nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        if let waiter {
            self.waiter = nil
            waiter.succeed(bytes)
        } else {
            buffered.append(bytes)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // A read asked for ended without bytes (TLS records without data): ask again.
        if waiter != nil, buffered.isEmpty { context.read() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(nil)
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { finish(nil) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(error)
        context.close(promise: nil)
    }

    /// This side closes: nothing more will be read.
    func closeLocally() { finish(nil) }

    private func finish(_ error: (any Error)?) {
        if ended { return }
        ended = true
        failure = error
        if let waiter {
            self.waiter = nil
            if let error { waiter.fail(error) } else { waiter.succeed(nil) }
        }
    }

    /// The next bytes read. What arrived before the connection closed is still
    /// handed out after it closed (and after the pipeline let go of this handler).
    func next(on loop: any EventLoop) -> EventLoopFuture<ByteBuffer?> {
        if let bytes = buffered.popFirst() { return loop.makeSucceededFuture(bytes) }
        if ended {
            if let failure { return loop.makeFailedFuture(failure) }
            return loop.makeSucceededFuture(nil)
        }
        guard let context else { return loop.makeSucceededFuture(nil) }
        if let waiter { return waiter.futureResult }
        let promise = loop.makePromise(of: ByteBuffer?.self)
        waiter = promise
        context.read()
        return promise.futureResult
    }

    func write(_ bytes: ByteBuffer, on loop: any EventLoop) -> EventLoopFuture<Void> {
        guard let context else { return loop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
        return context.writeAndFlush(wrapOutboundOut(bytes))
    }
}

// MARK: - The client side: an upgrade request to an upstream server

/// What an upstream answered to an upgrade request.
public enum UpgradeAnswer: Sendable {
    /// `101`: the connection now carries the upgraded protocol.
    case switched(HTTPResponseHead, RawConnection)
    /// Any other answer: its head and body, unchanged.
    case refused(HTTPResponseHead, AsyncThrowingStream<ByteBuffer, any Error>)
}

public enum UpgradeClient {
    /// Connects to `host:port` (TLS with `tls` when given), sends `head` and
    /// returns the upstream's answer.
    public static func send(_ head: HTTPRequestHead, host: String, port: Int, tls: TLSConfiguration?, serverHostname: String?,
                            connectTimeout: TimeAmount = .seconds(10)) async throws -> UpgradeAnswer {
        let sslContext = try tls.map { try NIOSSLContext(configuration: $0) }
        // Made with the channel, so a connection that never comes up leaves no promise behind.
        let answer = Mutex<EventLoopFuture<UpgradeAnswer>?>(nil)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    if let sslContext {
                        try pipeline.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: serverHostname))
                    }
                    let promise = channel.eventLoop.makePromise(of: UpgradeAnswer.self)
                    answer.withLock { $0 = promise.futureResult }
                    let box = UpgradeAnswerBox(promise)
                    try pipeline.addHandler(UpgradeSniffer(answer: box))
                    try pipeline.addHandler(HTTPRequestEncoder())
                    try pipeline.addHandler(ByteToMessageHandler(HTTPResponseDecoder()))
                    try pipeline.addHandler(UpgradeClientHandler(answer: box))
                }
            }
            .connect(host: host, port: port).get()
        do {
            guard let future = answer.withLock({ $0 }) else { throw ChannelError.ioOnClosedChannel }
            // A failed write shows as the answer's error (the TLS handshake's, say).
            channel.write(NIOAny(HTTPClientRequestPart.head(head)), promise: nil)
            channel.writeAndFlush(NIOAny(HTTPClientRequestPart.end(nil)), promise: nil)
            return try await future.get()
        } catch {
            try? await channel.close()
            throw error
        }
    }
}

/// The answer promise, shared by the two handlers that may give it, given once.
final class UpgradeAnswerBox {
    private let promise: EventLoopPromise<UpgradeAnswer>
    private var answered = false

    init(_ promise: EventLoopPromise<UpgradeAnswer>) { self.promise = promise }

    func complete(_ result: Result<UpgradeAnswer, any Error>) {
        guard !answered else { return }
        answered = true
        promise.completeWith(result)
    }
}

/// Looks at the upstream's first bytes before the HTTP/1.1 decoder does. On `101`
/// it takes the codec out and hands every byte after the head to a raw relay
/// itself: an upstream that answers and closes at once (an exec that ends at once)
/// sends its whole stream, and its EOF, in the same read as the head, which the
/// decoder would drop on removal once it has seen EOF. Any other answer goes to
/// the decoder untouched.
final class UpgradeSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let answer: UpgradeAnswerBox
    private var received = ByteBuffer()
    static let maxHead = 64 << 10

    init(answer: UpgradeAnswerBox) { self.answer = answer }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        received.writeBuffer(&bytes)
        let view = received.readableBytesView
        guard let end = Self.headEnd(view) else {
            if received.readableBytes > Self.maxHead {
                answer.complete(.failure(HTTPParserError.headerOverflow))
                context.close(promise: nil)
            }
            return
        }
        let headText = String(decoding: view.prefix(end), as: UTF8.self)
        let lines = headText.components(separatedBy: "\r\n")
        let status = lines.first?.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap { Int($0) }
        let pipeline = context.pipeline.syncOperations
        guard status == 101 else {
            // A refusal: the HTTP/1.1 decoder reads it as any response.
            context.fireChannelRead(wrapInboundOut(received))
            received = ByteBuffer()
            pipeline.removeHandler(self, promise: nil)
            return
        }
        var headers = HTTPHeaders()
        for line in lines.dropFirst() where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.add(name: String(line[..<colon]), value: line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        let head = HTTPResponseHead(version: .http1_1, status: .switchingProtocols, headers: headers)
        received.moveReaderIndex(forwardBy: end + 4)
        do {
            let relay = RawRelayHandler()
            try pipeline.addHandler(relay, position: .after(self))
            let client = try pipeline.handler(type: UpgradeClientHandler.self)
            let decoder = try pipeline.handler(type: ByteToMessageHandler<HTTPResponseDecoder>.self)
            let encoder = try pipeline.handler(type: HTTPRequestEncoder.self)
            answer.complete(.success(.switched(head, RawConnection(relay: relay, channel: context.channel))))
            pipeline.removeHandler(client, promise: nil)
            pipeline.removeHandler(decoder, promise: nil)
            pipeline.removeHandler(encoder, promise: nil)
            // The next handler is now the relay.
            if received.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(received)) }
            received = ByteBuffer()
            pipeline.removeHandler(self, promise: nil)
        } catch {
            answer.complete(.failure(error))
            context.close(promise: nil)
        }
    }

    static func headEnd(_ view: ByteBufferView) -> Int? {
        let bytes = Array(view)
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i
        }
        return nil
    }
}

/// Reads a refused upgrade's response (status, headers, body) as the decoder
/// delivers it. (A 101 never gets here: the sniffer takes it.)
final class UpgradeClientHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let answer: UpgradeAnswerBox
    private var body: AsyncThrowingStream<ByteBuffer, any Error>.Continuation?

    init(answer: UpgradeAnswerBox) { self.answer = answer }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            let (stream, continuation) = AsyncThrowingStream<ByteBuffer, any Error>.makeStream()
            body = continuation
            answer.complete(.success(.refused(head, stream)))
        case .body(let chunk):
            body?.yield(chunk)
        case .end:
            body?.finish()
            body = nil
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        answer.complete(.failure(ChannelError.ioOnClosedChannel))
    }

    func channelInactive(context: ChannelHandlerContext) {
        answer.complete(.failure(ChannelError.eof))
        body?.finish(throwing: ChannelError.eof)
        body = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        answer.complete(.failure(error))
        body?.finish(throwing: error)
        body = nil
        context.close(promise: nil)
    }
}
