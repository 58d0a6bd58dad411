import Foundation
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherHub

/// AccessRoles: what they grant whom on which clusters, what is refused (with the
/// file and line), the privilege guard, and `who-can` / `explain`.
@Suite struct AccessRoleTests {
    static let roles = """
        apiVersion: tether.dev/v1
        kind: AccessRole
        metadata: {name: prod-view}
        spec:
          subjects:
            - {kind: Group, name: developers}
          clusterSelector: {matchLabels: {env: prod}}
          clusterRoles: [view]
        ---
        apiVersion: tether.dev/v1
        kind: AccessRole
        metadata: {name: team-a-edit}
        spec:
          subjects:
            - {kind: User, name: alice@example.com}
          clusterSelector: {}
          namespaces:
            - name: team-a
              clusterRoles: [edit]
              roles: [deployer]
          maxSessionDuration: 4h
        """

    @Test func parsesRolesAndTheirGrants() throws {
        let parsed = try AccessRoleParser.parse(yaml: Self.roles, file: "roles.yaml")
        #expect(parsed.map(\.name) == ["prod-view", "team-a-edit"])
        #expect(parsed[0].subjects == [AccessSubject(kind: .group, name: "developers")])
        #expect(parsed[0].grants.summary == ["ClusterRole/view"])
        #expect(parsed[1].grants.summary == ["team-a: ClusterRole/edit", "team-a: Role/deployer"])
        #expect(parsed[1].maxSessionDuration == 4 * 3600)
        #expect(!parsed[1].allowPrivileged)
        // What `access get` prints reads back as the same role.
        let document = try JSONSerialization.data(withJSONObject: parsed[1].document)
        let again = try AccessRoleParser.parse(yaml: String(decoding: document, as: UTF8.self), file: "again.yaml")
        #expect(again == [parsed[1]])
    }

    static func refusal(_ yaml: String) -> String {
        do {
            _ = try AccessRoleParser.parse(yaml: yaml, file: "r.yaml")
            return "accepted"
        } catch {
            return "\(error)"
        }
    }

    static func role(_ spec: String) -> String {
        "apiVersion: tether.dev/v1\nkind: AccessRole\nmetadata: {name: r}\nspec:\n" + spec
    }

    @Test func refusalsNameTheFileTheRoleAndTheLine() {
        #expect(Self.refusal(Self.role("""
              subjects:
                - {kind: User, name: a}
                - {kind: ServiceAccount, name: b}
              clusterSelector: {}
              clusterRoles: [view]
            """)) == "r.yaml: line 7: access role r: spec.subjects[1].kind must be User or Group, got 'ServiceAccount'")
        #expect(Self.refusal(Self.role("""
              subjects: [{kind: User, name: a}]
              clusterSelector: {}
            """)) == "r.yaml: line 4: access role r: grants nothing; give spec.clusterRoles and/or spec.namespaces")
        #expect(Self.refusal(Self.role("""
              subjects: [{kind: User, name: a}]
              clusterRoles: [view]
            """)) == "r.yaml: line 4: access role r: spec.clusterSelector is required (use {} to select every cluster)")
        #expect(Self.refusal(Self.role("""
              subjects: [{kind: User, name: a}]
              clusterSelector: {}
              namespaces:
                - {name: Team_A, roles: [x]}
            """)).hasPrefix("r.yaml: line 8: access role r: spec.namespaces[0].name 'Team_A': a lowercase RFC 1123 label"))
        #expect(Self.refusal(Self.role("""
              subjects: [{kind: User, name: a}]
              clusterSelector: {}
              clusterRoles: [view]
              maxSessionDuration: 8
            """)) == "r.yaml: line 8: access role r: spec.maxSessionDuration must be a duration of at least 1m, e.g. 4h or 30m")
        #expect(Self.refusal(Self.role("""
              subjects: [{kind: User, name: a}]
              clusterSelector: {}
              clusterroles: [view]
            """)).hasPrefix("r.yaml: line 7: access role r: spec.clusterroles is not a field of AccessRole"))
        #expect(Self.refusal("apiVersion: tether.dev/v1\nkind: PolicyBundle\nmetadata: {name: r}\nspec: {}\n")
            == "r.yaml: line 1: expected apiVersion tether.dev/v1 and kind AccessRole, got tether.dev/v1 PolicyBundle")
        #expect(Self.refusal("spec: [unclosed\n").hasPrefix("r.yaml: line 2, column 1: invalid YAML"))
        #expect(Self.refusal(Self.roles + "\n---\n" + Self.roles.components(separatedBy: "---")[0]) == "r.yaml: access role prod-view is defined twice")
    }

    @Test func clusterAdminNeedsAllowPrivileged() throws {
        let spec = """
              subjects: [{kind: Group, name: oncall}]
              clusterSelector: {}
              namespaces: [{name: kube-system, clusterRoles: [cluster-admin]}]
            """
        #expect(Self.refusal(Self.role(spec)) == """
            r.yaml: line 4: access role r: grants ClusterRole/cluster-admin in namespace kube-system; \
            an access role may grant this only with spec.allowPrivileged: true
            """)
        let allowed = try AccessRoleParser.parse(yaml: Self.role(spec + "\n  allowPrivileged: true"), file: "r.yaml")
        #expect(allowed.first?.allowPrivileged == true)
        #expect(AccessPrivilege.grants(of: allowed[0], wildcardRoles: []) == ["grants ClusterRole/cluster-admin in namespace kube-system"])
    }

    @Test func decisionIsTheUnionOfTheRolesThatApplyAndSaysWhyTheOthersDoNot() throws {
        let roles = try AccessRoleParser.parse(yaml: Self.roles, file: "roles.yaml")
        let both = AccessDecision.evaluate(roles: roles, user: "alice@example.com", groups: ["developers"], clusterLabels: ["env": "prod"])
        #expect(both.allowed)
        #expect(both.grants.summary == ["ClusterRole/view", "team-a: ClusterRole/edit", "team-a: Role/deployer"])
        #expect(both.grantedBy.map(\.accessRole) == ["prod-view", "team-a-edit"])
        #expect(both.maxSessionDuration == 4 * 3600)

        let dev = AccessDecision.evaluate(roles: roles, user: "alice@example.com", groups: [], clusterLabels: ["env": "dev"])
        #expect(dev.grants.summary == ["team-a: ClusterRole/edit", "team-a: Role/deployer"])
        #expect(dev.notGrantedBy == [.init(accessRole: "prod-view", reason: "its subjects (Group developers) do not include user alice@example.com (no groups)")])

        let bob = AccessDecision.evaluate(roles: roles, user: "bob", groups: ["developers"], clusterLabels: ["env": "dev"])
        #expect(!bob.allowed)
        #expect(bob.notGrantedBy.map(\.reason) == [
            "its clusterSelector does not match the cluster's labels (env=dev)",
            "its subjects (User alice@example.com) do not include user bob or groups developers",
        ])
    }

    @Test func hubStoresRolesAndAnswersWhoCanAndExplain() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.path)
        defer { Task { try? await hub.stop() } }
        _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: ["env": "prod"])
        _ = try await hub.core.addCluster(ClusterName("dev"), labels: ["env": "dev"])
        try await hub.core.applyAccessRoles(try AccessRoleParser.parse(yaml: Self.roles, file: "roles.yaml"))

        let views = try await hub.core.accessRoleViews()
        #expect(views.map(\.name) == ["prod-view", "team-a-edit"])
        #expect(views[0].clusters == ["prod-eu"] && views[1].clusters == ["dev", "prod-eu"])
        #expect(views.allSatisfy { $0.privilegedGrants.isEmpty })

        let who = try await hub.core.whoCan(ClusterName("prod-eu"))
        #expect(who == [
            WhoCanRow(kind: "Group", name: "developers", accessRole: "prod-view", grants: ["ClusterRole/view"]),
            WhoCanRow(kind: "User", name: "alice@example.com", accessRole: "team-a-edit", grants: ["team-a: ClusterRole/edit", "team-a: Role/deployer"]),
        ])
        #expect(try await hub.core.whoCan(ClusterName("dev")).map(\.accessRole) == ["team-a-edit"])
        await #expect(throws: TetherError(.notFound, "cluster 'nowhere' not found")) { try await hub.core.whoCan(ClusterName("nowhere")) }
        let explained = try await hub.core.explainAccess(user: "carol", groups: ["developers"], cluster: ClusterName("dev"))
        #expect(!explained.allowed && explained.notGrantedBy.count == 2)

        // Each change is in the hub's audit log.
        let events = try await hub.core.database.auditEvents(AuditQuery(cluster: "hub", resource: "accessroles"))
        #expect(events.count == 2)
        try await hub.core.deleteAccessRole("prod-view")
        #expect(try await hub.core.whoCan(ClusterName("prod-eu")).map(\.accessRole) == ["team-a-edit"])
        await #expect(throws: TetherError(.notFound, "access role 'prod-view' not found")) { try await hub.core.deleteAccessRole("prod-view") }
    }

    @Test func aRoleAPolicyBundleDefinesWithEveryVerbNeedsAllowPrivilegedToo() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.path)
        defer { Task { try? await hub.stop() } }
        _ = try await hub.core.applyBundles(try PolicyParser.parse(yaml: """
            apiVersion: tether.dev/v1
            kind: PolicyBundle
            metadata: {name: ops}
            spec:
              clusterSelector: {}
              allowPrivileged: true
              resources:
                - apiVersion: rbac.authorization.k8s.io/v1
                  kind: ClusterRole
                  metadata: {name: everything}
                  rules: [{apiGroups: ["*"], resources: ["*"], verbs: ["*"]}]
            """, file: "ops.yaml"))
        let role = Self.role("""
              subjects: [{kind: Group, name: sre}]
              clusterSelector: {}
              clusterRoles: [everything]
            """)
        await #expect(throws: TetherError(.invalidArgument, """
            access role r: grants ClusterRole/everything cluster-wide, which allows every verb on every resource; \
            an access role may grant this only with spec.allowPrivileged: true
            """)) { try await hub.core.applyAccessRoles(try AccessRoleParser.parse(yaml: role, file: "r.yaml")) }
        #expect(try await hub.core.accessRoleViews().isEmpty)
        try await hub.core.applyAccessRoles(try AccessRoleParser.parse(yaml: role + "\n  allowPrivileged: true", file: "r.yaml"))
        #expect(try await hub.core.accessRoleViews().first?.privilegedGrants == ["grants ClusterRole/everything cluster-wide, which allows every verb on every resource"])
    }
}
