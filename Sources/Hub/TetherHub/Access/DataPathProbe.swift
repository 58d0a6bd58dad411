import Foundation
import HubStore
import NIOCore
import Logging
import ServiceLifecycle
import Shared
import Synchronization

/// Whether kubectl through a cluster's agent works: the hub's last probe of the
/// cluster's API server (GET /readyz) through the tunnel.
struct DataPathState: Sendable, Equatable {
    var ok: Bool
    var at: Date
    var milliseconds: Int
    /// What failed, when it did.
    var problem: String?

    var summary: String { ok ? "ok (\(milliseconds) ms)" : "failing: \(problem ?? "?")" }
}

/// The latest probe per cluster, in memory.
final class DataPathTable: Sendable {
    private let states = Mutex<[ClusterName: DataPathState]>([:])
    init() {}
    func set(_ cluster: ClusterName, _ state: DataPathState) { states.withLock { $0[cluster] = state } }
    func get(_ cluster: ClusterName) -> DataPathState? { states.withLock { $0[cluster] } }
    func forget(_ cluster: ClusterName) { states.withLock { $0[cluster] = nil } }
}

extension HubCore {
    /// Probes one cluster's API server through its agent. Any HTTP answer below 500
    /// (401 included: the server is there, it only refuses anonymous callers) means
    /// the data path works.
    @discardableResult
    func probeDataPath(_ cluster: ClusterName) async -> DataPathState {
        let started = ContinuousClock.now
        let request = TunnelRequest(id: TunnelBroker.newID(), method: "GET", path: "/readyz", headers: [], session: nil, grants: AccessGrants(),
                                    bodyless: true)
        var state: DataPathState
        do {
            let streams = try await openTunnel(request, to: cluster)
            defer { streams.toAgent.finish() }
            await streams.toAgent.send(.end(error: nil))
            var status = 0
            var body = ""
            for try await frame in streams.fromAgent {
                switch frame {
                case .response(let code, _): status = code
                case .body(let chunk): if body.utf8.count < 512 { body += String(buffer: chunk) }
                case .end(let error): if let error { body = error }
                }
            }
            let ms = Int((ContinuousClock.now - started).seconds * 1000)
            state = DataPathState(ok: status > 0 && status < 500, at: clock.now(), milliseconds: ms,
                                  problem: status > 0 && status < 500 ? nil : Self.problem(status: status, body: body))
        } catch {
            state = DataPathState(ok: false, at: clock.now(), milliseconds: Int((ContinuousClock.now - started).seconds * 1000),
                                  problem: (error as? TetherError)?.message ?? "\(error)")
        }
        dataPath.set(cluster, state)
        return state
    }

    static func problem(status: Int, body: String) -> String {
        let message = (try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])?["message"] as? String
        return "API server answered \(status)" + ((message ?? body).isEmpty ? "" : ": " + (message ?? body).prefix(200))
    }
}

/// Probes every connected cluster's data path every `interval`, a few at a time.
struct DataPathProbeService: Service {
    let core: HubCore
    var interval: Duration = .seconds(30)
    var concurrency = 32

    func run() async throws {
        while !Task.isShuttingDownGracefully {
            let clusters = Array(core.registry.connected)
            await withTaskGroup(of: Void.self) { group in
                var next = clusters.makeIterator()
                for _ in 0..<concurrency {
                    guard let cluster = next.next() else { break }
                    group.addTask { await core.probeDataPath(cluster) }
                }
                while await group.next() != nil {
                    if let cluster = next.next() { group.addTask { await core.probeDataPath(cluster) } }
                }
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}
