import ArgumentParser
import Foundation
import Shared

/// `tether-hub backup`: a consistent copy of a (running) hub's data dir in one file.
struct BackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Write a consistent backup of the hub's data dir to one file, while the hub runs.",
        discussion: """
            Run it on the hub's machine as the user that owns the data dir (under systemd: \
            sudo -u tether-hub tether-hub backup --data-dir /var/lib/tether-hub --to FILE). \
            The database is copied in one read transaction (SQLite VACUUM INTO), so agents and \
            operators keep working meanwhile. The file is a tar archive holding the database, \
            the CA and the hub's keys and the operator credentials: it is written 0600; keep it \
            as secret as the data dir. Restore it with `tether-hub restore`.
            """)

    @Option(help: ArgumentHelp("The hub's data dir.", valueName: "dir"))
    var dataDir = "./tether-data"

    @Option(help: ArgumentHelp("The backup file to write (a tar archive).", valueName: "file"))
    var to: String

    @Flag(help: "Replace --to if it exists.")
    var force = false

    func validate() throws {
        if !force, FileManager.default.fileExists(atPath: to) {
            throw ValidationError("\(to) exists; pass --force to replace it")
        }
    }

    func run() throws {
        let summary = try HubBackup.create(dataDir: dataDir, to: to) { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
        print("wrote \(to): \(summary.files) files, \(ByteCount.format(summary.bytes)) (database \(ByteCount.format(summary.databaseBytes)))")
    }
}

/// `tether-hub restore`: a backup back into an empty data dir.
struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a backup made by `tether-hub backup` into an empty data dir.",
        discussion: """
            Stop the hub first, move its old data dir away (restore refuses to overwrite a hub), \
            restore, then start the hub on the restored dir with the same --listen and --advertise. \
            Agents reconnect with the certificates they hold; clusters, tokens, policy and audit \
            are as they were when the backup was made. Agents whose audit events the hub \
            acknowledged after the backup was made renumber what they still hold; the events \
            the hub had stored after the backup are not in it.
            """)

    @Option(help: ArgumentHelp("The backup file.", valueName: "file"))
    var from: String

    @Option(help: ArgumentHelp("The data dir to restore into (created 0700; must hold no hub).", valueName: "dir"))
    var dataDir = "./tether-data"

    func run() throws {
        _ = try HubBackup.restore(from: from, dataDir: dataDir) { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
        print("restored \(from) into \(dataDir); start the hub with: tether-hub serve --data-dir \(dataDir)")
    }
}
