import Shared

/// A part of the agent's channel to the hub: something that runs for as long as
/// the channel is up. Its raw value is the `part` label of
/// `tether_agent_channel_restarts_total`.
package enum ChannelPart: String, CaseIterable, Sendable {
    /// The audit forwarder's `StreamAudit` RPC.
    case audit
    /// Applying the desired states the hub sends, and reporting drift repairs.
    case policy
    /// Asking for a new certificate at two thirds of the current one's life.
    case renewal
    /// The heartbeats that keep the cluster `online` at the hub.
    case heartbeat
}

/// Decides what happens when a part of the channel stops while the channel is up:
/// restart that part alone after a capped, jittered backoff, or close the channel
/// so that the hub link re-dials. Every part runs until the channel goes down, so
/// any stop (an error, or a clean end) is a failure. Pure: events in, actions out,
/// tested without sockets; `HubLink` carries the actions out.
struct ChannelSupervisor: Sendable {
    enum Remedy: Equatable, Sendable {
        case restartPart
        case redialChannel
    }

    enum Action: Equatable, Sendable {
        /// Run the part again after `after`; the channel stays up.
        case restart(ChannelPart, after: Duration)
        /// Close the channel; the hub link re-dials with its own backoff.
        case closeChannel(ChannelPart)
    }

    /// Which remedy fits each part, and why.
    static func remedy(for part: ChannelPart) -> Remedy {
        switch part {
        case .audit:
            // Its own RPC beside the link: a refused batch, a busy hub database or a
            // reset stream says nothing about the link, so policy and heartbeats keep
            // going. A new stream starts from the hub's acknowledged sequence, so
            // nothing is lost or stored twice.
            return .restartPart
        case .renewal:
            // Local work (a key, a CSR, a timer) whose state (current identity, pending
            // key) lives in the channel and survives a restart; re-dialing would cut
            // audit and policy for a failure a new connection cannot fix.
            return .restartPart
        case .policy:
            // Desired states arrive on the link only when newer than what the hub
            // thinks this agent has; one taken off the stream but not applied would
            // never be sent again on this channel. A new channel's Hello carries the
            // revision really applied, so the hub sends anything newer again.
            return .redialChannel
        case .heartbeat:
            // Without heartbeats the hub closes the channel after three intervals and
            // shows the cluster offline meanwhile; re-dial at once instead.
            return .redialChannel
        }
    }

    let initialDelay: Duration
    let maximumDelay: Duration
    /// A part that ran this long before it stopped was healthy: its next restart
    /// starts again from the shortest delay.
    let healthyAfter: Duration
    /// Restarting in place this many times in a row without a healthy run, the last
    /// failure coming from the hub, means the connection itself is suspect (for
    /// example its TLS certificate expired after a renewal on the link); the channel
    /// is re-dialed instead. Local failures (a damaged spool) never re-dial: a new
    /// connection cannot fix them, and re-dialing would cut policy and heartbeats.
    let redialAfterFailures: Int

    private var backoffs: [ChannelPart: Backoff] = [:]
    /// Stops seen per part on this channel.
    private(set) var stops: [ChannelPart: Int] = [:]

    init(initialDelay: Duration = .milliseconds(500), maximumDelay: Duration = .seconds(30),
         healthyAfter: Duration = .seconds(60), redialAfterFailures: Int = 6) {
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.healthyAfter = healthyAfter
        self.redialAfterFailures = redialAfterFailures
    }

    /// `part` stopped after running for `ran`; `fromHub`: the failure was an RPC
    /// error (the hub or the connection), not a local one.
    mutating func partStopped<R: RandomNumberGenerator>(_ part: ChannelPart, after ran: Duration, fromHub: Bool = true, using rng: inout R) -> Action {
        stops[part, default: 0] += 1
        switch Self.remedy(for: part) {
        case .redialChannel:
            return .closeChannel(part)
        case .restartPart:
            var backoff = backoffs[part] ?? Backoff(initial: initialDelay, cap: maximumDelay)
            if ran >= healthyAfter { backoff.reset() }
            guard backoff.failures < redialAfterFailures || !fromHub else {
                backoffs[part] = nil
                return .closeChannel(part)
            }
            let delay = backoff.next(using: &rng)
            backoffs[part] = backoff
            return .restart(part, after: delay)
        }
    }

    mutating func partStopped(_ part: ChannelPart, after ran: Duration, fromHub: Bool = true) -> Action {
        var rng = SystemRandomNumberGenerator()
        return partStopped(part, after: ran, fromHub: fromHub, using: &rng)
    }
}
