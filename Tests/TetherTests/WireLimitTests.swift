import Foundation
import Shared
import TestSupport
import Testing
@testable import TetherAgent
@testable import HubStore
@testable import TetherHub

/// One message size for the agent channel, set on both ends, above the largest
/// desired state the hub will compile.
@Suite struct WireLimitTests {
    /// A bundle file just under the 1 MiB a policy file may hold: one ClusterRole
    /// whose rule names 4,400 resources of 200 characters each.
    static func largeBundle(_ index: Int) -> String {
        let names = (0..<4400).map { "n\(index)-\($0)-" + String(repeating: "x", count: 190) }.joined(separator: ", ")
        return """
            apiVersion: tether.dev/v1
            kind: PolicyBundle
            metadata: {name: large-\(index)}
            spec:
              clusterSelector: {matchLabels: {env: prod}}
              resources:
                - apiVersion: rbac.authorization.k8s.io/v1
                  kind: ClusterRole
                  metadata: {name: large-\(index)}
                  rules: [{apiGroups: [""], resources: [configmaps], verbs: [get], resourceNames: [\(names)]}]
            """
    }

    @Test func aDesiredStateOverGRPCsDefaultReachesTheAgentAndOneOverTheLimitIsRefused() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        _ = try await hub.core.addCluster(ClusterName("prod"), labels: ["env": "prod"])
        let agent = try await TestAgent.start(stateDir: dir.sub("agent"), join: try hub.join("prod"))
        try await agent.waitUntilConnected()

        // Six bundles: about 5.3 MiB, past the 4 MiB that gRPC allows by default.
        var revision: UInt64 = 0
        for index in 0..<6 {
            let changed = try await hub.core.applyBundles(try PolicyParser.parse(yaml: Self.largeBundle(index), file: "large-\(index).yaml"))
            revision = try #require(changed.first).revision
        }
        let size = try #require(try await hub.core.database.desiredState("prod")).objects.reduce(0) { $0 + $1.json.count }
        #expect(size > 5 << 20)
        try await eventually("the agent received and reported revision \(revision)") {
            agent.link.status.value.observedRevision == revision
        }
        #expect(agent.isConnected)

        // Bundles up to the limit are accepted; the one that would take the
        // cluster past it is refused by name and size, and nothing of it is stored.
        var refusal: TetherError?
        var index = 6
        while refusal == nil, index < 40 {
            do {
                _ = try await hub.core.applyBundles(try PolicyParser.parse(yaml: Self.largeBundle(index), file: "large-\(index).yaml"))
                index += 1
            } catch let error as TetherError {
                refusal = error
            }
        }
        let error = try #require(refusal)
        #expect(error.code == .invalidArgument)
        #expect(error.message.contains("cluster prod's desired state would be 16."), "\(error.message)")
        #expect(error.message.contains("over the 16.0 MiB"), "\(error.message)")
        #expect(try await hub.core.database.bundleDocuments().map(\.name).contains("large-\(index)") == false)
        let stored = try #require(try await hub.core.database.desiredState("prod"))
        #expect(WireLimits.desiredStateBytes(objects: stored.objects.map { ($0.bundle, $0.json.count) }) <= WireLimits.maxDesiredStateBytes)

        // The largest accepted state still reaches the agent.
        try await eventually(timeout: .seconds(60), "the agent received revision \(stored.revision)") {
            agent.link.status.value.observedRevision == stored.revision
        }
        try await agent.stop()
        try await hub.stop()
    }
}
