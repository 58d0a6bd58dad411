import Foundation
import Shared

/// Who may reach which clusters with which Kubernetes roles, as an operator writes it:
///
/// ```yaml
/// apiVersion: tether.dev/v1
/// kind: AccessRole
/// metadata: {name: prod-view}
/// spec:
///   subjects: [{kind: Group, name: developers}, {kind: User, name: alice@example.com}]
///   clusterSelector: {matchLabels: {env: prod}}
///   clusterRoles: [view]                                   # bound cluster-wide
///   namespaces: [{name: team-a, clusterRoles: [edit], roles: [deployer]}]
///   maxSessionDuration: 4h                                 # optional
///   allowPrivileged: false                                 # needed for cluster-admin or * on *
/// ```
package struct AccessRole: Codable, Sendable, Equatable {
    package var name: String
    package var subjects: [AccessSubject]
    package var clusterSelector: LabelSelector
    /// ClusterRoles bound cluster-wide (a ClusterRoleBinding each).
    package var clusterRoles: [String]
    /// Per namespace, ClusterRoles and Roles bound in it (a RoleBinding each).
    package var namespaces: [NamespaceGrant]
    /// Seconds; a session of a person this role applies to lasts at most this long.
    package var maxSessionDuration: Int?
    package var allowPrivileged: Bool

    package init(
        name: String, subjects: [AccessSubject], clusterSelector: LabelSelector, clusterRoles: [String] = [],
        namespaces: [NamespaceGrant] = [], maxSessionDuration: Int? = nil, allowPrivileged: Bool = false
    ) {
        self.name = name
        self.subjects = subjects
        self.clusterSelector = clusterSelector
        self.clusterRoles = clusterRoles
        self.namespaces = namespaces
        self.maxSessionDuration = maxSessionDuration
        self.allowPrivileged = allowPrivileged
    }

    /// Whether the role names this person, directly or through one of their groups.
    package func applies(toUser user: String, groups: [String]) -> Bool {
        subjects.contains { ($0.kind == .user && $0.name == user) || ($0.kind == .group && groups.contains($0.name)) }
    }

    /// The role's grants as one `AccessGrants` (what it gives on a cluster it selects).
    package var grants: AccessGrants {
        var grants = AccessGrants()
        grants.clusterRoles = Set(clusterRoles)
        for namespace in namespaces {
            grants.namespaces[namespace.name, default: .init()].clusterRoles.formUnion(namespace.clusterRoles)
            grants.namespaces[namespace.name, default: .init()].roles.formUnion(namespace.roles)
        }
        return grants
    }
}

package struct AccessSubject: Codable, Sendable, Hashable {
    package enum Kind: String, Codable, Sendable { case user = "User", group = "Group" }
    package var kind: Kind
    package var name: String

    package init(kind: Kind, name: String) {
        self.kind = kind
        self.name = name
    }
}

package struct NamespaceGrant: Codable, Sendable, Equatable {
    package var name: String
    package var clusterRoles: [String]
    package var roles: [String]

    package init(name: String, clusterRoles: [String] = [], roles: [String] = []) {
        self.name = name
        self.clusterRoles = clusterRoles
        self.roles = roles
    }
}

/// What a person gets on one cluster: the union of the grants of every AccessRole
/// that names them and selects the cluster. This is what the agent binds to the
/// person's just-in-time service account, and nothing more.
package struct AccessGrants: Codable, Sendable, Equatable {
    package struct Namespace: Codable, Sendable, Equatable {
        package var clusterRoles: Set<String> = []
        package var roles: Set<String> = []
        package init() {}
    }

    package var clusterRoles: Set<String> = []
    package var namespaces: [String: Namespace] = [:]

    package init() {}

    package var isEmpty: Bool { clusterRoles.isEmpty && namespaces.values.allSatisfy { $0.clusterRoles.isEmpty && $0.roles.isEmpty } }

    package mutating func merge(_ other: AccessGrants) {
        clusterRoles.formUnion(other.clusterRoles)
        for (name, grant) in other.namespaces {
            namespaces[name, default: .init()].clusterRoles.formUnion(grant.clusterRoles)
            namespaces[name, default: .init()].roles.formUnion(grant.roles)
        }
    }

    /// One line per binding, sorted: `ClusterRole/view`, `team-a: ClusterRole/edit`,
    /// `team-a: Role/deployer`.
    package var summary: [String] {
        clusterRoles.sorted().map { "ClusterRole/\($0)" }
            + namespaces.keys.sorted().flatMap { ns in
                namespaces[ns]!.clusterRoles.sorted().map { "\(ns): ClusterRole/\($0)" } + namespaces[ns]!.roles.sorted().map { "\(ns): Role/\($0)" }
            }
    }
}

/// Which AccessRoles give a person what on a cluster, and for those that give
/// nothing, why: the answer `access explain` prints and the proxy acts on.
package struct AccessDecision: Codable, Sendable, Equatable {
    package struct Contribution: Codable, Sendable, Equatable {
        package var accessRole: String
        package var grants: [String]
    }
    package struct Miss: Codable, Sendable, Equatable {
        package var accessRole: String
        package var reason: String
    }

    package var grants: AccessGrants
    package var grantedBy: [Contribution]
    package var notGrantedBy: [Miss]
    /// The shortest `maxSessionDuration` among the roles that apply (seconds), if any.
    package var maxSessionDuration: Int?

    package var allowed: Bool { !grants.isEmpty }

    /// Evaluates every role for one person on one cluster.
    package static func evaluate(roles: [AccessRole], user: String, groups: [String], clusterLabels: [String: String]) -> AccessDecision {
        var decision = AccessDecision(grants: AccessGrants(), grantedBy: [], notGrantedBy: [], maxSessionDuration: nil)
        for role in roles.sorted(by: { $0.name < $1.name }) {
            guard role.applies(toUser: user, groups: groups) else {
                let names = role.subjects.map { "\($0.kind.rawValue) \($0.name)" }.joined(separator: ", ")
                decision.notGrantedBy.append(Miss(accessRole: role.name, reason: "its subjects (\(names)) do not include user \(user)"
                    + (groups.isEmpty ? " (no groups)" : " or groups \(groups.joined(separator: ", "))")))
                continue
            }
            guard role.clusterSelector.matches(clusterLabels) else {
                let labels = clusterLabels.isEmpty ? "none" : clusterLabels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
                decision.notGrantedBy.append(Miss(accessRole: role.name, reason: "its clusterSelector does not match the cluster's labels (\(labels))"))
                continue
            }
            decision.grants.merge(role.grants)
            decision.grantedBy.append(Contribution(accessRole: role.name, grants: role.grants.summary))
            if let limit = role.maxSessionDuration { decision.maxSessionDuration = min(decision.maxSessionDuration ?? limit, limit) }
        }
        return decision
    }
}

/// A person's session at the hub, as stored. The credential itself is never
/// stored: it is signed by the hub's session key and names this record's id.
package struct SessionRecord: Codable, Sendable, Equatable {
    package var id: String
    package var user: String
    package var groups: [String]
    /// How the person authenticated: `operator` (issued with `session create`),
    /// later `sso` or `sso+totp`.
    package var method: String
    /// Who issued it (the operator, for `operator` sessions).
    package var issuedBy: String
    package var createdAt: Date
    package var expiresAt: Date
    package var revokedAt: Date?
    package var lastUsedAt: Date?

    package init(id: String, user: String, groups: [String], method: String, issuedBy: String, createdAt: Date, expiresAt: Date,
                 revokedAt: Date? = nil, lastUsedAt: Date? = nil) {
        self.id = id
        self.user = user
        self.groups = groups
        self.method = method
        self.issuedBy = issuedBy
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.revokedAt = revokedAt
        self.lastUsedAt = lastUsedAt
    }

    package func isActive(at now: Date) -> Bool { revokedAt == nil && expiresAt > now }
}
