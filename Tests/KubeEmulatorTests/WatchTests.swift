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

    /// With no timeoutSeconds the server ends a watch after minRequestTimeout to twice
    /// that (get.go), closing the stream cleanly: no ERROR event.
    @Test func theServerEndsAWatchWithoutTimeoutSecondsCleanly() async throws {
        let emulator = try await KubeEmulator.start(watchTimeout: .seconds(1))
        let client = try EmulatorClient(emulator)
        try emulator.put(Self.configMap("before"))
        let start = ContinuousClock.now
        var events: [JSON] = []
        try await client.watch("/api/v1/namespaces/default/configmaps?watch=true") { event in
            events.append(event)
            return true
        }
        let lasted = ContinuousClock.now - start
        #expect(events.map { $0["type"] } == ["ADDED"], "ended with no ERROR event: \(events)")
        #expect(lasted >= .seconds(1) && lasted < .seconds(10), "\(lasted)")
        #expect(emulator.openWatchCount == 0)
        try await client.shutdown()
        await emulator.stop()
    }

    @Test func expiringOpenWatchesSendsGoneAndEndsThem() async throws {
        try await withEmulator { emulator, client in
            let rv = emulator.resourceVersion
            async let expire: Void = {
                try await eventually { emulator.openWatchCount > 0 }
                emulator.expireOpenWatches()
            }()
            var events: [JSON] = []
            try await client.watch("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=\(rv)") { event in
                events.append(event)
                return true
            }
            try await expire
            #expect(events.count == 1)
            #expect(events.first?["type"] == "ERROR")
            #expect(events.first?[path: ["object", "code"]] == 410)
            #expect(events.first?[path: ["object", "reason"]] == "Expired")
        }
    }

    /// A restart ends every open watch cleanly and serves the same objects, history
    /// and resourceVersions on the same port.
    @Test func aRestartEndsWatchesAndKeepsTheStore() async throws {
        try await withEmulator { emulator, client in
            try emulator.put(Self.configMap("kept"))
            let rv = emulator.resourceVersion
            async let restart: Void = {
                try await eventually { emulator.openWatchCount > 0 }
                try await emulator.restart()
            }()
            var events: [JSON] = []
            try await client.watch("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=\(rv)") { event in
                events.append(event)
                return true
            }
            try await restart
            #expect(events.isEmpty, "ended cleanly: \(events)")
            let got = try await client.json("GET", "/api/v1/namespaces/default/configmaps/kept")
            #expect(got.code == 200)
            #expect(got.json[path: ["metadata", "resourceVersion"]] == .string(String(rv)))
            // Watching from before the restart still works (the history survived).
            try emulator.put(Self.configMap("after"))
            var replayed: [String] = []
            try await client.watch("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=\(rv)") { event in
                replayed.append(event[path: ["object", "metadata", "name"]]?.string ?? "")
                return false
            }
            #expect(replayed == ["after"])
        }
    }

}

import TestSupport
