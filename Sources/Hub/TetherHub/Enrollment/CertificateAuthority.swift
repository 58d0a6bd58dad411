import Crypto
import Foundation
import SwiftASN1
import HubStore
import Shared
import X509

/// The hub's certificate authority: an ECDSA P-256 key that signs the hub's serving
/// certificate and every agent's client certificate.
struct CertificateAuthority: Sendable {
    let certificate: Certificate
    let key: P256.Signing.PrivateKey

    static func create(now: Date = Date()) throws -> CertificateAuthority {
        let key = P256.Signing.PrivateKey()
        let signingKey = Certificate.PrivateKey(key)
        let name = try DistinguishedName {
            OrganizationName("Tether")
            CommonName("Tether hub CA \(PKI.hex((0..<4).map { _ in UInt8.random(in: 0...255) }))")
        }
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: signingKey.publicKey,
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: now.addingTimeInterval(10 * 365 * 86_400),
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: signingKey.publicKey)
            },
            issuerPrivateKey: signingKey
        )
        return CertificateAuthority(certificate: certificate, key: key)
    }

    /// Checks a PEM CSR: parses, verifies its self-signature, requires a P-256 key.
    static func parseCSR(_ pem: String) throws -> CertificateSigningRequest {
        let csr: CertificateSigningRequest
        do {
            csr = try CertificateSigningRequest(pemEncoded: pem)
        } catch {
            throw TetherError(.badCSR, "certificate signing request is not a valid PEM PKCS#10 request")
        }
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw TetherError(.badCSR, "certificate signing request signature does not verify")
        }
        guard P256.Signing.PublicKey(csr.publicKey) != nil else {
            throw TetherError(.badCSR, "certificate signing request must carry an ECDSA P-256 key")
        }
        return csr
    }

    /// Signs an agent client certificate. The identity (the cluster, in a SAN URI)
    /// comes from the hub's records, never from the CSR.
    func issueAgentCertificate(for publicKey: Certificate.PublicKey, cluster: ClusterName, lifetime: Duration, now: Date) throws -> IssuedCertificate {
        let subject = try DistinguishedName {
            OrganizationName("Tether agents")
            CommonName(cluster.rawValue)
        }
        let cert = try sign(
            publicKey: publicKey, subject: subject, now: now, lifetime: lifetime,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.clientAuth])
                SubjectAlternativeNames([.uniformResourceIdentifier(PKI.identityURI(for: cluster))])
                AuthorityKeyIdentifier(keyIdentifier: try? certificate.extensions.subjectKeyIdentifier?.keyIdentifier)
            })
        return IssuedCertificate(serial: PKI.serialHex(cert), notAfter: cert.notValidAfter, pem: try PKI.pem(cert))
    }

    /// Signs the hub's serving certificate for the names and addresses agents dial.
    func issueServingCertificate(for publicKey: Certificate.PublicKey, names: [String], lifetime: Duration, now: Date) throws -> Certificate {
        let sans: [GeneralName] = names.map { name in
            if let bytes = IPAddressBytes.parse(name) {
                return .ipAddress(ASN1OctetString(contentBytes: ArraySlice(bytes)))
            }
            return .dnsName(name)
        }
        let subject = try DistinguishedName {
            OrganizationName("Tether")
            CommonName(names.first ?? "tether-hub")
        }
        return try sign(
            publicKey: publicKey, subject: subject, now: now, lifetime: lifetime,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames(sans)
            })
    }

    private func sign(publicKey: Certificate.PublicKey, subject: DistinguishedName, now: Date, lifetime: Duration, extensions: Certificate.Extensions) throws -> Certificate {
        try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: publicKey,
            // A little back-dating tolerates agents whose clocks run slightly behind.
            notValidBefore: now.addingTimeInterval(-min(60, lifetime.seconds / 10)),
            notValidAfter: now.addingTimeInterval(lifetime.seconds),
            issuer: certificate.subject,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: extensions,
            issuerPrivateKey: Certificate.PrivateKey(key)
        )
    }
}
