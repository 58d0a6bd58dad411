import Dispatch

extension DispatchQueue {
    /// Runs blocking work (file I/O with fsync, a database write) on this queue and
    /// awaits its result, so that it never holds one of the cooperative pool's
    /// threads (two on these machines).
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            self.async { continuation.resume(with: Result { try body() }) }
        }
    }
}
