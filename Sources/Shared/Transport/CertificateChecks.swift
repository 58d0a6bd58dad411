import Foundation
import NIOCore
import NIOSSL
import SwiftASN1
import X509

/// The certificate checks of Tether's TLS connections, as NIOSSL verification
/// callbacks. The hub's agent listener and the agent's enrollment connection replace
/// OpenSSL's chain building with these, because each accepts exactly one shape of
/// chain and says precisely why it refused another.
public enum CertificateChecks {
    /// What the hub's agent listener accepts from a client.
    public enum ClientVerdict: Equatable, Sendable {
        /// A client certificate issued by the hub's CA for an agent identity.
        case agent
        /// A self-signed enrollment bootstrap certificate: good for `Enroll` only.
        case bootstrap
        case refused(String)
    }

    /// Classifies the leaf a client presented to the hub's agent listener.
    public static func classifyClient(_ leaf: Certificate, ca: Certificate, now: Date = Date()) -> ClientVerdict {
        if PKI.isIssued(leaf, by: ca) {
            guard leaf.notValidBefore <= now.addingTimeInterval(60) else { return .refused("certificate not yet valid") }
            guard leaf.notValidAfter > now else { return .refused("certificate expired at \(leaf.notValidAfter)") }
            guard let eku = try? leaf.extensions.extendedKeyUsage, eku.contains(.clientAuth) else {
                return .refused("certificate is not for client authentication")
            }
            guard PKI.clusterName(in: leaf) != nil else { return .refused("certificate names no cluster") }
            return .agent
        }
        if PKI.isBootstrapCertificate(leaf) {
            guard leaf.notValidAfter > now else { return .refused("bootstrap certificate expired") }
            return .bootstrap
        }
        return .refused("certificate was not issued by this hub's CA")
    }

    /// The hub listener's verification callback: accepts agent and bootstrap
    /// certificates (the RPC layer then allows bootstrap ones only to enroll) and
    /// fails the handshake for anything else, including expired certificates.
    public static func hubListenerCallback(
        ca: Certificate,
        onRefusal: @escaping @Sendable (String) -> Void = { _ in }
    ) -> @Sendable ([NIOSSLCertificate], EventLoopPromise<NIOSSLVerificationResultWithMetadata>) -> Void {
        { certificates, promise in
            guard let first = certificates.first, let leaf = try? Certificate(derEncoded: first.toDERBytes()) else {
                onRefusal("no parsable client certificate")
                promise.succeed(.failed)
                return
            }
            switch classifyClient(leaf, ca: ca) {
            case .agent, .bootstrap:
                promise.succeed(.certificateVerified(VerificationMetadata(ValidatedCertificateChain([first]))))
            case .refused(let why):
                onRefusal(why)
                promise.succeed(.failed)
            }
        }
    }

    /// Checks the hub's serving chain against a pinned CA fingerprint: some
    /// certificate in the chain must hash to `pin`, be a CA, and have issued the leaf,
    /// which must be valid now and name `host`. Returns the pinned CA, or why not.
    public static func checkPinnedServer(
        chain: [Certificate], pin: String, host: String, now: Date = Date()
    ) -> Result<Certificate, TetherError> {
        guard let leaf = chain.first else {
            return .failure(TetherError(.caPinMismatch, "the hub presented no certificate"))
        }
        guard let ca = chain.first(where: { (try? PKI.fingerprint($0)) == pin }) else {
            let seen = chain.compactMap { try? PKI.fingerprint($0) }.joined(separator: ", ")
            return .failure(TetherError(.caPinMismatch,
                "the hub's CA does not match the join string's CA hash \(pin) (hub presented \(seen)); the join string is for another hub, or something is intercepting the connection"))
        }
        guard case .isCertificateAuthority? = (try? ca.extensions.basicConstraints) ?? nil, PKI.isIssued(leaf, by: ca) else {
            return .failure(TetherError(.caPinMismatch, "the hub's serving certificate was not issued by the pinned CA"))
        }
        guard leaf.notValidAfter > now, leaf.notValidBefore <= now.addingTimeInterval(60) else {
            return .failure(TetherError(.certificateExpired, "the hub's serving certificate is not valid now (valid \(leaf.notValidBefore) to \(leaf.notValidAfter))"))
        }
        guard names(leaf, host: host) else {
            // The genuine hub (its CA is pinned) under a name it does not serve: retrying
            // cannot fix that, so it is a join-string error (fatal), naming what would work.
            let covered = coveredNames(leaf)
            return .failure(TetherError(.malformedJoinString,
                "the join string's hub address '\(host)' is not a name the hub's serving certificate covers (it covers: \(covered.isEmpty ? "no names" : covered.joined(separator: ", "))); join with one of those, or restart the hub with --advertise \(host) and create a new token"))
        }
        return .success(ca)
    }

    /// The DNS names and IP addresses in the certificate's SANs, as text.
    public static func coveredNames(_ certificate: Certificate) -> [String] {
        guard let sans = try? certificate.extensions.subjectAlternativeNames else { return [] }
        return sans.compactMap { san in
            switch san {
            case .dnsName(let name): return name
            case .ipAddress(let octets): return IPAddressBytes.text(Array(octets.bytes))
            default: return nil
            }
        }
    }

    /// Whether the certificate's SANs cover a DNS name or IP address.
    public static func names(_ certificate: Certificate, host: String) -> Bool {
        guard let sans = try? certificate.extensions.subjectAlternativeNames else { return false }
        let ipBytes = IPAddressBytes.parse(host)
        for san in sans {
            switch san {
            case .dnsName(let name) where ipBytes == nil:
                if name.lowercased() == host.lowercased() { return true }
            case .ipAddress(let octets):
                if let ipBytes, Array(octets.bytes) == ipBytes { return true }
            default:
                continue
            }
        }
        return false
    }
}

/// Textual IPv4/IPv6 addresses to their network byte order and back.
public enum IPAddressBytes {
    /// `192.0.2.1` or `2001:db8::1` for 4 or 16 bytes; nil for any other length.
    public static func text(_ bytes: [UInt8]) -> String? {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        var buffer = ByteBufferAllocator().buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        return (try? SocketAddress(packedIPAddress: buffer, port: 0))?.ipAddress
    }

    public static func parse(_ text: String) -> [UInt8]? {
        if let v4 = try? SocketAddress(ipAddress: text, port: 0) {
            switch v4 {
            case .v4(let a):
                return withUnsafeBytes(of: a.address.sin_addr) { Array($0) }
            case .v6(let a):
                return withUnsafeBytes(of: a.address.sin6_addr) { Array($0) }
            default:
                return nil
            }
        }
        return nil
    }
}
