import Prometheus

/// The agent's Prometheus metrics, served on its health listener's `/metrics`.
final class AgentMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let connected: Gauge
    let reconnects: Counter
    let renewals: Counter

    init() {
        connected = registry.makeGauge(name: "tether_agent_hub_connected", help: "1 while the channel to the hub is up.")
        reconnects = registry.makeCounter(name: "tether_agent_reconnects_total", help: "Channel attempts after a failure or close.")
        renewals = registry.makeCounter(name: "tether_agent_certificate_renewals_total", help: "Certificates renewed on the channel.")
        connected.set(Int64(0))
    }

    func exposition() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}
