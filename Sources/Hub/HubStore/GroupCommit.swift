import Foundation
import GRDB
import Shared
import Synchronization

/// Group commit: many small writes that arrive together share one transaction (one
/// fsync), and each caller still returns only once its own write is durable.
///
/// While a transaction runs, new items queue; the next transaction takes all of
/// them. A fleet's worth of agents reporting at once costs a few commits instead of
/// one each, with no timer and no added latency when writes are rare. If a shared
/// transaction fails, its halves are retried apart, so one bad item fails alone.
package final class GroupCommit<Item: Sendable>: Sendable {
    private struct Waiting {
        var item: Item
        var continuation: CheckedContinuation<Void, any Error>
    }

    private let state = Mutex((queue: [Waiting](), flushing: false))
    private let writer: DatabasePool
    private let apply: @Sendable (Database, [Item]) throws -> Void
    private let onCommit: @Sendable (Int) -> Void

    /// `apply` writes a batch inside one transaction; `onCommit` hears each batch's size.
    package init(writer: DatabasePool, onCommit: @escaping @Sendable (Int) -> Void = { _ in },
                 apply: @escaping @Sendable (Database, [Item]) throws -> Void) {
        self.writer = writer
        self.apply = apply
        self.onCommit = onCommit
    }

    /// Returns once `item` is committed (or throws what writing it alone threw).
    package func submit(_ item: Item) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let lead = state.withLock { s -> Bool in
                s.queue.append(Waiting(item: item, continuation: continuation))
                guard !s.flushing else { return false }
                s.flushing = true
                return true
            }
            // The first caller of an idle batcher runs the flush loop for everyone.
            if lead { Task { await self.drain() } }
        }
    }

    private func drain() async {
        while true {
            let batch = state.withLock { s -> [Waiting] in
                let batch = s.queue
                s.queue.removeAll(keepingCapacity: true)
                if batch.isEmpty { s.flushing = false }
                return batch
            }
            guard !batch.isEmpty else { return }
            await commit(batch[...])
        }
    }

    /// Commits `batch` in one transaction; if that fails, each half on its own, so
    /// a bad item costs a few extra commits and fails alone.
    private func commit(_ batch: ArraySlice<Waiting>) async {
        let items = batch.map(\.item)
        do {
            try await writer.write { db in try self.apply(db, items) }
            onCommit(batch.count)
            for waiting in batch { waiting.continuation.resume() }
        } catch where batch.count > 1 {
            let middle = batch.startIndex + batch.count / 2
            await commit(batch[..<middle])
            await commit(batch[middle...])
        } catch {
            for waiting in batch { waiting.continuation.resume(throwing: error) }
        }
    }
}
