import GRDB
import Synchronization

/// Rows every proxied request and every tunnel RPC reads (a session by id, a
/// cluster by name, a certificate's standing), kept in memory until a committed
/// transaction touches their table. The store learns of every change from SQLite
/// itself (a transaction observer on the one writer connection), whatever statement
/// made it, so a revocation is seen by the next read. A generation number stops a
/// read that raced a commit from caching what it read before the commit.
final class ReadCache<Key: Hashable & Sendable, Value: Sendable>: TransactionObserver, Sendable {
    private let tables: Set<String>
    private let limit: Int
    private struct State {
        var values: [Key: Value] = [:]
        var generation: UInt64 = 0
        var touched = false
    }
    private let state = Mutex(State())

    init(tables: Set<String>, limit: Int = 10_000) {
        self.tables = tables
        self.limit = limit
    }

    /// The cached value, or `read`'s (cached unless a commit came in between; nil is not cached).
    func value(_ key: Key, read: () async throws -> Value?) async throws -> Value? {
        let (cached, generation) = state.withLock { ($0.values[key], $0.generation) }
        if let cached { return cached }
        guard let value = try await read() else { return nil }
        state.withLock { s in
            guard s.generation == generation else { return }
            if s.values.count >= limit { s.values.removeAll(keepingCapacity: true) }
            s.values[key] = value
        }
        return value
    }

    // MARK: TransactionObserver (called on the writer's queue)

    func observes(eventsOfKind eventKind: DatabaseEventKind) -> Bool { tables.contains(eventKind.tableName) }

    func databaseDidChange(with event: DatabaseEvent) {
        // Dropped now, and again at the commit: a read between the two sees the
        // old row (not committed yet) and must not outlive the commit.
        state.withLock { s in
            s.touched = true
            s.values.removeAll(keepingCapacity: true)
            s.generation &+= 1
        }
    }

    func databaseDidCommit(_ db: Database) { settle() }

    func databaseDidRollback(_ db: Database) { settle() }

    private func settle() {
        state.withLock { s in
            guard s.touched else { return }
            s.touched = false
            s.values.removeAll(keepingCapacity: true)
            s.generation &+= 1
        }
    }
}
