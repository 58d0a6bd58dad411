import Synchronization
import Crypto
import Foundation
import SwiftASN1
import X509

/// Certificate helpers both sides use: identities in certificates, fingerprints,
/// CSRs and PEM handling. Everything is ECDSA P-256.
public enum PKI {
    /// The SAN URI that names a cluster's agent: `spiffe://tether/cluster/NAME`.
    public static func identityURI(for cluster: ClusterName) -> String {
        "spiffe://tether/cluster/\(cluster.rawValue)"
    }

    /// The cluster an agent certificate names, from its SAN URI; nil if it names none.
    public static func clusterName(in certificate: Certificate) -> ClusterName? {
        guard let sans = try? certificate.extensions.subjectAlternativeNames else { return nil }
        for san in sans {
            if case .uniformResourceIdentifier(let uri) = san, uri.hasPrefix("spiffe://tether/cluster/") {
                return try? ClusterName(String(uri.dropFirst("spiffe://tether/cluster/".count)))
            }
        }
        return nil
    }

    public static func derBytes(_ certificate: Certificate) throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return serializer.serializedBytes
    }

    /// `sha256:<hex>` of the certificate's DER encoding: what a join string pins.
    public static func fingerprint(_ certificate: Certificate) throws -> String {
        "sha256:" + hex(SHA256.hash(data: try derBytes(certificate)))
    }

    public static func hex(_ bytes: some Sequence<UInt8>) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    /// The serial number as lowercase hex: how the hub stores and revokes certificates.
    public static func serialHex(_ certificate: Certificate) -> String {
        hex(certificate.serialNumber.bytes)
    }

    public static func pem(_ certificate: Certificate) throws -> String {
        try certificate.serializeAsPEM().pemString
    }

    public static func certificate(pem: String) throws -> Certificate {
        do {
            return try Certificate(pemEncoded: pem)
        } catch {
            throw TetherError(.invalidArgument, "not a PEM certificate: \(error)")
        }
    }

    /// A CSR for `key`. The subject is informational; the hub decides the identity.
    public static func makeCSR(key: P256.Signing.PrivateKey, commonName: String) throws -> String {
        let subject = try DistinguishedName { CommonName(commonName) }
        let csr = try CertificateSigningRequest(
            version: .v1,
            subject: subject,
            privateKey: Certificate.PrivateKey(key),
            attributes: CertificateSigningRequest.Attributes(),
            signatureAlgorithm: .ecdsaWithSHA256
        )
        return try csr.serializeAsPEM().pemString
    }

    /// A short-lived self-signed certificate for `key`, presented only to call
    /// `Enrollment.Enroll`: the hub's listener requires some client certificate on
    /// every connection, and this one proves possession of the key being enrolled.
    public static func makeBootstrapCertificate(key: P256.Signing.PrivateKey, now: Date = Date()) throws -> Certificate {
        let name = try DistinguishedName { CommonName(bootstrapCommonName) }
        let certKey = Certificate.PrivateKey(key)
        return try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: certKey.publicKey,
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: now.addingTimeInterval(600),
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                try ExtendedKeyUsage([.clientAuth])
            },
            issuerPrivateKey: certKey
        )
    }

    /// The subject common name of enrollment bootstrap certificates.
    public static let bootstrapCommonName = "tether-enrollment-bootstrap"

    /// Whether `certificate` is a self-signed enrollment bootstrap certificate.
    public static func isBootstrapCertificate(_ certificate: Certificate) -> Bool {
        guard certificate.issuer == certificate.subject,
              certificate.subject.description.contains(bootstrapCommonName)
        else { return false }
        return certificate.publicKey.isValidSignature(certificate.signature, for: certificate)
    }

    /// Whether `certificate` was signed by `issuer` and names it as issuer.
    public static func isIssued(_ certificate: Certificate, by issuer: Certificate) -> Bool {
        guard certificate.issuer == issuer.subject else { return false }
        // A signature that verified once verifies always: every tunnel RPC of an agent
        // presents the same certificate, so the check is made once per certificate.
        let pair = [certificate, issuer]
        if verifiedSignatures.withLock({ $0.contains(pair) }) { return true }
        guard issuer.publicKey.isValidSignature(certificate.signature, for: certificate) else { return false }
        verifiedSignatures.withLock { memo in
            if memo.count >= 10_000 { memo.removeAll(keepingCapacity: true) }
            memo.insert(pair)
        }
        return true
    }

    private static let verifiedSignatures = Mutex<Set<[Certificate]>>([])
}
