import Foundation
import Hummingbird
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import Shared

/// The HTTPS endpoint for the API server's audit webhook backend (`POST /audit`).
/// Answers 200 only once the batch is fsynced in the spool; 400 for a malformed
/// body, 413 over 10 MiB, 429 when the spool is full (the API server retries), 401
/// without the webhook token. Nothing is stored from a refused request.
enum AuditReceiver {
    static let maxBody = 10 << 20

    static func makeRouter(spool: AuditSpool, token: String, metrics: AgentMetrics, logger: Logger) -> Router<BasicRequestContext> {
        let router = Router()
        router.post("/audit") { request, _ -> Response in
            var request = request
            func refuse(_ status: HTTPResponse.Status, _ reason: String, _ message: String) -> Response {
                metrics.auditRejected(reason)
                logger.warning("audit batch refused", metadata: ["reason": "\(reason)", "error": "\(message)"])
                return Response(status: status, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: message + "\n")))
            }
            guard let header = request.headers[.authorization], header == "Bearer \(token)" else {
                return refuse(.unauthorized, "unauthorized", "missing or wrong webhook token; use the kubeconfig from `tether-agent audit-kubeconfig`")
            }
            if let length = request.headers[.contentLength].flatMap(Int.init), length > maxBody {
                return refuse(.contentTooLarge, "oversized", "body of \(length) bytes is over the 10 MiB limit")
            }
            let body: ByteBuffer
            do {
                body = try await request.collectBody(upTo: maxBody)
            } catch is NIOTooManyBytesError {
                return refuse(.contentTooLarge, "oversized", "body is over the 10 MiB limit")
            }
            let events: [Data]
            do {
                events = try EventListParser.events(in: Data(buffer: body))
            } catch {
                return refuse(.badRequest, "malformed", "not an audit.k8s.io/v1 EventList: \(error)")
            }
            let range: ClosedRange<UInt64>?
            do {
                range = try await spool.append(events)
            } catch let full as AuditSpool.Full {
                metrics.auditRejected("spool-full")
                logger.warning("audit spool full; answering 429", metadata: ["size": "\(full.size)", "limit": "\(full.limit)"])
                return Response(status: .tooManyRequests, headers: [.retryAfter: "5"],
                                body: .init(byteBuffer: ByteBuffer(string: "\(full); retry later\n")))
            } catch {
                return refuse(.serviceUnavailable, "storage-error", "cannot store the batch: \(error)")
            }
            metrics.auditReceived.increment(by: Int64(events.count))
            // The API server ignores the body; operators and the benchmark can match
            // it against tether_agent_audit_acknowledged_sequence.
            let reply = range.map { #"{"firstSequence":\#($0.lowerBound),"lastSequence":\#($0.upperBound)}"# } ?? "{}"
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: reply)))
        }
        return router
    }
}

