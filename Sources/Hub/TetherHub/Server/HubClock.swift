import Foundation
import Synchronization

/// The wall clock the hub judges expiry by. Tests move it forward to expire tokens
/// and certificates without waiting.
final class HubClock: Sendable {
    private let offset = Mutex<TimeInterval>(0)

    init() {}

    func now() -> Date { Date().addingTimeInterval(offset.withLock { $0 }) }

    /// Moves this clock (and only this clock) forward.
    func advance(by seconds: TimeInterval) { offset.withLock { $0 += seconds } }
}
