import Foundation
import Logging
import Prometheus
import Shared

/// The agent's Prometheus metrics, served on its health listener's `/metrics`.
package final class AgentMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let connected: Gauge
    let reconnects: Counter
    let renewals: Counter
    let auditReceived: Counter
    let auditForwarded: Counter
    let auditAcknowledged: Gauge
    let auditSpooledBytes: Gauge
    let auditOldestUnacknowledgedAge: Gauge
    let auditSpoolDamagedFrames: Gauge
    /// Just-in-time service accounts made, and removed (with their bindings).
    let jitAccountsCreated: Counter
    let jitAccountsRemoved: Counter
    /// A session's first request here: account, bindings and token made.
    let jitFirstRequest: DurationHistogram
    /// Spare tunnels to the hub: idle, or carrying a request and not yet replaced.
    let spareTunnels: Gauge

    package init() {
        connected = registry.makeGauge(name: "tether_agent_hub_connected", help: "1 while the channel to the hub is up.")
        jitAccountsCreated = registry.makeCounter(name: "tether_agent_jit_accounts_created_total", help: "Just-in-time service accounts made for people's sessions.")
        jitAccountsRemoved = registry.makeCounter(name: "tether_agent_jit_accounts_removed_total",
                                                  help: "Just-in-time service accounts deleted (session ended, expired or no longer granted).")
        jitFirstRequest = registry.makeDurationHistogram(
            name: "tether_agent_jit_first_request_seconds",
            buckets: [.milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(200), .milliseconds(300), .milliseconds(500),
                      .seconds(1), .seconds(2), .seconds(5)],
            help: "Time to make a session's account, bindings and token on its first request.")
        jitAccountsCreated.increment(by: Int64(0))
        jitAccountsRemoved.increment(by: Int64(0))
        reconnects = registry.makeCounter(name: "tether_agent_reconnects_total", help: "Channel attempts after a failure or close.")
        renewals = registry.makeCounter(name: "tether_agent_certificate_renewals_total", help: "Certificates renewed on the channel.")
        auditReceived = registry.makeCounter(name: "tether_agent_audit_events_received_total", help: "Audit events accepted and spooled.")
        auditForwarded = registry.makeCounter(name: "tether_agent_audit_events_forwarded_total", help: "Audit events sent to the hub (resends included).")
        auditAcknowledged = registry.makeGauge(name: "tether_agent_audit_acknowledged_sequence", help: "Highest sequence the hub has stored.")
        auditSpooledBytes = registry.makeGauge(name: "tether_agent_audit_spool_bytes", help: "Bytes in the audit spool.")
        auditOldestUnacknowledgedAge = registry.makeGauge(
            name: "tether_agent_audit_oldest_unacknowledged_seconds", help: "Age of the oldest event the hub has not acknowledged (0 if none).")
        auditSpoolDamagedFrames = registry.makeGauge(
            name: "tether_agent_audit_spool_damaged_frames",
            help: "Damaged frames found in the audit spool; forwarding stops at the first (never skipped or renumbered). Alert above 0.")
        auditSpoolDamagedFrames.set(Int64(0))
        connected.set(Int64(0))
        spareTunnels = registry.makeGauge(name: "tether_agent_spare_tunnels", help: "Spare tunnels to the hub for people's next requests: idle, or carrying one and not yet replaced.")
        spareTunnels.set(Int64(0))
        for reason in Self.rejectionReasons { rejected(reason).increment(by: Int64(0)) }
        for part in ChannelPart.allCases { channelRestarts(part).increment(by: Int64(0)) }
    }

    private func channelRestarts(_ part: ChannelPart) -> Counter {
        registry.makeCounter(
            descriptor: .init(metricName: "tether_agent_channel_restarts_total",
                              helpText: "Parts of the hub channel that failed while it was up and were restarted, or made the channel re-dial, by part."),
            labels: [("part", part.rawValue)])
    }

    /// A part of the hub channel failed (restarted alone, or the channel re-dials).
    func channelPartFailed(_ part: ChannelPart) { channelRestarts(part).increment() }

    static let rejectionReasons = ["malformed", "oversized", "spool-full", "unauthorized", "storage-error"]

    private func rejected(_ reason: String) -> Counter {
        registry.makeCounter(
            descriptor: .init(metricName: "tether_agent_audit_batches_rejected_total", helpText: "Audit webhook requests refused, by reason."),
            labels: [("reason", reason)])
    }

    func auditRejected(_ reason: String) { rejected(reason).increment() }

    /// A listener's connection guard, its refusals counted here.
    func connectionGuard(listener: String, limits: ConnectionLimits, logger: Logger) -> ConnectionGuard {
        .counted(listener: listener, limits: limits, registry: registry, logger: logger)
    }

    func exposition(spool: AuditSpool? = nil) -> String {
        if let spool {
            auditSpooledBytes.set(spool.sizeInBytes)
            auditSpoolDamagedFrames.set(Int64(spool.damagedFrames))
            let oldest = spool.oldestUnacknowledged()
            auditOldestUnacknowledgedAge.set(oldest.map { max(0, Date().timeIntervalSince($0)) } ?? 0)
        }
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}
