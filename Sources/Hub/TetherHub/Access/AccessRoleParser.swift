import Foundation
import HubStore
import Shared
import Yams

/// Reads AccessRole files, refusing anything the hub would not store, with an error
/// that names the file, the role and the line (as `PolicyParser` does for bundles).
enum AccessRoleParser {
    static func parse(yaml: String, file: String) throws -> [AccessRole] {
        let size = yaml.utf8.count
        guard size <= PolicyParser.maxFileBytes else {
            throw TetherError(.invalidArgument,
                "\(file): line 1: the file is \(ByteCount.format(size)); an access role file may be at most \(ByteCount.format(PolicyParser.maxFileBytes))")
        }
        var documents: [Node] = []
        do {
            let parser = try Parser(yaml: yaml)
            while let node = try parser.nextRoot() {
                try withExtendedLifetime(parser) { try PolicyParser.refuseAliases(node, file: file) }
                documents.append(node)
            }
        } catch let error as YamlError {
            throw TetherError(.invalidArgument, "\(file): \(PolicyParser.describe(error))")
        }
        let roles = try documents.map { try parseRole($0, file: file) }
        guard !roles.isEmpty else { throw TetherError(.invalidArgument, "\(file): no AccessRole documents") }
        var seen = Set<String>()
        for role in roles where !seen.insert(role.name).inserted {
            throw TetherError(.invalidArgument, "\(file): access role \(role.name) is defined twice")
        }
        return roles
    }

    /// The node at `path` (mapping keys and sequence indexes) under `node`; when the
    /// path ends at a mapping key, that key's node (whose line is the key's).
    static func node(_ node: Node, _ path: [Any]) -> Node? {
        var current = node
        for (i, step) in path.enumerated() {
            switch (current, step) {
            case (.mapping(let mapping), let key as String):
                guard let entry = mapping.first(where: { $0.key.string == key }) else { return nil }
                current = i == path.count - 1 ? entry.key : entry.value
            case (.sequence(let sequence), let index as Int):
                guard sequence.indices.contains(index) else { return nil }
                current = sequence[index]
            default:
                return nil
            }
        }
        return current
    }

    static func parseRole(_ document: Node, file: String) throws -> AccessRole {
        let documentLine = document.mark?.line ?? 1
        func fail(_ message: String, at path: [Any] = []) -> TetherError {
            let line = path.isEmpty ? documentLine : (node(document, path)?.mark?.line ?? documentLine)
            return TetherError(.invalidArgument, "\(file): line \(line): \(message)")
        }
        guard case .mapping = document, let root = document.any as? [String: Any] else { throw fail("a document must be an AccessRole mapping") }
        guard root["apiVersion"] as? String == "tether.dev/v1", root["kind"] as? String == "AccessRole" else {
            throw fail("expected apiVersion tether.dev/v1 and kind AccessRole, got \(root["apiVersion"] ?? "none") \(root["kind"] ?? "none")")
        }
        guard let name = (root["metadata"] as? [String: Any])?["name"] as? String else { throw fail("metadata.name is required") }
        if let problem = KubeNames.dns1123Subdomain(name) { throw fail("access role name '\(name)': \(problem)", at: ["metadata", "name"]) }
        let label = "access role \(name)"
        guard let spec = root["spec"] as? [String: Any] else { throw fail("\(label): spec is required") }
        let known: Set<String> = ["subjects", "clusterSelector", "clusterRoles", "namespaces", "maxSessionDuration", "allowPrivileged"]
        if let unknown = spec.keys.sorted().first(where: { !known.contains($0) }) {
            throw fail("\(label): spec.\(unknown) is not a field of AccessRole (fields: \(known.sorted().joined(separator: ", ")))", at: ["spec", unknown])
        }

        guard let subjectList = spec["subjects"] as? [Any], !subjectList.isEmpty else {
            throw fail("\(label): spec.subjects must list at least one {kind: User|Group, name: ...}", at: ["spec"])
        }
        var subjects: [AccessSubject] = []
        for (i, item) in subjectList.enumerated() {
            let at: [Any] = ["spec", "subjects", i]
            guard let subject = item as? [String: Any] else { throw fail("\(label): spec.subjects[\(i)] must be a mapping {kind, name}", at: at) }
            guard let kind = AccessSubject.Kind(rawValue: subject["kind"] as? String ?? "") else {
                throw fail("\(label): spec.subjects[\(i)].kind must be User or Group, got '\(subject["kind"] ?? "none")'", at: at)
            }
            guard let subjectName = subject["name"] as? String, !subjectName.isEmpty, !subjectName.contains(where: \.isNewline) else {
                throw fail("\(label): spec.subjects[\(i)].name is required (one line of text)", at: at)
            }
            if let extra = subject.keys.sorted().first(where: { !["kind", "name"].contains($0) }) {
                throw fail("\(label): spec.subjects[\(i)].\(extra) is not a field of a subject (kind, name)", at: at)
            }
            subjects.append(AccessSubject(kind: kind, name: subjectName))
        }

        guard let selectorValue = spec["clusterSelector"] else {
            throw fail("\(label): spec.clusterSelector is required (use {} to select every cluster)", at: ["spec"])
        }
        let selector: LabelSelector
        do {
            guard selectorValue is [String: Any] else { throw fail("\(label): spec.clusterSelector must be a LabelSelector mapping", at: ["spec", "clusterSelector"]) }
            selector = try JSONDecoder().decode(LabelSelector.self, from: try JSONSerialization.data(withJSONObject: selectorValue))
            try selector.validate()
        } catch let error as TetherError {
            throw fail("\(label): spec.clusterSelector: \(error.message)", at: ["spec", "clusterSelector"])
        } catch {
            throw fail("\(label): spec.clusterSelector is not a valid LabelSelector (matchLabels, matchExpressions with key, operator In|NotIn|Exists|DoesNotExist, values)",
                       at: ["spec", "clusterSelector"])
        }

        func roleNames(_ value: Any?, _ what: String, at path: [Any]) throws -> [String] {
            guard let value else { return [] }
            guard let list = value as? [Any] else { throw fail("\(label): \(what) must be a list of role names", at: path) }
            var names: [String] = []
            for (i, item) in list.enumerated() {
                guard let roleName = item as? String, !roleName.isEmpty else { throw fail("\(label): \(what)[\(i)] must be a role name", at: path + [i]) }
                if let problem = KubeNames.pathSegment(roleName) { throw fail("\(label): \(what)[\(i)] '\(roleName)': \(problem)", at: path + [i]) }
                if !names.contains(roleName) { names.append(roleName) }
            }
            return names
        }
        let clusterRoles = try roleNames(spec["clusterRoles"], "spec.clusterRoles", at: ["spec", "clusterRoles"])
        var namespaces: [NamespaceGrant] = []
        if let value = spec["namespaces"] {
            guard let list = value as? [Any] else {
                throw fail("\(label): spec.namespaces must be a list of {name, clusterRoles, roles}", at: ["spec", "namespaces"])
            }
            for (i, item) in list.enumerated() {
                let at: [Any] = ["spec", "namespaces", i]
                guard let entry = item as? [String: Any] else { throw fail("\(label): spec.namespaces[\(i)] must be a mapping {name, clusterRoles, roles}", at: at) }
                guard let namespace = entry["name"] as? String else { throw fail("\(label): spec.namespaces[\(i)].name is required", at: at) }
                if let problem = KubeNames.dns1123Label(namespace) { throw fail("\(label): spec.namespaces[\(i)].name '\(namespace)': \(problem)", at: at) }
                if let extra = entry.keys.sorted().first(where: { !["name", "clusterRoles", "roles"].contains($0) }) {
                    throw fail("\(label): spec.namespaces[\(i)].\(extra) is not a field (name, clusterRoles, roles)", at: at)
                }
                let grant = NamespaceGrant(
                    name: namespace,
                    clusterRoles: try roleNames(entry["clusterRoles"], "spec.namespaces[\(i)].clusterRoles", at: at + ["clusterRoles"]),
                    roles: try roleNames(entry["roles"], "spec.namespaces[\(i)].roles", at: at + ["roles"]))
                guard !grant.clusterRoles.isEmpty || !grant.roles.isEmpty else {
                    throw fail("\(label): spec.namespaces[\(i)] (\(namespace)) grants nothing; give clusterRoles or roles", at: at)
                }
                guard !namespaces.contains(where: { $0.name == namespace }) else {
                    throw fail("\(label): namespace \(namespace) appears twice in spec.namespaces; list its roles once", at: at)
                }
                namespaces.append(grant)
            }
        }
        guard !clusterRoles.isEmpty || !namespaces.isEmpty else {
            throw fail("\(label): grants nothing; give spec.clusterRoles and/or spec.namespaces", at: ["spec"])
        }

        var maxSessionDuration: Int?
        if let value = spec["maxSessionDuration"] {
            guard let text = value as? String, let duration = try? DurationParser.parse(text), duration >= .seconds(60) else {
                throw fail("\(label): spec.maxSessionDuration must be a duration of at least 1m, e.g. 4h or 30m", at: ["spec", "maxSessionDuration"])
            }
            maxSessionDuration = Int(duration.components.seconds)
        }
        let allowPrivileged: Bool
        switch spec["allowPrivileged"] {
        case nil: allowPrivileged = false
        case let flag as Bool: allowPrivileged = flag
        default: throw fail("\(label): spec.allowPrivileged must be true or false", at: ["spec", "allowPrivileged"])
        }
        let role = AccessRole(name: name, subjects: subjects, clusterSelector: selector, clusterRoles: clusterRoles, namespaces: namespaces,
                              maxSessionDuration: maxSessionDuration, allowPrivileged: allowPrivileged)
        if !allowPrivileged, let grant = AccessPrivilege.grants(of: role, wildcardRoles: []).first {
            throw fail("\(label): \(grant); an access role may grant this only with spec.allowPrivileged: true", at: ["spec"])
        }
        return role
    }
}

/// What makes an AccessRole privileged: `cluster-admin`, or a role that allows every
/// verb on every resource (`wildcardRoles`: the keys `ClusterRole/NAME` and
/// `Role/NAMESPACE/NAME` of such roles among the stored policy bundles).
enum AccessPrivilege {
    static func grants(of role: AccessRole, wildcardRoles: Set<String>) -> [String] {
        var found: [String] = []
        func check(_ clusterRole: String, in namespace: String?) {
            let place = namespace.map { " in namespace \($0)" } ?? " cluster-wide"
            if clusterRole == "cluster-admin" {
                found.append("grants ClusterRole/cluster-admin\(place)")
            } else if wildcardRoles.contains("ClusterRole/\(clusterRole)") {
                found.append("grants ClusterRole/\(clusterRole)\(place), which allows every verb on every resource")
            }
        }
        for clusterRole in role.clusterRoles { check(clusterRole, in: nil) }
        for namespace in role.namespaces {
            for clusterRole in namespace.clusterRoles { check(clusterRole, in: namespace.name) }
            for name in namespace.roles where wildcardRoles.contains("Role/\(namespace.name)/\(name)") {
                found.append("grants Role/\(name) in namespace \(namespace.name), which allows every verb on every resource")
            }
        }
        return found
    }
}

extension AccessRole {
    /// The role as a document (`access get`), in the form it is written.
    var document: [String: Any] {
        var spec: [String: Any] = [
            "subjects": subjects.map { ["kind": $0.kind.rawValue, "name": $0.name] },
            "clusterSelector": (try? JSONSerialization.jsonObject(with: JSONEncoder.sorted.encode(clusterSelector))) ?? [:],
        ]
        if !clusterRoles.isEmpty { spec["clusterRoles"] = clusterRoles }
        if !namespaces.isEmpty {
            spec["namespaces"] = namespaces.map { ns -> [String: Any] in
                var entry: [String: Any] = ["name": ns.name]
                if !ns.clusterRoles.isEmpty { entry["clusterRoles"] = ns.clusterRoles }
                if !ns.roles.isEmpty { entry["roles"] = ns.roles }
                return entry
            }
        }
        if let maxSessionDuration { spec["maxSessionDuration"] = DurationText.format(seconds: maxSessionDuration) }
        if allowPrivileged { spec["allowPrivileged"] = true }
        return ["apiVersion": "tether.dev/v1", "kind": "AccessRole", "metadata": ["name": name], "spec": spec]
    }
}

/// Durations as operators write them: `8h`, `1h30m`, `45s`.
enum DurationText {
    static func format(seconds: Int) -> String {
        var rest = seconds
        var text = ""
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] where rest >= size {
            text += "\(rest / size)\(unit)"
            rest %= size
        }
        if rest > 0 || text.isEmpty { text += "\(rest)s" }
        return text
    }
}
