import Synchronization
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
        let refusals = SpoolRefusals()
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
            // Batches refused while the spool was full are said in the stream itself,
            // ahead of the first batch stored again: the hub's report shows the overflow.
            let owed = refusals.take()
            do {
                range = try await spool.append((owed.map { [$0.marker(now: Date())] } ?? []) + events)
            } catch let full as AuditSpool.Full {
                refusals.refused(adding: owed)
                metrics.auditRejected("spool-full")
                logger.warning("audit spool full; answering 429", metadata: ["size": "\(full.size)", "limit": "\(full.limit)"])
                return Response(status: .tooManyRequests, headers: [.retryAfter: "5"],
                                body: .init(byteBuffer: ByteBuffer(string: "\(full); retry later\n")))
            } catch {
                refusals.refused(adding: owed, count: 0)
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


/// Webhook batches answered 429 since the last one stored.
final class SpoolRefusals: Sendable {
    struct Owed: Sendable {
        var batches: Int
        var since: Date

        /// An audit event of the agent's own saying how many batches the full spool
        /// refused and since when (the API server's retries may have brought some back).
        func marker(now: Date) -> Data {
            let format = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
            let event: [String: Any] = [
                "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": UUID().uuidString.lowercased(),
                "stage": "ResponseComplete", "verb": SpoolRefusalMarker.verb, "user": ["username": SpoolRefusalMarker.user],
                "responseStatus": ["code": 429], "requestReceivedTimestamp": since.formatted(format), "stageTimestamp": now.formatted(format),
                "annotations": ["tether.dev/refused-batches": "\(batches)", "tether.dev/refused-since": since.formatted(format),
                                "tether.dev/message": "the audit spool was full: \(batches) webhook batches answered 429"],
            ]
            return (try? JSONSerialization.data(withJSONObject: event, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        }
    }

    private let state = Mutex<Owed?>(nil)

    init() {}

    /// What is owed, taken (put back with `refused(adding:)` if the append fails).
    func take() -> Owed? { state.withLock { owed in defer { owed = nil }; return owed } }

    /// One more refusal (`count` 1), plus what a failed append had taken.
    func refused(adding taken: Owed?, count: Int = 1, now: Date = Date()) {
        state.withLock { owed in
            var merged = owed ?? Owed(batches: 0, since: taken?.since ?? now)
            merged.batches += count + (taken?.batches ?? 0)
            if let taken, taken.since < merged.since { merged.since = taken.since }
            owed = merged.batches > 0 ? merged : nil
        }
    }
}
