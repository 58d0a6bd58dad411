import Foundation
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherHub

/// What `policy apply` refuses before anything is stored: privileged grants without
/// consent, YAML aliases and oversized files, and names and references the API
/// server would refuse, each with the file, the object and the line.
@Suite struct PolicyGuardTests {
    static func bundle(_ resources: String, spec extra: String = "", name: String = "ops") -> String {
        """
        apiVersion: tether.dev/v1
        kind: PolicyBundle
        metadata: {name: \(name)}
        spec:
          clusterSelector: {}
        \(extra)
          resources:
            - apiVersion: v1
              kind: Namespace
              metadata: {name: team-a}
        \(resources)
        """
    }

    static func binding(kind: String = "ClusterRoleBinding", name: String = "ops", namespace: String? = nil,
                        roleKind: String = "ClusterRole", role: String, subjects: String) -> String {
        """
            - apiVersion: rbac.authorization.k8s.io/v1
              kind: \(kind)
              metadata: {name: \(name)\(namespace.map { ", namespace: \($0)" } ?? "")}
              roleRef: {apiGroup: rbac.authorization.k8s.io, kind: \(roleKind), name: \(role)}
              subjects: \(subjects)
        """
    }

    static let wildcardRole = """
            - apiVersion: rbac.authorization.k8s.io/v1
              kind: ClusterRole
              metadata: {name: everything}
              rules: [{apiGroups: ["*"], resources: ["*"], verbs: ["*"]}]
        """

    static let devs = "[{kind: Group, name: devs, apiGroup: rbac.authorization.k8s.io}]"

    static func refusal(_ yaml: String) -> String {
        do {
            _ = try PolicyParser.parse(yaml: yaml, file: "bundles/ops.yaml")
            return "accepted"
        } catch {
            return (error as? TetherError)?.message ?? "\(error)"
        }
    }

    // MARK: Privileged grants

    static let privileged: [(String, String, String)] = [
        (binding(role: "cluster-admin", subjects: devs), "resources[1] (ClusterRoleBinding/ops)", "binds cluster-admin"),
        (binding(role: "view", subjects: "[{kind: Group, name: 'system:authenticated', apiGroup: rbac.authorization.k8s.io}]"),
         "resources[1] (ClusterRoleBinding/ops)", "system:authenticated"),
        (binding(kind: "RoleBinding", namespace: "team-a", role: "view", subjects: "[{kind: User, name: 'system:anonymous'}]"),
         "resources[1] (RoleBinding/team-a/ops)", "system:anonymous"),
        (binding(role: "view", subjects: "[{kind: Group, name: 'system:unauthenticated'}]"), "resources[1] (ClusterRoleBinding/ops)", "system:unauthenticated"),
        (wildcardRole, "resources[1] (ClusterRole/everything)", "every verb (*) on every resource (*)"),
        ("""
            - apiVersion: rbac.authorization.k8s.io/v1
              kind: Role
              metadata: {name: owner, namespace: team-a}
              rules: [{apiGroups: [""], resources: ["*"], verbs: ["*"]}]
        """ + "\n" + binding(kind: "RoleBinding", namespace: "team-a", roleKind: "Role", role: "owner", subjects: devs),
         "resources[2] (RoleBinding/team-a/ops)", "binds Role/team-a/owner, which allows every verb on every resource"),
    ]

    @Test(arguments: privileged.indices)
    func privilegedGrantsNeedConsent(_ i: Int) throws {
        let (resources, object, reason) = Self.privileged[i]
        let message = Self.refusal(Self.bundle(resources))
        // resources[1] starts on line 11; in the last case resources[2] on line 15.
        let line = object.hasPrefix("resources[2]") ? 15 : 11
        #expect(message.hasPrefix("bundles/ops.yaml: line \(line): bundle ops: \(object): "), "\(message)")
        #expect(message.contains(reason), "\(message)")
        #expect(message.contains("spec.allowPrivileged: true"), "\(message)")

        let allowed = try PolicyParser.parse(yaml: Self.bundle(resources, spec: "  allowPrivileged: true"), file: "ops.yaml")
        #expect(allowed.first?.allowPrivileged == true)
        let stored = try JSONSerialization.jsonObject(with: try #require(allowed.first).canonicalJSON()) as! [String: Any]
        #expect((stored["spec"] as? [String: Any])?["allowPrivileged"] as? Bool == true)
    }

    @Test func ordinaryBundlesAndBadConsentValues() throws {
        let plain = try PolicyParser.parse(yaml: Self.bundle(Self.binding(role: "view", subjects: Self.devs)), file: "ops.yaml")
        #expect(plain.first?.allowPrivileged == false)
        let stored = try JSONSerialization.jsonObject(with: try #require(plain.first).canonicalJSON()) as! [String: Any]
        #expect((stored["spec"] as? [String: Any])?["allowPrivileged"] == nil, "unchanged bytes for bundles without it")
        let message = Self.refusal(Self.bundle(Self.binding(role: "view", subjects: Self.devs), spec: "  allowPrivileged: \"true\""))
        #expect(message.contains("spec.allowPrivileged must be true or false"), "\(message)")
    }

    @Test func policyListMarksPrivilegedBundles() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        let privileged = Self.bundle(Self.binding(role: "cluster-admin", subjects: Self.devs), spec: "  allowPrivileged: true")
        _ = try await hub.core.applyBundles(try PolicyParser.parse(yaml: privileged, file: "a.yaml"))
        _ = try await hub.core.applyBundles(try PolicyParser.parse(
            yaml: PolicyDistributionTests.bundle("plain", selector: "{}", roles: ["view-pods"]), file: "b.yaml"))
        let views = try await AdminServer.bundleViews(core: hub.core, includeDocument: false)
        #expect(views.map(\.name) == ["ops", "plain"])
        #expect(views[0].allowPrivileged && views[0].privilegedGrants == ["ClusterRoleBinding/ops binds cluster-admin"])
        #expect(!views[1].allowPrivileged && views[1].privilegedGrants.isEmpty)

        // What the CLI prints, table and json.
        let cli = try ChildProcess.binary("tether-hub")
        let credentials = dir.sub("hub") + "/admin-credentials.json"
        let table = try await runCommand(cli, ["policy", "list", "--credentials", credentials])
        #expect(table.status == 0, "\(table.stderr)")
        let lines = table.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(lines.first?.prefix(3) == ["NAME", "OBJECTS", "PRIVILEGED"], "\(table.stdout)")
        #expect(lines.dropFirst().map { Array($0.prefix(3)) } == [["ops", "2", "yes"], ["plain", "1", "no"]], "\(table.stdout)")
        let json = try await runCommand(cli, ["policy", "list", "--output", "json", "--credentials", credentials])
        let listed = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]] ?? []
        #expect(listed.map { $0["privilegedGrants"] as? [String] ?? ["missing"] } == [["ClusterRoleBinding/ops binds cluster-admin"], []])
        #expect(listed.map { $0["allowPrivileged"] as? Bool } == [true, false])

        // Refused through the CLI too, with nothing stored.
        try Self.bundle(Self.wildcardRole).write(toFile: dir.sub("wild.yaml"), atomically: true, encoding: .utf8)
        let refused = try await runCommand(cli, ["policy", "apply", "-f", dir.sub("wild.yaml"), "--credentials", credentials])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("\(dir.sub("wild.yaml")): line 11: bundle ops: resources[1] (ClusterRole/everything)"), "\(refused.stderr)")
        #expect(try await hub.core.database.bundleDocuments().map(\.name) == ["ops", "plain"])
        await #expect(try AdminServer.bundleViews(core: hub.core, includeDocument: false)[0].resources == 2, "the stored ops bundle is unchanged")
        try await hub.stop()
    }

    @Test func bindingAnotherBundlesWildcardRoleNeedsConsentToo() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        func apply(_ yaml: String, file: String) async throws { _ = try await hub.core.applyBundles(try PolicyParser.parse(yaml: yaml, file: file)) }
        try await apply(Self.bundle(Self.wildcardRole, spec: "  allowPrivileged: true", name: "roles"), file: "roles.yaml")

        let binder = Self.bundle(Self.binding(role: "everything", subjects: Self.devs), name: "devs")
        let error = await #expect(throws: TetherError.self) { try await apply(binder, file: "devs.yaml") }
        #expect(error?.message == """
            devs.yaml: line 11: bundle devs: resources[1] (ClusterRoleBinding/ops): binds ClusterRole/everything of bundle roles, \
            which allows every verb on every resource; a bundle may grant this only with spec.allowPrivileged: true
            """, "\(error?.message ?? "")")
        #expect(try await hub.core.database.bundleDocuments().map(\.name) == ["roles"], "nothing stored")

        try await apply(Self.bundle(Self.binding(role: "everything", subjects: Self.devs), spec: "  allowPrivileged: true", name: "devs"), file: "devs.yaml")
        let views = try await AdminServer.bundleViews(core: hub.core, includeDocument: false)
        #expect(views.first { $0.name == "devs" }?.privilegedGrants == [
            "ClusterRoleBinding/ops binds ClusterRole/everything of bundle roles, which allows every verb on every resource",
        ])

        // The other way round: a stored bundle binds a role that a new bundle would
        // turn into a wildcard one.
        try await apply(Self.bundle(Self.binding(name: "later", role: "later", subjects: Self.devs), name: "team"), file: "team.yaml")
        let later = Self.wildcardRole.replacingOccurrences(of: "{name: everything}", with: "{name: later}")
        let reverse = await #expect(throws: TetherError.self) {
            try await apply(Self.bundle(later, spec: "  allowPrivileged: true", name: "more-roles"), file: "more.yaml")
        }
        #expect(reverse?.message.hasPrefix("more.yaml: bundle more-roles would give stored bundle team, which does not set spec.allowPrivileged") == true,
                "\(reverse?.message ?? "")")
        #expect(try await hub.core.database.bundleDocuments().map(\.name) == ["devs", "roles", "team"])
        try await hub.stop()
    }

    // MARK: YAML aliases and size

    /// `levels` anchors, each a list of `width` aliases of the one before: a few
    /// hundred bytes that expand to width^levels strings.
    static func aliasBomb(levels: Int, width: Int) -> String {
        var lines = ["      x-l0: &l0 [\"lol\"]"]
        for level in 1..<levels {
            lines.append("      x-l\(level): &l\(level) [\(Array(repeating: "*l\(level - 1)", count: width).joined(separator: ", "))]")
        }
        return """
            - apiVersion: rbac.authorization.k8s.io/v1
              kind: ClusterRole
              metadata: {name: bomb}
              rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
        \(lines.joined(separator: "\n"))
        """
    }

    @Test func aliasesAreRefusedBeforeTheyExpand() throws {
        let small = Self.refusal(Self.bundle(Self.aliasBomb(levels: 3, width: 10)))
        // The alias names the anchored value's line (15, x-l0) and where it is used again.
        #expect(small.hasPrefix("bundles/ops.yaml: line 15: spec.resources[1].x-l1[0]: YAML aliases are not allowed"), "\(small)")
        #expect(small.contains("*l0") && small.contains("write the value out in full"), "\(small)")

        // The real thing (10 levels of 10, about 1 KB) is refused as fast, without expanding.
        let bomb = Self.bundle(Self.aliasBomb(levels: 10, width: 10))
        #expect(bomb.utf8.count < 2048)
        let started = ContinuousClock.now
        #expect(Self.refusal(bomb).contains("YAML aliases are not allowed"))
        #expect(ContinuousClock.now - started < .seconds(1))

        // A merge key is an alias too; an anchor used once is harmless.
        let merge = Self.bundle("""
            - apiVersion: rbac.authorization.k8s.io/v1
              kind: ClusterRole
              metadata: &meta {name: a}
              rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
            - apiVersion: rbac.authorization.k8s.io/v1
              kind: ClusterRole
              metadata: {<<: *meta, name: b}
              rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
        """)
        #expect(Self.refusal(merge).contains("spec.resources[2].metadata"), "\(Self.refusal(merge))")
        let anchorOnly = Self.bundle("""
            - apiVersion: rbac.authorization.k8s.io/v1
              kind: ClusterRole
              metadata: &meta {name: a}
              rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
        """)
        #expect(try PolicyParser.parse(yaml: anchorOnly, file: "f.yaml").first?.resources.count == 2)
    }

    @Test func deepNestingIsRefusedOrParsedNeverCrashes() throws {
        func nested(_ depth: Int) -> String {
            Self.bundle("""
                - apiVersion: rbac.authorization.k8s.io/v1
                  kind: ClusterRole
                  metadata: {name: deep}
                  rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
                  x-deep: \(String(repeating: "[", count: depth))1\(String(repeating: "]", count: depth))
            """)
        }
        // libyaml stops at 1,000 levels; below that the recursive composers must not
        // run out of stack on the cooperative pool's threads.
        let tooDeep = Self.refusal(nested(5000))
        #expect(tooDeep.hasPrefix("bundles/ops.yaml: line 15") && tooDeep.contains("invalid YAML"), "\(tooDeep)")
        let deep = Self.refusal(nested(990))
        #expect(deep.hasPrefix("bundles/ops.yaml: line 15: spec.resources[1].x-deep[0][0]"), "\(deep)")
        #expect(deep.contains("nested deeper than 64 levels"), "\(deep)")
        #expect(try PolicyParser.parse(yaml: nested(50), file: "f.yaml").first?.resources.count == 2)
    }

    @Test func oversizedFilesAreRefusedWithTheLimit() throws {
        let padding = String(repeating: "# padding to make the file large\n", count: (PolicyParser.maxFileBytes / 32) + 1)
        let message = Self.refusal(Self.bundle(Self.binding(role: "view", subjects: Self.devs)) + "\n" + padding)
        #expect(message.hasPrefix("bundles/ops.yaml: line 1: the file is 1.0 MiB; a policy file may be at most 1.0 MiB"), "\(message)")
    }

    // MARK: Names and references, as the API server checks them

    static let badNames: [(String, String)] = [
        (binding(role: "a/b", subjects: devs), "roleRef.name 'a/b': may not contain '/' or '%'"),
        (binding(role: "view", subjects: devs).replacingOccurrences(of: "kind: ClusterRole, name: view", with: "kind: Role, name: view"),
         "roleRef.kind must be ClusterRole for a ClusterRoleBinding, got 'Role'"),
        (binding(role: "view", subjects: devs).replacingOccurrences(of: "{apiGroup: rbac.authorization.k8s.io, kind", with: "{apiGroup: rbac.example.com, kind"),
         "roleRef.apiGroup must be rbac.authorization.k8s.io"),
        (binding(role: "view", subjects: "[{kind: Robot, name: r2}]"), "subjects[0].kind must be User, Group or ServiceAccount, got 'Robot'"),
        (binding(role: "view", subjects: "[{kind: ServiceAccount, name: deployer}]"), "subjects[0].namespace is required for a ServiceAccount in a ClusterRoleBinding"),
        (binding(kind: "RoleBinding", namespace: "team-a", role: "view", subjects: "[{kind: ServiceAccount, name: Deploy_Bot}]"), "subjects[0].name 'Deploy_Bot': a lowercase RFC 1123 subdomain"),
        (binding(role: "view", subjects: "[{kind: User, name: ''}]"), "subjects[0].name is required"),
        (binding(role: "view", subjects: "[{kind: User, name: alice, apiGroup: v1}]"), "subjects[0].apiGroup must be rbac.authorization.k8s.io for a User"),
        (binding(role: "view", subjects: devs).replacingOccurrences(of: "      roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n", with: ""),
         "roleRef is required"),
        (binding(name: "..", role: "view", subjects: devs), "metadata.name: may not be '..'"),
    ]

    @Test(arguments: badNames.indices)
    func namesAndReferencesTheAPIServerWouldRefuse(_ i: Int) {
        let (resources, problem) = Self.badNames[i]
        let message = Self.refusal(Self.bundle(resources))
        #expect(message.hasPrefix("bundles/ops.yaml: line 11: bundle ops: resources[1] ("), "\(message)")
        #expect(message.contains(problem), "\(message)")
    }

    @Test func namesTheAPIServerAccepts() throws {
        // RBAC names are path segments (colons are fine, as in system:* roles);
        // ServiceAccount subjects of a RoleBinding default to its namespace.
        let yaml = Self.bundle("""
            - apiVersion: rbac.authorization.k8s.io/v1
              kind: ClusterRole
              metadata: {name: "acme:aggregate-to-view"}
              rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
        """ + "\n" + Self.binding(kind: "RoleBinding", name: "acme:deployers", namespace: "team-a", role: "acme:aggregate-to-view",
                                 subjects: "[{kind: ServiceAccount, name: deployer}, {kind: User, name: 'alice@example.com'}, {kind: Group, name: devs}]"))
        let bundle = try #require(try PolicyParser.parse(yaml: yaml, file: "f.yaml").first)
        #expect(bundle.resources.map(\.key) == ["Namespace/team-a", "ClusterRole/acme:aggregate-to-view", "RoleBinding/team-a/acme:deployers"])
    }
}
