import Foundation
import Logging
import ServiceLifecycle
import Shared

/// Every minute, tells every connected agent which sessions are live, so each
/// deletes the just-in-time accounts of any session that ended (expired, or
/// revoked while the agent was away or its message was lost).
struct SessionSweepService: Service {
    let core: HubCore
    var interval: Duration = .seconds(60)

    func run() async throws {
        while !Task.isShuttingDownGracefully {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            guard !Task.isShuttingDownGracefully else { return }
            await core.pushAccess()
        }
    }
}
