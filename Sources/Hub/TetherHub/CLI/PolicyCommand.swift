import ArgumentParser
import Foundation
import Shared

/// `tether-hub policy …`: bundles of RBAC and admission policy aimed at clusters by label.
struct PolicyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Apply, list, show, delete and follow policy bundles.",
        subcommands: [Apply.self, List.self, Get.self, Delete.self, Status.self])

    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Store bundles from a YAML file or a directory of them; matching clusters get them within seconds.",
            discussion: "Every file is checked first; if any is refused, nothing is stored.")

        @Option(name: .shortAndLong, help: ArgumentHelp("A bundle file, or a directory of .yaml/.yml files.", valueName: "file|dir"))
        var filename: String

        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let files = try YAMLFiles.read(filename)
            let result: AdminServer.ApplyResult = try await admin.client().call(.POST, "/v1/policies", body: AdminServer.ApplyRequest(files: files))
            for bundle in result.bundles { print("policybundle/\(bundle) applied") }
            for changed in result.changedClusters { print("  cluster \(changed.cluster) -> revision \(changed.revision)") }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List bundles and the clusters each selects.",
            discussion: """
                PRIVILEGED is yes for a bundle that grants cluster-admin, a role with every verb on \
                every resource, or access for system:anonymous, system:unauthenticated or \
                system:authenticated (allowed only with spec.allowPrivileged: true); the json output \
                has allowPrivileged and privilegedGrants (what each such grant is).
                """)
        @Option(help: "table or json.") var output: OutputFormat = .table
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let bundles: [AdminServer.BundleView] = try await admin.client().call(.GET, "/v1/policies")
            switch output {
            case .json:
                print(String(decoding: try JSONEncoder.tether.encode(bundles), as: UTF8.self))
            case .table:
                print(Table.render(["NAME", "OBJECTS", "PRIVILEGED", "CLUSTERS", "UPDATED"], bundles.map {
                    [$0.name, "\($0.resources)", $0.privilegedGrants.isEmpty ? "no" : "yes",
                     $0.clusters.isEmpty ? "-" : $0.clusters.joined(separator: ","), Table.date($0.updatedAt)]
                }))
            }
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one bundle as stored.")
        @Argument(help: "Bundle name.") var name: String
        @Option(name: .shortAndLong, help: "yaml or json.") var output: String = "yaml"
        @OptionGroup var admin: AdminOptions

        func validate() throws {
            guard ["yaml", "json"].contains(output) else { throw ValidationError("--output must be yaml or json") }
        }

        func run() async throws {
            let view: AdminServer.BundleView = try await admin.client().call(.GET, "/v1/policies/\(name)")
            try YAMLText.printDocument(view.document, as: output)
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a bundle; its objects are pruned from every cluster it reached.")
        @Argument(help: "Bundle name.") var name: String
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let result: AdminServer.ApplyResult = try await admin.client().call(.DELETE, "/v1/policies/\(name)")
            print("policybundle/\(name) deleted")
            for changed in result.changedClusters { print("  cluster \(changed.cluster) -> revision \(changed.revision)") }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Per matching cluster: desired and observed revision, and in-sync, pending or failed (with the API server's message).",
            discussion: "LAST DRIFT is the most recent change made in the cluster that the agent put back (object, when, what was done); the object is in sync again.")
        @Argument(help: "Bundle name.") var name: String
        @Option(help: "table or json.") var output: OutputFormat = .table
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let rows: [PolicyStatusRow] = try await admin.client().call(.GET, "/v1/policies/\(name)/status")
            switch output {
            case .json:
                let encoder = JSONEncoder.tether
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(rows), as: UTF8.self))
            case .table:
                print(Table.render(["CLUSTER", "DESIRED", "OBSERVED", "STATUS", "LAST DRIFT", "MESSAGE"], rows.map {
                    [$0.cluster, "\($0.desiredRevision)", $0.observedRevision.map { "\($0)" } ?? "-", $0.state,
                     $0.lastDrift.map { "\($0.object) at \(Table.date($0.at)): \($0.action)" } ?? "-", $0.message ?? ""]
                }))
            }
        }
    }
}

/// The files `-f FILE|DIR` names: one file, or the .yaml/.yml files of a directory
/// in name order, each read as UTF-8 text.
enum YAMLFiles {
    static func read(_ filename: String) throws -> [AdminServer.ApplyRequest.File] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: filename, isDirectory: &isDir) else {
            throw ValidationError("\(filename) does not exist")
        }
        let paths = isDir.boolValue
            ? try FileManager.default.contentsOfDirectory(atPath: filename).filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }.sorted()
                .map { (filename as NSString).appendingPathComponent($0) }
            : [filename]
        guard !paths.isEmpty else { throw ValidationError("no .yaml or .yml files in \(filename)") }
        return try paths.map { path in
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw TetherError(.invalidArgument, "\(path): cannot read it as UTF-8 text")
            }
            return .init(name: path, yaml: text)
        }
    }
}

/// Renders JSON-shaped values as block YAML (what `policy get` shows).
enum YAMLText {
    /// Prints a stored document (JSON text) as `yaml` or `json` (`get -o`).
    static func printDocument(_ text: String?, as output: String) throws {
        let document = try JSONSerialization.jsonObject(with: Data((text ?? "{}").utf8))
        if output == "json" {
            print(String(decoding: try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]), as: UTF8.self))
        } else {
            print(render(document), terminator: "")
        }
    }

    static func render(_ value: Any, indent: Int = 0) -> String {
        let pad = String(repeating: "  ", count: indent)
        switch value {
        case let dict as [String: Any]:
            if dict.isEmpty { return "{}\n" }
            return dict.keys.sorted().map { key in
                let v = dict[key]!
                if isScalar(v) { return "\(pad)\(key): \(scalar(v))\n" }
                if let d = v as? [String: Any], d.isEmpty { return "\(pad)\(key): {}\n" }
                if let a = v as? [Any], a.isEmpty { return "\(pad)\(key): []\n" }
                return "\(pad)\(key):\n" + render(v, indent: indent + 1)
            }.joined()
        case let array as [Any]:
            return array.map { item in
                if isScalar(item) { return "\(pad)- \(scalar(item))\n" }
                let nested = render(item, indent: indent + 1)
                return "\(pad)- " + nested.dropFirst(pad.count + 2)
            }.joined()
        default:
            return "\(pad)\(scalar(value))\n"
        }
    }

    static func isScalar(_ v: Any) -> Bool { !(v is [String: Any]) && !(v is [Any]) }

    static func scalar(_ v: Any) -> String {
        switch v {
        case let s as String:
            let plain = !s.isEmpty && s.allSatisfy { $0.isLetter || $0.isNumber || "-_./".contains($0) }
                && !["true", "false", "null", "yes", "no", "on", "off", "~"].contains(s.lowercased()) && Double(s) == nil
            return plain ? s : "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        case let b as Bool where String(describing: type(of: v)).contains("Bool"):
            return b ? "true" : "false"
        case let n as NSNumber:
            if String(cString: n.objCType) == "c" { return n.boolValue ? "true" : "false" }
            return "\(n)"
        case is NSNull:
            return "null"
        default:
            return "\(v)"
        }
    }
}
