import Crypto
import Foundation
import Shared

/// Compiles each cluster's desired state from the stored bundles: a pure function of
/// bundles, clusters and the states they have now, which the store calls inside the
/// transaction that changed any of them (so a refusal stores nothing).
///
/// Work grows with the number of distinct bundle sets, not with clusters: clusters
/// that select the same bundles share one compiled object list and one hash, so an
/// apply across 10,000 clusters serializes and hashes each object once.
package enum PolicyCompiler {
    /// A stored bundle as the compiler reads it.
    package struct Bundle {
        package var name: String
        package var selector: LabelSelector
        /// `spec.resources`, decoded.
        package var resources: [[String: Any]]

        package init(name: String, selector: LabelSelector, resources: [[String: Any]]) {
            self.name = name
            self.selector = selector
            self.resources = resources
        }
    }

    /// An active cluster and the state it has now (nil: no bundle ever selected it).
    package struct Cluster: Sendable {
        package var name: String
        package var labels: [String: String]
        package var current: (revision: UInt64, hash: String)?

        package init(name: String, labels: [String: String], current: (revision: UInt64, hash: String)?) {
            self.name = name
            self.labels = labels
            self.current = current
        }
    }

    /// One compiled object list, shared by every cluster that selects the same bundles.
    package struct Compiled: Sendable {
        package var hash: String
        package var objects: [DesiredObject]
    }

    /// The clusters whose desired state changes, each with its next revision (the
    /// revision moves only where the content hash changed). Refuses two bundles
    /// putting one object on a cluster, and a state over one message's limit.
    package static func compile(bundles: [Bundle], clusters: [Cluster]) throws -> [DesiredState] {
        var perBundle: [String: [DesiredObject]] = [:]
        for bundle in bundles {
            perBundle[bundle.name] = try bundle.resources.map { try DesiredObject(bundle: bundle.name, object: $0) }
        }
        var compiled: [[String]: Compiled] = [:]
        var changed: [DesiredState] = []
        for cluster in clusters {
            let selected = bundles.filter { $0.selector.matches(cluster.labels) }.map(\.name)
            let result: Compiled
            if let done = compiled[selected] {
                result = done
            } else {
                result = try compileSet(selected, objects: perBundle, clusterName: cluster.name)
                compiled[selected] = result
            }
            guard cluster.current?.hash != result.hash else { continue }
            // A cluster no bundle ever selected has no desired state (revision 0).
            if cluster.current == nil && result.objects.isEmpty { continue }
            changed.append(DesiredState(cluster: cluster.name, revision: (cluster.current?.revision ?? 0) + 1, hash: result.hash, objects: result.objects))
        }
        return changed
    }

    private static func compileSet(_ names: [String], objects perBundle: [String: [DesiredObject]], clusterName: String) throws -> Compiled {
        var objects: [DesiredObject] = []
        var owner: [ObjectKey: String] = [:]
        for bundle in names {
            for object in perBundle[bundle] ?? [] {
                if let other = owner[object.objectKey] {
                    throw TetherError(.alreadyExists,
                        "bundles \(other) and \(bundle) would both put \(object.key) on cluster \(clusterName); an object may come from one bundle only")
                }
                owner[object.objectKey] = bundle
                objects.append(object)
            }
        }
        objects.sort { ($0.order, $0.key) < ($1.order, $1.key) }
        // One message must carry it to the agent: refuse here, inside the
        // transaction, so nothing of the change is stored.
        let size = WireLimits.desiredStateBytes(objects: objects.lazy.map { ($0.bundle, $0.json.count) })
        guard size <= WireLimits.maxDesiredStateBytes else {
            throw TetherError(.invalidArgument, """
                cluster \(clusterName)'s desired state would be \(ByteCount.format(size)), over the \
                \(ByteCount.format(WireLimits.maxDesiredStateBytes)) one message to its agent can carry; \
                split the bundles or narrow their cluster selectors
                """)
        }
        return Compiled(hash: hash(objects), objects: objects)
    }

    /// The content hash: bundle name and object JSON of each object, in apply order.
    package static func hash(_ objects: [DesiredObject]) -> String {
        var hasher = SHA256()
        for object in objects {
            hasher.update(data: Data(object.bundle.utf8))
            hasher.update(data: Data([0]))
            hasher.update(data: object.json)
            hasher.update(data: Data([0]))
        }
        return PKI.hex(hasher.finalize())
    }
}
