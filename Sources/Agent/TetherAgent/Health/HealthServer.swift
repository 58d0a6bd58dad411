import Hummingbird
import NIOCore
import ServiceLifecycle
import Shared

/// Plain-HTTP `/healthz` (the process is up), `/readyz` (an identity is loaded) and
/// `/metrics`, for kubelet probes and Prometheus inside the cluster.
enum HealthServer {
    static func make(listen: HostPort, link: HubLink, metrics: AgentMetrics, spool: AuditSpool? = nil, guard: ConnectionGuard,
                     onBound: @escaping @Sendable (SocketAddress) -> Void) -> some Service {
        let router = Router()
        router.get("/healthz") { _, _ in "ok\n" }
        router.get("/readyz") { _, _ -> Response in
            let ready = link.status.withLock { $0.cluster != nil }
            return Response(status: ready ? .ok : .serviceUnavailable,
                            body: .init(byteBuffer: ByteBuffer(string: ready ? "ready\n" : "not enrolled\n")))
        }
        router.get("/metrics") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: .init(byteBuffer: ByteBuffer(string: metrics.exposition(spool: spool))))
        }
        return Application(
            router: router,
            server: .guardedHTTP1(guard: `guard`),
            configuration: .init(address: .hostname(listen.host, port: listen.port), serverName: "tether-agent"),
            onServerRunning: { channel in
                if let address = channel.localAddress { onBound(address) }
            },
            logger: link.logger)
    }
}
