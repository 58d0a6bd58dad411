import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Shared
import TestSupport
import Testing
import X509
@testable import TetherAgent
@testable import HubStore
@testable import TetherHub

/// A raw TCP connection, for what no well-behaved client does: connect and say
/// nothing, or stop half way through a ClientHello.
struct RawConnection {
    let channel: any Channel

    static func open(port: Int) async throws -> RawConnection {
        RawConnection(channel: try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port).get())
    }

    /// Sends `bytes`; a connection the server already closed (its deadline
    /// passed first on a loaded machine) is not an error here.
    func send(_ bytes: [UInt8]) async throws {
        do {
            try await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
        } catch ChannelError.ioOnClosedChannel {
        }
    }

    /// Fails if the server has not closed the connection within `bound` (a
    /// failure bound far above the limits under test, not a synchronisation guess).
    func closedByServer(within bound: Duration = .seconds(15)) async throws {
        try await eventually(timeout: bound, "the server closes the connection") { !channel.isActive }
    }

    func close() async { try? await channel.close().get() }

    /// The first bytes of a TLS 1.2 ClientHello whose record header announces
    /// 200 bytes that never come.
    static let truncatedClientHello: [UInt8] = [0x16, 0x03, 0x01, 0x00, 0xC8, 0x01, 0x00, 0x00, 0xC4, 0x03, 0x03] + Array(repeating: 0x2A, count: 32)
}

/// A TLS client that offers exactly what a test says, to see what a listener accepts.
enum TLSProbe {
    struct Offer {
        var maximumVersion: TLSVersion = .tlsv13
        var ciphers: [NIOTLSCipher]? = nil
        /// A client certificate (the agent listener wants one at the handshake).
        var certificate: (Certificate, P256.Signing.PrivateKey)? = nil
    }

    /// Completes a handshake with `offer`, or throws why not. The connection is
    /// returned open (and says nothing), for tests of what comes after.
    static func connect(port: Int, offer: Offer) async throws -> any Channel {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        tls.maximumTLSVersion = offer.maximumVersion
        if let ciphers = offer.ciphers { tls.cipherSuiteValues = ciphers }
        if let (certificate, key) = offer.certificate {
            tls.certificateChain = [.certificate(try NIOSSLCertificate(bytes: Array(try PKI.pem(certificate).utf8), format: .pem))]
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(key.pemRepresentation.utf8), format: .pem))
        }
        let context = try NIOSSLContext(configuration: tls)
        let group = MultiThreadedEventLoopGroup.singleton
        let done = group.any().makePromise(of: Void.self)
        let channel = try await ClientBootstrap(group: group).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: nil))
                try channel.pipeline.syncOperations.addHandler(HandshakeWatcher(done: done))
            }
        }.connect(host: "127.0.0.1", port: port).get()
        do {
            try await done.futureResult.get()
        } catch {
            try? await channel.close().get()
            throw error
        }
        return channel
    }

    /// Whether a handshake with `offer` completes.
    static func accepts(port: Int, _ offer: Offer) async -> Bool {
        guard let channel = try? await connect(port: port, offer: offer) else { return false }
        try? await channel.close().get()
        return true
    }

    final class HandshakeWatcher: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let done: EventLoopPromise<Void>
        init(done: EventLoopPromise<Void>) { self.done = done }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let event = event as? TLSUserEvent, case .handshakeCompleted = event { done.succeed() }
            context.fireUserInboundEventTriggered(event)
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            done.fail(error)
            context.close(promise: nil)
        }
        func channelInactive(context: ChannelHandlerContext) {
            done.fail(ChannelError.eof)
            context.fireChannelInactive()
        }
    }
}

/// Every listener closes connections that do not prove themselves in time, caps
/// how many may be trying at once, and offers only strong TLS 1.2 suites.
@Suite struct ListenerHardeningTests {
    static let quick = ConnectionLimits(handshakeTimeout: .seconds(1), firstBytesTimeout: .seconds(1), maxPending: 64)

    static func refused(_ listener: String, _ reason: ConnectionRefusal, in exposition: String) -> Double {
        metric(#"tether_connections_refused_total{listener="\#(listener)",reason="\#(reason.rawValue)"}"#, in: exposition)
    }

    @Test func silentTruncatedAndSpeechlessConnectionsAreClosedOnEveryListener() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"), connectionLimits: Self.quick)
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try hub.join("prod"), audit: true, health: true, connectionLimits: Self.quick)
        try await agent.waitUntilConnected()
        let auditPort = try #require(await agent.runtime.auditAddress.value.port)
        let healthPort = try #require(await agent.runtime.healthAddress.value.port)
        let tlsPorts = ["agent": hub.agentPort, "admin": hub.adminPort, "audit": auditPort]

        var open: [RawConnection] = []
        for (_, port) in tlsPorts.sorted(by: { $0.key < $1.key }) {
            open.append(try await RawConnection.open(port: port))  // says nothing
            let truncated = try await RawConnection.open(port: port)
            try await truncated.send(RawConnection.truncatedClientHello)
            open.append(truncated)
        }
        open.append(try await RawConnection.open(port: healthPort))  // plain HTTP, says nothing
        // A complete handshake, then silence: closed by the first-bytes deadline.
        let speechless = try await TLSProbe.connect(port: hub.adminPort, offer: .init())
        for connection in open { try await connection.closedByServer() }
        try await eventually(timeout: .seconds(15), "the silent TLS connection is closed") { !speechless.isActive }

        let hubMetrics = hub.core.metrics.exposition(), agentMetrics = agent.runtime.metrics.exposition()
        // The two probes; the real agent's own (re)connection may add one when the
        // loaded machine takes more than the 1 s limit to finish its handshake.
        #expect(Self.refused("agent", .handshakeTimeout, in: hubMetrics) >= 2)
        #expect(Self.refused("admin", .handshakeTimeout, in: hubMetrics) == 2)
        #expect(Self.refused("admin", .firstBytesTimeout, in: hubMetrics) == 1)
        #expect(Self.refused("audit", .handshakeTimeout, in: agentMetrics) == 2)
        #expect(Self.refused("health", .firstBytesTimeout, in: agentMetrics) == 1)
        #expect(metric(#"tether_connections_pending{listener="agent"}"#, in: hubMetrics) == 0)

        // Clients that speak at once are served as before.
        #expect(agent.isConnected)
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        let health = try await http.execute(HTTPClientRequest(url: "http://127.0.0.1:\(healthPort)/healthz"), timeout: .seconds(10))
        #expect(health.status == .ok)
        try await http.shutdown()
        try await agent.stop()
        try await hub.stop()
    }

    @Test func pendingConnectionsAreCappedAndTheirSlotsFreed() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let limits = ConnectionLimits(handshakeTimeout: .seconds(120), firstBytesTimeout: .seconds(120), maxPending: 3)
        let hub = try await TestHub.start(dataDir: dir.sub("hub"), connectionLimits: limits)
        let pending = { metric(#"tether_connections_pending{listener="agent"}"#, in: hub.core.metrics.exposition()) }

        var silent: [RawConnection] = []
        for _ in 0..<3 { silent.append(try await RawConnection.open(port: hub.agentPort)) }
        try await eventually("three pending") { pending() == 3 }
        let fourth = try await RawConnection.open(port: hub.agentPort)
        // Closed at accept, long before any deadline of these limits.
        try await fourth.closedByServer(within: .seconds(15))
        #expect(Self.refused("agent", .tooManyPending, in: hub.core.metrics.exposition()) == 1)
        #expect(silent.allSatisfy { $0.channel.isActive })

        // Slots come back when pending connections go away; an agent then gets in.
        for connection in silent { await connection.close() }
        try await eventually("none pending") { pending() == 0 }
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try hub.join("prod"))
        try await agent.waitUntilConnected()
        try await agent.stop()
        try await hub.stop()
    }

    @Test func tls12OffersOnlyECDHEWithAEADOnEveryListener() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try hub.join("prod"), audit: true)
        try await agent.waitUntilConnected()
        let auditPort = try #require(await agent.runtime.auditAddress.value.port)
        // The agent listener wants a client certificate at the handshake: an
        // enrollment bootstrap certificate passes it.
        let key = P256.Signing.PrivateKey()
        let bootstrap = (try PKI.makeBootstrapCertificate(key: key), key)

        for (listener, port) in [("agent", hub.agentPort), ("admin", hub.adminPort), ("audit", auditPort)] {
            func offer(_ version: TLSVersion, _ ciphers: [NIOTLSCipher]?) -> TLSProbe.Offer {
                .init(maximumVersion: version, ciphers: ciphers, certificate: listener == "agent" ? bootstrap : nil)
            }
            // Control: each strong suite alone, and TLS 1.3, complete.
            for cipher in TLSProfiles.tls12CipherSuites where cipher.rawValue & 0xFF00 == 0xC000 || cipher.rawValue & 0xFF00 == 0xCC00 {
                let ecdsa = [NIOTLSCipher.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, .TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                             .TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256].contains(cipher)
                guard ecdsa else { continue }  // the hub's and agent's keys are P-256
                #expect(await TLSProbe.accepts(port: port, offer(.tlsv12, [cipher])), "\(listener) refused \(cipher)")
            }
            #expect(await TLSProbe.accepts(port: port, offer(.tlsv13, nil)), "\(listener) refused TLS 1.3")
            // CBC with SHA-1, and static RSA key exchange, are not offered.
            for weak in [NIOTLSCipher.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, .TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
                         .TLS_RSA_WITH_AES_128_GCM_SHA256, .TLS_RSA_WITH_AES_128_CBC_SHA] {
                #expect(!(await TLSProbe.accepts(port: port, offer(.tlsv12, [weak]))), "\(listener) accepted \(weak)")
            }
            #expect(!(await TLSProbe.accepts(port: port, offer(.tlsv11, nil))), "\(listener) accepted TLS 1.1")
        }
        try await agent.stop()
        try await hub.stop()
    }
}
