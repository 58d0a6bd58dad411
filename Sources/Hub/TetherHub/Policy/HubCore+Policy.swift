import Foundation
import HubStore
import Shared

extension HubCore {
    /// Stores bundles and pushes the resulting desired states to connected agents.
    func applyBundles(_ bundles: [PolicyBundle], by caller: Caller = .operator) async throws -> [DesiredState] {
        let checking = ContinuousClock.now
        try await refuseBorrowedPrivilege(bundles)
        let started = ContinuousClock.now
        let now = clock.now()
        let records = try bundles.map { bundle in
            try auditEvent(HubAction(verb: "apply", resource: "policybundles", name: bundle.name, user: caller.user, code: 200,
                                     sourceIP: caller.address, message: "\(bundle.resources.count) objects"), at: now)
        }
        let changed = try await database.applyBundles(bundles, now: now, audit: records)
        let stored = ContinuousClock.now
        publish(changed)
        logger.info("policy applied", metadata: [
            "bundles": "\(bundles.map(\.name).joined(separator: ","))", "clustersChanged": "\(changed.count)",
            "checkMs": "\(Int((started - checking).seconds * 1000))", "compileAndStoreMs": "\(Int((stored - started).seconds * 1000))", "publishMs": "\(Int((ContinuousClock.now - stored).seconds * 1000))"])
        return changed
    }

    func deleteBundle(_ name: String, by caller: Caller = .operator) async throws -> [DesiredState] {
        let now = clock.now()
        let record = try auditEvent(HubAction(verb: "delete", resource: "policybundles", name: name, user: caller.user, code: 200,
                                              sourceIP: caller.address), at: now)
        let changed = try await database.deleteBundle(name, now: now, audit: [record])
        publish(changed)
        return changed
    }

    func relabelCluster(_ name: ClusterName, changes: [String: String?], by caller: Caller = .operator) async throws -> ClusterRecord {
        for case let (key, value?) in changes { try LabelRules.validate(key: key, value: value) }
        let now = clock.now()
        let action = HubAction(verb: "patch", resource: "clusters", name: name.rawValue, user: caller.user, code: 200, sourceIP: caller.address,
                               message: "labels " + changes.map { "\($0.key)=\($0.value ?? "-")" }.sorted().joined(separator: ","))
        let (record, changed) = try await database.relabelCluster(name, changes: changes, now: now, audit: [try auditEvent(action, at: now)])
        publish(changed)
        // The cluster may have entered or left AccessRoles' selectors.
        await pushAccess(only: name)
        return record
    }

    /// The privilege guard across bundles: a binding to a wildcard role that another
    /// bundle defines needs `spec.allowPrivileged` as much as one to its own, in the
    /// bundle being applied and in the stored bundles the new roles would reach.
    /// (Checked before the write; two concurrent applies could each pass it.)
    func refuseBorrowedPrivilege(_ bundles: [PolicyBundle]) async throws {
        let replacing = Set(bundles.map(\.name))
        let stored = try await database.bundleDocuments().filter { !replacing.contains($0.name) }
            .map { try PrivilegeCheck.StoredBundle(name: $0.name, document: $0.document) }
        let incoming = try bundles.map { bundle in (bundle, try bundle.resources.map { try JSONSerialization.jsonObject(with: $0.json) }) }
        let owners = PrivilegeCheck.wildcardOwners(stored.map { ($0.name, $0.resources) } + incoming.map { ($0.0.name, $0.1) })
        let suffix = "a bundle may grant this only with spec.allowPrivileged: true"
        for (bundle, resources) in incoming where !bundle.allowPrivileged {
            if let grant = PrivilegeCheck.grants(in: resources, elsewhere: owners.filter { $0.value != bundle.name }).first {
                let line = bundle.resourceLines.indices.contains(grant.index) ? bundle.resourceLines[grant.index] : 1
                let origin = bundle.file.isEmpty ? "" : "\(bundle.file): line \(line): "
                throw TetherError(.invalidArgument, "\(origin)bundle \(bundle.name): resources[\(grant.index)] (\(grant.object)): \(grant.reason); \(suffix)")
            }
        }
        for bundle in stored where !bundle.allowPrivileged {
            let fresh = owners.filter { replacing.contains($0.value) }
            if let grant = PrivilegeCheck.grants(in: bundle.resources, elsewhere: fresh).first(where: { $0.borrowedFrom != nil }),
               let owner = grant.borrowedFrom {
                let file = bundles.first { $0.name == owner }?.file ?? ""
                throw TetherError(.invalidArgument, """
                    \(file.isEmpty ? "" : "\(file): ")bundle \(owner) would give stored bundle \(bundle.name), which does not set \
                    spec.allowPrivileged, a privileged grant: \(grant.object) \(grant.reason); set spec.allowPrivileged: true \
                    on \(bundle.name) first, or rename the role
                    """)
            }
        }
    }

    /// Hands each affected cluster's open channel its new desired state (no store
    /// read per cluster: the compile that changed it already has it).
    func publish(_ states: [DesiredState]) {
        for state in states {
            if let cluster = try? ClusterName(state.cluster) { registry.publish(cluster, state) }
        }
    }

    /// Per matching cluster: desired and observed revision and a state.
    func policyStatus(bundle: String) async throws -> [PolicyStatusRow] {
        guard try await database.bundleDocuments().contains(where: { $0.name == bundle }) else {
            throw TetherError(.notFound, "policy bundle '\(bundle)' not found")
        }
        var rows: [PolicyStatusRow] = []
        for cluster in try await database.clusters() where cluster.revokedAt == nil {
            guard let desired = try await database.desiredState(cluster.name) else { continue }
            let mine = desired.objects.filter { $0.bundle == bundle }
            guard !mine.isEmpty else { continue }
            let observed = try await database.observedRevision(cluster.name)
            let results = try await database.objectStatuses(cluster: cluster.name, bundle: bundle)
            let failed = results.filter { $0.state == .failed }
            // A repaired drift leaves the object in sync; the most recent one is shown.
            let lastDrift = results.compactMap(\.lastDrift).max { $0.at < $1.at }
            let state: String
            var message: String?
            if let first = failed.first {
                state = "failed"
                message = "\(first.object): \(first.message ?? "failed")" + (failed.count > 1 ? " (+\(failed.count - 1) more)" : "")
            } else if observed != desired.revision {
                state = "pending"
            } else {
                state = "in-sync"
            }
            rows.append(PolicyStatusRow(cluster: cluster.name, desiredRevision: desired.revision, observedRevision: observed,
                                        state: state, objects: mine.count, message: message, lastDrift: lastDrift, results: results))
        }
        return rows
    }
}

/// One line of `policy status`.
struct PolicyStatusRow: Codable, Sendable {
    var cluster: String
    var desiredRevision: UInt64
    var observedRevision: UInt64?
    var state: String
    var objects: Int
    var message: String?
    /// The most recent drift the agent repaired among this bundle's objects.
    var lastDrift: LastDrift?
    var results: [ObjectResult]
}
