import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOSSL
import Shared
import Yams

/// A person's session as the CLI keeps it (`session create --output FILE`, later
/// `login`): where the hub's access listener is, the credential, and the CA that
/// signs the listener's certificate (absent when it has a publicly trusted one).
struct SessionFile: Codable, Sendable {
    var hub: String
    var user: String
    var credential: String
    var expiresAt: Date
    var caCertificate: String?

    static var defaultPath: String {
        let home = ProcessInfo.processInfo.environment["HOME"] ?? FileManager.default.homeDirectoryForCurrentUser.path
        return home + "/.config/tether/session.json"
    }

    static func read(_ path: String) throws -> SessionFile {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TetherError(.notFound, "no session file at \(path); ask an operator for one (tether-hub session create --output FILE) or log in")
        }
        do {
            return try JSONDecoder.tether.decode(SessionFile.self, from: data)
        } catch {
            throw TetherError(.invalidArgument, "\(path) is not a Tether session file: \(error)")
        }
    }

    func write(to path: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) }
        let encoder = JSONEncoder.tether
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try AtomicFile.write(try encoder.encode(self), to: path, mode: 0o600)
    }

    /// GETs a `/tether/v1/…` path of the access listener with the session.
    func get<Response: Decodable>(_ path: String, as: Response.Type = Response.self) async throws -> Response {
        try await AccessClient(hub: hub, caCertificate: caCertificate).call(.GET, path, bearer: credential)
    }
}

/// `tether-hub kubeconfig`: a kubeconfig with a context per cluster the session reaches.
struct KubeconfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kubeconfig",
        abstract: "Write a kubeconfig with a context for every cluster your session can reach through the hub.",
        discussion: """
            Each context is named tether-CLUSTER; its server is the hub's access listener \
            (https://HUB:7443/clusters/CLUSTER) with the hub's CA embedded, and its user runs \
            `tether-hub credential` (kubectl's exec credential plugin) for your session, so \
            the file holds no secret and an ended session tells you to log in again. \
            Without --output or --merge the kubeconfig goes to stdout.
            """)

    @OptionGroup var sessionOptions: SessionOptions
    @Option(name: .shortAndLong, help: ArgumentHelp("Write the kubeconfig to this file (replacing it).", valueName: "path"))
    var output: String?
    @Flag(help: "Add the contexts to ~/.kube/config (or $KUBECONFIG's first file), replacing only tether-* entries.")
    var merge = false
    @Option(help: ArgumentHelp("Only this cluster (repeatable).", valueName: "name"))
    var cluster: [String] = []

    func validate() throws {
        if merge && output != nil { throw ValidationError("--merge and --output exclude each other") }
    }

    func run() async throws {
        let (file, path, explicit) = try sessionOptions.live()
        var clusters: [AccessProxy.ReachableCluster] = try await file.get("/tether/v1/clusters")
        if !cluster.isEmpty {
            for name in cluster where !clusters.contains(where: { $0.name == name }) {
                throw TetherError(.notFound, "your session cannot reach cluster \(name) (or it does not exist)")
            }
            clusters = clusters.filter { cluster.contains($0.name) }
        }
        if clusters.isEmpty { FileHandle.standardError.write(Data("no AccessRole gives \(file.user) any cluster yet\n".utf8)) }
        let plugin = Kubeconfig.Plugin(command: Kubeconfig.executable, arguments: ["credential"] + (explicit ? ["--session", path] : ["--hub", file.hub]))
        let fresh = Kubeconfig.document(for: file, clusters: clusters.map(\.name), plugin: plugin)
        if merge {
            let target = Kubeconfig.defaultPath
            let merged = try Kubeconfig.merge(fresh, into: target)
            try Kubeconfig.write(merged, to: target)
            FileHandle.standardError.write(Data("merged \(clusters.count) contexts into \(target)\n".utf8))
        } else if let output {
            try Kubeconfig.write(fresh, to: output)
            FileHandle.standardError.write(Data("wrote \(clusters.count) contexts to \(output)\n".utf8))
        } else {
            print(try Yams.dump(object: fresh), terminator: "")
        }
        for reachable in clusters {
            FileHandle.standardError.write(Data("  tether-\(reachable.name): \(reachable.status.rawValue), \(reachable.grants.joined(separator: ", "))\n".utf8))
        }
    }
}

enum Kubeconfig {
    static var defaultPath: String {
        if let env = ProcessInfo.processInfo.environment["KUBECONFIG"], let first = env.split(separator: ":").first { return String(first) }
        let home = ProcessInfo.processInfo.environment["HOME"] ?? FileManager.default.homeDirectoryForCurrentUser.path
        return home + "/.kube/config"
    }

    static func userName(_ file: SessionFile) -> String {
        let host = URL(string: file.hub)?.host ?? "hub"
        return "tether-\(host)-\(file.user)"
    }

    /// How kubectl gets the credential: `tether-hub credential …` as an exec plugin.
    struct Plugin {
        var command: String
        var arguments: [String]
    }

    /// This program's own path, so the plugin runs whether or not it is on PATH.
    static var executable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    static func document(for file: SessionFile, clusters: [String], plugin: Plugin) -> [String: Any] {
        let user = userName(file)
        var clusterEntry: [String: Any] = [:]
        if let ca = file.caCertificate { clusterEntry["certificate-authority-data"] = Data(ca.utf8).base64EncodedString() }
        return [
            "apiVersion": "v1", "kind": "Config", "preferences": [String: Any](),
            "current-context": clusters.first.map { "tether-\($0)" } ?? "",
            "clusters": clusters.map { name -> [String: Any] in
                var entry = clusterEntry
                entry["server"] = file.hub + "/clusters/" + name
                return ["name": "tether-\(name)", "cluster": entry]
            },
            "contexts": clusters.map { ["name": "tether-\($0)", "context": ["cluster": "tether-\($0)", "user": user]] },
            "users": [["name": user, "user": ["exec": [
                "apiVersion": "client.authentication.k8s.io/v1", "command": plugin.command, "args": plugin.arguments,
                "interactiveMode": "Never", "provideClusterInfo": false,
                "installHint": "tether-hub is the Tether CLI; get it from your platform team, then run: tether-hub login --hub \(file.hub)",
            ] as [String: Any]]]],
        ]
    }

    /// The same with the credential itself as the user's token (the console's
    /// download: kubectl uses it at once, no CLI needed; it ends with the session).
    static func document(for file: SessionFile, clusters: [String], token: String) -> [String: Any] {
        var document = document(for: file, clusters: clusters, plugin: Plugin(command: "", arguments: []))
        document["users"] = [["name": userName(file), "user": ["token": token]]]
        return document
    }

    /// `fresh`'s entries added to the kubeconfig at `path`: entries named as Tether's
    /// (tether-*) are replaced, every other entry and setting is kept as it was.
    static func merge(_ fresh: [String: Any], into path: String) throws -> [String: Any] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            return fresh
        }
        guard var existing = try Yams.load(yaml: text) as? [String: Any] else {
            throw TetherError(.invalidArgument, "\(path) is not a kubeconfig (not a YAML mapping); nothing was changed")
        }
        for key in ["clusters", "contexts", "users"] {
            let ours = fresh[key] as? [[String: Any]] ?? []
            let names = Set(ours.compactMap { $0["name"] as? String })
            let kept = (existing[key] as? [[String: Any]] ?? []).filter { !names.contains($0["name"] as? String ?? "") }
            existing[key] = kept + ours
        }
        if (existing["current-context"] as? String ?? "").isEmpty { existing["current-context"] = fresh["current-context"] }
        existing["apiVersion"] = existing["apiVersion"] ?? "v1"
        existing["kind"] = existing["kind"] ?? "Config"
        return existing
    }

    static func write(_ document: [String: Any], to path: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) }
        try AtomicFile.write(Data(try Yams.dump(object: document).utf8), to: path, mode: 0o600)
    }
}
