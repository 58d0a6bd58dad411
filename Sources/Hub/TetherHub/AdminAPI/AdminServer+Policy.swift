import Foundation
import Hummingbird
import NIOCore
import HubStore
import Shared

/// `/v1/policies/…` and cluster labels.
extension AdminServer {
    struct ApplyRequest: Codable {
        /// Each file's name (for error messages) and YAML text.
        var files: [File]
        struct File: Codable {
            var name: String
            var yaml: String
        }
    }

    struct BundleView: Codable {
        var name: String
        var clusterSelector: LabelSelector
        var resources: Int
        var clusters: [String]
        var updatedAt: Date
        /// The bundle's `spec.allowPrivileged`.
        var allowPrivileged: Bool
        /// What makes it privileged (empty for most bundles), e.g.
        /// "ClusterRoleBinding/ops binds cluster-admin".
        var privilegedGrants: [String]
        var document: String?
    }

    struct ApplyResult: Codable {
        var bundles: [String]
        var changedClusters: [ChangedCluster]
        struct ChangedCluster: Codable {
            var cluster: String
            var revision: UInt64
        }
    }

    struct LabelRequest: Codable {
        /// KEY=VALUE to set, KEY- to remove.
        var changes: [String]
    }

    static func addPolicyRoutes(to v1: RouterGroup<BasicRequestContext>, core: HubCore) {
        v1.post("policies") { request, context -> Response in
            let body = try await request.decode(as: ApplyRequest.self, context: context)
            guard !body.files.isEmpty else { throw TetherError(.invalidArgument, "no files to apply") }
            // Every file parses before anything is stored.
            var bundles: [PolicyBundle] = []
            for file in body.files { bundles += try PolicyParser.parse(yaml: file.yaml, file: file.name) }
            var names = Set<String>()
            for bundle in bundles where !names.insert(bundle.name).inserted {
                throw TetherError(.invalidArgument, "bundle \(bundle.name) is defined in more than one file")
            }
            let changed = try await core.applyBundles(bundles)
            return try json(ApplyResult(bundles: bundles.map(\.name), changedClusters: changed.map { .init(cluster: $0.cluster, revision: $0.revision) }))
        }
        v1.get("policies") { _, _ -> Response in
            try json(try await bundleViews(core: core, includeDocument: false))
        }
        v1.get("policies/:name") { _, context -> Response in
            let name = try context.parameters.require("name")
            guard let view = try await bundleViews(core: core, includeDocument: true).first(where: { $0.name == name }) else {
                throw TetherError(.notFound, "policy bundle '\(name)' not found")
            }
            return try json(view)
        }
        v1.delete("policies/:name") { _, context -> Response in
            let changed = try await core.deleteBundle(try context.parameters.require("name"))
            return try json(ApplyResult(bundles: [], changedClusters: changed.map { .init(cluster: $0.cluster, revision: $0.revision) }))
        }
        v1.get("policies/:name/status") { _, context -> Response in
            try json(try await core.policyStatus(bundle: try context.parameters.require("name")))
        }
        v1.patch("clusters/:name/labels") { request, context -> Response in
            let body = try await request.decode(as: LabelRequest.self, context: context)
            var changes: [String: String?] = [:]
            for change in body.changes {
                if change.hasSuffix("-"), !change.contains("=") {
                    let key = String(change.dropLast())
                    try LabelRules.validate(key: key, value: "")
                    changes[key] = .some(nil)
                } else {
                    let (key, value) = try LabelRules.parseAssignment(change)
                    changes[key] = value
                }
            }
            guard !changes.isEmpty else { throw TetherError(.invalidArgument, "give KEY=VALUE to set a label or KEY- to remove one") }
            let name = try ClusterName(try context.parameters.require("name"))
            let record = try await core.relabelCluster(name, changes: changes)
            return try json(ClusterView(record: record, online: core.registry.isConnected(name)))
        }
    }

    static func bundleViews(core: HubCore, includeDocument: Bool) async throws -> [BundleView] {
        let clusters = try await core.database.clusters().filter { $0.revokedAt == nil }
        let entries = try await core.database.bundleDocuments()
        let stored = try entries.map { try PrivilegeCheck.StoredBundle(name: $0.name, document: $0.document) }
        // Wildcard roles by defining bundle, so a binding to another bundle's counts too.
        let owners = PrivilegeCheck.wildcardOwners(stored.map { ($0.name, $0.resources) })
        return try zip(entries, stored).map { entry, bundle in
            let document = try JSONSerialization.jsonObject(with: entry.document) as! [String: Any]
            let spec = document["spec"] as? [String: Any] ?? [:]
            let selector = try JSONDecoder().decode(LabelSelector.self, from: JSONSerialization.data(withJSONObject: spec["clusterSelector"] ?? [:]))
            return BundleView(
                name: entry.name, clusterSelector: selector, resources: bundle.resources.count,
                clusters: clusters.filter { selector.matches($0.labels) }.map(\.name), updatedAt: entry.updatedAt,
                allowPrivileged: bundle.allowPrivileged,
                privilegedGrants: PrivilegeCheck.grants(in: bundle.resources, elsewhere: owners.filter { $0.value != entry.name })
                    .map { "\($0.object) \($0.reason)" },
                document: includeDocument ? String(decoding: entry.document, as: UTF8.self) : nil)
        }
    }
}
