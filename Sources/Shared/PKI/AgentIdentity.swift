import Crypto
import Foundation
import X509

/// What an enrolled agent keeps: its key, its certificate, the hub's CA and where
/// the hub is. Saved as a whole so a renewal never leaves key and certificate apart.
public struct AgentIdentity: Codable, Sendable, Equatable {
    public var cluster: ClusterName
    public var hub: HostPort
    public var privateKeyPEM: String
    public var certificatePEM: String
    public var caCertificatePEM: String

    public init(cluster: ClusterName, hub: HostPort, privateKeyPEM: String, certificatePEM: String, caCertificatePEM: String) {
        self.cluster = cluster
        self.hub = hub
        self.privateKeyPEM = privateKeyPEM
        self.certificatePEM = certificatePEM
        self.caCertificatePEM = caCertificatePEM
    }

    public func certificate() throws -> Certificate { try PKI.certificate(pem: certificatePEM) }
    public func caCertificate() throws -> Certificate { try PKI.certificate(pem: caCertificatePEM) }

    public var notValidAfter: Date {
        get throws { try certificate().notValidAfter }
    }

    public var notValidBefore: Date {
        get throws { try certificate().notValidBefore }
    }

    /// When to renew: two thirds into the certificate's lifetime.
    public func renewalDate() throws -> Date {
        let cert = try certificate()
        let lifetime = cert.notValidAfter.timeIntervalSince(cert.notValidBefore)
        return cert.notValidBefore.addingTimeInterval(lifetime * 2 / 3)
    }

    /// Checks that the key and certificate belong together and that the certificate
    /// names the cluster and was issued by the CA: a damaged store fails here, clearly.
    public func validate() throws {
        let key: P256.Signing.PrivateKey
        do {
            key = try P256.Signing.PrivateKey(pemRepresentation: privateKeyPEM)
        } catch {
            throw TetherError(.invalidArgument, "identity private key is not a P-256 PEM key")
        }
        let cert = try certificate()
        let ca = try caCertificate()
        guard cert.publicKey == Certificate.PublicKey(key.publicKey) else {
            throw TetherError(.invalidArgument, "identity certificate does not match its private key")
        }
        guard PKI.clusterName(in: cert) == cluster else {
            throw TetherError(.invalidArgument, "identity certificate does not name cluster '\(cluster)'")
        }
        guard PKI.isIssued(cert, by: ca) else {
            throw TetherError(.invalidArgument, "identity certificate was not issued by the stored hub CA")
        }
    }
}
