import Foundation
import Shared

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
package struct PolicyBundle: Sendable, Equatable {
    package var name: String
    package var clusterSelector: LabelSelector
    package var resources: [PolicyObject]
    /// `spec.allowPrivileged`: the operator's explicit consent to what
    /// `PrivilegeCheck` refuses otherwise (cluster-admin, wildcard roles, bindings
    /// for every caller).
    package var allowPrivileged = false
    /// Where it was read from, for refusals made after parsing (empty when built in code).
    package var file = ""
    /// The line of each item of spec.resources in `file`.
    package var resourceLines: [Int] = []

    /// The bundle as canonical JSON (sorted keys): what is stored and hashed.
    package func canonicalJSON() throws -> Data {
        let objects = try resources.map { try JSONSerialization.jsonObject(with: $0.json) }
        let selector = try JSONSerialization.jsonObject(with: JSONEncoder.sorted.encode(clusterSelector))
        return try JSONSerialization.data(withJSONObject: [
            "apiVersion": "tether.dev/v1", "kind": "PolicyBundle", "metadata": ["name": name],
            // allowPrivileged only when set, so bundles stored before it existed keep their bytes.
            "spec": ["clusterSelector": selector, "resources": objects].merging(allowPrivileged ? ["allowPrivileged": true] : [:]) { a, _ in a },
        ], options: [.sortedKeys, .withoutEscapingSlashes])
    }

    package init(name: String, clusterSelector: LabelSelector, resources: [PolicyObject], allowPrivileged: Bool = false, file: String = "", resourceLines: [Int] = []) {
        self.name = name
        self.clusterSelector = clusterSelector
        self.resources = resources
        self.allowPrivileged = allowPrivileged
        self.file = file
        self.resourceLines = resourceLines
    }
}

/// One Kubernetes object of a bundle.
package struct PolicyObject: Sendable, Hashable {
    package var apiVersion: String
    package var kind: String
    package var namespace: String?
    package var name: String
    /// The object as canonical JSON (sorted keys).
    package var json: Data

    /// `Kind/name` or `Kind/namespace/name`: what may appear once per cluster.
    package var key: String { ObjectKey(kind: kind, namespace: namespace, name: name).description }

    package init(apiVersion: String, kind: String, namespace: String? = nil, name: String, json: Data) {
        self.apiVersion = apiVersion
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.json = json
    }
}

extension JSONEncoder {
    package static var sorted: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }
}
