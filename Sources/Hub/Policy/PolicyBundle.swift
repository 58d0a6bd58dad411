import Crypto
import Foundation
import Shared
import Yams

/// A policy bundle as an operator writes it: Kubernetes objects aimed at clusters
/// by label.
///
/// ```yaml
/// apiVersion: tether.dev/v1
/// kind: PolicyBundle
/// metadata: {name: prod-readonly}
/// spec:
///   clusterSelector: {matchLabels: {env: prod}}
///   resources: [ ...Kubernetes objects... ]
/// ```
struct PolicyBundle: Sendable, Equatable {
    var name: String
    var clusterSelector: LabelSelector
    var resources: [PolicyObject]

    /// The bundle as canonical JSON (sorted keys): what is stored and hashed.
    func canonicalJSON() throws -> Data {
        let objects = try resources.map { try JSONSerialization.jsonObject(with: $0.json) }
        let selector = try JSONSerialization.jsonObject(with: JSONEncoder.sorted.encode(clusterSelector))
        return try JSONSerialization.data(withJSONObject: [
            "apiVersion": "tether.dev/v1", "kind": "PolicyBundle", "metadata": ["name": name],
            "spec": ["clusterSelector": selector, "resources": objects],
        ], options: [.sortedKeys, .withoutEscapingSlashes])
    }
}

/// One Kubernetes object of a bundle.
struct PolicyObject: Sendable, Hashable {
    var apiVersion: String
    var kind: String
    var namespace: String?
    var name: String
    /// The object as canonical JSON (sorted keys).
    var json: Data

    /// `Kind/name` or `Kind/namespace/name`: what may appear once per cluster.
    var key: String { [kind, namespace, name].compactMap { $0 }.joined(separator: "/") }
}

/// The kinds a bundle may carry, with their API versions and scope.
enum ManagedKind: String, CaseIterable, Sendable {
    case namespace = "Namespace"
    case clusterRole = "ClusterRole"
    case role = "Role"
    case clusterRoleBinding = "ClusterRoleBinding"
    case roleBinding = "RoleBinding"
    case validatingAdmissionPolicy = "ValidatingAdmissionPolicy"
    case validatingAdmissionPolicyBinding = "ValidatingAdmissionPolicyBinding"

    var apiVersion: String {
        switch self {
        case .namespace: "v1"
        case .clusterRole, .role, .clusterRoleBinding, .roleBinding: "rbac.authorization.k8s.io/v1"
        case .validatingAdmissionPolicy, .validatingAdmissionPolicyBinding: "admissionregistration.k8s.io/v1"
        }
    }

    var isNamespaced: Bool { self == .role || self == .roleBinding }

    /// Apply order: namespaces first, then what lives in them; roles before
    /// bindings; policies before their bindings.
    var applyOrder: Int {
        switch self {
        case .namespace: 0
        case .clusterRole, .role: 1
        case .clusterRoleBinding, .roleBinding: 2
        case .validatingAdmissionPolicy: 3
        case .validatingAdmissionPolicyBinding: 4
        }
    }

    static var allowedList: String { allCases.map(\.rawValue).joined(separator: ", ") }
}

/// Reads policy bundle files, refusing anything the hub would not apply, with an
/// error that names the file, the object and (for YAML errors) the line.
enum PolicyParser {
    static func parse(yaml: String, file: String) throws -> [PolicyBundle] {
        var documents: [Node] = []
        do {
            let parser = try Parser(yaml: yaml)
            while let node = try parser.nextRoot() { documents.append(node) }
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
        return PolicyBundle(name: name, clusterSelector: selector, resources: objects)
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
        else { throw fail("\(what): contains values that are not JSON (dates or binary); quote them") }
        return PolicyObject(apiVersion: kind.apiVersion, kind: kind.rawValue, namespace: kind.isNamespaced ? namespace : nil, name: name, json: json)
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

extension JSONEncoder {
    static var sorted: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }
}
