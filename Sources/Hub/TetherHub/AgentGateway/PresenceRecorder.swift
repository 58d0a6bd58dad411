import Foundation
import HubStore
import Logging
import ServiceLifecycle
import Shared
import Synchronization

/// Where each agent was last seen, kept in memory and written to the store in
/// batches: one transaction a second (`interval`) for every heartbeat of every
/// agent together, and a last one at shutdown. Heartbeats never wait on disk.
///
/// `cluster list` reads the newest sighting from here, so it is never staler than
/// the database and never waits for a flush.
final class PresenceRecorder: Service, Sendable {
    private struct State {
        var latest: [ClusterName: Sighting] = [:]
        var dirty: Set<ClusterName> = []
    }

    private let state = Mutex(State())
    private let database: HubDatabase
    private let interval: Duration
    private let logger: Logger
    private let commits: @Sendable (Int) -> Void

    init(database: HubDatabase, interval: Duration = .seconds(1), logger: Logger, commits: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.database = database
        self.interval = interval
        self.logger = logger
        self.commits = commits
    }

    /// Notes a message from the cluster's agent (memory only).
    func saw(_ cluster: ClusterName, agentVersion: String, at: Date) {
        state.withLock { s in
            s.latest[cluster] = Sighting(cluster: cluster, agentVersion: agentVersion, at: at)
            s.dirty.insert(cluster)
        }
    }

    /// The newest sighting of the cluster held here (written or not).
    func latest(_ cluster: ClusterName) -> Sighting? { state.withLock { $0.latest[cluster] } }

    /// Forgets a cluster (removed at the hub).
    func forget(_ cluster: ClusterName) {
        state.withLock { s in
            s.latest[cluster] = nil
            s.dirty.remove(cluster)
        }
    }

    /// Sightings not yet written.
    var pendingCount: Int { state.withLock { $0.dirty.count } }

    /// Writes every sighting not yet written, in one transaction. On failure they
    /// stay pending for the next flush (a newer sighting replaces an older one).
    func flush() async {
        let batch = state.withLock { s -> [Sighting] in
            let batch = s.dirty.compactMap { s.latest[$0] }
            s.dirty.removeAll(keepingCapacity: true)
            return batch
        }
        guard !batch.isEmpty else { return }
        do {
            try await database.recordPresence(batch)
            commits(batch.count)
        } catch {
            logger.warning("cannot record agent presence; retrying with the next batch", metadata: ["agents": "\(batch.count)", "error": "\(error)"])
            state.withLock { s in
                for sighting in batch where s.latest[sighting.cluster] != nil { s.dirty.insert(sighting.cluster) }
            }
        }
    }

    /// Flushes every `interval` until shutdown, then once more. Listed first in the
    /// hub's service group, so it stops last: the sightings of channels closed at
    /// shutdown are in that final write.
    func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try await Task.sleep(for: self.interval)
                await self.flush()
            }
        }
        await flush()
    }
}
