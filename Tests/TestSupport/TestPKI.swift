import Crypto
import Foundation
import Shared
import SwiftASN1
import X509

/// A throwaway certificate authority for one test, built with swift-certificates:
/// no checked-in PEMs that expire.
public struct TestPKI: Sendable {
    public let caKey: P256.Signing.PrivateKey
    public let caCertificate: Certificate

    public init(name: String = "Test CA") throws {
        caKey = P256.Signing.PrivateKey()
        let key = Certificate.PrivateKey(caKey)
        let subject = try DistinguishedName { CommonName(name) }
        caCertificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: key.publicKey,
            notValidBefore: Date().addingTimeInterval(-3600), notValidAfter: Date().addingTimeInterval(86_400),
            issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true))
            },
            issuerPrivateKey: key)
    }

    /// Wraps an existing CA (for example the hub's, read from its data dir).
    public init(caKey: P256.Signing.PrivateKey, caCertificate: Certificate) {
        self.caKey = caKey
        self.caCertificate = caCertificate
    }

    /// A client certificate with an agent identity, valid between the given dates.
    public func agentCertificate(
        cluster: String, key: P256.Signing.PrivateKey,
        notBefore: Date = Date().addingTimeInterval(-60), notAfter: Date = Date().addingTimeInterval(3600)
    ) throws -> Certificate {
        try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: notBefore, notValidAfter: notAfter,
            issuer: caCertificate.subject, subject: try DistinguishedName { CommonName(cluster) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                try ExtendedKeyUsage([.clientAuth])
                SubjectAlternativeNames([.uniformResourceIdentifier("spiffe://tether/cluster/\(cluster)")])
            },
            issuerPrivateKey: .init(caKey))
    }
}
