import Foundation
import HubStore
import Shared

/// A hub backup: one tar file holding a consistent snapshot of the database and the
/// files that make the hub's identity (CA, serving certificate and keys, operator
/// credentials). Agents trust the CA by its fingerprint, so a restore without the CA
/// would cut every agent off; the archive therefore holds private keys and is written
/// 0600. Made while the hub runs; restored into an empty data dir.
enum HubBackup {
    static let manifestName = "tether-backup.json"
    static let databaseName = "hub.db"
    /// Files copied as they are, with the mode they get back on restore.
    static let files: [(name: String, mode: Int, required: Bool)] = [
        ("ca.crt", 0o644, true), ("ca.key", 0o600, true), ("hub.crt", 0o644, true), ("hub.key", 0o600, true),
        ("admin-credentials.json", 0o600, false),
        // Not required: backups made before sessions existed have none.
        ("session.key", 0o600, false),
        // Without it the second-factor secrets in hub.db cannot be read.
        ("otp.key", 0o600, false),
    ]

    struct Manifest: Codable {
        var format: Int
        var hubVersion: String
        var createdAt: Date
        var databaseBytes: Int
    }

    struct Summary {
        var files: Int
        var bytes: Int
        var databaseBytes: Int
    }

    static func create(dataDir: String, to destination: String, progress: (String) -> Void) throws -> Summary {
        let fm = FileManager.default
        let dir = dataDir.hasSuffix("/") ? String(dataDir.dropLast()) : dataDir
        guard fm.fileExists(atPath: dir + "/" + databaseName) else {
            throw TetherError(.notFound, "\(dir) has no \(databaseName): pass the hub's --data-dir")
        }
        let snapshot = destination + ".snapshot-db"
        try? fm.removeItem(atPath: snapshot)
        defer { try? fm.removeItem(atPath: snapshot) }
        progress("snapshotting \(dir)/\(databaseName) (the hub may keep running)")
        try HubDatabase.snapshot(databaseAt: dir + "/" + databaseName, to: snapshot)
        let databaseBytes = (try fm.attributesOfItem(atPath: snapshot)[.size] as? Int) ?? 0
        progress("database snapshot: \(ByteCount.format(databaseBytes)); writing \(destination)")

        var entries: [(name: String, mode: Int, source: TarArchive.Source)] = []
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let manifest = Manifest(format: 1, hubVersion: TetherVersion.current, createdAt: Date(), databaseBytes: databaseBytes)
        entries.append((manifestName, 0o644, .data(try encoder.encode(manifest))))
        for file in files {
            guard let contents = fm.contents(atPath: dir + "/" + file.name) else {
                if file.required { throw TetherError(.notFound, "\(dir)/\(file.name) is missing or unreadable; is this a hub data dir, and are you its owner?") }
                continue
            }
            entries.append((file.name, file.mode, .data(contents)))
        }
        entries.append((databaseName, 0o600, .file(snapshot)))
        try TarArchive.write(entries, to: destination, mode: 0o600)
        let bytes = (try fm.attributesOfItem(atPath: destination)[.size] as? Int) ?? 0
        return Summary(files: entries.count, bytes: bytes, databaseBytes: databaseBytes)
    }

    /// Restores into `dataDir`, which must not hold a database yet. The database is
    /// checked (integrity, schema not newer than this hub) before this returns.
    static func restore(from source: String, dataDir: String, progress: (String) -> Void) throws -> Manifest {
        let fm = FileManager.default
        let entries = try TarArchive.entries(in: source)
        let byName = Dictionary(entries.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        guard let manifestEntry = byName[manifestName] else {
            throw TetherError(.invalidArgument, "\(source) is not a Tether hub backup: it has no \(manifestName)")
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        guard let manifest = try? decoder.decode(Manifest.self, from: try TarArchive.contents(of: manifestEntry, in: source)), manifest.format == 1 else {
            throw TetherError(.invalidArgument, "\(source): unreadable \(manifestName) (made by a newer tether-hub?)")
        }
        let expected = [databaseName] + files.filter(\.required).map(\.name)
        for name in expected where byName[name] == nil {
            throw TetherError(.invalidArgument, "\(source) is not a complete hub backup: \(name) is missing")
        }
        guard byName[databaseName]!.size == manifest.databaseBytes else {
            throw TetherError(.invalidArgument, "\(source): the database is \(byName[databaseName]!.size) bytes but the manifest says \(manifest.databaseBytes) (damaged?)")
        }

        let dir = dataDir.hasSuffix("/") ? String(dataDir.dropLast()) : dataDir
        for name in [databaseName, "ca.key", "ca.crt"] where fm.fileExists(atPath: dir + "/" + name) {
            throw TetherError(.alreadyExists, "\(dir) already holds a hub (\(name)); restore into an empty or new data dir, or move that one away first")
        }
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try fm.setAttributes([.posixPermissions: 0o700], ofItemAtPath: dir)
        progress("restoring a backup made \(ISO8601DateFormatter().string(from: manifest.createdAt)) by tether-hub \(manifest.hubVersion) (database \(ByteCount.format(manifest.databaseBytes)))")
        var written: [String] = []
        do {
            for name in expected + files.filter({ !$0.required }).map(\.name) {
                guard let entry = byName[name] else { continue }
                let mode = files.first { $0.name == name }?.mode ?? 0o600
                written.append(name)
                try TarArchive.extract(entry, from: source, to: dir + "/" + name, mode: mode_t(mode))
            }
            // Refuses a damaged file or one from a newer hub, and migrates an older one.
            _ = try HubDatabase(path: dir + "/" + databaseName)
        } catch {
            for name in written { try? fm.removeItem(atPath: dir + "/" + name) }
            for suffix in ["-wal", "-shm"] { try? fm.removeItem(atPath: dir + "/" + databaseName + suffix) }
            throw error
        }
        progress("restored \(written.count) files into \(dir)")
        return manifest
    }
}
