import Foundation
import Shared
import Yams

/// How to reach and authenticate to a Kubernetes API server: from inside a pod
/// (service-account token, re-read on every request so rotation just works) or from
/// a kubeconfig file for running outside a cluster.
struct KubeConnection: Sendable {
    var server: String
    /// PEM; nil trusts the system roots.
    var caPEM: String?
    var clientCertificatePEM: String?
    var clientKeyPEM: String?
    /// Where the bearer token comes from, read when a request is made.
    var token: TokenSource?
    /// The context's default namespace (or the pod's own).
    var namespace: String?

    enum TokenSource: Sendable {
        case literal(String)
        case file(String)

        func read() throws -> String {
            switch self {
            case .literal(let token): return token
            case .file(let path):
                guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                    throw TetherError(.unauthenticated, "cannot read the service-account token at \(path)")
                }
                return text.trimmingCharacters(in: .whitespacesAndNewlines)
            }
        }
    }

    static let serviceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount"

    /// The in-cluster configuration, if this process runs in a pod.
    static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment,
                          directory: String = serviceAccountDirectory) -> KubeConnection? {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], let port = environment["KUBERNETES_SERVICE_PORT"],
              FileManager.default.fileExists(atPath: directory + "/token")
        else { return nil }
        let hostPart = host.contains(":") ? "[\(host)]" : host
        return KubeConnection(
            server: "https://\(hostPart):\(port)",
            caPEM: try? String(contentsOfFile: directory + "/ca.crt", encoding: .utf8),
            token: .file(directory + "/token"),
            namespace: (try? String(contentsOfFile: directory + "/namespace", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Reads a kubeconfig: the named context (or the current one), its cluster's
    /// server and CA (data or file), and its user's token, token file or client
    /// certificate (data or file). Exec plugins and auth providers are refused.
    static func kubeconfig(path: String, context wanted: String? = nil) throws -> KubeConnection {
        func fail(_ message: String) -> TetherError { TetherError(.invalidArgument, "kubeconfig \(path): \(message)") }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw fail("cannot read it") }
        let root: [String: Any]
        do {
            guard let loaded = try Yams.load(yaml: text) as? [String: Any] else { throw fail("not a kubeconfig mapping") }
            root = loaded
        } catch let error as TetherError {
            throw error
        } catch {
            throw fail("invalid YAML: \(error)")
        }
        let base = (path as NSString).deletingLastPathComponent
        func named(_ list: String, _ name: String) -> [String: Any]? {
            (root[list] as? [[String: Any]])?.first { $0["name"] as? String == name }
        }
        guard let contextName = wanted ?? root["current-context"] as? String, !contextName.isEmpty else {
            throw fail("no current-context; pass --context")
        }
        guard let context = named("contexts", contextName)?["context"] as? [String: Any] else {
            throw fail("no context named '\(contextName)'")
        }
        guard let clusterName = context["cluster"] as? String, let cluster = named("clusters", clusterName)?["cluster"] as? [String: Any],
              let server = cluster["server"] as? String
        else { throw fail("context '\(contextName)' names no cluster with a server") }
        let user = (context["user"] as? String).flatMap { named("users", $0)?["user"] as? [String: Any] } ?? [:]
        func material(_ dataKey: String, _ fileKey: String, in map: [String: Any]) throws -> String? {
            if let data = map[dataKey] as? String {
                guard let decoded = Data(base64Encoded: data).flatMap({ String(data: $0, encoding: .utf8) }) else {
                    throw fail("\(dataKey) is not base64 PEM")
                }
                return decoded
            }
            if let file = map[fileKey] as? String {
                let full = file.hasPrefix("/") ? file : base + "/" + file
                guard let content = try? String(contentsOfFile: full, encoding: .utf8) else { throw fail("cannot read \(fileKey) \(full)") }
                return content
            }
            return nil
        }
        if user["exec"] != nil || user["auth-provider"] != nil {
            throw fail("user '\(context["user"] ?? "")' uses an exec plugin or auth provider; give the agent a token or client certificate")
        }
        var token: TokenSource?
        if let literal = user["token"] as? String {
            token = .literal(literal)
        } else if let file = user["tokenFile"] as? String {
            token = .file(file.hasPrefix("/") ? file : base + "/" + file)
        }
        return KubeConnection(
            server: server.hasSuffix("/") ? String(server.dropLast()) : server,
            caPEM: try material("certificate-authority-data", "certificate-authority", in: cluster),
            clientCertificatePEM: try material("client-certificate-data", "client-certificate", in: user),
            clientKeyPEM: try material("client-key-data", "client-key", in: user),
            token: token,
            namespace: context["namespace"] as? String)
    }
}
