import AsyncAlgorithms
import AsyncHTTPClient
import Crypto
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import Shared

/// One request the hub asks the agent to carry, for a person (domain form of
/// `OpenTunnel`; generated types stay in the link).
package struct TunnelRequest: Sendable {
    package var id: String
    package var method: String
    package var path: String
    package var headers: [(name: String, value: String)]
    package var grant: PersonGrant
    /// The hub's data-path probe: GET /readyz with no credential at all.
    package var probe = false
    /// A connection upgrade (exec, attach, port-forward): the protocol asked for.
    package var upgrade: String? = nil
    /// No request body: sent to the API server at once, not after the hub's end frame.
    package var bodyless = false
}

/// What the hub sends on a tunnel after OpenTunnel: the request body (or, after a
/// 101, the upgraded connection's bytes), then its end, or a cancellation.
package enum TunnelInput: Sendable {
    case body(ByteBuffer)
    case end
    case cancelled(String)
}

/// Who a request is for and exactly the roles the hub grants them on this cluster.
package struct PersonGrant: Sendable, Equatable {
    package var user: String
    package var groups: [String]
    package var sessionID: String
    package var sessionExpires: Date
    package var clusterRoles: [String]
    /// Namespace -> (ClusterRoles, Roles) bound there.
    package var namespaces: [String: (clusterRoles: [String], roles: [String])]

    package static func == (a: PersonGrant, b: PersonGrant) -> Bool {
        a.user == b.user && a.groups == b.groups && a.sessionID == b.sessionID && a.sessionExpires == b.sessionExpires
            && a.clusterRoles == b.clusterRoles && a.namespaces.mapValues { "\($0.clusterRoles)|\($0.roles)" } == b.namespaces.mapValues { "\($0.clusterRoles)|\($0.roles)" }
    }
}

/// What the agent sends back on a tunnel.
package enum TunnelEvent: Sendable {
    case head(status: Int, headers: [(name: String, value: String)])
    case body(ByteBuffer)
}

/// Carries tunneled requests to the API server.
package protocol TunnelForwarder: Sendable {
    /// Sends the request (its body already read) and hands the response to `emit` as
    /// it arrives: the head first, then body chunks. Returns when the response ends.
    func forward(_ request: TunnelRequest, body: ByteBuffer, emit: @Sendable (TunnelEvent) async throws -> Void) async throws
    /// Sends an upgrade request and hands its answer to `emit`; after a 101, copies
    /// `input` to the upstream connection and the upstream's bytes to `emit` until
    /// either side ends. Returns when the connection is closed.
    func upgrade(_ request: TunnelRequest, input: AsyncChannel<TunnelInput>, emit: @escaping @Sendable (TunnelEvent) async throws -> Void) async throws
    /// These sessions ended: delete their just-in-time accounts.
    func sessionsEnded(_ ids: Set<String>) async
    /// Only these sessions are live here, with these grants: delete the accounts of any
    /// other (and of expired ones) and the bindings no longer granted; bind what is newly granted.
    func liveSessions(_ grants: [PersonGrant]) async
}

extension TunnelForwarder {
    package func upgrade(_ request: TunnelRequest, input: AsyncChannel<TunnelInput>, emit: @escaping @Sendable (TunnelEvent) async throws -> Void) async throws {
        try await forward(request, body: ByteBuffer(), emit: emit)
    }
    package func sessionsEnded(_ ids: Set<String>) async {}
    package func liveSessions(_ grants: [PersonGrant]) async {}
}

/// Without a Kubernetes API there is nothing to carry requests to.
package struct NoKubernetesForwarder: TunnelForwarder {
    package init() {}
    package func forward(_ request: TunnelRequest, body: ByteBuffer, emit: @Sendable (TunnelEvent) async throws -> Void) async throws {
        try await emit(.head(status: 503, headers: [("Content-Type", "application/json")]))
        try await emit(.body(ByteBuffer(string: KubeStatusBody.json(code: 503, reason: "ServiceUnavailable",
            message: "the agent of this cluster runs without a Kubernetes API (no in-cluster config or --kubeconfig)"))))
    }
}

enum KubeStatusBody {
    static func json(code: Int, reason: String, message: String) -> String {
        let body: [String: Any] = ["kind": "Status", "apiVersion": "v1", "metadata": [String: Any](), "status": "Failure",
                                   "message": message, "reason": reason, "code": code]
        return String(decoding: (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data(), as: UTF8.self)
    }
}

/// Forwards to the API server with the person's just-in-time service-account token
/// only: never the agent's own credentials (its own client has no client
/// certificate and no token), and with any incoming Authorization and
/// Impersonate-* headers stripped.
package final class KubeForwarder: TunnelForwarder {
    let connection: KubeConnection
    let accounts: JITAccounts
    let http: HTTPClient
    let tls: TLSConfiguration
    let logger: Logger

    /// `loop`: where its connections to the API server live (the hub link's loop,
    /// so a tunnel's request and answer never change threads); any of NIO's loops
    /// when nil.
    init(connection: KubeConnection, accounts: JITAccounts, logger: Logger, loop: (any EventLoop)? = nil) throws {
        self.connection = connection
        self.accounts = accounts
        self.logger = logger
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if let ca = connection.caPEM { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(ca.utf8))) }
        self.tls = tls
        // Deliberately no client certificate: a request carried for a person must
        // authenticate as that person's service account and nothing else.
        http = HTTPClient(eventLoopGroup: loop ?? HTTPClient.defaultEventLoopGroup, configuration: .init(tlsConfiguration: tls, decompression: .disabled))
    }

    func shutdown() async throws { try await http.shutdown() }

    static func forwardedHeaders(_ headers: [(name: String, value: String)]) -> [(name: String, value: String)] {
        TunnelHeaders.carried(headers)
    }

    package func sessionsEnded(_ ids: Set<String>) async {
        await accounts.reconcile(ending: ids)
    }

    package func liveSessions(_ grants: [PersonGrant]) async {
        await accounts.reconcile(live: Dictionary(grants.map { ($0.sessionID, $0) }) { a, _ in a })
    }

    package func forward(_ request: TunnelRequest, body: ByteBuffer, emit: @Sendable (TunnelEvent) async throws -> Void) async throws {
        if request.probe {
            // Only this one path, and without any credential: the API server answers
            // /readyz to anyone (or 401s, which still proves it is reachable).
            guard request.method == "GET", request.path == "/readyz" else { throw TetherError(.invalidArgument, "a probe may only GET /readyz") }
            try await send(HTTPClientRequest(url: connection.server + "/readyz"), emit: emit)
            return
        }
        guard let token = try await personToken(request, emit: emit) else { return }
        guard request.path.hasPrefix("/") else { throw TetherError(.invalidArgument, "tunnel path must start with /") }
        var outbound = HTTPClientRequest(url: connection.server + request.path)
        outbound.method = HTTPMethod(rawValue: request.method)
        for header in Self.forwardedHeaders(request.headers) { outbound.headers.add(name: header.name, value: header.value) }
        outbound.headers.add(name: "Authorization", value: "Bearer \(token)")
        if body.readableBytes > 0 { outbound.body = .bytes(body) }
        try await send(outbound, emit: emit)
    }

    /// The person's just-in-time token, or nil after answering 503 when the account
    /// cannot be made.
    private func personToken(_ request: TunnelRequest, emit: @Sendable (TunnelEvent) async throws -> Void) async throws -> String? {
        if let token = accounts.cachedToken(for: request.grant) { return token }
        do {
            return try await accounts.token(for: request.grant)
        } catch {
            logger.error("cannot prepare the just-in-time account", metadata: ["user": "\(request.grant.user)", "error": "\(error)"])
            try await emit(.head(status: 503, headers: [("Content-Type", "application/json")]))
            try await emit(.body(ByteBuffer(string: KubeStatusBody.json(code: 503, reason: "ServiceUnavailable",
                message: "the agent could not prepare an account for \(request.grant.user) in this cluster: \(error)"))))
            return nil
        }
    }

    package func upgrade(_ request: TunnelRequest, input: AsyncChannel<TunnelInput>, emit: @escaping @Sendable (TunnelEvent) async throws -> Void) async throws {
        guard let upgrade = request.upgrade, !request.probe else { throw TetherError(.invalidArgument, "not an upgrade request") }
        guard request.path.hasPrefix("/") else { throw TetherError(.invalidArgument, "tunnel path must start with /") }
        guard let token = try await personToken(request, emit: emit) else { return }
        guard let url = URL(string: connection.server), let host = url.host else {
            throw TetherError(.invalidArgument, "the API server URL \(connection.server) has no host")
        }
        let port = url.port ?? (url.scheme == "http" ? 80 : 443)
        var headers = HTTPHeaders()
        for header in Self.forwardedHeaders(request.headers) { headers.add(name: header.name, value: header.value) }
        headers.add(name: "Host", value: url.port.map { "\(host):\($0)" } ?? host)
        headers.add(name: "Authorization", value: "Bearer \(token)")
        headers.add(name: "Upgrade", value: upgrade)
        headers.add(name: "Connection", value: "Upgrade")
        let head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: request.method), uri: request.path, headers: headers)
        let answer: UpgradeAnswer
        do {
            // An IP address is checked against the certificate's IP SANs, never sent as SNI.
            let sni = host.contains(":") || host.allSatisfy({ $0.isNumber || $0 == "." }) ? nil : host
            answer = try await UpgradeClient.send(head, host: host, port: port, tls: url.scheme == "http" ? nil : tls, serverHostname: sni)
        } catch {
            try await Self.answerUnreachable(error, emit: emit)
            return
        }
        switch answer {
        case .refused(let head, let body):
            let headers = head.headers.map { (name: $0.name, value: $0.value) }.filter { !TunnelHeaders.dropped.contains($0.name.lowercased()) }
            try await emit(.head(status: Int(head.status.code), headers: headers))
            for try await chunk in body { try await emit(.body(chunk)) }
        case .switched(let head, let raw):
            // The 101's own headers (Upgrade, Connection, Sec-WebSocket-Accept, the
            // chosen subprotocol) are the handshake: all of them go back.
            let headers = head.headers.map { (name: $0.name, value: $0.value) }
                .filter { !["content-length", "transfer-encoding"].contains($0.name.lowercased()) }
            try await emit(.head(status: 101, headers: headers))
            logger.debug("upgrade switched", metadata: ["tunnel": "\(request.id)", "user": "\(request.grant.user)", "path": "\(request.path)"])
            defer { logger.debug("upgrade ended", metadata: ["tunnel": "\(request.id)"]) }
            await withTaskCancellationHandler {
                await withTaskGroup(of: Void.self) { group in
                    group.addTask {
                        var reason = "the hub's side ended"
                        loop: for await chunk in input {
                            switch chunk {
                            case .body(let bytes):
                                guard (try? await raw.write(bytes)) != nil else { reason = "upstream write failed"; break loop }
                            case .end: reason = "the person's side closed"; break loop
                            case .cancelled(let why): reason = "cancelled: \(why)"; break loop
                            }
                        }
                        self.logger.debug("upgrade input ended", metadata: ["tunnel": "\(request.id)", "reason": "\(reason)"])
                        raw.abort()
                    }
                    while true {
                        let chunk: ByteBuffer?
                        do { chunk = try await raw.read() } catch {
                            logger.debug("upgrade upstream read failed", metadata: ["tunnel": "\(request.id)", "error": "\(error)"])
                            break
                        }
                        guard let chunk else { break }
                        logger.trace("upgrade upstream bytes", metadata: ["tunnel": "\(request.id)", "bytes": "\(chunk.readableBytes)"])
                        guard (try? await emit(.body(chunk))) != nil else {
                            logger.debug("upgrade emit to the hub failed", metadata: ["tunnel": "\(request.id)"])
                            break
                        }
                    }
                    raw.abort()
                    group.cancelAll()
                }
            } onCancel: {
                raw.abort()
            }
        }
    }

    /// The API server could not be reached: a 502 Status (or the cancellation, if that was it).
    static func answerUnreachable(_ error: any Error, emit: @Sendable (TunnelEvent) async throws -> Void) async throws {
        if Task.isCancelled { throw CancellationError() }
        try await emit(.head(status: 502, headers: [("Content-Type", "application/json")]))
        try await emit(.body(ByteBuffer(string: KubeStatusBody.json(code: 502, reason: "BadGateway",
            message: "the agent cannot reach this cluster's API server: \(error)"))))
    }

    private func send(_ outbound: HTTPClientRequest, emit: @Sendable (TunnelEvent) async throws -> Void) async throws {
        let response: HTTPClientResponse
        do {
            // No timeout: watches and log follows last as long as the person keeps them.
            response = try await http.execute(outbound, deadline: .distantFuture)
        } catch {
            try await Self.answerUnreachable(error, emit: emit)
            return
        }
        let headers = response.headers.map { (name: $0.name, value: $0.value) }.filter { !TunnelHeaders.dropped.contains($0.name.lowercased()) }
        try await emit(.head(status: Int(response.status.code), headers: headers))
        for try await chunk in response.body { try await emit(.body(chunk)) }
    }
}

/// Just-in-time service accounts: one per person's session, in the agent's
/// namespace, bound to exactly the roles the hub sends and nothing more, with a
/// TokenRequest token that expires with the session (at most an hour, refreshed).
/// Every object is marked Tether's, and an existing object is reused only when its
/// marks prove it is this session's.
package actor JITAccounts {
    let client: KubeClient
    let namespace: String
    let logger: Logger
    let metrics: AgentMetrics?
    /// An account unused this long is deleted at the next sweep.
    let idle: Duration
    private struct Ready: Sendable {
        var cache: [String: (grant: PersonGrant, token: String, refreshAt: Date)] = [:]
        /// When each session last carried a request here (this process's life).
        var lastUsed: [String: ContinuousClock.Instant] = [:]
    }
    /// Tokens made, and when each session was last used, behind a lock: a request
    /// whose account and token are ready takes its token without a hop to this
    /// actor (`cachedToken`).
    private nonisolated let ready = Locked(Ready())
    private let startedAt = ContinuousClock.now

    static let sessionAnnotation = "tether.dev/session"
    static let userAnnotation = "tether.dev/user"
    static let jitLabel = "tether.dev/jit"

    init(client: KubeClient, namespace: String, logger: Logger, metrics: AgentMetrics? = nil, idle: Duration = .seconds(1800)) {
        self.metrics = metrics
        self.idle = idle
        self.client = client
        self.namespace = namespace
        self.logger = logger
    }

    /// The account's name (`JITAccountName`, shared with the hub).
    static func accountName(user: String, session: String) -> String { JITAccountName.make(user: user, session: session) }

    /// The session's token when its account is ready and the token fresh, else nil
    /// (then `token(for:)` makes what is missing). Marks the session used either way.
    package nonisolated func cachedToken(for grant: PersonGrant) -> String? {
        let now = Date()
        return ready.withLock { ready -> String? in
            ready.lastUsed[grant.sessionID] = .now
            guard let cached = ready.cache[grant.sessionID], cached.grant == grant, cached.refreshAt > now else { return nil }
            return cached.token
        }
    }

    package func token(for grant: PersonGrant) async throws -> String {
        let now = Date()
        if let token = cachedToken(for: grant) { return token }
        let name = Self.accountName(user: grant.user, session: grant.sessionID)
        let started = ContinuousClock.now
        try await ensureAccount(name, grant: grant)
        try await ensureBindings(name, grant: grant)
        // The API server refuses tokens shorter than 10 minutes; the account is
        // deleted when the session ends, which voids the token anyway.
        let remaining = Int(grant.sessionExpires.timeIntervalSince(now))
        let seconds = max(600, min(3600, remaining))
        let request = try JSONSerialization.data(withJSONObject: [
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": ["expirationSeconds": seconds],
        ])
        let answer = try await client.json(.POST, KubeResource.serviceAccount.path(namespace: namespace, name: name) + "/token", body: request)
        guard let token = (answer["status"] as? [String: Any])?["token"] as? String, !token.isEmpty else {
            throw TetherError(.unavailable, "the API server answered the TokenRequest for \(name) without a token")
        }
        let first = ready.withLock { ready -> Bool in
            let first = ready.cache[grant.sessionID] == nil
            ready.cache[grant.sessionID] = (grant, token, now.addingTimeInterval(Double(seconds) * 0.8))
            return first
        }
        if first { metrics?.jitFirstRequest.record(ContinuousClock.now - started) }
        logger.info("just-in-time account ready", metadata: [
            "account": "\(namespace)/\(name)", "user": "\(grant.user)", "session": "\(grant.sessionID)",
            "ms": "\(Int((ContinuousClock.now - started).seconds * 1000))"])
        return token
    }

    func marks(_ grant: PersonGrant) -> (labels: [String: String], annotations: [String: String]) {
        (["app.kubernetes.io/managed-by": "tether", Self.jitLabel: "true"],
         [Self.sessionAnnotation: grant.sessionID, Self.userAnnotation: grant.user,
          "tether.dev/expires": ISO8601DateFormatter().string(from: grant.sessionExpires)])
    }

    /// Creates `object`, or accepts the existing one when its marks say it is this
    /// session's; anything else with the name is refused, never changed.
    /// Returns whether it made the object (false: it was already this session's).
    @discardableResult
    func create(_ resource: KubeResource, namespace: String?, name: String, object: [String: Any], session: String) async throws -> Bool {
        do {
            _ = try await client.json(.POST, resource.path(namespace: namespace), body: try JSONSerialization.data(withJSONObject: object))
            return true
        } catch let error as KubeAPIError where error.code == 409 {
            let existing = try await client.get(resource, namespace: namespace, name: name) ?? [:]
            let metadata = existing["metadata"] as? [String: Any] ?? [:]
            let labels = metadata["labels"] as? [String: String] ?? [:]
            let annotations = metadata["annotations"] as? [String: String] ?? [:]
            guard labels["app.kubernetes.io/managed-by"] == "tether", annotations[Self.sessionAnnotation] == session else {
                throw TetherError(.conflict, "\(resource.kind) \(namespace.map { "\($0)/" } ?? "")\(name) exists and is not this session's; it was left as it is")
            }
            return false
        }
    }

    /// A just-in-time object as listed: only ones carrying all of Tether's marks.
    struct Marked {
        let resource: KubeResource
        let namespace: String?
        let name: String
        let uid: String?
        let resourceVersion: String?
        let session: String
        let expires: Date?
    }

    func listMarked() async -> [Marked]? {
        let selector = "app.kubernetes.io/managed-by=tether,\(Self.jitLabel)=true"
        var found: [Marked] = []
        for (resource, namespace) in [(KubeResource.clusterRoleBinding, nil), (.roleBinding, nil), (.serviceAccount, Optional(self.namespace))] {
            let items: [[String: Any]]
            do {
                items = try await client.list(resource, namespace: namespace, labelSelector: selector).items
            } catch {
                logger.error("cannot list just-in-time objects", metadata: ["kind": "\(resource.kind)", "error": "\(error)"])
                return nil
            }
            for item in items {
                let metadata = item["metadata"] as? [String: Any] ?? [:]
                let annotations = metadata["annotations"] as? [String: String] ?? [:]
                let labels = metadata["labels"] as? [String: String] ?? [:]
                guard labels["app.kubernetes.io/managed-by"] == "tether", labels[Self.jitLabel] == "true",
                      let session = annotations[Self.sessionAnnotation], let name = metadata["name"] as? String else { continue }
                found.append(Marked(resource: resource, namespace: metadata["namespace"] as? String, name: name, uid: metadata["uid"] as? String,
                                    resourceVersion: metadata["resourceVersion"] as? String, session: session,
                                    expires: annotations["tether.dev/expires"].flatMap { ISO8601DateFormatter().date(from: $0) }))
            }
        }
        return found
    }

    /// Deletes these sessions' objects now (a revocation).
    func reconcile(ending sessions: Set<String>) async {
        guard let marked = await listMarked() else { return }
        await remove(marked.filter { sessions.contains($0.session) })
    }

    /// Brings the cluster in line with the hub: objects of sessions not live here (or
    /// expired) are deleted, bindings no longer granted are deleted, and bindings
    /// newly granted are added to accounts that exist. Accounts are not created
    /// here: only a person's first request makes one.
    func reconcile(live: [String: PersonGrant]) async {
        guard let marked = await listMarked() else { return }
        let now = Date()
        var doomed: [Marked] = []
        // Idle: no request for `idle` (sessions never used since this agent started
        // count from its start).
        let lastUsed = ready.withLock { $0.lastUsed }
        func isIdle(_ session: String) -> Bool { ContinuousClock.now - (lastUsed[session] ?? startedAt) >= idle }
        for object in marked {
            guard let grant = live[object.session], (object.expires ?? .distantFuture) > now, grant.sessionExpires > now, !isIdle(object.session) else {
                doomed.append(object)
                continue
            }
            if object.resource != .serviceAccount {
                let account = Self.accountName(user: grant.user, session: grant.sessionID)
                let wanted = Set(bindings(for: account, grant: grant).map(\.name))
                if !wanted.contains(object.name) { doomed.append(object) }
            }
        }
        await remove(doomed)
        for object in marked where object.resource == .serviceAccount && !doomed.contains(where: { $0.name == object.name && $0.resource == .serviceAccount }) {
            guard let grant = live[object.session] else { continue }
            do {
                try await ensureBindings(object.name, grant: grant)
            } catch {
                logger.error("cannot bind newly granted roles", metadata: ["account": "\(object.name)", "error": "\(error)"])
            }
        }
    }

    /// Deletes objects (bindings first, then accounts), each at the exact version read.
    func remove(_ objects: [Marked]) async {
        var deleted: [String] = []
        var sessions = Set<String>()
        for object in objects.sorted(by: { ($0.resource == .serviceAccount ? 1 : 0) < ($1.resource == .serviceAccount ? 1 : 0) }) {
            do {
                try await client.delete(object.resource, namespace: object.namespace, name: object.name, uid: object.uid, resourceVersion: object.resourceVersion)
                deleted.append("\(object.resource.kind)/\(object.namespace.map { "\($0)/" } ?? "")\(object.name)")
                if object.resource == .serviceAccount {
                    sessions.insert(object.session)
                    metrics?.jitAccountsRemoved.increment()
                }
            } catch {
                logger.error("cannot delete a just-in-time object", metadata: ["object": "\(object.resource.kind)/\(object.name)", "error": "\(error)"])
            }
        }
        let ended = Set(objects.filter { $0.resource == .serviceAccount }.map(\.session))
        ready.withLock { ready in
            for session in ended {
                ready.cache[session] = nil
                ready.lastUsed[session] = nil
            }
        }
        if !deleted.isEmpty {
            logger.notice("just-in-time access removed", metadata: ["accountsOfSessions": "\(sessions.sorted().joined(separator: ","))",
                                                                    "objects": "\(deleted.joined(separator: ", "))"])
        }
    }

    func ensureAccount(_ name: String, grant: PersonGrant) async throws {
        let (labels, annotations) = marks(grant)
        if try await create(.serviceAccount, namespace: namespace, name: name, object: [
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": ["name": name, "namespace": namespace, "labels": labels, "annotations": annotations],
        ], session: grant.sessionID) { metrics?.jitAccountsCreated.increment() }
    }

    /// The bindings an account gets for a grant: a ClusterRoleBinding per ClusterRole,
    /// a RoleBinding per namespaced ClusterRole or Role.
    func bindings(for name: String, grant: PersonGrant) -> [(resource: KubeResource, namespace: String?, name: String, object: [String: Any])] {
        let (labels, annotations) = marks(grant)
        let subject: [String: Any] = ["kind": "ServiceAccount", "name": name, "namespace": namespace]
        var out: [(resource: KubeResource, namespace: String?, name: String, object: [String: Any])] = []
        for role in grant.clusterRoles {
            let binding = "\(name)-\(role)"
            out.append((.clusterRoleBinding, nil, binding, [
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": ["name": binding, "labels": labels, "annotations": annotations],
                "roleRef": ["apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role],
                "subjects": [subject],
            ]))
        }
        for (ns, roles) in grant.namespaces.sorted(by: { $0.key < $1.key }) {
            for (kind, role) in roles.clusterRoles.map({ ("ClusterRole", $0) }) + roles.roles.map({ ("Role", $0) }) {
                let binding = "\(name)-\(kind.lowercased())-\(role)"
                out.append((.roleBinding, ns, binding, [
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": ["name": binding, "namespace": ns, "labels": labels, "annotations": annotations],
                    "roleRef": ["apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role],
                    "subjects": [subject],
                ]))
            }
        }
        return out
    }

    func ensureBindings(_ name: String, grant: PersonGrant) async throws {
        for binding in bindings(for: name, grant: grant) {
            try await create(binding.resource, namespace: binding.namespace, name: binding.name, object: binding.object, session: grant.sessionID)
        }
    }
}
