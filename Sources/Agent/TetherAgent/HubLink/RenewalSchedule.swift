import Foundation
import Synchronization

/// The clock the agent's channel schedules by: renewal, retries. Tests substitute
/// `ManualAgentClock` and move time by hand, so renewal runs on virtual time.
package protocol AgentClock: Sendable {
    func now() -> Date
    /// Returns at `deadline` (by this clock), or throws when cancelled.
    func sleep(until deadline: Date) async throws
}

/// The system's wall clock.
package struct SystemAgentClock: AgentClock {
    package init() {}

    package func now() -> Date { Date() }

    package func sleep(until deadline: Date) async throws {
        let wait = deadline.timeIntervalSinceNow
        if wait > 0 { try await Task.sleep(for: .milliseconds(Int64((wait * 1000).rounded(.up)))) }
    }
}

/// Certificate renewal on the channel as a value: given the time and whether the
/// last request was answered, what to do next. No tasks or keys here.
///
/// At the renewal date (two thirds of the certificate's life) it asks for a new
/// certificate for a new key. Until an answer arrives it asks again every `retry`
/// **for the same key**: an answer to an earlier request still fits, and the hub,
/// seeing the key it already signed, sends that certificate again rather than
/// minting another.
struct RenewalSchedule: Equatable {
    enum Action: Equatable {
        /// Nothing to do before this time.
        case wait(until: Date)
        /// Send a renewal request; `newKey`: make a key first (else reuse the pending one).
        case request(newKey: Bool)
    }

    let retry: TimeInterval
    /// When the unanswered request was last sent.
    private(set) var askedAt: Date?

    init(retry: Duration) { self.retry = retry.seconds }

    mutating func next(now: Date, renewalDate: Date) -> Action {
        if let askedAt {
            let again = askedAt.addingTimeInterval(retry)
            guard now >= again else { return .wait(until: again) }
            self.askedAt = now
            return .request(newKey: false)
        }
        guard now >= renewalDate else { return .wait(until: renewalDate) }
        askedAt = now
        return .request(newKey: true)
    }

    /// A certificate for the pending key arrived and was stored.
    mutating func answered() { askedAt = nil }
}

/// A clock tests move by hand. `sleep(until:)` returns once `advance` reaches the
/// deadline.
final class ManualAgentClock: AgentClock {
    private struct Sleeper {
        let deadline: Date
        let continuation: CheckedContinuation<Void, any Error>
    }
    private let state: Mutex<(now: Date, sleepers: [UInt64: Sleeper], nextID: UInt64)>

    init(now: Date) { state = Mutex((now, [:], 0)) }

    func now() -> Date { state.withLock { $0.now } }

    /// Sleepers waiting now (a test waits for this before advancing).
    var sleeping: Int { state.withLock { $0.sleepers.count } }

    func advance(by seconds: TimeInterval) {
        let due = state.withLock { s -> [Sleeper] in
            s.now = s.now.addingTimeInterval(seconds)
            let now = s.now
            let due = s.sleepers.filter { $0.value.deadline <= now }
            for id in due.keys { s.sleepers[id] = nil }
            return Array(due.values)
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    func sleep(until deadline: Date) async throws {
        let id = state.withLock { s -> UInt64 in
            s.nextID += 1
            return s.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resumeNow = state.withLock { s -> Bool in
                    if Task.isCancelled || deadline <= s.now { return true }
                    s.sleepers[id] = Sleeper(deadline: deadline, continuation: continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
            try Task.checkCancellation()
        } onCancel: {
            let sleeper = state.withLock { $0.sleepers.removeValue(forKey: id) }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }
}
