import CZlib
import Foundation
import NIOCore
import Shared

// `kubectl port-forward` as a kubelet serves it: the connection upgraded to
// SPDY/3.1 (`X-Stream-Protocol-Version: portforward.k8s.io`), and for each local
// connection kubectl opens two streams, `streamtype: error` and `streamtype: data`,
// with the same `port` and `requestid`. The emulator's containers answer on the
// ports their spec declares with an echo (what is sent comes back); a port no
// container declares gets the kubelet's connection-refused error on the error stream.

/// SPDY/3 header compression: zlib with the dictionary the spec defines, one
/// compression context per direction for the connection's life.
enum SPDYDictionary {
    static let bytes: [UInt8] = {
        let names = [
            "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding", "accept-language",
            "accept-ranges", "age", "allow", "authorization", "cache-control", "connection", "content-base", "content-encoding",
            "content-language", "content-length", "content-location", "content-md5", "content-range", "content-type", "date", "etag",
            "expect", "expires", "from", "host", "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since",
            "last-modified", "location", "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
            "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
            "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive",
            "origin",
        ]
        var bytes: [UInt8] = []
        for name in names {
            let length = UInt32(name.utf8.count)
            bytes += [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)] + Array(name.utf8)
        }
        bytes += Array(("100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
            + "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden"
            + "404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
            + "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
            + "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,public"
            + "privatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.").utf8)
        return bytes
    }()
}

/// One direction's header-block codec.
final class SPDYHeaderCodec {
    private var inflater = z_stream()
    private var deflater = z_stream()

    init() {
        inflateInit_(&inflater, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        deflateInit_(&deflater, Z_DEFAULT_COMPRESSION, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        SPDYDictionary.bytes.withUnsafeBufferPointer { dict in
            _ = deflateSetDictionary(&deflater, dict.baseAddress, uInt(dict.count))
        }
    }

    deinit {
        inflateEnd(&inflater)
        deflateEnd(&deflater)
    }

    enum CodecError: Error { case zlib(Int32), truncated }

    func decode(_ block: [UInt8]) throws -> [String: String] {
        var input = block
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        try input.withUnsafeMutableBufferPointer { inBuffer in
            inflater.next_in = inBuffer.baseAddress
            inflater.avail_in = uInt(inBuffer.count)
            while true {
                let (status, produced) = chunk.withUnsafeMutableBufferPointer { out -> (Int32, Int) in
                    inflater.next_out = out.baseAddress
                    inflater.avail_out = uInt(out.count)
                    var status = inflate(&inflater, Z_SYNC_FLUSH)
                    if status == Z_NEED_DICT {
                        status = SPDYDictionary.bytes.withUnsafeBufferPointer { dict in
                            inflateSetDictionary(&inflater, dict.baseAddress, uInt(dict.count))
                        }
                        if status == Z_OK { status = inflate(&inflater, Z_SYNC_FLUSH) }
                    }
                    return (status, out.count - Int(inflater.avail_out))
                }
                guard status == Z_OK || status == Z_BUF_ERROR else { throw CodecError.zlib(status) }
                output += chunk[..<produced]
                // Done once every input byte is in and the output was not cut short.
                if inflater.avail_in == 0 && produced < chunk.count { break }
                if produced == 0 { throw CodecError.truncated }
            }
        }
        var offset = 0
        func u32() throws -> Int {
            guard offset + 4 <= output.count else { throw CodecError.truncated }
            defer { offset += 4 }
            return Int(output[offset]) << 24 | Int(output[offset + 1]) << 16 | Int(output[offset + 2]) << 8 | Int(output[offset + 3])
        }
        func string() throws -> String {
            let length = try u32()
            guard offset + length <= output.count else { throw CodecError.truncated }
            defer { offset += length }
            return String(decoding: output[offset..<offset + length], as: UTF8.self)
        }
        var headers: [String: String] = [:]
        for _ in 0..<(try u32()) {
            let name = try string()
            headers[name.lowercased()] = try string()
        }
        return headers
    }

    func encode(_ headers: [String: String]) -> [UInt8] {
        var plain: [UInt8] = []
        func u32(_ value: Int) { plain += [UInt8(value >> 24 & 0xFF), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)] }
        u32(headers.count)
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) {
            u32(name.utf8.count); plain += Array(name.lowercased().utf8)
            u32(value.utf8.count); plain += Array(value.utf8)
        }
        var output = [UInt8](repeating: 0, count: plain.count + 128)
        let written = plain.withUnsafeMutableBufferPointer { inBuffer in
            output.withUnsafeMutableBufferPointer { out -> Int in
                deflater.next_in = inBuffer.baseAddress
                deflater.avail_in = uInt(inBuffer.count)
                deflater.next_out = out.baseAddress
                deflater.avail_out = uInt(out.count)
                _ = deflate(&deflater, Z_SYNC_FLUSH)
                return out.count - Int(deflater.avail_out)
            }
        }
        return Array(output[..<written])
    }
}

/// A byte stream an upgraded protocol runs on.
protocol ByteStream: Sendable {
    func read() async throws -> ByteBuffer?
    func write(_ bytes: ByteBuffer) async throws
    func close()
}

extension RawConnection: ByteStream {
    func close() { abort() }
}

/// The WebSocket tunnel kubectl tries first for port-forward (subprotocol
/// `SPDY/3.1+portforward.k8s.io`): the SPDY connection's bytes in binary messages.
actor WebSocketByteStream: ByteStream {
    static let portForwardProtocol = "SPDY/3.1+portforward.k8s.io"
    let raw: RawConnection
    private var input = ByteBuffer()

    init(raw: RawConnection) { self.raw = raw }

    func read() async throws -> ByteBuffer? {
        while true {
            while let frame = try WebSocketFrames.decode(&input) {
                switch frame.opcode {
                case 0x9: try await raw.write(WebSocketFrames.encode(opcode: 0xA, frame.payload))
                case 0x8: return nil
                case 0x0, 0x1, 0x2: if !frame.payload.isEmpty { return ByteBuffer(bytes: frame.payload) }
                default: continue
                }
            }
            guard let chunk = try await raw.read() else { return nil }
            input.writeImmutableBuffer(chunk)
        }
    }

    func write(_ bytes: ByteBuffer) async throws {
        try await raw.write(WebSocketFrames.encode(opcode: 0x2, Array(bytes.readableBytesView)))
    }

    nonisolated func close() { raw.abort() }
}

/// A SPDY/3.1 session serving port-forward streams.
actor SPDYPortForward {
    static let protocolVersion: UInt16 = 3
    enum FrameType: UInt16 { case synStream = 1, synReply = 2, rstStream = 3, settings = 4, ping = 6, goAway = 7, headers = 8, windowUpdate = 9 }
    static let flagFin: UInt8 = 0x01

    let connection: any ByteStream
    let ports: Set<Int>
    let podName: String
    private let codec = SPDYHeaderCodec()
    /// Streams by id: their headers, and the data a container has not taken yet.
    private var streams: [UInt32: [String: String]] = [:]
    /// requestid -> (error stream, data stream)
    private var pairs: [String: (error: UInt32?, data: UInt32?)] = [:]
    private var echoes: [UInt32: AsyncStream<[UInt8]?>.Continuation] = [:]
    private var tasks: [Task<Void, Never>] = []

    init(connection: any ByteStream, ports: Set<Int>, podName: String) {
        self.connection = connection
        self.ports = ports
        self.podName = podName
    }

    func run() async {
        var input = ByteBuffer()
        do {
            reading: while true {
                while let frame = Self.frame(&input) { try await handle(frame) }
                guard let chunk = try await connection.read() else { break reading }
                input.writeImmutableBuffer(chunk)
            }
        } catch {}
        for echo in echoes.values { echo.finish() }
        for task in tasks { await task.value }
        connection.close()
    }

    struct Frame {
        var control: Bool
        var type: UInt16
        var streamID: UInt32
        var flags: UInt8
        var payload: [UInt8]
    }

    static func frame(_ buffer: inout ByteBuffer) -> Frame? {
        guard buffer.readableBytes >= 8, let head = buffer.getBytes(at: buffer.readerIndex, length: 8) else { return nil }
        let length = Int(head[5]) << 16 | Int(head[6]) << 8 | Int(head[7])
        guard buffer.readableBytes >= 8 + length else { return nil }
        buffer.moveReaderIndex(forwardBy: 8)
        let payload = buffer.readBytes(length: length) ?? []
        if head[0] & 0x80 != 0 {
            return Frame(control: true, type: UInt16(head[2]) << 8 | UInt16(head[3]), streamID: 0, flags: head[4], payload: payload)
        }
        let id = UInt32(head[0] & 0x7F) << 24 | UInt32(head[1]) << 16 | UInt32(head[2]) << 8 | UInt32(head[3])
        return Frame(control: false, type: 0, streamID: id, flags: head[4], payload: payload)
    }

    static func u32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        UInt32(bytes[at]) << 24 | UInt32(bytes[at + 1]) << 16 | UInt32(bytes[at + 2]) << 8 | UInt32(bytes[at + 3])
    }

    static func be32(_ value: UInt32) -> [UInt8] { [UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)] }

    func control(_ type: FrameType, flags: UInt8 = 0, _ payload: [UInt8]) async throws {
        var frame: [UInt8] = [0x80 | UInt8(Self.protocolVersion >> 8), UInt8(Self.protocolVersion & 0xFF), UInt8(type.rawValue >> 8), UInt8(type.rawValue & 0xFF), flags]
        frame += [UInt8(payload.count >> 16 & 0xFF), UInt8(payload.count >> 8 & 0xFF), UInt8(payload.count & 0xFF)] + payload
        try await connection.write(ByteBuffer(bytes: frame))
    }

    func data(_ stream: UInt32, _ payload: [UInt8], fin: Bool = false) async throws {
        var frame = Self.be32(stream & 0x7FFF_FFFF) + [fin ? Self.flagFin : 0]
        frame += [UInt8(payload.count >> 16 & 0xFF), UInt8(payload.count >> 8 & 0xFF), UInt8(payload.count & 0xFF)] + payload
        try await connection.write(ByteBuffer(bytes: frame))
    }

    private func handle(_ frame: Frame) async throws {
        guard frame.control else {
            // Data from kubectl: on a data stream, the container echoes it back.
            if let echo = echoes[frame.streamID] {
                if !frame.payload.isEmpty { echo.yield(frame.payload) }
                if frame.flags & Self.flagFin != 0 { echo.yield(nil) }
            }
            return
        }
        switch FrameType(rawValue: frame.type) {
        case .synStream:
            guard frame.payload.count >= 10 else { return }
            let id = Self.u32(frame.payload, 0) & 0x7FFF_FFFF
            let headers = try codec.decode(Array(frame.payload[10...]))
            streams[id] = headers
            try await control(.synReply, Self.be32(id) + codec.encode([:]))
            try await streamOpened(id, headers)
        case .ping:
            try await control(.ping, frame.payload)
        case .goAway:
            connection.close()
        case .rstStream:
            if frame.payload.count >= 4 { echoes.removeValue(forKey: Self.u32(frame.payload, 0) & 0x7FFF_FFFF)?.finish() }
        case .settings, .windowUpdate, .headers, .synReply, nil:
            return
        }
    }

    /// Both streams of a request are open: the container's port answers.
    private func streamOpened(_ id: UInt32, _ headers: [String: String]) async throws {
        guard let request = headers["requestid"], let type = headers["streamtype"] else { return }
        var pair = pairs[request] ?? (nil, nil)
        if type == "error" { pair.error = id } else if type == "data" { pair.data = id }
        pairs[request] = pair
        guard let errorStream = pair.error, let dataStream = pair.data else { return }
        let port = Int(headers["port"] ?? "") ?? 0
        guard ports.contains(port) else {
            let message = "error forwarding port \(port) to pod \(podName): failed to connect to localhost:\(port) inside namespace: "
                + "dial tcp4 127.0.0.1:\(port): connect: connection refused"
            try await data(errorStream, Array(message.utf8), fin: true)
            try await data(dataStream, [], fin: true)
            return
        }
        let (stream, continuation) = AsyncStream<[UInt8]?>.makeStream()
        echoes[dataStream] = continuation
        tasks.append(Task {
            for await chunk in stream {
                guard let chunk else { break }
                try? await self.data(dataStream, chunk)
            }
            // kubectl closed its side: the container's side closes too.
            try? await self.data(dataStream, [], fin: true)
            try? await self.data(errorStream, [], fin: true)
        })
    }
}
