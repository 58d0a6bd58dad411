import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import Shared

/// An error the API server answered with, decoded from its `Status` body.
struct KubeAPIError: Error, CustomStringConvertible, Equatable {
    var code: Int
    /// NotFound, AlreadyExists, Conflict, Invalid, Forbidden, Expired, ...
    var reason: String
    var message: String
    var description: String { "\(code) \(reason): \(message)" }
}

/// A small Kubernetes API client on AsyncHTTPClient: get, list, server-side apply and
/// delete, with API errors as `KubeAPIError`.
final class KubeClient: Sendable {
    let connection: KubeConnection
    private let http: HTTPClient
    /// Watches hold a connection open for minutes; they get their own client.
    let streamingClient: HTTPClient

    init(connection: KubeConnection) throws {
        self.connection = connection
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if let ca = connection.caPEM {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(ca.utf8)))
        }
        if let cert = connection.clientCertificatePEM, let key = connection.clientKeyPEM {
            tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(Array(cert.utf8)).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(key.utf8), format: .pem))
        }
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
        streamingClient = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
    }

    func shutdown() async throws {
        try await http.shutdown()
        try await streamingClient.shutdown()
    }

    /// The object, or nil when the API server says 404.
    func get(_ resource: KubeResource, namespace: String? = nil, name: String) async throws -> [String: Any]? {
        do {
            return try await json(.GET, resource.path(namespace: namespace, name: name))
        } catch let error as KubeAPIError where error.code == 404 {
            return nil
        }
    }

    /// Objects of a kind, optionally filtered by a label selector, and the list's resourceVersion.
    func list(_ resource: KubeResource, namespace: String? = nil, labelSelector: String? = nil) async throws -> (items: [[String: Any]], resourceVersion: String) {
        let path = resource.path(namespace: namespace) + KubeResource.query(labelSelector.map { [("labelSelector", $0)] } ?? [])
        let list = try await json(.GET, path)
        let rv = (list["metadata"] as? [String: Any])?["resourceVersion"] as? String ?? ""
        return (list["items"] as? [[String: Any]] ?? [], rv)
    }

    /// Server-side apply (`application/apply-patch+yaml`) as `fieldManager`. `force`
    /// takes over fields other managers set: only for objects proven Tether's (see
    /// `OwnedWriter`), never to create one.
    func apply(_ body: ApplyPatchBody, resource: KubeResource, namespace: String?, name: String, fieldManager: String = "tether", force: Bool) async throws -> [String: Any] {
        let path = resource.path(namespace: namespace, name: name) + KubeResource.query([("fieldManager", fieldManager)] + (force ? [("force", "true")] : []))
        return try await json(.PATCH, path, body: body.data, contentType: "application/apply-patch+yaml")
    }

    /// Deletes the object; true if it existed. With `uid` and `resourceVersion` the
    /// server deletes only that exact version (409 Conflict otherwise).
    @discardableResult
    func delete(_ resource: KubeResource, namespace: String? = nil, name: String, uid: String? = nil, resourceVersion: String? = nil) async throws -> Bool {
        var body: Data?
        if uid != nil || resourceVersion != nil {
            var preconditions: [String: Any] = [:]
            preconditions["uid"] = uid
            preconditions["resourceVersion"] = resourceVersion
            body = try JSONSerialization.data(withJSONObject: ["apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions])
        }
        do {
            _ = try await json(.DELETE, resource.path(namespace: namespace, name: name), body: body)
            return true
        } catch let error as KubeAPIError where error.code == 404 {
            return false
        }
    }

    /// A request to the API server as the agent: its User-Agent (which the API
    /// server's audit log records) and the current bearer token.
    private func request(_ method: HTTPMethod, _ path: String) throws -> HTTPClientRequest {
        var request = HTTPClientRequest(url: connection.server + path)
        request.method = method
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: "tether-agent/\(TetherVersion.current)")
        if let token = try connection.token?.read() { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        return request
    }

    func json(_ method: HTTPMethod, _ path: String, body: Data? = nil, contentType: String = "application/json") async throws -> [String: Any] {
        var request = try request(method, path)
        if let body {
            request.headers.add(name: "Content-Type", value: contentType)
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: .seconds(30))
        } catch {
            if Task.isCancelled { throw CancellationError() }
            throw TetherError(.unavailable, "cannot reach the Kubernetes API at \(connection.server): \(error)")
        }
        let data = Data(buffer: try await response.body.collect(upTo: 64 << 20))
        let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
        guard (200..<300).contains(response.status.code) else {
            if object["kind"] as? String == "Status" {
                throw KubeAPIError(code: object["code"] as? Int ?? Int(response.status.code), reason: object["reason"] as? String ?? "Unknown",
                                   message: object["message"] as? String ?? "")
            }
            throw KubeAPIError(code: Int(response.status.code), reason: "Unknown", message: String(decoding: data.prefix(512), as: UTF8.self))
        }
        return object
    }
}

/// One event of a watch stream.
struct WatchEvent: @unchecked Sendable {
    var type: String
    var object: [String: Any]
}

extension KubeClient {
    /// Watches a kind from `resourceVersion`, calling `onEvent` for each event until
    /// the server ends the stream. An `ERROR` event (410 Expired for a too old
    /// resourceVersion) is thrown as `KubeAPIError`, so the caller relists.
    /// `timeoutSeconds` nil lets the server pick (kube-apiserver: 30 to 60 minutes);
    /// either way the server ends the stream cleanly and the caller lists again.
    func watch(_ resource: KubeResource, resourceVersion: String, labelSelector: String? = nil, timeoutSeconds: Int? = nil,
               onEvent: (WatchEvent) async throws -> Void) async throws {
        var query = [("watch", "true"), ("allowWatchBookmarks", "false"), ("resourceVersion", resourceVersion)]
        if let timeoutSeconds { query.append(("timeoutSeconds", String(timeoutSeconds))) }
        if let labelSelector { query.append(("labelSelector", labelSelector)) }
        let request = try request(.GET, resource.path() + KubeResource.query(query))
        // The deadline covers the response head only; the stream lasts as the server decides.
        let response = try await streamingClient.execute(request, timeout: .seconds(30))
        guard response.status.code == 200 else {
            let data = Data(buffer: try await response.body.collect(upTo: 1 << 20))
            let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
            throw KubeAPIError(code: object["code"] as? Int ?? Int(response.status.code), reason: object["reason"] as? String ?? "Unknown",
                               message: object["message"] as? String ?? "")
        }
        var pending = Data()
        for try await chunk in response.body {
            pending.append(contentsOf: chunk.readableBytesView)
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = pending[pending.startIndex..<newline]
                pending = Data(pending[(newline + 1)...])
                guard !line.isEmpty, let event = (try? JSONSerialization.jsonObject(with: line)) as? [String: Any],
                      let type = event["type"] as? String, let object = event["object"] as? [String: Any]
                else { continue }
                if type == "ERROR" {
                    throw KubeAPIError(code: object["code"] as? Int ?? 500, reason: object["reason"] as? String ?? "Unknown",
                                       message: object["message"] as? String ?? "")
                }
                try await onEvent(WatchEvent(type: type, object: object))
            }
        }
    }
}

/// The agent's own Secrets (its identity, its audit webhook's credentials), in its namespace.
extension KubeClient {
    /// The Secret's data, decoded; nil when it does not exist. A value that is not
    /// base64 is left out (so it reads as missing).
    func secretData(namespace: String, name: String) async throws -> [String: Data]? {
        guard let secret = try await get(.secret, namespace: namespace, name: name) else { return nil }
        let data = secret["data"] as? [String: Any] ?? [:]
        return data.compactMapValues { ($0 as? String).flatMap { Data(base64Encoded: $0) } }
    }

    /// Creates the Opaque Secret or replaces its data, in one server-side apply as
    /// `tether`, labelled as the agent's own.
    func applySecret(namespace: String, name: String, data: [String: Data]) async throws {
        let secret: [String: Any] = [
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": ["name": name, "namespace": namespace, "labels": ["app.kubernetes.io/name": "tether-agent"]],
            "data": data.mapValues { $0.base64EncodedString() },
        ]
        _ = try await apply(try ApplyPatchBody(object: secret), resource: .secret, namespace: namespace, name: name, force: true)
    }
}
