import Foundation
import Hummingbird
import NIOCore
import HubStore
import Shared

/// `/v1/audit/…`: query, streaming export and chain verification.
extension AdminServer {
    static func addAuditRoutes(to v1: RouterGroup<BasicRequestContext>, core: HubCore) {
        v1.get("audit/events") { request, _ -> Response in
            let query = try auditQuery(request, defaultLimit: 100)
            let events = try await core.database.auditEvents(query)
            var body = ByteBuffer(string: "[")
            for (i, event) in events.enumerated() {
                if i > 0 { body.writeString(",") }
                writeRecord(event, into: &body)
            }
            body.writeString("]")
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: body))
        }
        v1.get("audit/export") { request, _ -> Response in
            var first = try auditQuery(request, defaultLimit: 1000)
            first.limit = 1000
            first.afterID = 0
            let query = first
            // One page of 1,000 events at a time, in storage order, so an export of
            // any size streams in constant memory.
            return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: .init { writer in
                var page = query
                while true {
                    let events = try await core.database.auditEvents(page)
                    guard let last = events.last else { break }
                    var chunk = ByteBuffer()
                    for event in events {
                        writeRecord(event, into: &chunk)
                        chunk.writeString("\n")
                    }
                    try await writer.write(chunk)
                    page.afterID = last.id
                }
                try await writer.finish(nil)
            })
        }
        v1.get("audit/verify") { _, _ -> Response in
            try json(try await core.database.verifyAuditChain())
        }
    }

    /// `{"cluster":…,"sequence":…,"event":<the event exactly as stored>}`.
    static func writeRecord(_ event: StoredAuditEvent, into buffer: inout ByteBuffer) {
        buffer.writeString(#"{"cluster":"\#(event.cluster)","sequence":\#(event.sequence),"event":"#)
        buffer.writeBytes(event.event)
        buffer.writeString("}")
    }

    static func auditQuery(_ request: Request, defaultLimit: Int) throws -> AuditQuery {
        let params = request.uri.queryParameters
        var q = AuditQuery()
        func value(_ key: String) -> String? { params[key[...]].map(String.init).flatMap { $0.isEmpty ? nil : $0 } }
        q.cluster = value("cluster")
        q.user = value("user")
        q.verb = value("verb")
        q.resource = value("resource")
        q.namespace = value("namespace")
        q.name = value("name")
        func time(_ key: String) throws -> Date? {
            guard let text = value(key) else { return nil }
            guard let date = AuditTime.parse(text) else {
                throw TetherError(.invalidArgument, "\(key) must be an RFC 3339 time, e.g. 2026-11-28T12:00:00Z")
            }
            return date
        }
        q.since = try time("since")
        q.until = try time("until")
        if let limit = value("limit") {
            guard let n = Int(limit), n > 0, n <= 100_000 else {
                throw TetherError(.invalidArgument, "limit must be between 1 and 100000")
            }
            q.limit = n
        } else {
            q.limit = defaultLimit
        }
        return q
    }
}

/// Records the operator's read calls in the audit log (writes are recorded by the
/// operations themselves, with more detail).
struct AuditReadsMiddleware<Context: RequestContext>: RouterMiddleware {
    let core: HubCore

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let response = try await next(request, context)
        if request.method == .get {
            let path = request.uri.path
            let resource = path.split(separator: "/").dropFirst().prefix(2).joined(separator: "/")
            await core.audit(HubAction(verb: "get", resource: resource, name: nil, user: "admin", code: Int(response.status.code),
                                 message: request.uri.query.map { "query: \($0)" }))
        }
        return response
    }
}
