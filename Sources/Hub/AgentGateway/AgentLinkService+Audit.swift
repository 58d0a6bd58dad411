import GRPCCore
import Shared

extension AgentLinkService {
    /// `StreamAudit`: tells the agent where the hub's log of its cluster ends, then
    /// stores each batch and acknowledges it once the transaction has committed.
    func streamAudit(
        request: RPCAsyncSequence<Tether_V1_AuditBatch, any Error>,
        response: RPCWriter<Tether_V1_AuditAck>,
        context: ServerContext
    ) async throws {
        guard case .agent(let cluster, _, _) = try AgentPeer(context: context, ca: core.ca.certificate) else {
            throw RPCError(code: .unauthenticated, message: "an agent certificate is required")
        }
        do {
            try await response.write(.with { $0.acknowledgedSequence = try core.auditAcknowledged(cluster) })
            for try await batch in request {
                let acked = try core.ingestAudit(cluster: cluster, firstSequence: batch.firstSequence, events: batch.events)
                try await response.write(.with { $0.acknowledgedSequence = acked })
            }
        } catch let error as TetherError {
            throw error.rpcError
        }
    }
}
