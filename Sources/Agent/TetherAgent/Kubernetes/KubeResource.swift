import Foundation
import Shared

/// The Kubernetes kinds the agent reads and writes, with where they live in the API.
struct KubeResource: Hashable, Sendable {
    var kind: String
    var group: String
    var version: String
    var plural: String
    var namespaced: Bool

    var apiVersion: String { group.isEmpty ? version : "\(group)/\(version)" }

    /// `/api/v1/...` or `/apis/<group>/<version>/...` for a collection or one object.
    /// Namespace and name are percent-encoded: a name comes from a bundle, and a `?`,
    /// `#`, `%` or `/` in it must reach the API server as part of the name (which then
    /// decides), never end the path or start a query.
    func path(namespace: String? = nil, name: String? = nil) -> String {
        var path = group.isEmpty ? "/api/\(version)" : "/apis/\(group)/\(version)"
        if namespaced, let namespace { path += "/namespaces/\(Self.escape(namespace))" }
        path += "/\(plural)"
        if let name { path += "/\(Self.escape(name))" }
        return path
    }

    /// RFC 3986 unreserved characters stay, every other byte of the UTF-8 is `%XX`.
    static let unreserved = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

    /// One path segment or query value, percent-encoded.
    static func escape(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: unreserved) ?? ""
    }

    /// `?k=v&…` with every key and value percent-encoded (a `+`, `&` or `=` in a
    /// value stays in the value).
    static func query(_ items: [(String, String)]) -> String {
        items.isEmpty ? "" : "?" + items.map { escape($0.0) + "=" + escape($0.1) }.joined(separator: "&")
    }

    static let namespace = KubeResource(.namespace)
    static let secret = KubeResource(kind: "Secret", group: "", version: "v1", plural: "secrets", namespaced: true)
    static let serviceAccount = KubeResource(kind: "ServiceAccount", group: "", version: "v1", plural: "serviceaccounts", namespaced: true)
    static let clusterRole = KubeResource(.clusterRole)
    static let role = KubeResource(.role)
    static let clusterRoleBinding = KubeResource(.clusterRoleBinding)
    static let roleBinding = KubeResource(.roleBinding)
    static let validatingAdmissionPolicy = KubeResource(.validatingAdmissionPolicy)
    static let validatingAdmissionPolicyBinding = KubeResource(.validatingAdmissionPolicyBinding)

    /// What policy bundles may carry, in apply order.
    static let managed: [KubeResource] = ManagedKind.allCases.sorted { $0.applyOrder < $1.applyOrder }.map(KubeResource.init)

    static func forKind(_ kind: String) -> KubeResource? {
        (managed + [.secret]).first { $0.kind == kind }
    }
}

extension KubeResource {
    /// The resource of a kind policy bundles may carry (the list is `Shared.ManagedKind`).
    init(_ kind: ManagedKind) {
        self.init(kind: kind.rawValue, group: kind.group, version: kind.version, plural: kind.plural, namespaced: kind.isNamespaced)
    }
}
