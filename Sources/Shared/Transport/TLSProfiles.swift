import Crypto
import Foundation
import GRPCNIOTransportHTTP2
import NIOSSL
import Synchronization
import X509

/// The transport security of each Tether gRPC connection, in one place.
public enum TLSProfiles {
    /// What every Tether listener offers under TLS 1.2: ECDHE key exchange with
    /// AES-GCM or ChaCha20-Poly1305 only (no CBC, no SHA-1 MACs, no static RSA).
    /// TLS 1.3 suites are all AEAD and stay as BoringSSL has them.
    public static let tls12CipherSuites: [NIOTLSCipher] = [
        .TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, .TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        .TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        .TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, .TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        .TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]

    /// Hardens a server configuration: TLS 1.2 at least, and `tls12CipherSuites`.
    public static func harden(_ tls: inout TLSConfiguration) {
        tls.minimumTLSVersion = .tlsv12
        tls.cipherSuiteValues = tls12CipherSuites
    }

    /// The hub's agent listener: TLS 1.2+ (hardened) and a client certificate on
    /// every connection, checked by `CertificateChecks.hubListenerCallback`.
    public static func hubListener(servingChainPEM: [String], servingKeyPEM: String, ca: Certificate) throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try servingChainPEM.map { .certificate(try NIOSSLCertificate(bytes: Array($0.utf8), format: .pem)) },
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(servingKeyPEM.utf8), format: .pem)))
        tls.certificateVerification = .noHostnameVerification
        tls.trustRoots = .certificates([try NIOSSLCertificate(bytes: Array(try PKI.pem(ca).utf8), format: .pem)])
        harden(&tls)
        return tls
    }

    /// An enrolled agent's channel: its own certificate, the stored hub CA as the
    /// only trust root, and hostname verification.
    public static func agent(identity: AgentIdentity) -> HTTP2ClientTransport.Posix.TransportSecurity {
        .mTLS(
            certificateChain: [.bytes(Array(identity.certificatePEM.utf8), format: .pem)],
            privateKey: .bytes(Array(identity.privateKeyPEM.utf8), format: .pem)
        ) { config in
            config.serverCertificateVerification = .fullVerification
            config.trustRoots = .certificates([.bytes(Array(identity.caCertificatePEM.utf8), format: .pem)])
        }
    }

    /// Enrollment: the agent does not have the CA yet, so it accepts the hub only if
    /// the chain holds a CA with the pinned hash that issued a serving certificate
    /// for the dialed host. `failure` receives the reason when the check fails, so
    /// the caller can say "CA pin mismatch" rather than "handshake failed".
    public static func enrollment(
        pin: String, host: String, bootstrap: Certificate, key: P256.Signing.PrivateKey,
        failure: VerificationFailure
    ) throws -> HTTP2ClientTransport.Posix.TransportSecurity {
        let certPEM = try PKI.pem(bootstrap)
        return .mTLS(
            certificateChain: [.bytes(Array(certPEM.utf8), format: .pem)],
            privateKey: .bytes(Array(key.pemRepresentation.utf8), format: .pem)
        ) { config in
            config.serverCertificateVerification = .noHostnameVerification
            config.trustRoots = .certificates([])
            config.customVerificationCallback = { certificates, promise in
                let chain = certificates.compactMap { try? Certificate(derEncoded: $0.toDERBytes()) }
                switch CertificateChecks.checkPinnedServer(chain: chain, pin: pin, host: host) {
                case .success:
                    promise.succeed(.certificateVerified(VerificationMetadata(ValidatedCertificateChain(certificates))))
                case .failure(let error):
                    failure.record(error)
                    promise.succeed(.failed)
                }
            }
        }
    }
}

/// The reason a custom certificate check failed, kept for the caller: a TLS
/// handshake failure itself carries no reason a person could act on.
public final class VerificationFailure: Sendable {
    private let storage = Mutex<TetherError?>(nil)
    public init() {}
    public func record(_ error: TetherError) { storage.withLock { $0 = error } }
    public var error: TetherError? { storage.withLock { $0 } }
}

extension ResolvableTargets {
    /// A target for a hub address: IP literals are dialled as such (TLS must not
    /// send an IP address as SNI), names through DNS.
    public static func hub(_ address: HostPort) -> any ResolvableTarget {
        if let bytes = IPAddressBytes.parse(address.host) {
            return bytes.count == 4
                ? ResolvableTargets.IPv4(addresses: [.init(host: address.host, port: address.port)]) as any ResolvableTarget
                : ResolvableTargets.IPv6(addresses: [.init(host: address.host, port: address.port)])
        }
        return ResolvableTargets.DNS(host: address.host, port: address.port)
    }
}
