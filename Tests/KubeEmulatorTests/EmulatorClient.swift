import AsyncHTTPClient
import Foundation
import TestSupport
import KubeEmulator
import NIOCore
import NIOFoundationCompat
import NIOSSL

/// An HTTPS client that trusts one emulator's CA and sends its token.
struct EmulatorClient {
    let emulator: KubeEmulator
    let http: HTTPClient

    init(_ emulator: KubeEmulator) throws {
        self.emulator = emulator
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(emulator.caPEM.utf8)))
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
    }

    func shutdown() async throws { try await http.shutdown() }

    /// One request; returns the status code and the whole body.
    func send(_ method: String, _ path: String, contentType: String = "application/json", body: String = "",
              userAgent: String = "curl/8.5.0", token: String? = nil) async throws -> (code: Int, body: Data) {
        var request = HTTPClientRequest(url: emulator.url.absoluteString + path)
        request.method = .init(rawValue: method)
        request.headers.add(name: "Authorization", value: "Bearer \(token ?? emulator.token)")
        request.headers.add(name: "User-Agent", value: userAgent)
        if !body.isEmpty {
            request.headers.add(name: "Content-Type", value: contentType)
            request.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await http.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 64 << 20)
        return (Int(response.status.code), Data(buffer: bytes))
    }

    func json(_ method: String, _ path: String, contentType: String = "application/json", body: String = "",
              userAgent: String = "curl/8.5.0") async throws -> (code: Int, json: JSON) {
        let (code, data) = try await send(method, path, contentType: contentType, body: body, userAgent: userAgent)
        return (code, try JSON.parse(data))
    }

    /// Opens a watch and hands each event line to `onEvent` until it returns false or the stream ends.
    func watch(_ path: String, onEvent: (JSON) async throws -> Bool) async throws {
        var request = HTTPClientRequest(url: emulator.url.absoluteString + path)
        request.headers.add(name: "Authorization", value: "Bearer \(emulator.token)")
        let response = try await http.execute(request, timeout: .seconds(60))
        var pending = Data()
        for try await chunk in response.body {
            pending.append(contentsOf: chunk.readableBytesView)
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = pending[pending.startIndex..<newline]
                pending = Data(pending[(newline + 1)...])
                if try await !onEvent(try JSON.parse(Data(line))) { return }
            }
        }
    }
}

/// Starts an emulator and a client, runs `body`, and stops both.
func withEmulator(_ body: (KubeEmulator, EmulatorClient) async throws -> Void) async throws {
    let emulator = try await KubeEmulator.start()
    let client = try EmulatorClient(emulator)
    do {
        try await body(emulator, client)
    } catch {
        try? await client.shutdown()
        await emulator.stop()
        throw error
    }
    try await client.shutdown()
    await emulator.stop()
}

/// The request/response pairs captured from a real API server (`Tests/Fixtures/kube`).
enum FixtureFiles {

    struct Case {
        let method: String, path: String, contentType: String, body: String
        let status: Int
        let response: JSON
    }

    static func status(_ name: String) throws -> Case {
        let json = try JSON.parse(Fixtures.data("kube/status/\(name).json"))
        let r = json["request"]!
        return Case(method: r["method"]!.string!, path: r["path"]!.string!, contentType: r["contentType"]?.string ?? "application/json",
                    body: r["body"]?.string ?? "", status: json["status"]!.intValue!, response: json["response"]!)
    }
}
