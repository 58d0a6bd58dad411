import Logging
import Prometheus

extension ConnectionGuard {
    /// A listener's guard whose refusals are counted in `registry` as
    /// `tether_connections_refused_total{listener, reason}` and logged, and its
    /// pending count is the gauge `tether_connections_pending{listener}`.
    public static func counted(listener: String, limits: ConnectionLimits, registry: PrometheusCollectorRegistry, logger: Logger) -> ConnectionGuard {
        let counters = Dictionary(uniqueKeysWithValues: ConnectionRefusal.allCases.map { reason in
            let counter = registry.makeCounter(
                name: "tether_connections_refused_total", labels: [("listener", listener), ("reason", reason.rawValue)],
                help: "Connections closed before they proved themselves: handshake or first bytes too slow, or too many pending.")
            counter.increment(by: Int64(0))
            return (reason, counter)
        })
        let pending = registry.makeGauge(
            name: "tether_connections_pending", labels: [("listener", listener)],
            help: "Connections accepted that have not yet completed TLS and sent their first bytes.")
        pending.set(Int64(0))
        return ConnectionGuard(limits: limits, onPendingChange: { pending.increment(by: Double($0)) }) { reason, peer in
            counters[reason]?.increment()
            logger.notice("connection closed before it proved itself",
                          metadata: ["listener": "\(listener)", "reason": "\(reason.rawValue)", "peer": "\(peer)"])
        }
    }
}
