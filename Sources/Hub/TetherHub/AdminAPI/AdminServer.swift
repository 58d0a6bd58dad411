import Foundation
import Hummingbird
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import HubStore
import Shared
import Synchronization

/// The admin HTTPS API the `tether-hub` CLI calls, plus `/healthz`, `/readyz` and
/// Prometheus `/metrics`. Everything under `/v1` needs the bearer token from the
/// data dir's `admin-credentials.json`.
enum AdminServer {
    static func makeRouter(core: HubCore, readiness: Readiness) -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: ErrorMappingMiddleware())
        router.add(middleware: StrictJSONMiddleware())
        router.get("/healthz") { _, _ in "ok\n" }
        router.get("/readyz") { _, _ -> Response in
            readiness.isReady
                ? Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "ready\n")))
                : Response(status: .serviceUnavailable, body: .init(byteBuffer: ByteBuffer(string: "not ready\n")))
        }
        router.get("/metrics") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: .init(byteBuffer: ByteBuffer(string: core.metrics.exposition())))
        }

        let v1 = router.group("v1")
            .add(middleware: BearerAuthMiddleware(database: core.database))
            .add(middleware: AuditReadsMiddleware(core: core))
        addAuditRoutes(to: v1, core: core)
        addPolicyRoutes(to: v1, core: core)
        addAccessRoutes(to: v1, core: core)
        v1.get("report") { request, _ -> Response in
            let params = request.uri.queryParameters
            let since = try ReportPeriod.start(params["since"].map(String.init), now: core.clock.now())
            let until = try params["until"].map(String.init).flatMap { $0.isEmpty ? nil : try ReportPeriod.time($0, "until") }
            return try json(try await core.complianceReport(since: since, until: until))
        }
        v1.post("clusters") { request, context -> Response in
            let body = try await request.decode(as: AddClusterRequest.self, context: context)
            let record = try await core.addCluster(try ClusterName(body.name), labels: body.labels ?? [:])
            return try json(ClusterView(record: record, online: false), status: .created)
        }
        v1.get("clusters") { _, _ -> Response in
            try json(try await core.clusterViews())
        }
        v1.delete("clusters/:name") { _, context -> Response in
            try json(try await core.removeCluster(try ClusterName(context.parameters.require("name"))))
        }
        v1.post("tokens") { request, context -> Response in
            let body = try await request.decode(as: CreateTokenRequest.self, context: context)
            // Checked before conversion: a JSON number such as 1e19 does not fit an Int64.
            let ttl = try body.ttlSeconds.map { try DurationParser.duration(seconds: $0, field: "ttlSeconds") }
            let (record, join) = try await core.createToken(cluster: try ClusterName(body.cluster), ttl: ttl)
            return try json(CreatedToken(token: TokenView(record: record, now: core.clock.now()), joinString: join.encoded), status: .created)
        }
        v1.get("tokens") { _, _ -> Response in
            try json(try await core.tokenViews())
        }
        v1.delete("tokens/:id") { _, context -> Response in
            try json(try await core.revokeToken(id: context.parameters.require("id")))
        }
        return router
    }

    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        let data = try JSONEncoder.tether.encode(value)
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// TLS 1.2+ with the hub's serving certificate.
    static func tlsConfiguration(directory: DataDirectory) throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: [.certificate(try NIOSSLCertificate(bytes: Array(try PKI.pem(directory.servingCertificate).utf8), format: .pem))],
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(directory.servingKeyPEM.utf8), format: .pem)))
        tls.minimumTLSVersion = .tlsv12
        return tls
    }
}

/// Whether the hub can serve: set once both listeners are bound and the store is
/// open, cleared when shutdown begins.
final class Readiness: Sendable {
    private let state = Mutex(false)
    init() {}
    var isReady: Bool { state.withLock { $0 } }
    func set(_ ready: Bool) { state.withLock { $0 = ready } }
}

/// `Authorization: Bearer <token>` checked against the stored hashes.
struct BearerAuthMiddleware<Context: RequestContext>: RouterMiddleware {
    let database: HubDatabase

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer "),
              try await database.isAdminToken(hash: AdminCredentials.hash(String(header.dropFirst(7))))
        else {
            throw TetherError(.unauthenticated, "missing or wrong admin token; use the admin-credentials.json from the hub's data dir")
        }
        return try await next(request, context)
    }
}

/// Turns domain errors into JSON error bodies with a fitting status.
struct ErrorMappingMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as TetherError {
            throw APIError(error)
        } catch let error as DecodingError {
            throw APIError(TetherError(.invalidArgument, "request body is not valid JSON for this call: \(error)"))
        } catch is NIOTooManyBytesError {
            // Hummingbird stops collecting a body at the context's limit; say which.
            let limit = context.maxUploadSize
            throw APIError(TetherError(.payloadTooLarge, """
                the request body is over the admin API's limit of \(ByteCount.format(limit)) (\(limit) bytes); \
                send fewer or smaller policy files per call
                """))
        } catch let error as HTTPResponseError {
            throw error
        } catch {
            context.logger.error("admin API request failed", metadata: ["error": "\(error)"])
            throw APIError(TetherError(.internalError, "internal error; see the hub's log"))
        }
    }
}

extension TetherError.Code {
    /// A request body over the admin API's limit (413).
    static let payloadTooLarge = TetherError.Code("payload-too-large")
}

/// A `TetherError` at the admin API's edge: its code picks the HTTP status, and
/// the body is `ErrorBody`.
struct APIError: HTTPResponseError {
    let error: TetherError
    init(_ error: TetherError) { self.error = error }

    var status: HTTPResponse.Status {
        switch error.code {
        case .invalidArgument, .badCSR, .malformedJoinString: .badRequest
        case .notFound: .notFound
        case .alreadyExists, .tokenUsed, .clusterRevoked, .conflict: .conflict
        case .permissionDenied: .forbidden
        case .unauthenticated: .unauthorized
        case .unavailable: .serviceUnavailable
        case .payloadTooLarge: .contentTooLarge
        default: .internalServerError
        }
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        try AdminServer.json(ErrorBody(error: .init(code: error.code.rawValue, message: error.message)), status: status)
    }
}
