import Foundation
import Hummingbird
import HubStore
import NIOCore
import NIOSSL
import HTTPTypes
import Shared

/// The access listener's front door: Kubernetes API paths under `/clusters/NAME/`
/// with a session credential as the bearer token, and `/tether/v1/…` for the CLI
/// (`kubeconfig`, `whoami`). Nothing leaves the hub before the session and the
/// person's roles on the cluster are checked; every refusal is a Kubernetes
/// `Status` that kubectl prints as it prints the API server's own.
enum AccessProxy {
    /// The Kubernetes API methods kubectl uses.
    static let methods: [HTTPRequest.Method] = [.get, .post, .put, .patch, .delete, .head, .options]

    /// TLS 1.2+ with the hub's serving certificate, or an operator's own (for a
    /// name people's machines already trust).
    static func tlsConfiguration(directory: DataDirectory, certificate: String?, key: String?) throws -> TLSConfiguration {
        guard let certificate, let key else { return try AdminServer.tlsConfiguration(directory: directory) }
        let chain: [NIOSSLCertificate]
        let privateKey: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificate)
        } catch {
            throw TetherError(.invalidArgument, "--access-tls-cert \(certificate): cannot read a PEM certificate chain (\(error))")
        }
        do {
            privateKey = try NIOSSLPrivateKey(file: key, format: .pem)
        } catch {
            throw TetherError(.invalidArgument, "--access-tls-key \(key): cannot read a PEM private key (\(error))")
        }
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(privateKey))
        tls.minimumTLSVersion = .tlsv12
        return tls
    }

    /// A cluster a person can reach, as `/tether/v1/clusters` lists it.
    struct ReachableCluster: Codable, Sendable, Equatable {
        var name: String
        var labels: [String: String]
        var status: ClusterView.Status
        var grants: [String]
    }

    struct WhoAmI: Codable, Sendable {
        var user: String
        var groups: [String]
        var session: String
        var method: String
        var expiresAt: Date
    }

    static func makeRouter(core: HubCore) -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: KubeStatusMiddleware())
        router.get("/healthz") { _, _ in "ok\n" }
        router.get("/tether/v1/whoami") { request, _ -> Response in
            let session = try await authenticate(request, core: core)
            return try AdminServer.json(WhoAmI(user: session.user, groups: session.groups, session: session.id, method: session.method,
                                               expiresAt: session.expiresAt))
        }
        router.get("/tether/v1/clusters") { request, _ -> Response in
            let session = try await authenticate(request, core: core)
            return try AdminServer.json(try await reachableClusters(for: session, core: core))
        }
        addSignInRoutes(to: router, core: core)
        Console.addRoutes(to: router, core: core)
        for method in methods {
            for path: RouterPath in ["/clusters/:cluster/**", "/clusters/:cluster"] {
                router.on(path, method: method) { request, context -> Response in
                    do {
                        let response = try await proxy(request, context: context, core: core)
                        core.metrics.accessRequest(cluster: context.parameters.get("cluster") ?? "", code: response.status.code)
                        return response
                    } catch let error as TetherError {
                        let response = KubeStatus.response(for: error)
                        core.metrics.accessRequest(cluster: error.code == .notFound ? "" : context.parameters.get("cluster") ?? "", code: response.status.code)
                        return response
                    }
                }
            }
        }
        return router
    }

    /// The live session the request's bearer token names, or (for the hub's own
    /// pages and `/tether/v1/…`, never for cluster paths) its session cookie.
    static func authenticate(_ request: Request, core: HubCore) async throws -> SessionRecord {
        if request.headers[.authorization] == nil, let cookie = request.cookies[sessionCookie]?.value, !cookie.isEmpty {
            return try await core.authenticate(credential: cookie)
        }
        return try await authenticate(authorization: request.headers[.authorization], core: core)
    }

    static func authenticate(authorization header: String?, core: HubCore) async throws -> SessionRecord {
        guard let header, header.hasPrefix("Bearer ") else {
            throw TetherError(.unauthenticated, "no session credential; log in (tether-hub login --hub URL), then run tether-hub kubeconfig")
        }
        return try await core.authenticate(credential: String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces))
    }

    static func reachableClusters(for session: SessionRecord, core: HubCore) async throws -> [ReachableCluster] {
        let roles = try await core.currentAccessRoles()
        return try await core.clusterViews().filter { $0.status != .revoked }.compactMap { cluster in
            let decision = AccessDecision.evaluate(roles: roles, user: session.user, groups: session.groups, clusterLabels: cluster.labels)
            guard decision.allowed else { return nil }
            return ReachableCluster(name: cluster.name, labels: cluster.labels, status: cluster.status, grants: decision.grants.summary)
        }
    }

    /// A request allowed to leave the hub: whose it is, for which cluster, with what.
    struct Admitted: Sendable {
        var session: SessionRecord
        var cluster: ClusterName
        var grants: AccessGrants
    }

    /// Checks in the order a person can act on: who they are (401), the cluster (404),
    /// their roles there (403), the cluster being reachable (503).
    static func admit(authorization: String?, clusterName: String, core: HubCore) async throws -> Admitted {
        let session = try await authenticate(authorization: authorization, core: core)
        guard let name = try? ClusterName(clusterName), let cluster = try await core.database.cluster(name), cluster.revokedAt == nil else {
            throw TetherError(.notFound, "cluster \"\(clusterName)\" is not registered at this hub (tether-hub kubeconfig lists the clusters you can reach)")
        }
        let decision = AccessDecision.evaluate(roles: try await core.currentAccessRoles(), user: session.user, groups: session.groups,
                                               clusterLabels: cluster.labels)
        guard decision.allowed else {
            await core.audit(HubAction(verb: "connect", resource: "clusters", name: clusterName, user: session.user, code: 403,
                                       sourceIP: nil, message: "no AccessRole grants \(session.user) access (session \(session.id))"))
            throw TetherError(.permissionDenied, """
                user "\(session.user)" cannot reach cluster "\(clusterName)": no AccessRole grants it to the user or their groups \
                (an operator can see why with: tether-hub access explain \(session.user) \(clusterName))
                """)
        }
        guard core.registry.isConnected(name) else {
            let seen = core.presence.latest(name)?.at ?? cluster.lastSeen
            throw TetherError(.unavailable, "cluster \(clusterName) is offline (last seen \(seen.map { AuditTime.format($0) } ?? "never"))")
        }
        return Admitted(session: session, cluster: name, grants: decision.grants)
    }

    static func proxy(_ request: Request, context: BasicRequestContext, core: HubCore) async throws -> Response {
        let admitted = try await admit(authorization: request.headers[.authorization], clusterName: try context.parameters.require("cluster"), core: core)
        return try await forward(request, context: context, cluster: admitted.cluster, session: admitted.session, grants: admitted.grants, core: core)
    }

    /// Request headers carried to the cluster (`TunnelHeaders`).
    static func carried(_ fields: HTTPFields) -> [(name: String, value: String)] {
        TunnelHeaders.carried(fields.map { ($0.name.rawName, $0.value) })
    }

    /// An HTTP/1.1 request without Content-Length (or with 0) and without
    /// Transfer-Encoding has no body (RFC 9112 §6.3): a GET, a watch, most DELETEs.
    static func hasNoBody(_ headers: HTTPFields) -> Bool {
        headers[.transferEncoding] == nil && (headers[.contentLength].map { $0.trimmingCharacters(in: .whitespaces) == "0" } ?? true)
    }

    /// Carries a granted request down the cluster's tunnel and streams the answer
    /// back as it arrives (watches and log follows have no timeout).
    static func forward(_ request: Request, context: BasicRequestContext, cluster: ClusterName, session: SessionRecord, grants: AccessGrants,
                        core: HubCore) async throws -> Response {
        let started = ContinuousClock.now
        let prefix = "/clusters/\(cluster)"
        let rest = String(request.uri.path.dropFirst(prefix.count))
        let query = request.uri.query ?? ""
        let path = (rest.isEmpty ? "/" : rest) + (query.isEmpty ? "" : "?" + query)
        let tunnel = TunnelRequest(id: TunnelBroker.newID(), method: request.method.rawValue, path: path, headers: carried(request.headers),
                                   session: session, grants: grants, bodyless: hasNoBody(request.headers))
        let streams = try await core.openTunnel(tunnel, to: cluster)
        core.metrics.tunnelsOpen.increment()
        do {
            if !(streams.isSpare && tunnel.bodyless) {
                for try await chunk in request.body { await streams.toAgent.send(.body(chunk)) }
                await streams.toAgent.send(.end(error: nil))
            }
        } catch {
            await streams.toAgent.send(.end(error: "the client stopped sending the request body"))
            streams.toAgent.finish()
            streams.fromAgent.finish()
            core.metrics.tunnelsOpen.decrement()
            throw error
        }
        var frames = streams.fromAgent.makeAsyncIterator()
        let head: TunnelFrame?
        do {
            head = try await frames.next()
        } catch {
            streams.toAgent.finish()
            streams.fromAgent.finish()
            core.metrics.tunnelsOpen.decrement()
            throw TetherError(.unavailable, "the tunnel to cluster \(cluster) failed: \(error)")
        }
        guard case .response(let status, let headers)? = head else {
            streams.toAgent.finish()
            streams.fromAgent.finish()
            core.metrics.tunnelsOpen.decrement()
            throw TetherError(.unavailable, "the agent of cluster \(cluster) ended the tunnel without an answer")
        }
        var fields = HTTPFields()
        for header in headers {
            guard let name = HTTPField.Name(header.name), !["content-length", "transfer-encoding", "connection"].contains(name.canonicalName) else { continue }
            fields.append(HTTPField(name: name, value: header.value))
        }
        let method = request.method.rawValue
        return Response(status: .init(code: status), headers: fields, body: ResponseBody { writer in
            var bytes = 0
            var outcome = "complete"
            var clientGone = false
            var iterator = streams.fromAgent.makeAsyncIterator()
            loop: while true {
                let frame: TunnelFrame?
                do {
                    frame = try await iterator.next()
                } catch {
                    // The agent's side failed (it restarted, the channel dropped): the
                    // response still ends properly, so a watch ends as the API server
                    // ending it would and kubectl does not report a broken stream.
                    outcome = "the tunnel failed: \(error)"
                    break loop
                }
                switch frame {
                case .body(let chunk)?:
                    bytes += chunk.readableBytes
                    do { try await writer.write(chunk) } catch {
                        outcome = "ended early: \(error)"
                        clientGone = true
                        break loop
                    }
                case .end(let error)?:
                    if let error { outcome = "agent: \(error)" }
                    break loop
                case .response?: continue
                case nil: break loop
                }
            }
            if clientGone {
                await streams.toAgent.send(.end(error: "the client went away"))
                streams.fromAgent.finish()
            } else {
                try? await writer.finish(nil)
            }
            // Frames the agent still sends are dropped, never left holding its RPC.
            streams.fromAgent.finish()
            streams.toAgent.finish()
            core.metrics.tunnelsOpen.decrement()
            let ms = Int((ContinuousClock.now - started).seconds * 1000)
            let info = KubeRequestInfo(method: method, path: path)
            await core.auditAfterResponse(HubAction(
                verb: info.verb, resource: info.resource ?? path, name: info.name, user: session.user, code: status, sourceIP: nil,
                message: "\(method) \(path) on cluster \(cluster): \(outcome)", namespace: info.namespace, apiGroup: info.apiGroup ?? "",
                groups: session.groups,
                annotations: ["tether.dev/cluster": cluster.rawValue, "tether.dev/session": session.id, "tether.dev/latency-ms": "\(ms)",
                              "tether.dev/response-bytes": "\(bytes)", "tether.dev/proxied": "true",
                              "tether.dev/grants": grants.summary.joined(separator: ", ")]))
        })
    }
}

/// Turns errors into a Kubernetes `Status` (kubectl prints its message the way it
/// prints the API server's: `error: You must be logged in to the server (…)`,
/// `Error from server (Forbidden): …`).
struct KubeStatusMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as TetherError {
            return KubeStatus.response(for: error)
        } catch let error as HTTPResponseError where error.status == .notFound {
            return KubeStatus.response(code: 404, reason: "NotFound", message: "the access listener serves /clusters/NAME/... (Kubernetes API paths) and /tether/v1/...")
        } catch {
            context.logger.error("access request failed", metadata: ["error": "\(error)"])
            return KubeStatus.response(code: 500, reason: "InternalError", message: "internal error at the hub; see its log")
        }
    }
}

enum KubeStatus {
    static func response(for error: TetherError) -> Response {
        let (code, headers, body) = parts(for: error)
        var fields = HTTPFields()
        for (name, value) in headers { fields.append(HTTPField(name: HTTPField.Name(name)!, value: value)) }
        return Response(status: .init(code: code), headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    /// An RFC 7234 warning (`299 - "text"`) with the text made safe for a header.
    static func warning(_ message: String) -> String {
        let text = message.unicodeScalars.map { scalar -> String in
            switch scalar {
            case "\"", "\\": "\\" + String(scalar)
            case _ where scalar.value < 0x20 || scalar.value > 0x7e: "?"
            default: String(scalar)
            }
        }.joined()
        return "299 - \"\(text)\""
    }

    static func response(code: Int, reason: String, message: String) -> Response {
        let (headers, body) = parts(code: code, reason: reason, message: message)
        var fields = HTTPFields()
        for (name, value) in headers { fields.append(HTTPField(name: HTTPField.Name(name)!, value: value)) }
        return Response(status: .init(code: code), headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    /// The `Status` answer's headers and body, for a response written without
    /// Hummingbird (a refused upgrade).
    static func parts(for error: TetherError) -> (code: Int, headers: [(String, String)], body: Data) {
        let (code, reason): (Int, String) = switch error.code {
        case .unauthenticated: (401, "Unauthorized")
        case .permissionDenied: (403, "Forbidden")
        case .notFound: (404, "NotFound")
        case .invalidArgument: (400, "BadRequest")
        case .unavailable: (503, "ServiceUnavailable")
        default: (500, "InternalError")
        }
        let (headers, body) = parts(code: code, reason: reason, message: error.message)
        return (code, headers, body)
    }

    static func parts(code: Int, reason: String, message: String) -> (headers: [(String, String)], body: Data) {
        let body: [String: Any] = [
            "kind": "Status", "apiVersion": "v1", "metadata": [String: Any](), "status": "Failure",
            "message": message, "reason": reason, "code": code,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        var headers = [("Content-Type", "application/json")]
        if code == 401 { headers.append(("WWW-Authenticate", "Bearer realm=\"tether\"")) }
        // kubectl prints a Status's message only for requests it makes after
        // discovery; a refusal at discovery (/api, /apis) shows as its generic text
        // ("the server is currently unable to handle the request"). It prints every
        // Warning header, so the reason reaches the person either way.
        headers.append(("Warning", warning(message)))
        return (headers, data)
    }
}
