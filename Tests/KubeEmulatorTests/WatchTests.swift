import Foundation
import KubeEmulator
import Testing

@Suite struct WatchTests {
    static func configMap(_ name: String, labels: [String: JSON] = [:], data: [String: JSON] = [:]) -> JSON {
        ["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": .string(name), "namespace": "default", "labels": .object(labels)], "data": .object(data)]
    }

    @Test func streamsEventsAfterResourceVersionWithSelector() async throws {
        try await withEmulator { emulator, client in
            let start = emulator.resourceVersion
            try emulator.put(Self.configMap("a", labels: ["team": "x"]))
            try emulator.put(Self.configMap("b"))
            try emulator.put(Self.configMap("a", labels: ["team": "x"], data: ["k": "1"]))
            try emulator.put(Self.configMap("a", labels: ["team": "y"]))
            var events: [(String, String)] = []
            try await client.watch("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=\(start)&labelSelector=team%3Dx") { event in
                events.append((event["type"]!.string!, event[path: ["object", "metadata", "name"]]!.string!))
                return events.count < 3
            }
            // Leaving the selector is a DELETED event, as the watch cache reports it.
            #expect(events.map(\.0) == ["ADDED", "MODIFIED", "DELETED"])
            #expect(events.allSatisfy { $0.1 == "a" })
        }
    }

    @Test func liveEventsArriveAndTimeoutEndsTheStream() async throws {
        try await withEmulator { emulator, client in
            let rv = emulator.resourceVersion
            async let changes: Void = {
                try await eventually { emulator.openWatchCount > 0 }
                try emulator.put(Self.configMap("live"))
            }()
            var seen: [JSON] = []
            try await client.watch("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=\(rv)&timeoutSeconds=2") { event in
                seen.append(event)
                return true
            }
            try await changes
            #expect(seen.count == 1)
            #expect(seen.first?["type"] == "ADDED")
            #expect(seen.first?[path: ["object", "kind"]] == "ConfigMap")
        }
    }

    @Test func watchWithoutResourceVersionStartsWithSyntheticAdds() async throws {
        try await withEmulator { emulator, client in
            try emulator.put(Self.configMap("one"))
            var first: JSON?
            try await client.watch("/api/v1/namespaces/default/configmaps?watch=true") { event in
                first = event
                return false
            }
            #expect(first?["type"] == "ADDED")
            #expect(first?[path: ["object", "metadata", "name"]] == "one")
        }
    }
}

import TestSupport
