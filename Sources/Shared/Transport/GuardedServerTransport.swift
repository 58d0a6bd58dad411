import GRPCCore
import GRPCNIOTransportCore
import GRPCNIOTransportHTTP2
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization
import X509

/// The hub's gRPC listener: grpc-swift-nio-transport's HTTP/2 server over a
/// listening socket this type sets up itself, so that it controls what the
/// stock `HTTP2ServerTransport.Posix` does not expose:
/// - the TLS configuration as a whole (`TLSProfiles.harden`: TLS 1.2 offers
///   only ECDHE with AES-GCM or ChaCha20-Poly1305),
/// - a `ConnectionGuard` on every accepted connection (handshake and first-bytes
///   deadlines, a cap on pending connections).
///
/// Handlers still find the client's certificate where the stock transport puts
/// it, in `HTTP2ServerTransport.Posix.Context.peerCertificate`.
public final class GuardedServerTransport: ListeningServerTransport {
    public typealias Bytes = GRPCNIOTransportBytes

    private let custom: HTTP2ServerTransport.Custom<Factory>
    private let peers: PeerCertificates
    private let factory: Factory

    /// - Parameters:
    ///   - host, port: where to listen (`port` 0: the kernel picks).
    ///   - tls: the server's TLS configuration; it is hardened here.
    ///   - verification: the custom client-certificate check, if any.
    ///   - config: gRPC settings (compression, keepalive, payload limits).
    ///   - guard: the listener's connection limits.
    public init(
        host: String, port: Int,
        tls: TLSConfiguration,
        verification: (@Sendable ([NIOSSLCertificate], EventLoopPromise<NIOSSLVerificationResultWithMetadata>) -> Void)?,
        config: HTTP2ServerTransport.Posix.Config,
        guard: ConnectionGuard
    ) throws {
        var tls = tls
        TLSProfiles.harden(&tls)
        tls.applicationProtocols = ["grpc-exp", "h2"]
        let peers = PeerCertificates()
        self.peers = peers
        factory = Factory(host: host, port: port, sslContext: try NIOSSLContext(configuration: tls), verification: verification,
                          guard: `guard`, peers: peers)
        custom = HTTP2ServerTransport.Custom(
            listenerFactory: factory,
            config: .init(compression: config.compression, connection: config.connection, http2: config.http2, rpc: config.rpc,
                          channelDebuggingCallbacks: config.channelDebuggingCallbacks))
    }

    public var listeningAddress: GRPCNIOTransportCore.SocketAddress {
        get async throws {
            guard let address = await custom.listeningAddress else {
                throw RPCError(code: .unavailable, message: "the listener is not bound (it failed to start or has stopped)")
            }
            return address
        }
    }

    public func configure(context: GRPCServerContext) {
        custom.configure(context: context)
    }

    public func listen(
        streamHandler: @escaping @Sendable (_ stream: RPCStream<Inbound, Outbound>, _ context: ServerContext) async -> Void
    ) async throws {
        let peers = self.peers
        try await custom.listen { stream, context in
            var context = context
            var transport = HTTP2ServerTransport.Posix.Context()
            transport.peerCertificate = peers.certificate(for: context.remotePeer)
            context.transportSpecific = transport
            await streamHandler(stream, context)
        }
    }

    public func beginGracefulShutdown() {
        custom.beginGracefulShutdown()
    }

    /// Binds the socket; each accepted connection gets TLS, its guard and the
    /// certificate recorder, then gRPC's HTTP/2 pipeline.
    fileprivate struct Factory: HTTP2ServerTransport.ListenerFactory {
        let host: String
        let port: Int
        let sslContext: NIOSSLContext
        let verification: (@Sendable ([NIOSSLCertificate], EventLoopPromise<NIOSSLVerificationResultWithMetadata>) -> Void)?
        let `guard`: ConnectionGuard
        let peers: PeerCertificates
        var eventLoopGroup: any EventLoopGroup { MultiThreadedEventLoopGroup.singleton }

        func makeListeningChannel(
            listenerConfigurator: HTTP2ServerTransport.ListenerConfigurator,
            connectionConfigurator: HTTP2ServerTransport.ConnectionConfigurator
        ) async throws -> NIOAsyncChannel<HTTP2ServerTransport.ConnectionConfigurator.ConnectionChannel, Never> {
            let (sslContext, verification, guarded, peers) = (self.sslContext, self.verification, self.guard, self.peers)
            return try await ServerBootstrap(group: eventLoopGroup)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelInitializer { channel in listenerConfigurator.configure(channel: channel) }
                .bind(host: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let ssl = verification.map { NIOSSLServerHandler(context: sslContext, customVerificationCallbackWithMetadata: $0) }
                            ?? NIOSSLServerHandler(context: sslContext)
                        let pipeline = channel.pipeline.syncOperations
                        try pipeline.addHandler(ssl)
                        try pipeline.addHandler(guarded.handler(tls: true))
                        try pipeline.addHandler(PeerCertificateRecorder(peers: peers))
                    }.flatMap {
                        connectionConfigurator.configure(channel: channel, tls: .configured(requireALPN: false))
                    }
                }
        }
    }
}

/// Client certificates of the open connections, by the peer address gRPC
/// reports as `ServerContext.remotePeer`.
final class PeerCertificates: Sendable {
    private let byPeer = Mutex<[String: Certificate]>([:])

    func certificate(for peer: String) -> Certificate? { byPeer.withLock { $0[peer] } }
    func set(_ certificate: Certificate?, for peer: String) { byPeer.withLock { $0[peer] = certificate } }

    /// The form grpc-swift-nio-transport gives `ServerContext.remotePeer`.
    static func key(_ address: NIOCore.SocketAddress?) -> String? {
        switch address {
        case .v4(let v4)?: return "ipv4:\(v4.host):\(address!.port ?? 0)"
        case .v6(let v6)?: return "ipv6:[\(v6.host)]:\(address!.port ?? 0)"
        default: return nil
        }
    }
}

/// Records the client certificate when the handshake completes (before any
/// request can arrive) and forgets it when the connection closes.
final class PeerCertificateRecorder: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private let peers: PeerCertificates
    private var key: String?

    init(peers: PeerCertificates) { self.peers = peers }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent,
           let key = PeerCertificates.key(context.channel.remoteAddress),
           let ssl = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self),
           let der = try? ssl.peerCertificate?.toDERBytes() {
            self.key = key
            peers.set(try? Certificate(derEncoded: der), for: key)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let key { peers.set(nil, for: key) }
        key = nil
        context.fireChannelInactive()
    }
}
