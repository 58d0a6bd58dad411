import Foundation
import Logging
import ServiceLifecycle
import HubStore
import Shared

/// Prunes audit events older than the retention period at start and then hourly,
/// whole batches at a time so `audit verify` still holds.
struct AuditRetentionService: Service {
    let core: HubCore
    let retention: Duration
    var interval: Duration = .seconds(3600)

    func run() async throws {
        while !Task.isShuttingDownGracefully {
            do {
                let cutoff = core.clock.now().addingTimeInterval(-retention.seconds)
                let pruned = try await core.database.pruneAudit(before: cutoff)
                if pruned > 0 {
                    core.logger.info("pruned audit events past retention", metadata: ["events": "\(pruned)", "before": "\(iso8601(cutoff))"])
                }
            } catch {
                core.logger.error("audit retention failed", metadata: ["error": "\(error)"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}
