import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Shared

/// Something that runs over the hub channel while it is up (and is cancelled when
/// it goes down), sharing its connection. `run` should not return while the
/// channel is up: the hub link treats any return or error as a failure of `part`
/// and restarts it or re-dials (see `ChannelSupervisor`).
package protocol ChannelParticipant: Sendable {
    var part: ChannelPart { get }
    func run(over client: GRPCClient<HTTP2ClientTransport.Posix>) async throws
}

/// Streams the spool to the hub in sequence order, compressed, with at most
/// `window` unacknowledged events in flight; trims the spool as acks arrive.
struct AuditForwarder: ChannelParticipant {
    let spool: AuditSpool
    let metrics: AgentMetrics
    let logger: Logger
    /// Larger batches mean fewer commits at the hub, each touching index pages once.
    /// The hub accepts messages of up to 32 MiB; batches stop at 16 MiB.
    var batchSize = 10_000
    var window: UInt64 = 50_000

    var part: ChannelPart { .audit }

    func run(over client: GRPCClient<HTTP2ClientTransport.Posix>) async throws {
        let start = Locked<UInt64?>(nil)
        let started = ChangeSignal()
        var options = CallOptions.defaults
        // Compressed in the message (EventCompression), not by gRPC: see AuditBatch.
        options.waitForReady = false
        options.maxRequestMessageBytes = WireLimits.maxMessageBytes
        options.maxResponseMessageBytes = WireLimits.maxMessageBytes
        try await Tether_V1_AgentLink.Client(wrapping: client).streamAudit(
            options: options,
            requestProducer: { writer in
                var cursor: UInt64
                while true {
                    let seen = started.generation
                    if let first = start.value { cursor = first; break }
                    try Task.checkCancellation()
                    await started.wait(after: seen)
                }
                while true {
                    try Task.checkCancellation()
                    let seen = spool.changed.generation
                    guard cursor < spool.acknowledged + window else {
                        await spool.changed.wait(after: seen)
                        continue
                    }
                    let events = try await spool.read(after: cursor, maxEvents: batchSize, maxBytes: 16 << 20)
                    guard let last = events.last else {
                        await spool.changed.wait(after: seen)
                        continue
                    }
                    let compressed = try EventCompression.compress(events.map(\.payload))
                    try await writer.write(.with {
                        $0.firstSequence = events[0].sequence
                        $0.compressedEvents = compressed
                        $0.eventCount = UInt32(events.count)
                    })
                    metrics.auditForwarded.increment(by: Int64(events.count))
                    cursor = last.sequence
                }
            },
            onResponse: { response in
                for try await ack in response.messages {
                    let acked = ack.acknowledgedSequence
                    if start.value == nil {
                        if acked > spool.lastSequence {
                            logger.warning("the hub has audit events up to \(acked) but this agent's spool ends at \(spool.lastSequence) (state dir lost?); renumbering pending events after the hub's")
                            try await spool.renumber(above: acked)
                        } else if acked < spool.acknowledged {
                            logger.error("the hub has audit events only up to \(acked) but acknowledged up to \(spool.acknowledged) before (hub restored from a backup?); events \(acked + 1)...\(spool.acknowledged) were trimmed here and are lost with the hub's newer data; renumbering pending events after the hub's")
                            try await spool.renumber(above: acked)
                        }
                        try await spool.acknowledge(upTo: acked)
                        logger.info("audit stream open", metadata: ["hubHas": "\(acked)", "spooled": "\(spool.lastSequence)"])
                        start.value = acked
                        started.notify()
                    } else {
                        try await spool.acknowledge(upTo: acked)
                    }
                    metrics.auditAcknowledged.set(Int64(acked))
                }
            })
    }
}
