/// Capped exponential backoff with jitter, as a value: `next()` returns the delay
/// before the next attempt. Pure, so reconnect schedules are tested without sockets.
///
/// Each delay is drawn uniformly from [ceiling/2, ceiling], where the ceiling doubles
/// per failure from `initial` up to `cap`. The half-floor keeps a fleet of agents
/// that lost the hub at once from retrying in lockstep without ever retrying at 0.
public struct Backoff: Sendable {
    public let initial: Duration
    public let cap: Duration
    public private(set) var failures = 0

    public init(initial: Duration = .milliseconds(500), cap: Duration = .seconds(30)) {
        self.initial = initial
        self.cap = cap
    }

    /// The ceiling of the next delay, before jitter.
    public var ceiling: Duration {
        let factor = Double(1 << min(failures, 20))
        return min(cap, initial * factor)
    }

    /// The delay before the next attempt; advances the schedule.
    public mutating func next<R: RandomNumberGenerator>(using rng: inout R) -> Duration {
        let top = ceiling.seconds
        failures += 1
        return .milliseconds(Int64(Double.random(in: (top / 2)...top, using: &rng) * 1000))
    }

    public mutating func next() -> Duration {
        var rng = SystemRandomNumberGenerator()
        return next(using: &rng)
    }

    /// Jumps straight to the cap: for failures that retrying soon cannot fix, such
    /// as a revoked certificate, so a revoked agent does not hammer the hub.
    public mutating func exhaust() {
        failures = 64
    }

    /// A success: the next failure starts from `initial` again.
    public mutating func reset() { failures = 0 }
}
