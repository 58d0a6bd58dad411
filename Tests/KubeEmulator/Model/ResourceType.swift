/// One served resource: where it lives in the API and how the real server treats it.
public struct ResourceType: Sendable, Hashable {
    /// API group; "" for the core group.
    public let group: String
    public let version: String
    /// Plural lower-case name used in paths, e.g. `clusterroles`.
    public let plural: String
    public let kind: String
    public let namespaced: Bool
    /// Whether the real server sets and bumps `metadata.generation` (spec changes).
    let tracksGeneration: Bool
    /// Whether `status` is a subresource, so it is ignored on writes to the main resource.
    let hasStatus: Bool

    public var apiVersion: String { group.isEmpty ? version : "\(group)/\(version)" }
    /// `plural.group`, or just `plural` for the core group, as error messages name it.
    var qualifiedName: String { group.isEmpty ? plural : "\(plural).\(group)" }
    /// `Kind.group`, or just `Kind` for the core group, as 422 messages name it.
    var qualifiedKind: String { group.isEmpty ? kind : "\(kind).\(group)" }

    public static let namespaces = ResourceType(group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false, tracksGeneration: false, hasStatus: true)
    public static let serviceAccounts = ResourceType(group: "", version: "v1", plural: "serviceaccounts", kind: "ServiceAccount", namespaced: true, tracksGeneration: false, hasStatus: false)
    public static let pods = ResourceType(group: "", version: "v1", plural: "pods", kind: "Pod", namespaced: true, tracksGeneration: false, hasStatus: true)
    public static let secrets = ResourceType(group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true, tracksGeneration: false, hasStatus: false)
    public static let configMaps = ResourceType(group: "", version: "v1", plural: "configmaps", kind: "ConfigMap", namespaced: true, tracksGeneration: false, hasStatus: false)
    public static let roles = ResourceType(group: "rbac.authorization.k8s.io", version: "v1", plural: "roles", kind: "Role", namespaced: true, tracksGeneration: false, hasStatus: false)
    public static let roleBindings = ResourceType(group: "rbac.authorization.k8s.io", version: "v1", plural: "rolebindings", kind: "RoleBinding", namespaced: true, tracksGeneration: false, hasStatus: false)
    public static let clusterRoles = ResourceType(group: "rbac.authorization.k8s.io", version: "v1", plural: "clusterroles", kind: "ClusterRole", namespaced: false, tracksGeneration: false, hasStatus: false)
    public static let clusterRoleBindings = ResourceType(group: "rbac.authorization.k8s.io", version: "v1", plural: "clusterrolebindings", kind: "ClusterRoleBinding", namespaced: false, tracksGeneration: false, hasStatus: false)
    public static let validatingAdmissionPolicies = ResourceType(group: "admissionregistration.k8s.io", version: "v1", plural: "validatingadmissionpolicies", kind: "ValidatingAdmissionPolicy", namespaced: false, tracksGeneration: true, hasStatus: true)
    public static let validatingAdmissionPolicyBindings = ResourceType(group: "admissionregistration.k8s.io", version: "v1", plural: "validatingadmissionpolicybindings", kind: "ValidatingAdmissionPolicyBinding", namespaced: false, tracksGeneration: true, hasStatus: false)

    /// Every resource the emulator serves.
    public static let all: [ResourceType] = [
        .namespaces, .serviceAccounts, .pods, .secrets, .configMaps, .roles, .roleBindings, .clusterRoles, .clusterRoleBindings,
        .validatingAdmissionPolicies, .validatingAdmissionPolicyBindings,
    ]

    static func find(group: String, version: String, plural: String) -> ResourceType? {
        all.first { $0.group == group && $0.version == version && $0.plural == plural }
    }

    /// Names the real server accepts for this kind.
    var nameRule: NameRule {
        switch self {
        case .namespaces: return .dns1123Label
        case .roles, .roleBindings, .clusterRoles, .clusterRoleBindings: return .pathSegment
        default: return .dns1123Subdomain
        }
    }
}

enum NameRule { case dns1123Subdomain, dns1123Label, pathSegment }
