import Crypto
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import ServiceLifecycle
import Shared
import Synchronization
import TestSupport
import X509

/// An in-memory Kubernetes API server for tests: HTTPS on 127.0.0.1 with a port the
/// kernel picks, a throwaway CA, one accepted bearer token, and the REST semantics of
/// kube-apiserver v1.36 for namespaces, service accounts, secrets, config maps, the
/// four RBAC kinds and validating admission policies (and their bindings). It fails
/// as a real server does too: apply bodies are read as YAML 1.1, watches end when the
/// server decides (`start(watchTimeout:)`), on a 410 (`expireOpenWatches()`) and on a
/// restart (`restart()`), and clients are expected to list again.
///
/// ```swift
/// let kube = try await KubeEmulator.start()
/// defer { Task { await kube.stop() } }
/// try kube.writeKubeconfig(to: path)   // for kubectl
/// ```
public final class KubeEmulator: Sendable {
    /// `https://127.0.0.1:<port>`.
    public let url: URL
    /// The PEM of the CA that signed the serving certificate.
    public let caPEM: String
    /// The bearer token the emulator accepts (any other gets 401).
    public let token: String

    let store: ObjectStore
    private let handler: APIHandler
    private let pki: ServingPKI
    private let logger: Logger
    /// The HTTPS listener now serving, nil while stopped (see `restart()`).
    private let serving: Mutex<Listener?>

    /// One run of the HTTPS listener.
    private struct Listener: Sendable {
        let task: Task<Void, any Error>
        let group: ServiceGroup
    }

    private init(url: URL, pki: ServingPKI, token: String, store: ObjectStore, handler: APIHandler, listener: Listener, logger: Logger) {
        self.url = url
        self.caPEM = pki.caPEM
        self.pki = pki
        self.token = token
        self.store = store
        self.handler = handler
        self.serving = Mutex(listener)
        self.logger = logger
    }

    /// Paths requested with no credential at all (the real server would treat them
    /// as system:anonymous, or refuse them with --anonymous-auth=false, as this does).
    public var anonymousRequests: [String] { handler.anonymous.withLock { $0 } }

    /// The authorization checks a real API server would have made so far, in order,
    /// for requests whose User-Agent starts with `userAgentPrefix`.
    public func authorizationChecks(userAgentPrefix: String = "") -> [AuthorizationCheck] {
        handler.authorizations.withLock { $0.filter { $0.userAgent.hasPrefix(userAgentPrefix) } }
    }

    /// Starts an emulator with the default namespaces (`default`, `kube-system`,
    /// `kube-public`, `kube-node-lease`). `historyLimit` bounds the events kept for
    /// watches; older resourceVersions get 410 Expired. `watchTimeout` is the API
    /// server's `--min-request-timeout` (1800 s by default): a watch without
    /// `timeoutSeconds` is ended after a random time between it and twice it, cleanly
    /// and with no ERROR event, as kube-apiserver does (endpoints/handlers/get.go).
    /// Tests pass a short one to make the server end watches.
    public static func start(historyLimit: Int = 1000, watchTimeout: Duration = .seconds(1800),
                             logger: Logger = Logger(label: "kube-emulator", factory: { _ in SwiftLogNoOpLogHandler() })) async throws -> KubeEmulator {
        let pki = try ServingPKI()
        let token = "emulator-" + UUID().uuidString.lowercased()
        let store = ObjectStore(historyLimit: historyLimit)
        let handler = APIHandler(store: store, discovery: try FixtureDocuments.discovery(), openAPI: try FixtureDocuments.openAPI(), adminToken: token,
                                 minRequestTimeout: watchTimeout)
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            _ = handler.handle(APIRequest(method: "POST", path: "/api/v1/namespaces", query: [:], contentType: "application/json",
                                          userAgent: "kube-apiserver/v1.36.2", authorization: "Bearer \(token)",
                                          body: (["apiVersion": "v1", "kind": "Namespace", "metadata": ["name": .string(ns)]] as JSON).data()))
        }
        // A port below the kernel's ephemeral range (32768 and up): `restart()` binds the
        // same port again, and a port the kernel picked could meanwhile be the local end
        // of some outgoing connection, which makes that bind fail.
        var attempt = 0
        var bound: (Listener, Int)?
        while bound == nil {
            attempt += 1
            do {
                bound = try await serve(handler: handler, pki: pki, port: Int.random(in: 20_000..<32_000), logger: logger)
            } catch where attempt < 20 {
                continue
            }
        }
        let (listener, port) = bound!
        return KubeEmulator(url: URL(string: "https://127.0.0.1:\(port)")!, pki: pki, token: token, store: store, handler: handler,
                            listener: listener, logger: logger)
    }

    /// Binds 127.0.0.1:`port` (0: the kernel picks) and serves the API there.
    private static func serve(handler: APIHandler, pki: ServingPKI, port: Int, logger: Logger) async throws -> (Listener, Int) {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: [.certificate(try NIOSSLCertificate(bytes: Array(pki.leafPEM.utf8), format: .pem))],
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(pki.keyPEM.utf8), format: .pem)))
        tls.minimumTLSVersion = .tlsv12
        // Close connections at once on shutdown, as Go's server does, instead of waiting
        // (5 s by default) for each client's close_notify.
        tls.shutdownTimeout = .milliseconds(50)
        let bound = AsyncStream<Int>.makeStream()
        let serving = tls
        let app = Application(
            responder: EmulatorResponder(handler: handler),
            // Connection upgrades (exec) are served beside the router, as the API
            // server's upgrade-aware handlers do.
            server: .init { responder in
                try TLSChannel(UpgradingChannel(HTTP1Channel(responder: responder), handler: { head, exchange in
                    await handler.serveUpgrade(head, exchange: exchange)
                }), tlsConfiguration: serving)
            },
            configuration: .init(address: .hostname("127.0.0.1", port: port), serverName: "kube-emulator"),
            onServerRunning: { channel in
                bound.continuation.yield(channel.localAddress?.port ?? 0)
                bound.continuation.finish()
            },
            logger: logger)
        let group = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [], cancellationSignals: [], logger: logger))
        let task = Task {
            defer { bound.continuation.finish() }
            try await group.run()
        }
        var boundPort = 0
        for await p in bound.stream { boundPort = p }
        guard boundPort != 0 else {
            task.cancel()
            let outcome = await task.result
            throw EmulatorError(code: 500, reason: "InternalError", message: "the emulator could not bind 127.0.0.1:\(port): \(outcome)")
        }
        return (Listener(task: task, group: group), boundPort)
    }

    /// Closes open watches and stops serving.
    public func stop() async {
        guard let listener = serving.withLock({ s -> Listener? in defer { s = nil }; return s }) else { return }
        handler.store.setServing(false)
        store.closeWatches()
        handler.logs.endAll()
        await listener.group.triggerGracefulShutdown()
        _ = await listener.task.result
    }

    /// Stops serving and serves again on the same port with the same objects and
    /// history, as an API server restart looks to its clients: every open watch ends
    /// (cleanly, no ERROR event), connections are closed, and requests in between are
    /// refused at the TCP level.
    public func restart() async throws {
        await stop()
        handler.store.setServing(true)
        let port = url.port ?? 0
        let (listener, _) = try await Self.serve(handler: handler, pki: pki, port: port, logger: logger)
        serving.withLock { $0 = listener }
    }

    /// Ends every open watch with the ERROR event `410 Expired` (too old resource
    /// version), as kube-apiserver does when an etcd compaction passes a watch's
    /// position; well-behaved clients list again.
    public func expireOpenWatches() { store.expireWatches() }

    /// Writes a kubeconfig (server, certificate-authority-data, token; namespace `default`)
    /// that kubectl and client libraries can use.
    public func writeKubeconfig(to path: String) throws {
        let ca = Data(caPEM.utf8).base64EncodedString()
        let text = """
            apiVersion: v1
            kind: Config
            clusters:
            - name: emulator
              cluster:
                server: \(url.absoluteString)
                certificate-authority-data: \(ca)
            users:
            - name: emulator
              user:
                token: \(token)
            contexts:
            - name: emulator
              context:
                cluster: emulator
                user: emulator
                namespace: default
            current-context: emulator

            """
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }

    // MARK: direct access for tests

    /// The stored object, as a GET would return it, or nil.
    public func object(_ type: ResourceType, namespace: String? = nil, name: String) -> JSON? {
        try? store.get(type, type.namespaced ? namespace ?? "default" : "", name)
    }

    /// Every stored object of a type (in one namespace, or all), sorted by namespace and name.
    public func objects(_ type: ResourceType, namespace: String? = nil) -> [JSON] {
        store.list(WatchFilter(type: type, namespace: namespace, labels: .everything, fields: .everything)).items
    }

    /// Creates or replaces an object directly, like a hand edit by `manager` (an Update in
    /// managedFields): no resourceVersion check, but the same defaulting, validation,
    /// resourceVersion bump and watch events as the API. Returns the stored object.
    @discardableResult
    public func put(_ object: JSON, manager: String = "kubectl-edit") throws -> JSON {
        let type = try Self.type(of: object)
        let namespace = type.namespaced ? object[path: ["metadata", "namespace"]]?.string ?? "default" : ""
        let name = object[path: ["metadata", "name"]]?.string ?? ""
        var body = object
        body[path: ["metadata", "resourceVersion"]] = nil
        let base = type.group.isEmpty ? "/api/\(type.version)" : "/apis/\(type.group)/\(type.version)"
        let collection = base + (type.namespaced ? "/namespaces/\(namespace)" : "") + "/\(type.plural)"
        let exists = self.object(type, namespace: namespace, name: name) != nil
        let response = handler.handle(APIRequest(
            method: exists ? "PUT" : "POST", path: exists ? "\(collection)/\(name)" : collection, query: ["fieldManager": manager],
            contentType: "application/json", userAgent: manager, authorization: "Bearer \(token)", body: body.data()))
        guard case .json(let code, let json) = response else { return .null }
        if code >= 300 { throw EmulatorError(code: code, reason: json["reason"]?.string ?? "", message: json["message"]?.string ?? "", details: json["details"]) }
        return json
    }

    /// Deletes an object directly (finalizers and namespace contents as the API does).
    public func delete(_ type: ResourceType, namespace: String? = nil, name: String) throws {
        _ = try store.delete(type, type.namespaced ? namespace ?? "default" : "", name, precondition: (nil, nil))
        if type == .pods { handler.logs.end(namespace: namespace ?? "default", pod: name) }
    }

    /// Forgets the watch history: a watch from any resourceVersion issued so far gets
    /// the ERROR event with 410 Expired, as after an etcd compaction.
    public func compactHistory() { store.compactHistory() }

    /// Writes a line to a container's log, as the container printing it would;
    /// `kubectl logs -f` following it receives it at once.
    public func appendLog(namespace: String, pod: String, container: String, _ line: String) {
        handler.logs.append(namespace: namespace, pod: pod, container: container, line: line)
    }

    /// How many watches are open (to wait until a client is listening).
    public var openWatchCount: Int { store.state.withLock { $0.watchers.count } }

    /// The latest resourceVersion issued.
    public var resourceVersion: Int { store.state.withLock { $0.resourceVersion } }

    private static func type(of object: JSON) throws -> ResourceType {
        let apiVersion = object["apiVersion"]?.string ?? "", kind = object["kind"]?.string ?? ""
        guard let type = ResourceType.all.first(where: { $0.apiVersion == apiVersion && $0.kind == kind }) else {
            throw EmulatorError.badRequest("the emulator does not serve \(apiVersion) \(kind)")
        }
        return type
    }
}

/// The fixture documents captured from a real API server, served as they are.
enum FixtureDocuments {
    /// Discovery documents by URL path (`api_v1.json` serves `/api/v1`).
    static func discovery() throws -> [String: Data] {
        try byName(in: "kube/discovery", prefix: "/")
    }

    /// OpenAPI v3 documents by group-version path (`apis/rbac.authorization.k8s.io/v1`).
    static func openAPI() throws -> [String: Data] {
        try byName(in: "openapi", prefix: "")
    }

    /// The folder's documents keyed by file name with `_` read as `/`.
    private static func byName(in folder: String, prefix: String) throws -> [String: Data] {
        var result: [String: Data] = [:]
        for url in try Fixtures.files(in: folder) {
            let name = url.lastPathComponent.dropLast(5).replacingOccurrences(of: "_", with: "/")
            result[prefix + name] = try Data(contentsOf: url)
        }
        return result
    }
}
