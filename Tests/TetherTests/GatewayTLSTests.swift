import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Shared
import TestSupport
import Testing
import X509
@testable import TetherAgent
@testable import HubStore
@testable import TetherHub

/// The agent listener refuses every certificate but a current, unrevoked one from
/// its own CA: at the TLS handshake, or before the first message.
@Suite struct GatewayTLSTests {
    /// Opens AgentLink.Connect with the given client credentials, sends Hello and
    /// returns the hub's first message, or the error.
    static func attempt(
        port: Int, caPEM: String, certificatePEM: String?, keyPEM: String?
    ) async -> Result<Tether_V1_HubMessage, RPCError> {
        let security: HTTP2ClientTransport.Posix.TransportSecurity
        if let certificatePEM, let keyPEM {
            security = .mTLS(
                certificateChain: [.bytes(Array(certificatePEM.utf8), format: .pem)],
                privateKey: .bytes(Array(keyPEM.utf8), format: .pem)
            ) { $0.trustRoots = .certificates([.bytes(Array(caPEM.utf8), format: .pem)]) }
        } else {
            security = .tls { $0.trustRoots = .certificates([.bytes(Array(caPEM.utf8), format: .pem)]) }
        }
        do {
            // One connection attempt per call: a re-dial before the RPC gives up
            // would be a second handshake, counted as a second refusal.
            let transport = try HTTP2ClientTransport.Posix(
                target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: security,
                config: .defaults { $0.backoff = .init(initial: .seconds(600), max: .seconds(600), multiplier: 1, jitter: 0) })
            var options = CallOptions.defaults
            options.waitForReady = false
            options.timeout = .seconds(10)
            let first = try await withGRPCClient(transport: transport) { client in
                try await Tether_V1_AgentLink.Client(wrapping: client).connect(
                    options: options,
                    requestProducer: { writer in
                        try await writer.write(.with { $0.hello = .with { $0.protocolVersion = ProtocolVersion.current } })
                    },
                    onResponse: { response in
                        for try await message in response.messages { return message }
                        throw RPCError(code: .unknown, message: "stream ended without a message")
                    })
            }
            return .success(first)
        } catch let error as RPCError {
            return .failure(error)
        } catch {
            return .failure(RPCError(code: .unknown, message: "\(error)"))
        }
    }

    @Test func refusesMissingForeignExpiredAndRevokedCertificates() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        let caPEM = try PKI.pem(hub.core.ca.certificate)
        let hubCA = TestPKI(caKey: hub.core.ca.key, caCertificate: hub.core.ca.certificate)
        let key = P256.Signing.PrivateKey()

        // Control: a real enrolled identity is welcomed, so the refusals below are
        // about the certificates and not the harness.
        let identity = try await Enroller(logger: testLogger).enroll(with: try hub.join("good"))
        let welcomed = await Self.attempt(port: hub.agentPort, caPEM: caPEM, certificatePEM: identity.certificatePEM, keyPEM: identity.privateKeyPEM)
        #expect(try welcomed.get().welcome.clusterName == "good")
        let opened = hub.core.registry.sessionsOpened
        let refusalsBefore = hub.core.metrics.exposition()

        // No client certificate: the handshake fails.
        let none = await Self.attempt(port: hub.agentPort, caPEM: caPEM, certificatePEM: nil, keyPEM: nil)
        #expect(none.failure?.code == .unavailable)

        // A certificate from another CA, naming a real cluster: refused at the handshake.
        let foreign = try TestPKI().agentCertificate(cluster: "good", key: key)
        let fromOtherCA = await Self.attempt(port: hub.agentPort, caPEM: caPEM, certificatePEM: try PKI.pem(foreign), keyPEM: key.pemRepresentation)
        #expect(fromOtherCA.failure?.code == .unavailable)

        // Issued by the hub's CA but expired: refused at the handshake.
        let expired = try hubCA.agentCertificate(cluster: "good", key: key, notBefore: Date().addingTimeInterval(-7200), notAfter: Date().addingTimeInterval(-3600))
        let expiredResult = await Self.attempt(port: hub.agentPort, caPEM: caPEM, certificatePEM: try PKI.pem(expired), keyPEM: key.pemRepresentation)
        #expect(expiredResult.failure?.code == .unavailable)

        // Signed with the hub's CA key but never issued by the hub (not in its records).
        let forged = try hubCA.agentCertificate(cluster: "good", key: key)
        let forgedResult = await Self.attempt(port: hub.agentPort, caPEM: caPEM, certificatePEM: try PKI.pem(forged), keyPEM: key.pemRepresentation)
        #expect(forgedResult.failure?.code == .permissionDenied)

        // A bootstrap certificate may enroll but not open a channel.
        let bootstrap = try PKI.makeBootstrapCertificate(key: key)
        let bootstrapResult = await Self.attempt(port: hub.agentPort, caPEM: caPEM, certificatePEM: try PKI.pem(bootstrap), keyPEM: key.pemRepresentation)
        #expect(bootstrapResult.failure?.code == .unauthenticated)

        // Revoked: the cluster is removed, its real certificate is refused before the first message.
        _ = try await hub.core.removeCluster(ClusterName("good"))
        let revoked = await Self.attempt(port: hub.agentPort, caPEM: caPEM, certificatePEM: identity.certificatePEM, keyPEM: identity.privateKeyPEM)
        #expect(revoked.failure?.code == .permissionDenied)
        #expect(revoked.failure?.message.contains("revoked") == true)

        #expect(hub.core.registry.sessionsOpened == opened, "no refused peer ever got a session")
        #expect(metric("tether_agent_tls_refusals_total", in: hub.core.metrics.exposition()) - metric("tether_agent_tls_refusals_total", in: refusalsBefore) == 2)
        #expect(metric("tether_agent_rpc_refusals_total", in: hub.core.metrics.exposition()) == 3)
        try await hub.stop()
    }
}

func metric(_ name: String, in exposition: String) -> Double {
    for line in exposition.split(separator: "\n") where line.hasPrefix(name + " ") {
        return Double(line.split(separator: " ").last!) ?? .nan
    }
    return .nan
}

extension Result {
    var failure: Failure? {
        if case .failure(let f) = self { return f }
        return nil
    }
}
