import AsyncAlgorithms
import Foundation
import GRPCCore
import HubStore
import Shared

extension AgentLinkService {
    /// `StreamAudit`: tells the agent where the hub's log of its cluster ends, then
    /// stores each batch and acknowledges it once the transaction has committed.
    ///
    /// Registered with the connection registry like the link, so removing the
    /// cluster cuts it at once; closed when its certificate runs out (unless the
    /// link on the same connection renewed it).
    func streamAudit(
        request: RPCAsyncSequence<Tether_V1_AuditBatch, any Error>,
        response: RPCWriter<Tether_V1_AuditAck>,
        context: ServerContext
    ) async throws {
        guard case .agent(let cluster, let serial, let certificate) = try AgentPeer(context: context, ca: core.ca.certificate) else {
            throw RPCError(code: .unauthenticated, message: "an agent certificate is required")
        }
        let peer = "\(context.remotePeer)"
        let (closeSignals, closer) = AsyncStream.makeStream(of: TetherError.self)
        let id = core.registry.register(cluster, stream: .audit, peer: peer, close: { reason in
            closer.yield(reason)
            closer.finish()
        })
        defer { core.registry.unregister(cluster, id: id) }
        do {
            // A removal that raced the interceptor's check still wins.
            guard try await core.database.standing(ofCertificate: serial) == .active else {
                throw TetherError(.clusterRevoked, "the certificate for cluster '\(cluster)' was revoked")
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    let start = try await core.auditAcknowledged(cluster)
                    try await response.write(.with { $0.acknowledgedSequence = start })
                    // Two stages: the next batch is decompressed and indexed while the one
                    // before it commits. The channel holds none, so at most one batch waits
                    // prepared; batches are stored, and acknowledged, in the order they came.
                    let prepared = AsyncThrowingChannel<HubCore.PreparedAuditBatch, any Error>()
                    try await withThrowingTaskGroup(of: Void.self) { stages in
                        stages.addTask {
                            do {
                                for try await batch in request {
                                    await prepared.send(try await core.prepareAudit(
                                        cluster: cluster, firstSequence: batch.firstSequence, events: try batch.decodedEvents()))
                                }
                                prepared.finish()
                            } catch {
                                prepared.fail(error)
                            }
                        }
                        for try await batch in prepared {
                            let acked = try await core.storeAudit(batch)
                            try await response.write(.with { $0.acknowledgedSequence = acked })
                        }
                    }
                }
                group.addTask {
                    try await watchAuditCertificate(cluster: cluster, peer: peer, notAfter: certificate.notValidAfter)
                }
                group.addTask {
                    for await reason in closeSignals { throw reason }
                }
                _ = try await group.next()
                group.cancelAll()
            }
        } catch let error as TetherError {
            core.logger.info("audit stream closed", metadata: ["cluster": "\(cluster)", "peer": "\(peer)", "reason": "\(error.message)"])
            throw error.rpcError
        }
    }

    /// Ends the audit stream when its certificate runs out. While the cluster's link
    /// is on the same connection, the stream follows the link: the link renews the
    /// certificate and its watchdog closes it at expiry (judging expiry here too
    /// would race a renewal the link is still processing). Once the link is gone,
    /// the latest deadline it had, or the stream's own certificate's, applies.
    private func watchAuditCertificate(cluster: ClusterName, peer: String, notAfter: Date) async throws {
        var deadline = notAfter
        while true {
            if let linkDeadline = core.registry.linkCertificateDeadline(cluster, peer: peer) {
                deadline = max(deadline, linkDeadline)
                // Look again just after the link's deadline (or soon, if it is past and the link is unwinding).
                let wait = max(linkDeadline.timeIntervalSince(core.clock.now()), 0) + 0.05
                try await Task.sleep(for: .milliseconds(Int64(wait * 1000)))
                continue
            }
            let untilExpiry = deadline.timeIntervalSince(core.clock.now())
            if untilExpiry <= 0 {
                throw TetherError(.certificateExpired, "the audit stream's certificate expired without renewal")
            }
            // A link that opens on this connection meanwhile is seen within a second.
            try await Task.sleep(for: .milliseconds(min(Int64(untilExpiry * 1000) + 1, 1000)))
        }
    }
}

extension Tether_V1_AuditBatch {
    /// The batch's events, from `compressed_events` when the agent compressed them
    /// (bounded: a batch may not expand past one message's limit), else `events`.
    func decodedEvents() throws -> [Data] {
        guard !compressedEvents.isEmpty else { return events }
        guard events.isEmpty else {
            throw TetherError(.invalidArgument, "audit batch carries both events and compressed_events; send one")
        }
        return try EventCompression.decompress(compressedEvents, count: Int(eventCount))
    }
}
