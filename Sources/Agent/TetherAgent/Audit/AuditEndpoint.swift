import Crypto
import Foundation
import NIOSSL
import Shared
import SwiftASN1
import X509

/// The audit endpoint's credentials, kept in the state dir: the bearer token the API
/// server must send, and (unless `--audit-tls-cert`/`--audit-tls-key` are given) a
/// CA of the agent's own and a serving certificate it signed for the Service's DNS
/// names and 127.0.0.1. `tether-agent audit-kubeconfig` prints that CA.
struct AuditEndpoint {
    var token: String
    var certificateChainPEM: [String]
    var privateKeyPEM: String
    /// What the API server must trust.
    var caPEM: String

    static func load(stateDir: String, names: [String], certFile: String?, keyFile: String?) throws -> AuditEndpoint {
        let fm = FileManager.default
        try fm.createDirectory(atPath: stateDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let tokenPath = stateDir + "/audit-webhook-token"
        let token: String
        if let existing = try? String(contentsOfFile: tokenPath, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), !existing.isEmpty {
            token = existing
        } else {
            token = AdminCredentials.newToken()
            try AtomicFile.write(Data(token.utf8), to: tokenPath, mode: 0o600)
        }
        if let certFile, let keyFile {
            guard let cert = try? String(contentsOfFile: certFile, encoding: .utf8), let key = try? String(contentsOfFile: keyFile, encoding: .utf8) else {
                throw TetherError(.invalidArgument, "cannot read --audit-tls-cert \(certFile) or --audit-tls-key \(keyFile)")
            }
            return AuditEndpoint(token: token, certificateChainPEM: [cert], privateKeyPEM: key, caPEM: cert)
        }
        let caCertPath = stateDir + "/audit-ca.crt", caKeyPath = stateDir + "/audit-ca.key"
        let caKey: P256.Signing.PrivateKey
        let ca: Certificate
        if let certPEM = try? String(contentsOfFile: caCertPath, encoding: .utf8),
           let keyPEM = try? String(contentsOfFile: caKeyPath, encoding: .utf8),
           let c = try? Certificate(pemEncoded: certPEM), let k = try? P256.Signing.PrivateKey(pemRepresentation: keyPEM),
           c.notValidAfter > Date().addingTimeInterval(30 * 86_400) {
            ca = c
            caKey = k
        } else {
            caKey = P256.Signing.PrivateKey()
            let name = try DistinguishedName { OrganizationName("Tether"); CommonName("tether-agent audit webhook CA") }
            let signing = Certificate.PrivateKey(caKey)
            ca = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: signing.publicKey,
                notValidBefore: Date().addingTimeInterval(-300), notValidAfter: Date().addingTimeInterval(5 * 365 * 86_400),
                issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true))
                },
                issuerPrivateKey: signing)
            try AtomicFile.write(Data(caKey.pemRepresentation.utf8), to: caKeyPath, mode: 0o600)
            try AtomicFile.write(Data(try PKI.pem(ca).utf8), to: caCertPath, mode: 0o644)
        }
        // The serving certificate is re-issued on every start: short-lived, and always
        // for the names configured now.
        let key = P256.Signing.PrivateKey()
        let sans: [GeneralName] = names.map { name in
            if let bytes = IPAddressBytes.parse(name) { return .ipAddress(ASN1OctetString(contentBytes: ArraySlice(bytes))) }
            return .dnsName(name)
        }
        let serving = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: Date().addingTimeInterval(-300), notValidAfter: Date().addingTimeInterval(365 * 86_400),
            issuer: ca.subject, subject: try DistinguishedName { CommonName(names.first ?? "tether-agent") },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames(sans)
            },
            issuerPrivateKey: .init(caKey))
        return AuditEndpoint(token: token, certificateChainPEM: [try PKI.pem(serving)], privateKeyPEM: key.pemRepresentation, caPEM: try PKI.pem(ca))
    }

    /// Default names: the chart's Service in its namespace, plus loopback.
    static func defaultNames(namespace: String?) -> [String] {
        let ns = namespace ?? "tether-system"
        return ["tether-agent", "tether-agent.\(ns)", "tether-agent.\(ns).svc", "tether-agent.\(ns).svc.cluster.local", "localhost", "127.0.0.1"]
    }

    func tlsConfiguration() throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try certificateChainPEM.flatMap { try NIOSSLCertificate.fromPEMBytes(Array($0.utf8)) }.map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(privateKeyPEM.utf8), format: .pem)))
        tls.minimumTLSVersion = .tlsv12
        return tls
    }

    /// The kubeconfig an API server's `--audit-webhook-config-file` takes.
    func kubeconfig(server: String) -> String {
        """
        apiVersion: v1
        kind: Config
        clusters:
        - name: tether-agent
          cluster:
            server: \(server)
            certificate-authority-data: \(Data(caPEM.utf8).base64EncodedString())
        users:
        - name: kube-apiserver
          user:
            token: \(token)
        contexts:
        - name: tether-audit
          context:
            cluster: tether-agent
            user: kube-apiserver
        current-context: tether-audit

        """
    }
}
