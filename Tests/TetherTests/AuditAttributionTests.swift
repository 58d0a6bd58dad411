import Foundation
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherHub

/// The cluster's own audit events made with a person's just-in-time account are
/// found under the person's name, the events themselves unchanged.
@Suite struct AuditAttributionTests {
    static func event(_ id: String, user: String) throws -> Data {
        try JSONSerialization.data(withJSONObject: [
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": id, "stage": "ResponseComplete",
            "verb": "delete", "user": ["username": user], "objectRef": ["resource": "configmaps", "namespace": "default", "name": "notes"],
            "responseStatus": ["code": 200], "requestReceivedTimestamp": "2026-12-01T10:00:00.000000Z", "stageTimestamp": "2026-12-01T10:00:00.100000Z",
        ], options: [.sortedKeys])
    }

    @Test func eventsOfAJustInTimeAccountAreFoundUnderThePersonsName() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub0 = try await TestHub.start(dataDir: dir.path)
        let cluster = try ClusterName("prod-eu")
        _ = try await hub0.core.addCluster(cluster, labels: [:])
        let earlier = try await hub0.core.createSession(user: "alice@example.com", groups: [], ttl: nil).session
        try await hub0.stop()
        // A restarted hub knows the accounts of sessions made before it started.
        let hub = try await TestHub.start(dataDir: dir.path)
        defer { Task { try? await hub.stop() } }
        let later = try await hub.core.createSession(user: "bob", groups: [], ttl: nil).session
        let alicesAccount = "system:serviceaccount:tether-system:" + JITAccountName.make(user: "alice@example.com", session: earlier.id)
        let bobsAccount = "system:serviceaccount:tether-system:" + JITAccountName.make(user: "bob", session: later.id)
        let events = [
            try Self.event("a1", user: alicesAccount), try Self.event("b1", user: bobsAccount),
            try Self.event("x1", user: "system:serviceaccount:tether-system:tether-agent"),
            try Self.event("x2", user: "system:serviceaccount:tether-system:tether-someone-0123456789"),
        ]
        _ = try await hub.core.ingestAudit(cluster: cluster, firstSequence: 1, events: events)

        let alices = try await hub.core.database.auditEvents(AuditQuery(cluster: "prod-eu", user: "alice@example.com"))
        #expect(alices.map { String(decoding: $0.event, as: UTF8.self) } == [String(decoding: events[0], as: UTF8.self)], "stored as sent")
        #expect(try await hub.core.database.auditEvents(AuditQuery(cluster: "prod-eu", user: "bob")).count == 1)
        #expect(try await hub.core.database.auditEvents(AuditQuery(cluster: "prod-eu", user: alicesAccount)).count == 1, "the account still finds it")
        // The agent's own account and an unknown look-alike are nobody's.
        let all = try await hub.core.database.auditEvents(AuditQuery(cluster: "prod-eu"))
        #expect(all.count == 4)
        #expect(try await hub.core.database.verifyAuditChain().problem == nil)
    }

    @Test func jitAccountNamesAreRecognised() {
        #expect(JITAccountName.looksLikeOne(JITAccountName.make(user: "alice@example.com", session: "s1")))
        #expect(JITAccountName.looksLikeOne(JITAccountName.make(user: "", session: "s1")))
        #expect(!JITAccountName.looksLikeOne("tether-agent"))
        #expect(!JITAccountName.looksLikeOne("tether-x-0123456789A"))
    }
}
