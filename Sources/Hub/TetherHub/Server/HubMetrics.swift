import Logging
import Prometheus
import Shared

/// The hub's Prometheus metrics, served on the admin listener's `/metrics`.
/// Each hub owns its registry, so several hubs can run in one test process.
final class HubMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let agentsConnected: Gauge
    let enrollments: Counter
    let enrollmentRefusals: Counter
    let renewals: Counter
    let handshakeRefusals: Counter
    let rpcRefusals: Counter
    let auditEventsStored: Counter
    let unknownAgentMessages: Counter
    let presenceCommits: Counter
    /// Tunnels carrying a proxied request right now.
    let tunnelsOpen: Gauge
    /// Tunnels opened for a request: on an agent's idle spare, or asked for on the channel.
    let tunnelsBySpare: Counter
    let tunnelsAsked: Counter
    /// Idle spare tunnels agents hold open now.
    let spareTunnels: Gauge

    init() {
        agentsConnected = registry.makeGauge(name: "tether_agents_connected", help: "Agents with an open channel to this hub.")
        enrollments = registry.makeCounter(name: "tether_enrollments_total", help: "Agents enrolled.")
        enrollmentRefusals = registry.makeCounter(name: "tether_enrollment_refusals_total", help: "Enrollment attempts refused.")
        renewals = registry.makeCounter(name: "tether_certificate_renewals_total", help: "Agent certificates renewed.")
        handshakeRefusals = registry.makeCounter(name: "tether_agent_tls_refusals_total", help: "TLS handshakes refused on the agent listener.")
        rpcRefusals = registry.makeCounter(name: "tether_agent_rpc_refusals_total", help: "Agent RPCs refused for a revoked, unknown or wrong certificate.")
        auditEventsStored = registry.makeCounter(name: "tether_audit_events_ingested_total", help: "Audit events received from agents and the hub itself.")
        unknownAgentMessages = registry.makeCounter(
            name: "tether_agent_unknown_messages_total", help: "Channel messages of a kind this hub does not know (from newer agents), ignored.")
        presenceCommits = registry.makeCounter(
            name: "tether_presence_commits_total", help: "Database transactions that recorded agent presence (heartbeats are written in batches).")
        tunnelsOpen = registry.makeGauge(name: "tether_access_tunnels_open", help: "Proxied requests being carried through an agent's tunnel now.")
        tunnelsOpen.set(Int64(0))
        let tunnels = MetricNameDescriptor(
            metricName: "tether_access_tunnels_total", helpText: "Tunnels opened for proxied requests: on an agent's idle spare, or asked for on its channel.")
        tunnelsBySpare = registry.makeCounter(descriptor: tunnels, labels: [("path", "spare")])
        tunnelsAsked = registry.makeCounter(descriptor: tunnels, labels: [("path", "asked")])
        tunnelsBySpare.increment(by: Int64(0))
        tunnelsAsked.increment(by: Int64(0))
        spareTunnels = registry.makeGauge(name: "tether_access_spare_tunnels", help: "Idle spare tunnels agents hold open for the next requests.")
        spareTunnels.set(Int64(0))
        presenceCommits.increment(by: Int64(0))
        unknownAgentMessages.increment(by: Int64(0))
        agentsConnected.set(Int64(0))
    }

    /// A request on the access listener, by cluster and HTTP status.
    func accessRequest(cluster: String, code: Int) {
        registry.makeCounter(
            descriptor: .init(metricName: "tether_access_requests_total", helpText: "Requests on the access listener, by cluster and status code."),
            labels: [("cluster", cluster), ("code", "\(code)")]).increment()
    }

    /// A sign-in step's outcome: ok, refused (by the provider or the hub), wrong-code, locked.
    func signIns(outcome: String) {
        registry.makeCounter(
            descriptor: .init(metricName: "tether_sign_ins_total", helpText: "Sign-ins through the identity provider, by outcome."),
            labels: [("outcome", outcome)]).increment()
    }

    /// A listener's connection guard, its refusals counted here.
    func connectionGuard(listener: String, limits: ConnectionLimits, logger: Logger) -> ConnectionGuard {
        .counted(listener: listener, limits: limits, registry: registry, logger: logger)
    }

    /// The Prometheus text exposition.
    func exposition() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}
