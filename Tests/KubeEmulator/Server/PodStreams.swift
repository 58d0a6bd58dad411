import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import Shared
import Synchronization

// What a kubelet would do for the API server: container logs (`pods/log`, with
// `follow`) and `exec` over WebSocket with the `v5.channel.k8s.io` protocol, the
// way kube-apiserver's StreamTranslator serves kubectl since 1.30. Containers run
// a small built-in command set instead of processes.

/// Each container's log lines, and the follows reading them.
final class PodLogs: Sendable {
    private struct Followers {
        var lines: [String: [String]] = [:]
        var follows: [String: [UUID: AsyncStream<String>.Continuation]] = [:]
    }
    private let state = Mutex(Followers())

    private static func key(_ namespace: String, _ pod: String, _ container: String) -> String { "\(namespace)/\(pod)/\(container)" }

    func append(namespace: String, pod: String, container: String, line: String) {
        let text = line.hasSuffix("\n") ? line : line + "\n"
        let readers = state.withLock { s -> [AsyncStream<String>.Continuation] in
            let key = Self.key(namespace, pod, container)
            s.lines[key, default: []].append(text)
            return Array(s.follows[key, default: [:]].values)
        }
        for reader in readers { reader.yield(text) }
    }

    /// The lines so far (the last `tail` of them), and with `follow` the ones
    /// written later, until the pod is deleted or the reader goes away.
    func read(namespace: String, pod: String, container: String, tail: Int?, follow: Bool) -> APIResponse {
        let key = Self.key(namespace, pod, container)
        let id = UUID()
        let (stream, continuation) = AsyncStream<String>.makeStream()
        state.withLock { s in
            var lines = s.lines[key, default: []]
            if let tail { lines = Array(lines.suffix(max(0, tail))) }
            for line in lines { continuation.yield(line) }
            if follow { s.follows[key, default: [:]][id] = continuation } else { continuation.finish() }
        }
        return .text(stream, cancel: { [self] in
            let reader = state.withLock { $0.follows[key]?.removeValue(forKey: id) }
            reader?.finish()
        })
    }

    /// The pod is gone: its containers ended, so every follow ends.
    func end(namespace: String, pod: String) {
        let readers = state.withLock { s -> [AsyncStream<String>.Continuation] in
            let prefix = "\(namespace)/\(pod)/"
            var ended: [AsyncStream<String>.Continuation] = []
            for key in s.follows.keys where key.hasPrefix(prefix) {
                ended += s.follows.removeValue(forKey: key)?.values.map { $0 } ?? []
            }
            for key in s.lines.keys where key.hasPrefix(prefix) { s.lines[key] = nil }
            return ended
        }
        for reader in readers { reader.finish() }
    }

    func endAll() {
        let readers = state.withLock { s -> [AsyncStream<String>.Continuation] in
            defer { s.follows = [:] }
            return s.follows.values.flatMap { $0.values }
        }
        for reader in readers { reader.finish() }
    }
}

extension APIHandler {
    /// `GET pods/NAME/log`: the container from `container`, or the pod's only one.
    func podLog(_ r: APIRequest, namespace: String, name: String) throws(EmulatorError) -> APIResponse {
        let pod = try store.get(.pods, namespace, name)
        let container = try Self.container(of: pod, name: name, asked: r.query["container"])
        let tail = r.query["tailLines"].flatMap { Int($0) }
        return logs.read(namespace: namespace, pod: name, container: container, tail: tail, follow: r.query["follow"] == "true")
    }

    static func container(of pod: JSON, name: String, asked: String?) throws(EmulatorError) -> String {
        let containers = (pod[path: ["spec", "containers"]]?.arrayValue ?? []).compactMap { $0["name"]?.string }
        guard let asked, !asked.isEmpty else {
            if containers.count == 1 { return containers[0] }
            throw .badRequest("a container name must be specified for pod \(name), choose one of: [\(containers.joined(separator: " "))]")
        }
        guard containers.contains(asked) else { throw .badRequest("container \(asked) is not valid for pod \(name)") }
        return asked
    }

    /// What an exec request asks for, once it is authenticated, authorized and its pod found.
    struct ExecRequest: Sendable {
        var pod: String
        var container: String
        var command: [String]
        var stdin: Bool
        var stdout: Bool
        var stderr: Bool
        var tty: Bool
    }

    /// What an upgrade request asks for.
    enum ConnectRequest: Sendable {
        case exec(ExecRequest)
        /// The ports the pod's containers declare, which answer (with an echo).
        case portForward(pod: String, ports: Set<Int>)
    }

    /// Checks an upgrade request for `pods/NAME/exec` or `portforward` as the API
    /// server does before it upgrades; the error is the Status it answers with instead.
    func connectRequest(_ r: APIRequest) throws(EmulatorError) -> ConnectRequest {
        if r.authorization == nil { anonymous.withLock { $0.append(r.path) } }
        let user = try authenticate(r)
        let segments = r.path.split(separator: "/").map(String.init)
        guard segments.count == 7, segments[0] == "api", segments[1] == "v1", segments[2] == "namespaces", segments[4] == "pods" else {
            throw .pathNotFound
        }
        let (namespace, name, subresource) = (segments[3], segments[5], segments[6])
        guard ["exec", "attach", "portforward"].contains(subresource) else { throw .pathNotFound }
        func authorize(_ verb: String) {
            var check = AuthorizationCheck(verb: verb, group: "", resource: "pods", subresource: subresource, namespace: namespace, name: name,
                                           userAgent: r.userAgent ?? "")
            check.user = user
            authorizations.withLock { $0.append(check) }
        }
        // A WebSocket handshake is a GET: RequestInfo's verb is `get`, and since
        // 1.35 (AuthorizePodWebsocketUpgradeCreatePermission) `create` is checked
        // too, as a SPDY POST is.
        if r.method == "GET" { authorize("get") }
        authorize("create")
        let pod = try store.get(.pods, namespace, name)
        if subresource == "portforward" {
            let ports = (pod[path: ["spec", "containers"]]?.arrayValue ?? []).flatMap { $0["ports"]?.arrayValue ?? [] }
                .compactMap { $0["containerPort"]?.intValue }
            return .portForward(pod: name, ports: Set(ports))
        }
        guard subresource == "exec" else {
            throw .badRequest("the emulator serves exec and portforward; \(subresource) is not emulated")
        }
        let container = try Self.container(of: pod, name: name, asked: r.query["container"])
        let command = r.queryItems.filter { $0.0 == "command" }.map(\.1)
        guard !command.isEmpty else { throw .badRequest("you must specify at least one command for the container") }
        func flag(_ key: String) -> Bool { r.query[key] == "true" || r.query[key] == "1" }
        let request = ExecRequest(pod: name, container: container, command: command, stdin: flag("stdin"), stdout: flag("stdout"),
                                  stderr: flag("stderr"), tty: flag("tty"))
        guard request.stdin || request.stdout || request.stderr else {
            throw .badRequest("you must specify at least 1 of stdin, stdout, stderr")
        }
        return .exec(request)
    }

    /// Serves one upgrade request on the emulator's listener.
    func serveUpgrade(_ head: HTTPRequestHead, exchange: UpgradeExchange) async {
        let (path, query) = head.uri.firstIndex(of: "?").map { (String(head.uri[..<$0]), String(head.uri[head.uri.index(after: $0)...])) } ?? (head.uri, "")
        let request = APIRequest(method: head.method.rawValue, path: path.removingPercentEncoding ?? path, query: APIRequest.parseQuery(query),
                                 queryItems: APIRequest.parseQueryItems(query), contentType: head.headers.first(name: "content-type"),
                                 userAgent: head.headers.first(name: "user-agent"), authorization: head.headers.first(name: "authorization"),
                                 body: Data())
        let upgrade = head.headers.upgradeProtocol ?? ""
        do throws(EmulatorError) {
            switch try connectRequest(request) {
            case .exec(let exec):
                guard upgrade.lowercased() == "websocket" else {
                    // kubectl offers WebSocket first and falls back to SPDY only when that is refused.
                    throw .badRequest("the emulator speaks WebSocket (v5.channel.k8s.io) for exec, not \(upgrade)")
                }
                guard let raw = try await Self.acceptWebSocket(head, exchange, subprotocol: WebSocketExec.v5) else { return }
                await WebSocketExec(request: exec, raw: raw).run()
            case .portForward(let pod, let ports):
                if upgrade.lowercased() == "websocket" {
                    // kubectl's first choice: SPDY tunneled in WebSocket (kube-apiserver 1.31+).
                    guard let raw = try await Self.acceptWebSocket(head, exchange, subprotocol: WebSocketByteStream.portForwardProtocol) else { return }
                    await SPDYPortForward(connection: WebSocketByteStream(raw: raw), ports: ports, podName: pod).run()
                    return
                }
                guard upgrade.uppercased() == "SPDY/3.1" else { throw .badRequest("unable to upgrade: unknown protocol \(upgrade)") }
                let offered = head.headers[canonicalForm: "x-stream-protocol-version"].map { String($0).trimmingCharacters(in: .whitespaces) }
                guard offered.contains("portforward.k8s.io") else {
                    throw .badRequest("unable to upgrade: no common protocol: client offered \(offered), server supports [portforward.k8s.io]")
                }
                var headers = HTTPHeaders()
                headers.add(name: "Connection", value: "Upgrade")
                headers.add(name: "Upgrade", value: "SPDY/3.1")
                headers.add(name: "X-Stream-Protocol-Version", value: "portforward.k8s.io")
                guard let raw = try? await exchange.switchProtocols(headers: headers) else { return }
                await SPDYPortForward(connection: raw, ports: ports, podName: pod).run()
            }
        } catch {
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "application/json")
            try? await exchange.respond(status: .init(statusCode: error.code), headers: headers)
            try? await exchange.write(ByteBuffer(bytes: error.status.data()))
            try? await exchange.end()
        }
    }
}

extension APIHandler {
    /// The WebSocket handshake for `subprotocol` (the only one this endpoint
    /// speaks, as kube-apiserver's): the 101 with the accept key, or a 400 when the
    /// client did not offer it. Nil when the connection went away meanwhile.
    static func acceptWebSocket(_ head: HTTPRequestHead, _ exchange: UpgradeExchange, subprotocol: String) async throws(EmulatorError) -> RawConnection? {
        let offered = head.headers[canonicalForm: "sec-websocket-protocol"].map { String($0).trimmingCharacters(in: .whitespaces) }
        guard let key = head.headers.first(name: "sec-websocket-key"), offered.contains(subprotocol) else {
            throw .badRequest("unable to upgrade connection: supported protocols: [\(subprotocol)], offered: \(offered)")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Upgrade", value: "websocket")
        headers.add(name: "Connection", value: "Upgrade")
        headers.add(name: "Sec-WebSocket-Accept", value: WebSocketFrames.accept(key: key))
        headers.add(name: "Sec-WebSocket-Protocol", value: subprotocol)
        return try? await exchange.switchProtocols(headers: headers)
    }
}

/// RFC 6455 framing, server side (frames out unmasked, frames in masked).
enum WebSocketFrames {
    static func accept(key: String) -> String {
        Data(Insecure.SHA1.hash(data: Data((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8))).base64EncodedString()
    }

    struct Frame {
        var fin: Bool
        var opcode: UInt8
        var payload: [UInt8]
    }

    static func encode(opcode: UInt8, _ payload: [UInt8]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(0x80 | opcode))
        switch payload.count {
        case ..<126: buffer.writeInteger(UInt8(payload.count))
        case ..<65536:
            buffer.writeInteger(UInt8(126))
            buffer.writeInteger(UInt16(payload.count))
        default:
            buffer.writeInteger(UInt8(127))
            buffer.writeInteger(UInt64(payload.count))
        }
        buffer.writeBytes(payload)
        return buffer
    }

    /// One whole frame from the front of `buffer`, or nil until more bytes arrive.
    static func decode(_ buffer: inout ByteBuffer) throws -> Frame? {
        var view = buffer
        guard let b0 = view.readInteger(as: UInt8.self), let b1 = view.readInteger(as: UInt8.self) else { return nil }
        var length = Int(b1 & 0x7F)
        if length == 126 {
            guard let l = view.readInteger(as: UInt16.self) else { return nil }
            length = Int(l)
        } else if length == 127 {
            guard let l = view.readInteger(as: UInt64.self) else { return nil }
            guard l < 1 << 24 else { throw WebSocketError.tooLarge }
            length = Int(l)
        }
        // A client must mask every frame (RFC 6455 5.1).
        guard b1 & 0x80 != 0 else { throw WebSocketError.unmasked }
        guard let mask = view.readBytes(length: 4), var payload = view.readBytes(length: length) else { return nil }
        for i in payload.indices { payload[i] ^= mask[i % 4] }
        buffer = view
        return Frame(fin: b0 & 0x80 != 0, opcode: b0 & 0x0F, payload: payload)
    }

    enum WebSocketError: Error { case unmasked, tooLarge }
}

/// One exec over `v5.channel.k8s.io`: every message is binary, its first byte the
/// channel (0 stdin, 1 stdout, 2 stderr, 3 the final Status, 4 terminal resize,
/// 255 a close of the channel named by the second byte).
struct WebSocketExec {
    static let v5 = "v5.channel.k8s.io"
    let request: APIHandler.ExecRequest
    let raw: RawConnection

    func send(_ channel: UInt8, _ bytes: [UInt8]) async throws {
        try await raw.write(WebSocketFrames.encode(opcode: 0x2, [channel] + bytes))
    }

    func run() async {
        defer { raw.abort() }
        var input = ByteBuffer()
        var stdinOpen = request.stdin
        var message: [UInt8] = []
        /// Reads frames until stdin closes (close signal, Close frame or EOF), answering pings.
        func readMessage() async throws -> [UInt8]? {
            while true {
                while let frame = try WebSocketFrames.decode(&input) {
                    switch frame.opcode {
                    case 0x9: try await raw.write(WebSocketFrames.encode(opcode: 0xA, frame.payload))
                    case 0xA: continue
                    case 0x8: return nil
                    case 0x0, 0x1, 0x2:
                        message += frame.payload
                        if frame.fin {
                            defer { message = [] }
                            return message
                        }
                    default: continue
                    }
                }
                guard let chunk = try await raw.read() else { return nil }
                input.writeImmutableBuffer(chunk)
            }
        }
        do {
            // The API server's "connection established" notice: an empty message
            // on the lowest writable channel.
            try await send(request.stdout ? 1 : request.stderr ? 2 : 3, [])
            let program = request.command[0]
            let arguments = Array(request.command.dropFirst())
            if program == "cat" {
                while stdinOpen, let msg = try await readMessage() {
                    guard let channel = msg.first else { continue }
                    if channel == 0 { try await send(1, Array(msg.dropFirst())) }
                    if channel == 255, msg.count > 1, msg[1] == 0 { stdinOpen = false }
                }
                try await finish(exitCode: 0)
                return
            }
            switch program {
            case "echo":
                try await send(1, Array((arguments.joined(separator: " ") + "\n").utf8))
                try await finish(exitCode: 0)
            case "hostname":
                try await send(1, Array((request.pod + "\n").utf8))
                try await finish(exitCode: 0)
            case "true":
                try await finish(exitCode: 0)
            case "false":
                try await finish(exitCode: 1)
            case "sh" where arguments.count == 2 && arguments[0] == "-c" && arguments[1].hasPrefix("exit "):
                try await finish(exitCode: Int(arguments[1].dropFirst(5).trimmingCharacters(in: .whitespaces)) ?? 2)
            default:
                // What containerd's runc reports for a missing binary.
                try await send(2, Array("OCI runtime exec failed: exec failed: unable to start container process: exec: \"\(program)\": executable file not found in $PATH: unknown\n".utf8))
                try await finish(exitCode: 126)
            }
        } catch {
            return
        }
    }

    /// The final Status on channel 3, then a Close frame.
    func finish(exitCode: Int) async throws {
        let status: JSON = exitCode == 0 ? ["metadata": [:], "status": "Success"] : [
            "metadata": [:], "status": "Failure",
            "message": .string("command terminated with non-zero exit code: command '\(request.command.joined(separator: " "))' exited with \(exitCode)"),
            "reason": "NonZeroExitCode",
            "details": ["causes": [["reason": "ExitCode", "message": .string(String(exitCode))]]],
        ]
        try await send(3, Array(status.data()))
        try await raw.write(WebSocketFrames.encode(opcode: 0x8, [0x03, 0xE8]))
    }
}
