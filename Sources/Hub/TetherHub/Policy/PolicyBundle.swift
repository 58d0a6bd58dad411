import Crypto
import Foundation
import HubStore
import Shared
import Yams

/// Reads policy bundle files, refusing anything the hub would not apply, with an
/// error that names the file, the object and (for YAML errors) the line.
enum PolicyParser {
    /// The largest policy file accepted. Bundles are RBAC and admission policy,
    /// a few KiB each; a megabyte is hundreds of objects, and a cap keeps one request
    /// from holding the hub's memory.
    static let maxFileBytes = 1 << 20
    /// The deepest nesting accepted. RBAC and admission objects nest about ten
    /// levels; libyaml's own limit (1,000) would pass values that JSON conversion
    /// then refuses with a misleading message.
    static let maxDepth = 64

    static func parse(yaml: String, file: String) throws -> [PolicyBundle] {
        let size = yaml.utf8.count
        guard size <= maxFileBytes else {
            throw TetherError(.invalidArgument,
                "\(file): line 1: the file is \(ByteCount.format(size)); a policy file may be at most \(ByteCount.format(maxFileBytes)) (split the bundles over several files)")
        }
        var documents: [Node] = []
        do {
            let parser = try Parser(yaml: yaml)
            while let node = try parser.nextRoot() {
                // Before anything expands the document: an alias bomb composes cheaply
                // (shared nodes) but turns into gigabytes as a dictionary. Anchors are
                // held weakly by the nodes and owned by the parser, so it must live.
                try withExtendedLifetime(parser) { try refuseAliases(node, file: file) }
                documents.append(node)
            }
        } catch let error as YamlError {
            throw TetherError(.invalidArgument, "\(file): \(describe(error))")
        }
        var bundles: [PolicyBundle] = []
        for document in documents {
            let line = document.mark?.line ?? 1
            guard case .mapping = document else {
                throw TetherError(.invalidArgument, "\(file): line \(line): a document must be a PolicyBundle mapping")
            }
            bundles.append(try parseBundle(document, file: file))
        }
        guard !bundles.isEmpty else { throw TetherError(.invalidArgument, "\(file): no PolicyBundle documents") }
        var seen: [String: Int] = [:]
        for bundle in bundles {
            seen[bundle.name, default: 0] += 1
            if seen[bundle.name] == 2 { throw TetherError(.invalidArgument, "\(file): bundle \(bundle.name) is defined twice") }
        }
        return bundles
    }

    /// Refuses YAML aliases (`*name`, and `<<: *name` merges). Yams resolves an
    /// alias to the very node it names, anchor included, so a second visit to the
    /// same anchor object is an alias. The walk stops there, so it never expands
    /// what an alias bomb would. Anchors used once are harmless and allowed.
    static func refuseAliases(_ root: Node, file: String) throws {
        var seen = Set<ObjectIdentifier>()
        func walk(_ node: Node, _ path: String, depth: Int = 0) throws {
            if depth > maxDepth {
                throw TetherError(.invalidArgument,
                    "\(file): line \(node.mark?.line ?? 1): \(path): nested deeper than \(maxDepth) levels; policy objects never need that")
            }
            if let anchor = node.anchor, !seen.insert(ObjectIdentifier(anchor)).inserted {
                let line = node.mark?.line ?? 1
                throw TetherError(.invalidArgument, """
                    \(file): line \(line): \(path.isEmpty ? "document" : path): YAML aliases are not allowed in policy bundles \
                    (*\(anchor.rawValue) repeats the value anchored as &\(anchor.rawValue) on line \(line)); write the value out in full
                    """)
            }
            switch node {
            case .mapping(let mapping):
                for (key, value) in mapping {
                    let name = key.string ?? "?"
                    try walk(key, path, depth: depth + 1)
                    try walk(value, path.isEmpty ? name : path + "." + name, depth: depth + 1)
                }
            case .sequence(let sequence):
                for (i, item) in sequence.enumerated() { try walk(item, path + "[\(i)]", depth: depth + 1) }
            case .scalar, .alias:
                break
            }
        }
        try walk(root, "")
    }

    static func describe(_ error: YamlError) -> String {
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _), .composer(let context, let problem, let mark, _):
            let where_ = context.map { " \($0.text)" } ?? ""
            return "line \(mark.line), column \(mark.column): invalid YAML: \(problem)\(where_)"
        case .duplicatedKeysInMapping(let duplicates, let context):
            return "line \(context.mark.line): invalid YAML: duplicate keys \(duplicates.joined(separator: ", "))"
        default:
            return "invalid YAML: \(error)"
        }
    }

    static func parseBundle(_ node: Node, file: String) throws -> PolicyBundle {
        let line = node.mark?.line ?? 1
        func fail(_ message: String, at l: Int? = nil) -> TetherError {
            TetherError(.invalidArgument, "\(file): line \(l ?? line): \(message)")
        }
        guard let root = node.any as? [String: Any] else { throw fail("a PolicyBundle must be a mapping") }
        guard root["apiVersion"] as? String == "tether.dev/v1", root["kind"] as? String == "PolicyBundle" else {
            throw fail("expected apiVersion tether.dev/v1 and kind PolicyBundle, got \(root["apiVersion"] ?? "none") \(root["kind"] ?? "none")")
        }
        guard let name = (root["metadata"] as? [String: Any])?["name"] as? String else { throw fail("metadata.name is required") }
        if let problem = KubeNames.dns1123Subdomain(name) { throw fail("bundle name '\(name)': \(problem)") }
        let label = "bundle \(name)"
        guard let spec = root["spec"] as? [String: Any] else { throw fail("\(label): spec is required") }
        guard let selectorValue = spec["clusterSelector"] else {
            throw fail("\(label): spec.clusterSelector is required (use {} to select every cluster)")
        }
        let selector: LabelSelector
        do {
            let data = try JSONSerialization.data(withJSONObject: selectorValue is [String: Any] ? selectorValue : [:])
            guard selectorValue is [String: Any] else { throw fail("\(label): spec.clusterSelector must be a LabelSelector mapping") }
            selector = try JSONDecoder().decode(LabelSelector.self, from: data)
            try selector.validate()
        } catch let error as TetherError {
            throw fail("\(label): spec.clusterSelector: \(error.message)")
        } catch {
            throw fail("\(label): spec.clusterSelector is not a valid LabelSelector (matchLabels, matchExpressions with key, operator In|NotIn|Exists|DoesNotExist, values)")
        }
        let allowPrivileged: Bool
        switch spec["allowPrivileged"] {
        case nil: allowPrivileged = false
        case let flag as Bool: allowPrivileged = flag
        default: throw fail("\(label): spec.allowPrivileged must be true or false")
        }
        guard let resources = spec["resources"] as? [Any] else { throw fail("\(label): spec.resources must be a list of Kubernetes objects") }
        let resourceNodes = resourceLines(of: node)
        var objects: [PolicyObject] = []
        var keys = Set<String>()
        for (i, resource) in resources.enumerated() {
            let at = resourceNodes.indices.contains(i) ? resourceNodes[i] : line
            let object = try parseObject(resource, index: i, bundle: name) { fail($0, at: at) }
            guard keys.insert(object.key).inserted else { throw fail("\(label): \(object.key) appears twice", at: at) }
            objects.append(object)
        }
        if !allowPrivileged, let grant = PrivilegeCheck.grants(in: resources).first {
            let at = resourceNodes.indices.contains(grant.index) ? resourceNodes[grant.index] : line
            throw fail("\(label): resources[\(grant.index)] (\(grant.object)): \(grant.reason); a bundle may grant this only with spec.allowPrivileged: true", at: at)
        }
        return PolicyBundle(name: name, clusterSelector: selector, resources: objects, allowPrivileged: allowPrivileged,
                            file: file, resourceLines: resources.indices.map { resourceNodes.indices.contains($0) ? resourceNodes[$0] : line })
    }

    /// The line of each item under spec.resources, for error messages.
    static func resourceLines(of node: Node) -> [Int] {
        guard case .mapping(let root) = node, let spec = root["spec"], case .mapping(let specMap) = spec,
              let resources = specMap["resources"], case .sequence(let seq) = resources
        else { return [] }
        return seq.map { $0.mark?.line ?? 0 }
    }

    static func parseObject(_ value: Any, index: Int, bundle: String, fail: (String) -> TetherError) throws -> PolicyObject {
        guard var object = value as? [String: Any] else { throw fail("bundle \(bundle): resources[\(index)] is not a mapping") }
        let kindName = object["kind"] as? String ?? ""
        var metadata = object["metadata"] as? [String: Any] ?? [:]
        let name = metadata["name"] as? String
        let what = "bundle \(bundle): resources[\(index)] (\(kindName.isEmpty ? "?" : kindName)/\(name ?? "?"))"
        guard let kind = ManagedKind(rawValue: kindName) else {
            throw fail("\(what): kind \(kindName.isEmpty ? "(missing)" : kindName) is not allowed; allowed kinds: \(ManagedKind.allowedList)")
        }
        guard object["apiVersion"] as? String == kind.apiVersion else {
            throw fail("\(what): apiVersion must be \(kind.apiVersion) for \(kind.rawValue)")
        }
        guard let name, !name.isEmpty else { throw fail("\(what): metadata.name is required") }
        let nameProblem: String? = switch kind {
        case .namespace: KubeNames.dns1123Label(name)
        case .clusterRole, .role, .clusterRoleBinding, .roleBinding: KubeNames.pathSegment(name)
        case .validatingAdmissionPolicy, .validatingAdmissionPolicyBinding: KubeNames.dns1123Subdomain(name)
        }
        if let nameProblem { throw fail("\(what): metadata.name: \(nameProblem)") }
        let namespace = metadata["namespace"] as? String
        if kind.isNamespaced {
            guard let namespace, !namespace.isEmpty else { throw fail("\(what): metadata.namespace is required for \(kind.rawValue)") }
            if let problem = KubeNames.dns1123Label(namespace) { throw fail("\(what): metadata.namespace: \(problem)") }
        } else if namespace != nil {
            throw fail("\(what): \(kind.rawValue) is cluster-scoped; remove metadata.namespace")
        }
        if kind == .clusterRoleBinding || kind == .roleBinding {
            if let problem = bindingProblem(object, kind: kind) { throw fail("\(what): \(problem)") }
        }
        for field in ["resourceVersion", "uid", "managedFields", "creationTimestamp", "generation"] where metadata[field] != nil {
            throw fail("\(what): metadata.\(field) is set by the API server; remove it")
        }
        object.removeValue(forKey: "status")
        // What the agent applies: the object plus Tether's ownership marks.
        var labels = metadata["labels"] as? [String: Any] ?? [:]
        labels["app.kubernetes.io/managed-by"] = "tether"
        metadata["labels"] = labels
        var annotations = metadata["annotations"] as? [String: Any] ?? [:]
        annotations["tether.dev/bundle"] = bundle
        metadata["annotations"] = annotations
        object["metadata"] = metadata
        guard JSONSerialization.isValidJSONObject(object),
              let json = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        else { throw fail("\(what): contains values that are not JSON (dates, binary, or numbers such as .nan, .inf or 1e400); quote them") }
        return PolicyObject(apiVersion: kind.apiVersion, kind: kind.rawValue, namespace: kind.isNamespaced ? namespace : nil, name: name, json: json)
    }
}

extension PolicyParser {
    static let rbacGroup = "rbac.authorization.k8s.io"

    /// What the API server's RBAC validation (pkg/apis/rbac/validation) refuses in a
    /// binding's roleRef and subjects, after the v1 defaults (an empty apiGroup
    /// becomes rbac.authorization.k8s.io for roleRef, User and Group): caught at
    /// apply, with the file and line, instead of as a failure in every cluster.
    static func bindingProblem(_ object: [String: Any], kind: ManagedKind) -> String? {
        guard let roleRef = object["roleRef"] as? [String: Any] else { return "roleRef is required" }
        let refGroup = roleRef["apiGroup"] as? String ?? ""
        if !refGroup.isEmpty && refGroup != rbacGroup { return "roleRef.apiGroup must be \(rbacGroup)" }
        let refKind = roleRef["kind"] as? String ?? ""
        let allowedKinds = kind == .clusterRoleBinding ? ["ClusterRole"] : ["Role", "ClusterRole"]
        guard allowedKinds.contains(refKind) else {
            return "roleRef.kind must be \(allowedKinds.joined(separator: " or ")) for a \(kind.rawValue), got '\(refKind)'"
        }
        guard let refName = roleRef["name"] as? String, !refName.isEmpty else { return "roleRef.name is required" }
        if let problem = KubeNames.pathSegment(refName) { return "roleRef.name '\(refName)': \(problem)" }
        let list: [Any]
        switch object["subjects"] {
        case nil, is NSNull: list = []
        case let items as [Any]: list = items
        default: return "subjects must be a list"
        }
        for (i, item) in list.enumerated() {
            guard let subject = item as? [String: Any] else { return "subjects[\(i)] must be a mapping" }
            let subjectKind = subject["kind"] as? String ?? ""
            guard let name = subject["name"] as? String, !name.isEmpty else { return "subjects[\(i)].name is required" }
            let group = subject["apiGroup"] as? String ?? ""
            switch subjectKind {
            case "ServiceAccount":
                if let problem = KubeNames.dns1123Subdomain(name) { return "subjects[\(i)].name '\(name)': \(problem)" }
                if !group.isEmpty { return "subjects[\(i)].apiGroup must be empty for a ServiceAccount" }
                let namespace = subject["namespace"] as? String ?? ""
                if namespace.isEmpty {
                    if kind == .clusterRoleBinding { return "subjects[\(i)].namespace is required for a ServiceAccount in a ClusterRoleBinding" }
                } else if let problem = KubeNames.dns1123Label(namespace) {
                    return "subjects[\(i)].namespace '\(namespace)': \(problem)"
                }
            case "User", "Group":
                if !group.isEmpty && group != rbacGroup { return "subjects[\(i)].apiGroup must be \(rbacGroup) for a \(subjectKind)" }
            default:
                return "subjects[\(i)].kind must be User, Group or ServiceAccount, got '\(subjectKind)'"
            }
        }
        return nil
    }
}

/// One reason a bundle is privileged.
struct PrivilegedGrant: Sendable, Equatable {
    /// Index in spec.resources.
    var index: Int
    /// `Kind/name` or `Kind/namespace/name`.
    var object: String
    var reason: String
    /// The other bundle whose wildcard role is bound, when that is the grant.
    var borrowedFrom: String? = nil
}

/// The guard rail on what a bundle may grant without `spec.allowPrivileged: true`:
/// access for every caller (`system:anonymous`, `system:unauthenticated`,
/// `system:authenticated`), `cluster-admin`, and roles that allow every verb on
/// every resource (defined as such, or bound). One mistaken bundle would otherwise
/// open every cluster it selects.
enum PrivilegeCheck {
    static let everyone: Set<String> = ["system:anonymous", "system:unauthenticated", "system:authenticated"]

    /// What the privilege check needs of a stored bundle.
    struct StoredBundle {
        var name: String
        var allowPrivileged: Bool
        var resources: [Any]

        /// Reads a stored bundle document (canonical JSON).
        init(name: String, document: Data) throws {
            let spec = (try JSONSerialization.jsonObject(with: document) as? [String: Any])?["spec"] as? [String: Any] ?? [:]
            self.name = name
            allowPrivileged = spec["allowPrivileged"] as? Bool ?? false
            resources = spec["resources"] as? [Any] ?? []
        }
    }

    /// Each wildcard role's key mapped to the bundle that defines it (later
    /// bundles win), for `grants(in:elsewhere:)`.
    static func wildcardOwners(_ bundles: [(name: String, resources: [Any])]) -> [String: String] {
        var owners: [String: String] = [:]
        for bundle in bundles {
            for role in wildcardRoles(in: bundle.resources) { owners[role] = bundle.name }
        }
        return owners
    }

    /// The keys (`ClusterRole/name`, `Role/namespace/name`) of the roles among
    /// `resources` that allow every verb on every resource.
    static func wildcardRoles(in resources: [Any]) -> Set<String> {
        var keys = Set<String>()
        for case let o as [String: Any] in resources where ["ClusterRole", "Role"].contains(o["kind"] as? String ?? "") && allowsEverything(o) {
            var key = ObjectKey(object: o)
            if key.name.isEmpty { key.name = "?" }
            keys.insert(key.description)
        }
        return keys
    }

    /// The grants among a bundle's resources (as written or as stored), in order.
    /// `elsewhere` maps wildcard roles defined by other bundles to their bundle, so
    /// that binding one counts as much as binding one's own.
    static func grants(in resources: [Any], elsewhere: [String: String] = [:]) -> [PrivilegedGrant] {
        let objects = resources.map { $0 as? [String: Any] ?? [:] }
        func metadata(_ o: [String: Any]) -> (name: String, namespace: String?) {
            let m = o["metadata"] as? [String: Any] ?? [:]
            return (m["name"] as? String ?? "?", m["namespace"] as? String)
        }
        func key(_ o: [String: Any]) -> String {
            let m = metadata(o)
            return ObjectKey(kind: o["kind"] as? String ?? "?", namespace: m.namespace, name: m.name).description
        }
        let wildcard = wildcardRoles(in: resources)
        var found: [PrivilegedGrant] = []
        for (i, o) in objects.enumerated() {
            let kind = o["kind"] as? String ?? ""
            if kind == "ClusterRole", wildcard.contains(key(o)) {
                found.append(PrivilegedGrant(index: i, object: key(o), reason: "allows every verb (*) on every resource (*)"))
            }
            guard kind == "ClusterRoleBinding" || kind == "RoleBinding" else { continue }
            let roleRef = o["roleRef"] as? [String: Any] ?? [:]
            let refKind = roleRef["kind"] as? String ?? ""
            let refName = roleRef["name"] as? String ?? ""
            let refKey = refKind == "Role" ? "Role/\(metadata(o).namespace ?? "")/\(refName)" : "ClusterRole/\(refName)"
            if refKind == "ClusterRole" && refName == "cluster-admin" {
                found.append(PrivilegedGrant(index: i, object: key(o), reason: "binds cluster-admin"))
            } else if wildcard.contains(refKey) {
                found.append(PrivilegedGrant(index: i, object: key(o), reason: "binds \(refKey), which allows every verb on every resource"))
            } else if let owner = elsewhere[refKey] {
                found.append(PrivilegedGrant(index: i, object: key(o), reason: "binds \(refKey) of bundle \(owner), which allows every verb on every resource",
                                             borrowedFrom: owner))
            }
            for subject in o["subjects"] as? [Any] ?? [] {
                guard let subject = subject as? [String: Any], ["User", "Group"].contains(subject["kind"] as? String ?? ""),
                      let name = subject["name"] as? String, everyone.contains(name) else { continue }
                found.append(PrivilegedGrant(index: i, object: key(o), reason: "grants \(refKey) to \(name), which is every caller\(name == "system:authenticated" ? " with any credential" : " without one")"))
            }
        }
        return found
    }

    /// Whether a role has a rule with `*` among its verbs and `*` among its resources.
    static func allowsEverything(_ role: [String: Any]) -> Bool {
        (role["rules"] as? [Any] ?? []).contains { rule in
            guard let rule = rule as? [String: Any] else { return false }
            return (rule["verbs"] as? [Any] ?? []).contains { $0 as? String == "*" }
                && (rule["resources"] as? [Any] ?? []).contains { $0 as? String == "*" }
        }
    }
}

/// Kubernetes name rules, with the API server's wording.
enum KubeNames {
    static func dns1123Label(_ s: String) -> String? {
        let ok = s.utf8.count <= 63 && !s.isEmpty && s.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 }
            && s.first != "-" && s.last != "-"
        return ok ? nil : "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
    }

    static func dns1123Subdomain(_ s: String) -> String? {
        let ok = !s.isEmpty && s.utf8.count <= 253 && s.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { dns1123Label(String($0)) == nil }
        return ok ? nil : "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
    }

    static func pathSegment(_ s: String) -> String? {
        if s == "." || s == ".." { return "may not be '\(s)'" }
        if s.contains("/") || s.contains("%") { return "may not contain '/' or '%'" }
        return nil
    }
}

