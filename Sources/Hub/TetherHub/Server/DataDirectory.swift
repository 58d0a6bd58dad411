import Crypto
import Foundation
import Logging
import HubStore
import Shared
import Synchronization
import X509

/// The hub's data directory: created on first start (mode 0700, keys 0600), reused
/// on every later one. Holds the CA, the serving certificate, the database and the
/// operator credential file.
struct DataDirectory {
    let path: String
    let ca: CertificateAuthority
    let servingCertificate: Certificate
    let servingKeyPEM: String
    /// Signs people's session credentials (`session.key`, 32 random bytes, 0600).
    let sessionKey: SymmetricKey
    /// Encrypts second-factor secrets at rest in the database (`otp.key`, 0600): a
    /// copy of hub.db alone does not give anyone's authenticator codes.
    let otpKey: SymmetricKey

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
        try checkOwnership(path)
        try checkSecretModes(path)
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
        return DataDirectory(path: path, ca: ca, servingCertificate: serving!, servingKeyPEM: servingKeyPEM!,
                             sessionKey: try loadKey(path + "/session.key", what: "session signing key", losing: "end every session", logger: logger),
                             otpKey: try loadKey(path + "/otp.key", what: "second-factor encryption key",
                                                 losing: "make every person enroll their authenticator again", logger: logger))
    }

    /// Reads a 32-byte key, making it on first start. A key file that is there but
    /// damaged is refused: a new key would silently `losing` (what the message says).
    static func loadKey(_ path: String, what: String, losing: String, logger: Logger) throws -> SymmetricKey {
        if let text = try? String(contentsOfFile: path, encoding: .utf8) {
            guard let bytes = Base64URL.decode(text.trimmingCharacters(in: .whitespacesAndNewlines)), bytes.count == 32 else {
                throw TetherError(.storage, "\(path) is not a \(what) (32 bytes, base64url); restore it from a backup, or delete it to \(losing)")
            }
            return SymmetricKey(data: bytes)
        }
        let key = SymmetricKey(size: .bits256)
        try writeSecret(Base64URL.encode(key.withUnsafeBytes { Array($0) }) + "\n", to: path)
        logger.info("created \(what)", metadata: ["path": "\(path)"])
        return key
    }

    /// The files that hold secrets: the CA's and the hub's private keys and the
    /// operator's bearer token.
    static let secretFiles = ["ca.key", "hub.key", "admin-credentials.json", "session.key", "otp.key"]

    /// Refuses a data dir that belongs to another user: this process would either
    /// fail half-way through writing to it, or (as root) leave files its real owner
    /// cannot read. Names the `chown` that fixes it.
    static func checkOwnership(_ path: String) throws {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw TetherError(.storage, "cannot inspect data dir \(path): \(String(cString: strerror(errno)))")
        }
        let me = geteuid()
        guard info.st_uid == me else {
            throw TetherError(.storage, """
                data dir \(path) belongs to \(userName(info.st_uid)), but this hub runs as \(userName(me)); \
                run the hub as \(userName(info.st_uid)), or give the dir to this user: chown -R \(userName(me, forCommand: true)) \(shellQuoted(path))
                """)
        }
    }

    /// Refuses private keys and the credential file when group or others may read
    /// them: a secret that has been readable by others cannot be trusted, and the
    /// operator should know. Names the `chmod` that fixes it.
    static func checkSecretModes(_ path: String) throws {
        var exposed: [(file: String, mode: mode_t)] = []
        for name in secretFiles {
            var info = stat()
            let file = path + "/" + name
            guard stat(file, &info) == 0 else { continue }  // created later, 0600
            if info.st_mode & 0o077 != 0 { exposed.append((file, info.st_mode & 0o777)) }
        }
        guard exposed.isEmpty else {
            let list = exposed.map { "\($0.file) (mode \(String($0.mode, radix: 8)))" }.joined(separator: ", ")
            throw TetherError(.storage, """
                \(list) can be read by group or others; the hub will not use exposed secrets. \
                Restrict them, then consider rotating what may have leaked: chmod 600 \(exposed.map { shellQuoted($0.file) }.joined(separator: " "))
                """)
        }
    }

    private static func userName(_ uid: uid_t, forCommand: Bool = false) -> String {
        if let entry = getpwuid(uid), let name = entry.pointee.pw_name {
            return forCommand ? String(cString: name) : "user \(String(cString: name)) (uid \(uid))"
        }
        return forCommand ? "\(uid)" : "uid \(uid)"
    }

    /// Writes the operator credential file (0600) for an admin API at `server`,
    /// keeping the existing token when there is one. Returns the token's hash, which
    /// is all the database keeps.
    func writeCredentials(server: String, database: HubDatabase, now: Date) async throws {
        var token: String?
        if let data = FileManager.default.contents(atPath: credentialsPath),
           let existing = try? JSONDecoder().decode(AdminCredentials.self, from: data) {
            if try await database.isAdminToken(hash: AdminCredentials.hash(existing.token)) { token = existing.token }
        }
        if token == nil {
            let fresh = AdminCredentials.newToken()
            try await database.addAdminToken(hash: AdminCredentials.hash(fresh), now: now)
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

/// Quotes a path for a shell command the operator can paste.
func shellQuoted(_ text: String) -> String {
    let safe = text.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "/._-+=:@,".unicodeScalars.contains($0) }
    return safe && !text.isEmpty ? text : "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// An exclusive `flock` on the data dir's `hub.lock`, held for the life of
/// `tether-hub serve`, so that a second hub started on the same dir refuses to
/// start (naming the first one's PID) instead of sharing its database and
/// rewriting its credential file. The kernel drops the lock when the process
/// exits, however it exits, so a crash never leaves a stale lock.
final class DataDirectoryLock: Sendable {
    let path: String
    private let descriptor: Mutex<Int32>

    private init(path: String, descriptor: Int32) {
        self.path = path
        self.descriptor = Mutex(descriptor)
    }

    /// Takes the lock (creating the data dir, 0700, when it does not exist yet),
    /// or throws naming the process that holds it. Never waits.
    static func acquire(dataDir: String) throws -> DataDirectoryLock {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if !fm.fileExists(atPath: dataDir, isDirectory: &isDir) {
            try fm.createDirectory(atPath: dataDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } else if !isDir.boolValue {
            throw TetherError(.storage, "data dir \(dataDir) exists and is not a directory")
        }
        try DataDirectory.checkOwnership(dataDir)
        let path = dataDir + "/hub.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw TetherError(.storage, "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let failure = errno
            var holder = ""
            var buffer = [UInt8](repeating: 0, count: 32)
            let count = pread(fd, &buffer, buffer.count, 0)
            if count > 0 { holder = String(decoding: buffer[..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
            close(fd)
            guard failure == EWOULDBLOCK else {
                throw TetherError(.storage, "cannot lock \(path): \(String(cString: strerror(failure)))")
            }
            let who = Int32(holder).map { "pid \($0)" } ?? "a process that is still starting"
            throw TetherError(.unavailable, """
                data dir \(dataDir) is in use by another tether-hub (\(who), holding \(path)); \
                stop that hub first, or give this one its own --data-dir
                """)
        }
        // Who holds it, for the refusal above; the lock itself is the flock.
        let pid = Array("\(getpid())\n".utf8)
        guard ftruncate(fd, 0) == 0, pwrite(fd, pid, pid.count, 0) == pid.count else {
            let failure = String(cString: strerror(errno))
            close(fd)
            throw TetherError(.storage, "cannot write \(path): \(failure)")
        }
        return DataDirectoryLock(path: path, descriptor: fd)
    }

    /// Releases the lock; later calls do nothing.
    func release() {
        descriptor.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }

    deinit { release() }
}
