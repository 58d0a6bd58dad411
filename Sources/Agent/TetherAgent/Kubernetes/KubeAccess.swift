/// The Kubernetes API access the agent needs, as RBAC rules: every request the agent
/// makes is allowed by one of them, and nothing else is. The chart's ClusterRole and
/// Role are checked against this list (`Tests/chart`), and the requests the agent
/// makes against the API emulator are checked against it (`ReconcileTests`).
/// `tether-agent permissions` prints it.
struct KubeAccessRule: Codable, Hashable, Sendable {
    enum Scope: String, Codable, Sendable {
        /// A ClusterRole bound cluster-wide.
        case cluster
        /// A Role in the agent's own namespace.
        case ownNamespace = "own-namespace"
    }
    var scope: Scope
    var apiGroups: [String]
    var resources: [String]
    var verbs: [String]
    var resourceNames: [String]?
    var why: String
}

enum KubeAccess {
    /// Reading, applying (server-side apply is `patch`, and also `create` when the
    /// object is new), watching for drift and pruning the kinds bundles carry.
    static let managedVerbs = ["get", "list", "watch", "create", "patch", "delete"]

    static func required(identitySecret: String?, auditSecret: String? = nil) -> [KubeAccessRule] {
        var rules: [KubeAccessRule] = []
        let groups = Dictionary(grouping: KubeResource.managed, by: \.group)
        for group in groups.keys.sorted() {
            rules.append(KubeAccessRule(
                scope: .cluster, apiGroups: [group], resources: groups[group]!.map(\.plural), verbs: managedVerbs,
                why: "apply policy bundles with server-side apply (patch; create when new), read before applying, list and watch to put back hand edits, delete to prune what a bundle no longer holds"))
        }
        rules.append(KubeAccessRule(
            scope: .cluster, apiGroups: [KubeResource.clusterRole.group], resources: [KubeResource.clusterRole.plural, KubeResource.role.plural],
            verbs: ["bind", "escalate"],
            why: "without these the API server refuses roles, and bindings to roles, that grant what the agent does not hold itself"))
        rules.append(KubeAccessRule(
            scope: .ownNamespace, apiGroups: [""], resources: [KubeResource.serviceAccount.plural], verbs: ["get", "list", "create", "delete"],
            why: "just-in-time service accounts, one per person's session, made on their first request through the hub and deleted when the session ends"))
        rules.append(KubeAccessRule(
            scope: .ownNamespace, apiGroups: [""], resources: [KubeResource.serviceAccount.plural + "/token"], verbs: ["create"],
            why: "a TokenRequest token for a just-in-time account, which expires with the session (at most an hour)"))
        let secrets = [identitySecret, auditSecret].compactMap { $0 }
        if !secrets.isEmpty {
            rules.append(KubeAccessRule(
                scope: .ownNamespace, apiGroups: [""], resources: [KubeResource.secret.plural], verbs: ["get", "create", "patch"],
                resourceNames: secrets,
                why: "keep the agent's identity (key and certificate) and its audit webhook's token and CA in Secrets of its own, so a rescheduled pod keeps them"))
        }
        return rules
    }

    /// Whether `required(identitySecret:auditSecret:)` allows one authorization check, as the API
    /// server's RBAC authorizer would decide it.
    static func allows(_ rules: [KubeAccessRule], verb: String, group: String, resource: String, namespace: String?, name: String?, ownNamespace: String) -> Bool {
        rules.contains { rule in
            switch rule.scope {
            case .cluster: break
            case .ownNamespace: guard namespace == ownNamespace else { return false }
            }
            guard rule.apiGroups.contains(group), rule.resources.contains(resource), rule.verbs.contains(verb) else { return false }
            if let names = rule.resourceNames {
                guard let name, names.contains(name) else { return false }
            }
            return true
        }
    }
}
