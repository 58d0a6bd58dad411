import Crypto
import Foundation
import Synchronization

/// One HTTP request, reduced to what the API logic needs.
struct APIRequest: Sendable {
    var method: String
    var path: String
    var query: [String: String]
    /// Every query parameter in order, repeated ones included (`command=ls&command=-l`).
    var queryItems: [(String, String)] = []
    var contentType: String?
    var userAgent: String?
    var authorization: String?
    var body: Data

    /// Splits and percent-decodes a query string like Go's url.ParseQuery (`+` is a space).
    static func parseQuery(_ query: String?) -> [String: String] {
        var result: [String: String] = [:]
        for (key, value) in parseQueryItems(query) { result[key] = value }
        return result
    }

    static func parseQueryItems(_ query: String?) -> [(String, String)] {
        (query ?? "").split(separator: "&").map { pair in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ s: Substring) -> String { String(s).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(s) }
            return (decode(parts[0]), parts.count > 1 ? decode(parts[1]) : "")
        }
    }
}

/// One authorization check, with the attributes kube-apiserver's RequestInfo
/// resolver derives from the request (verb from method and path, and `watch=true`).
public struct AuthorizationCheck: Sendable, Hashable, CustomStringConvertible {
    public var verb: String
    public var group: String
    public var resource: String
    public var subresource: String?
    public var namespace: String?
    public var name: String?
    public var userAgent: String
    /// Who the request authenticated as: `admin` (the emulator's own token) or
    /// `system:serviceaccount:NS:NAME` (a TokenRequest token).
    public var user: String = ""

    public var description: String {
        "\(verb) \(group.isEmpty ? "core" : group)/\(resource)\(subresource.map { "/" + $0 } ?? "") ns=\(namespace ?? "-") name=\(name ?? "-")"
    }
}

/// What to send back: a JSON body, raw bytes, or a watch stream.
enum APIResponse: Sendable {
    case json(Int, JSON)
    case raw(Int, Data)
    case watch(AsyncStream<JSON>, cancel: @Sendable () -> Void, timeout: Duration?)
    /// A streamed plain-text body (`pods/log?follow=true`).
    case text(AsyncStream<String>, cancel: @Sendable () -> Void)
}

/// The Kubernetes REST API over the object store: routing, request decoding, and the
/// create/update/apply/patch/delete/list/watch semantics. No sockets here.
final class APIHandler: Sendable {
    let store: ObjectStore
    /// Every authorization check a real API server would make for the requests served.
    let authorizations = Mutex<[AuthorizationCheck]>([])
    let discovery: [String: Data]
    let openAPI: [String: Data]
    let adminToken: String
    let logs = PodLogs()
    /// kube-apiserver's `--min-request-timeout`: how long a watch without `timeoutSeconds` may last (randomly up to twice it).
    let minRequestTimeout: Duration

    init(store: ObjectStore, discovery: [String: Data], openAPI: [String: Data], adminToken: String, minRequestTimeout: Duration = .seconds(1800)) {
        self.store = store
        self.minRequestTimeout = minRequestTimeout
        self.discovery = discovery
        self.openAPI = openAPI
        self.adminToken = adminToken
    }

    /// Paths requested with no Authorization header at all, in order.
    let anonymous = Mutex<[String]>([])

    func handle(_ request: APIRequest) -> APIResponse {
        if request.authorization == nil { anonymous.withLock { $0.append(request.path) } }
        do {
            let user = try authenticate(request)
            return try route(request, user: user)
        } catch {
            return .json(error.code, error.status)
        }
    }

    func authenticate(_ request: APIRequest) throws(EmulatorError) -> String {
        guard let header = request.authorization, header.hasPrefix("Bearer ") else { throw .unauthorized }
        let token = String(header.dropFirst(7))
        if token == adminToken { return "admin" }
        if let user = store.state.withLock({ $0.tokens[token] }) { return user }
        throw .unauthorized
    }

    // MARK: routing

    private func route(_ r: APIRequest, user: String) throws(EmulatorError) -> APIResponse {
        let segments = r.path.split(separator: "/").map(String.init)
        if r.method == "GET", let doc = discovery[r.path.hasSuffix("/") && r.path.count > 1 ? String(r.path.dropLast()) : r.path] {
            return .raw(200, doc)
        }
        if segments.first == "openapi" { return try openAPIDocument(r, segments) }
        if segments.count == 2, segments[0] == "apis", r.method == "GET", let group = apiGroup(segments[1]) { return .json(200, group) }
        let group: String, version: String, rest: [String]
        if segments.count >= 3, segments[0] == "api" { (group, version, rest) = ("", segments[1], Array(segments[2...])) }
        else if segments.count >= 4, segments[0] == "apis" { (group, version, rest) = (segments[1], segments[2], Array(segments[3...])) }
        else { throw .pathNotFound }

        var namespace: String? = nil
        var tail = rest
        if rest.count >= 3, rest[0] == "namespaces", let t = ResourceType.find(group: group, version: version, plural: rest[2]), t.namespaced {
            namespace = rest[1]
            tail = Array(rest[2...])
        }
        guard let type = ResourceType.find(group: group, version: version, plural: tail[0]), tail.count <= 3 else { throw .pathNotFound }
        let name = tail.count > 1 ? tail[1] : nil
        let subresource = tail.count > 2 ? tail[2] : nil
        if type.namespaced, name != nil, namespace == nil { throw .pathNotFound }

        let verb: String
        switch (r.method, name) {
        case ("GET", nil): verb = r.query["watch"] == "true" || r.query["watch"] == "1" ? "watch" : "list"
        case ("GET", _): verb = "get"
        case ("POST", _): verb = "create"
        case ("PUT", _): verb = "update"
        case ("PATCH", _): verb = "patch"
        case ("DELETE", _): verb = "delete"
        default: verb = r.method.lowercased()
        }
        func authorize(_ verb: String) {
            var check = AuthorizationCheck(verb: verb, group: group, resource: type.plural, subresource: subresource, namespace: namespace, name: name, userAgent: r.userAgent ?? "")
            check.user = user
            authorizations.withLock { $0.append(check) }
        }
        authorize(verb)
        if let subresource, type == .pods, let name, let namespace {
            guard subresource == "log", r.method == "GET" else { throw .pathNotFound }
            return try podLog(r, namespace: namespace, name: name)
        }
        if let subresource {
            guard type == .serviceAccounts, subresource == "token", r.method == "POST", let name, let namespace else { throw .pathNotFound }
            return try tokenRequest(r, namespace: namespace, name: name)
        }
        switch (r.method, name) {
        case ("GET", nil):
            let watch = r.query["watch"]
            if watch == "true" || watch == "1" { return try self.watch(r, type, namespace) }
            return try list(r, type, namespace)
        case ("GET", let name?): return .json(200, try store.get(type, namespace ?? "", name))
        case ("POST", nil):
            if type.namespaced, namespace == nil { throw .methodNotAllowed(r.method) }
            return try create(r, type, namespace ?? "")
        case ("PUT", let name?): return try update(r, type, namespace ?? "", name)
        case ("PATCH", let name?):
            let response = try patch(r, type, namespace ?? "", name)
            // Server-side apply that creates the object is also authorized as `create`
            // (apiserver endpoints/handlers/patch.go).
            if case .json(201, _) = response { authorize("create") }
            return response
        case ("DELETE", let name?): return try delete(r, type, namespace ?? "", name)
        default: throw .methodNotAllowed(r.method)
        }
    }

    private func apiGroup(_ name: String) -> JSON? {
        guard let data = discovery["/apis"], let list = try? JSON.parse(data) else { return nil }
        guard var group = list["groups"]?.arrayValue?.first(where: { $0["name"]?.string == name }) else { return nil }
        group["kind"] = "APIGroup"
        group["apiVersion"] = "v1"
        return group
    }

    private func openAPIDocument(_ r: APIRequest, _ segments: [String]) throws(EmulatorError) -> APIResponse {
        guard r.method == "GET", segments.count >= 2, segments[1] == "v3" else { throw .pathNotFound }
        if segments.count == 2 {
            var paths: [String: JSON] = [:]
            for (path, data) in openAPI {
                let hash = SHA256.hash(data: data).map { String(format: "%02X", $0) }.joined()
                paths[path] = ["serverRelativeURL": .string("/openapi/v3/\(path)?hash=\(hash)")]
            }
            return .json(200, ["paths": .object(paths)])
        }
        guard let doc = openAPI[segments[2...].joined(separator: "/")] else { throw .pathNotFound }
        return .raw(200, doc)
    }

    // MARK: helpers

    private func manager(_ r: APIRequest) -> String {
        if let m = r.query["fieldManager"], !m.isEmpty { return m }
        let agent = r.userAgent ?? ""
        return String(agent.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).first ?? "").prefix(128).description
    }

    private func body(_ r: APIRequest, yaml: Bool = false) throws(EmulatorError) -> JSON {
        let parsed: JSON
        // Apply bodies go through the server's YAML 1.1 decoder even when they are JSON.
        let looksLikeJSON = r.body.first(where: { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }) == UInt8(ascii: "{")
        let source = yaml && looksLikeJSON ? try YAML11.readJSONBody(r.body) : r.body
        do { parsed = yaml ? try JSON.parseJSONOrYAML(source) : try JSON.parse(source) } catch {
            throw .badRequest("the body of the request could not be decoded: \(error)")
        }
        guard parsed.objectValue != nil else { throw .badRequest("the body of the request is not an object") }
        return parsed
    }

    private func checkTypeAndNamespace(_ object: inout JSON, _ type: ResourceType, _ namespace: String) throws(EmulatorError) {
        if let v = object["apiVersion"]?.string, v != type.apiVersion {
            throw .badRequest("the API version in the data (\(v)) does not match the expected API version (\(type.apiVersion))")
        }
        if let k = object["kind"]?.string, k != type.kind {
            throw .badRequest("the kind in the data (\(k)) does not match the expected kind (\(type.kind))")
        }
        object["apiVersion"] = .string(type.apiVersion)
        object["kind"] = .string(type.kind)
        if type.namespaced {
            if let ns = object[path: ["metadata", "namespace"]]?.string, !ns.isEmpty, ns != namespace {
                throw .badRequest("the namespace of the provided object does not match the namespace sent on the request")
            }
            object[path: ["metadata", "namespace"]] = .string(namespace)
        } else {
            object[path: ["metadata", "namespace"]] = nil
        }
    }

    private func checkName(_ object: JSON, _ name: String) throws(EmulatorError) {
        let bodyName = object[path: ["metadata", "name"]]?.string ?? ""
        if bodyName != name { throw .badRequest("the name of the object (\(bodyName)) does not match the name on the URL (\(name))") }
    }

    private static func specOf(_ object: JSON) -> JSON {
        var o = object
        o["metadata"] = nil
        o["status"] = nil
        return o
    }

    /// Server-owned metadata carried over from the stored object, and the generation bump.
    private static func carryOver(from current: JSON, to next: inout JSON, _ type: ResourceType) {
        for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
            next[path: ["metadata", field]] = current[path: ["metadata", field]]
        }
        if type.hasStatus { next["status"] = current["status"] }
        if type.tracksGeneration, specOf(current) != specOf(next) {
            next[path: ["metadata", "generation"]] = .int((current[path: ["metadata", "generation"]]?.intValue ?? 0) + 1)
        }
    }

    private static func initializeNew(_ object: inout JSON, _ type: ResourceType) {
        object[path: ["metadata", "uid"]] = .string(UUID().uuidString.lowercased())
        object[path: ["metadata", "creationTimestamp"]] = .string(ObjectStore.now())
        object[path: ["metadata", "generation"]] = type.tracksGeneration ? 1 : nil
        for field in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] { object[path: ["metadata", field]] = nil }
        if type.hasStatus { object["status"] = nil }
    }

    // MARK: verbs

    private func list(_ r: APIRequest, _ type: ResourceType, _ namespace: String?) throws(EmulatorError) -> APIResponse {
        let filter = try watchFilter(r, type, namespace)
        var (items, rv) = store.list(filter)
        var meta: JSON = ["resourceVersion": .string(String(rv))]
        if let token = r.query["continue"], !token.isEmpty {
            guard let data = Data(base64Encoded: token), let start = try? JSON.parse(data),
                  let ns = start["ns"]?.string, let name = start["name"]?.string else { throw .badRequest("continue key is not valid") }
            items = items.filter { ObjectStore.Key(namespace: $0[path: ["metadata", "namespace"]]?.string ?? "", name: $0[path: ["metadata", "name"]]?.string ?? "") > .init(namespace: ns, name: name) }
            rv = start["rv"]?.intValue ?? rv
            meta["resourceVersion"] = .string(String(rv))
        }
        if let limit = r.query["limit"].flatMap(Int.init), limit > 0, items.count > limit {
            let last = items[limit - 1]
            let token: JSON = ["rv": .int(rv), "ns": last[path: ["metadata", "namespace"]] ?? "", "name": last[path: ["metadata", "name"]] ?? ""]
            meta["continue"] = .string(token.data().base64EncodedString())
            meta["remainingItemCount"] = .int(items.count - limit)
            items = Array(items.prefix(limit))
        }
        let stripped = items.map { item -> JSON in var i = item; i["apiVersion"] = nil; i["kind"] = nil; return i }
        return .json(200, ["kind": .string(type.kind + "List"), "apiVersion": .string(type.apiVersion), "metadata": meta, "items": .array(stripped)])
    }

    private func watchFilter(_ r: APIRequest, _ type: ResourceType, _ namespace: String?) throws(EmulatorError) -> WatchFilter {
        let labels = try LabelSelector(parsing: r.query["labelSelector"] ?? "")
        let fields = try LabelSelector(parsing: r.query["fieldSelector"] ?? "")
        let supported = ["metadata.name", "metadata.namespace"] + (type == .secrets ? ["type"] : [])
        for requirement in fields.requirements where !supported.contains(requirement.key) {
            throw .badRequest("field label not supported: \(requirement.key)")
        }
        return WatchFilter(type: type, namespace: namespace, labels: labels, fields: fields)
    }

    private func watch(_ r: APIRequest, _ type: ResourceType, _ namespace: String?) throws(EmulatorError) -> APIResponse {
        let filter = try watchFilter(r, type, namespace)
        var after: Int? = nil
        if let rv = r.query["resourceVersion"], !rv.isEmpty, rv != "0" {
            guard let n = Int(rv) else { throw .badRequest("resourceVersion: Invalid value: \"\(rv)\": must be a non-negative integer") }
            after = n
        }
        // As endpoints/handlers/get.go: the client's timeoutSeconds, else (or if 0) a
        // random time in [minRequestTimeout, 2 x minRequestTimeout), so that watches
        // of many clients do not all end together.
        var timeout = Duration.seconds(max(0, r.query["timeoutSeconds"].flatMap(Int.init) ?? 0))
        if timeout == .zero { timeout = minRequestTimeout * Double.random(in: 1..<2) }
        let (stream, cancel) = store.watch(filter, after: after)
        return .watch(stream, cancel: cancel, timeout: timeout)
    }

    private func create(_ r: APIRequest, _ type: ResourceType, _ namespace: String) throws(EmulatorError) -> APIResponse {
        var object = try body(r)
        try checkTypeAndNamespace(&object, type, namespace)
        if (object[path: ["metadata", "name"]]?.string ?? "").isEmpty, let prefix = object[path: ["metadata", "generateName"]]?.string, !prefix.isEmpty {
            let alphabet = Array("bcdfghjklmnpqrstvwxz2456789")
            object[path: ["metadata", "name"]] = .string(prefix + String((0..<5).map { _ in alphabet.randomElement()! }))
        }
        let name = object[path: ["metadata", "name"]]?.string ?? ""
        Self.initializeNew(&object, type)
        Admission.applyDefaults(type, &object)
        try Admission.validate(type, object, old: nil)
        let fieldManager = FieldManager(type: type)
        let manager = manager(r)
        let (stored, _) = try store.mutate(type, namespace, name) { current, _ throws(EmulatorError) in
            if current != nil { throw EmulatorError.alreadyExists(type, name) }
            var next = object
            next[path: ["metadata", "managedFields"]] = nil
            let entries = fieldManager.update(old: nil, new: next, entries: [], manager: manager, now: ObjectStore.now())
            next[path: ["metadata", "managedFields"]] = entries.isEmpty ? nil : .array(entries.map(\.json))
            return next
        }
        return .json(201, stored ?? .null)
    }

    private func update(_ r: APIRequest, _ type: ResourceType, _ namespace: String, _ name: String) throws(EmulatorError) -> APIResponse {
        var object = try body(r)
        try checkTypeAndNamespace(&object, type, namespace)
        try checkName(object, name)
        return try write(r, type, namespace, name) { current throws(EmulatorError) in
            if let rv = object[path: ["metadata", "resourceVersion"]]?.string, !rv.isEmpty, rv != current[path: ["metadata", "resourceVersion"]]?.string {
                throw EmulatorError.conflict(type, name)
            }
            return object
        }
    }

    /// Update-like writes (PUT, merge patch): `change` turns the stored object into the new one.
    private func write(_ r: APIRequest, _ type: ResourceType, _ namespace: String, _ name: String,
                       _ change: @escaping (JSON) throws(EmulatorError) -> JSON) throws(EmulatorError) -> APIResponse {
        let fieldManager = FieldManager(type: type)
        let manager = manager(r)
        let (stored, _) = try store.mutate(type, namespace, name) { current, _ throws(EmulatorError) in
            guard let current else { throw EmulatorError.notFound(type, name) }
            var next = try change(current)
            Admission.applyDefaults(type, &next)
            Self.carryOver(from: current, to: &next, type)
            try Admission.validate(type, next, old: current)
            var old = current
            old[path: ["metadata", "managedFields"]] = nil
            next[path: ["metadata", "managedFields"]] = nil
            let entries = fieldManager.update(old: old, new: next, entries: ManagedFieldsEntry.list(from: current), manager: manager, now: ObjectStore.now())
            next[path: ["metadata", "managedFields"]] = entries.isEmpty ? nil : .array(entries.map(\.json))
            next[path: ["metadata", "resourceVersion"]] = current[path: ["metadata", "resourceVersion"]]
            return next
        }
        return .json(200, stored ?? .null)
    }

    private func patch(_ r: APIRequest, _ type: ResourceType, _ namespace: String, _ name: String) throws(EmulatorError) -> APIResponse {
        let contentType = (r.contentType ?? "").split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        switch contentType {
        case "application/apply-patch+yaml", "application/apply-patch+cbor":
            return try apply(r, type, namespace, name)
        case "application/merge-patch+json", "application/strategic-merge-patch+json":
            let patch = try body(r)
            return try write(r, type, namespace, name) { current throws(EmulatorError) in
                if let rv = patch[path: ["metadata", "resourceVersion"]]?.string, rv != current[path: ["metadata", "resourceVersion"]]?.string {
                    throw EmulatorError.conflict(type, name)
                }
                var merged = JSONMergePatch.apply(patch, to: current)
                try self.checkTypeAndNamespace(&merged, type, namespace)
                try self.checkName(merged, name)
                return merged
            }
        default:
            throw EmulatorError(
                code: 415, reason: "UnsupportedMediaType",
                message: "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml")
        }
    }

    private func apply(_ r: APIRequest, _ type: ResourceType, _ namespace: String, _ name: String) throws(EmulatorError) -> APIResponse {
        guard let manager = r.query["fieldManager"], !manager.isEmpty else {
            throw EmulatorError.invalid(qualifiedKind: "PatchOptions.meta.k8s.io", group: "meta.k8s.io", kind: "PatchOptions", "",
                                        [.required("fieldManager", "is required for apply patch")])
        }
        var config = try body(r, yaml: true)
        if config["kind"] == nil || config["apiVersion"] == nil {
            throw .badRequest("Object 'Kind' is missing in '\(String(decoding: r.body, as: UTF8.self))'")
        }
        try checkTypeAndNamespace(&config, type, namespace)
        if config[path: ["metadata", "name"]] == nil { config[path: ["metadata", "name"]] = .string(name) }
        try checkName(config, name)
        if !type.namespaced { config[path: ["metadata", "namespace"]] = nil }
        let force = r.query["force"] == "true"
        let fieldManager = FieldManager(type: type)
        var created = false
        let (stored, existed) = try store.mutate(type, namespace, name) { current, _ throws(EmulatorError) in
            if let current, let rv = config[path: ["metadata", "resourceVersion"]]?.string, rv != current[path: ["metadata", "resourceVersion"]]?.string {
                throw EmulatorError.conflict(type, name)
            }
            var live = current
            live?[path: ["metadata", "managedFields"]] = nil
            let result = try fieldManager.apply(live: live, entries: current.map(ManagedFieldsEntry.list) ?? [], config: config,
                                                manager: manager, force: force, now: ObjectStore.now())
            var next = result.object
            next["apiVersion"] = .string(type.apiVersion)
            next["kind"] = .string(type.kind)
            next[path: ["metadata", "name"]] = .string(name)
            if type.namespaced { next[path: ["metadata", "namespace"]] = .string(namespace) }
            Admission.applyDefaults(type, &next)
            if let current {
                Self.carryOver(from: current, to: &next, type)
                next[path: ["metadata", "resourceVersion"]] = current[path: ["metadata", "resourceVersion"]]
            } else {
                Self.initializeNew(&next, type)
                Admission.applyDefaults(type, &next)
                created = true
            }
            try Admission.validate(type, next, old: current)
            next[path: ["metadata", "managedFields"]] = result.entries.isEmpty ? nil : .array(result.entries.map(\.json))
            return next
        }
        return .json(created && !existed ? 201 : 200, stored ?? .null)
    }

    private func delete(_ r: APIRequest, _ type: ResourceType, _ namespace: String, _ name: String) throws(EmulatorError) -> APIResponse {
        var options: JSON = .object([:])
        if !r.body.isEmpty { options = try body(r) }
        let pre = options["preconditions"]
        let (object, gone) = try store.delete(type, namespace, name, precondition: (pre?["uid"]?.string, pre?["resourceVersion"]?.string))
        if gone, type == .pods { logs.end(namespace: namespace, pod: name) }
        if gone, type == .serviceAccounts {
            // As the real server: a token bound to a deleted ServiceAccount no longer authenticates.
            let subject = "system:serviceaccount:\(namespace):\(name)"
            store.state.withLock { $0.tokens = $0.tokens.filter { $0.value != subject } }
        }
        if gone {
            var details: JSON = ["name": .string(name), "kind": .string(type.plural), "uid": object[path: ["metadata", "uid"]] ?? ""]
            if !type.group.isEmpty { details["group"] = .string(type.group) }
            return .json(200, ["kind": "Status", "apiVersion": "v1", "metadata": [:], "status": "Success", "details": details])
        }
        return .json(200, object)
    }

    private func tokenRequest(_ r: APIRequest, namespace: String, name: String) throws(EmulatorError) -> APIResponse {
        _ = try store.get(.serviceAccounts, namespace, name)
        let request = try body(r)
        let seconds = request[path: ["spec", "expirationSeconds"]]?.intValue ?? 3600
        let token = "emulator." + Data((0..<24).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        store.state.withLock { $0.tokens[token] = "system:serviceaccount:\(namespace):\(name)" }
        let expiry = Date().addingTimeInterval(TimeInterval(seconds)).formatted(.iso8601)
        return .json(201, [
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": ["name": .string(name), "namespace": .string(namespace), "creationTimestamp": .null],
            "spec": ["audiences": request[path: ["spec", "audiences"]] ?? ["https://kubernetes.default.svc.cluster.local"],
                     "expirationSeconds": .int(seconds), "boundObjectRef": request[path: ["spec", "boundObjectRef"]] ?? .null],
            "status": ["token": .string(token), "expirationTimestamp": .string(expiry)],
        ])
    }
}

/// RFC 7386 JSON merge patch.
enum JSONMergePatch {
    static func apply(_ patch: JSON, to target: JSON) -> JSON {
        guard case .object(let members) = patch else { return patch }
        var result = target.objectValue ?? [:]
        for (key, value) in members {
            if value == .null { result[key] = nil } else { result[key] = apply(value, to: result[key] ?? .null) }
        }
        return .object(result)
    }
}
