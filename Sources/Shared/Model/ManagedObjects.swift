import Foundation

/// The Kubernetes kinds a policy bundle may carry, with their API versions, scope
/// and apply order. The hub refuses any other kind; the agent reads and writes only
/// these (and its own Secrets).
public enum ManagedKind: String, CaseIterable, Sendable {
    case namespace = "Namespace"
    case clusterRole = "ClusterRole"
    case role = "Role"
    case clusterRoleBinding = "ClusterRoleBinding"
    case roleBinding = "RoleBinding"
    case validatingAdmissionPolicy = "ValidatingAdmissionPolicy"
    case validatingAdmissionPolicyBinding = "ValidatingAdmissionPolicyBinding"

    public var group: String {
        switch self {
        case .namespace: ""
        case .clusterRole, .role, .clusterRoleBinding, .roleBinding: "rbac.authorization.k8s.io"
        case .validatingAdmissionPolicy, .validatingAdmissionPolicyBinding: "admissionregistration.k8s.io"
        }
    }

    public var version: String { "v1" }

    public var apiVersion: String { group.isEmpty ? version : "\(group)/\(version)" }

    public var isNamespaced: Bool { self == .role || self == .roleBinding }

    /// The resource's plural name in API paths.
    public var plural: String {
        switch self {
        case .namespace: "namespaces"
        case .clusterRole: "clusterroles"
        case .role: "roles"
        case .clusterRoleBinding: "clusterrolebindings"
        case .roleBinding: "rolebindings"
        case .validatingAdmissionPolicy: "validatingadmissionpolicies"
        case .validatingAdmissionPolicyBinding: "validatingadmissionpolicybindings"
        }
    }

    /// Apply order: namespaces first, then what lives in them; roles before
    /// bindings; policies before their bindings.
    public var applyOrder: Int {
        switch self {
        case .namespace: 0
        case .clusterRole, .role: 1
        case .clusterRoleBinding, .roleBinding: 2
        case .validatingAdmissionPolicy: 3
        case .validatingAdmissionPolicyBinding: 4
        }
    }

    /// Where an object of an unknown kind sorts (after every managed kind).
    public static func applyOrder(of kind: String) -> Int { ManagedKind(rawValue: kind)?.applyOrder ?? 9 }

    public static var allowedList: String { allCases.map(\.rawValue).joined(separator: ", ") }
}

/// How hub and agent name one object of a cluster's desired state: `Kind/name` or
/// `Kind/namespace/name`. An object may come from one bundle only, by this key.
public struct ObjectKey: Hashable, Sendable, CustomStringConvertible {
    public var kind: String
    public var namespace: String?
    public var name: String

    public init(kind: String, namespace: String?, name: String) {
        self.kind = kind
        self.namespace = namespace
        self.name = name
    }

    /// Reads kind, metadata.namespace and metadata.name of a decoded object.
    public init(object: [String: Any]) {
        let metadata = object["metadata"] as? [String: Any] ?? [:]
        self.init(kind: object["kind"] as? String ?? "", namespace: metadata["namespace"] as? String, name: metadata["name"] as? String ?? "")
    }

    public var description: String { [kind, namespace, name].compactMap { $0 }.joined(separator: "/") }
}

/// What became of one object in a cluster, as the agent reports it and the hub stores it.
public enum ObjectState: String, Codable, Sendable, CaseIterable {
    /// In the cluster as desired.
    case applied
    /// Could not be applied (or is not Tether's to change); the message says why.
    case failed
    /// Someone changed or deleted it in the cluster and the agent put it back.
    case drifted
    /// No longer desired and deleted by the agent.
    case pruned
}
