import Crypto
import Foundation
import Logging
import Shared
import X509

/// The hub's data directory: created on first start (mode 0700, keys 0600), reused
/// on every later one. Holds the CA, the serving certificate, the database and the
/// operator credential file.
struct DataDirectory {
    let path: String
    let ca: CertificateAuthority
    let servingCertificate: Certificate
    let servingKeyPEM: String

    var databasePath: String { path + "/hub.db" }
    var credentialsPath: String { path + "/admin-credentials.json" }

    /// Opens or initialises `path`, (re)issuing the serving certificate when the
    /// advertised names changed or it is within 30 days of expiry.
    static func open(path: String, advertise: [String], now: Date = Date(), logger: Logger) throws -> DataDirectory {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue else { throw TetherError(.storage, "data dir \(path) exists and is not a directory") }
        } else {
            try fm.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            logger.info("created data dir", metadata: ["path": "\(path)"])
        }
        try fm.setAttributes([.posixPermissions: 0o700], ofItemAtPath: path)

        let caCertPath = path + "/ca.crt", caKeyPath = path + "/ca.key"
        let ca: CertificateAuthority
        switch (fm.fileExists(atPath: caCertPath), fm.fileExists(atPath: caKeyPath)) {
        case (true, true):
            do {
                ca = CertificateAuthority(
                    certificate: try Certificate(pemEncoded: try String(contentsOfFile: caCertPath, encoding: .utf8)),
                    key: try P256.Signing.PrivateKey(pemRepresentation: try String(contentsOfFile: caKeyPath, encoding: .utf8)))
            } catch {
                throw TetherError(.storage, "cannot read the hub CA in \(path) (ca.crt, ca.key): \(error); restore them from a backup")
            }
            guard ca.certificate.publicKey == Certificate.PublicKey(ca.key.publicKey) else {
                throw TetherError(.storage, "ca.crt and ca.key in \(path) do not belong together; restore them from a backup")
            }
        case (false, false):
            ca = try CertificateAuthority.create(now: now)
            try writeSecret(ca.key.pemRepresentation, to: caKeyPath)
            try writeFile(try PKI.pem(ca.certificate), to: caCertPath, mode: 0o644)
            let fingerprint = try PKI.fingerprint(ca.certificate)
            logger.info("created hub CA", metadata: ["fingerprint": "\(fingerprint)"])
        default:
            throw TetherError(.storage, "only one of ca.crt and ca.key exists in \(path); restore both from a backup (a new CA would orphan every enrolled agent)")
        }

        let certPath = path + "/hub.crt", keyPath = path + "/hub.key"
        var serving: Certificate?
        var servingKeyPEM: String?
        if let certPEM = try? String(contentsOfFile: certPath, encoding: .utf8),
           let keyPEM = try? String(contentsOfFile: keyPath, encoding: .utf8),
           let cert = try? Certificate(pemEncoded: certPEM),
           let key = try? P256.Signing.PrivateKey(pemRepresentation: keyPEM),
           cert.publicKey == Certificate.PublicKey(key.publicKey),
           PKI.isIssued(cert, by: ca.certificate),
           cert.notValidAfter > now.addingTimeInterval(30 * 86_400),
           advertise.allSatisfy({ CertificateChecks.names(cert, host: $0) })
        {
            serving = cert
            servingKeyPEM = keyPEM
        }
        if serving == nil {
            let key = P256.Signing.PrivateKey()
            let cert = try ca.issueServingCertificate(
                for: Certificate.PublicKey(key.publicKey), names: advertise, lifetime: .seconds(365 * 86_400), now: now)
            try writeSecret(key.pemRepresentation, to: keyPath)
            try writeFile(try PKI.pem(cert), to: certPath, mode: 0o644)
            serving = cert
            servingKeyPEM = key.pemRepresentation
            logger.info("issued hub serving certificate", metadata: ["names": "\(advertise.joined(separator: ","))"])
        }
        return DataDirectory(path: path, ca: ca, servingCertificate: serving!, servingKeyPEM: servingKeyPEM!)
    }

    /// Writes the operator credential file (0600) for an admin API at `server`,
    /// keeping the existing token when there is one. Returns the token's hash, which
    /// is all the database keeps.
    func writeCredentials(server: String, database: HubDatabase, now: Date) throws {
        var token: String?
        if let data = FileManager.default.contents(atPath: credentialsPath),
           let existing = try? JSONDecoder().decode(AdminCredentials.self, from: data),
           try database.isAdminToken(hash: AdminCredentials.hash(existing.token)) {
            token = existing.token
        }
        if token == nil {
            let fresh = AdminCredentials.newToken()
            try database.addAdminToken(hash: AdminCredentials.hash(fresh), now: now)
            token = fresh
        }
        let credentials = AdminCredentials(server: server, token: token!, caCertificate: try PKI.pem(ca.certificate))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeSecret(String(decoding: try encoder.encode(credentials), as: UTF8.self), to: credentialsPath)
    }
}

/// Writes a file atomically with mode 0600.
func writeSecret(_ text: String, to path: String) throws {
    try AtomicFile.write(Data(text.utf8), to: path, mode: 0o600)
}

func writeFile(_ text: String, to path: String, mode: mode_t) throws {
    try AtomicFile.write(Data(text.utf8), to: path, mode: mode)
}
