import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import HubStore
import Shared

/// The CLI's client for the admin API: HTTPS to the address in the credential
/// file, trusting only the hub's CA, with the bearer token from the same file.
struct AdminClient {
    let credentials: AdminCredentials
    let credentialsPath: String

    init(credentialsPath: String) throws {
        guard let data = FileManager.default.contents(atPath: credentialsPath) else {
            throw TetherError(.notFound,
                "no credential file at \(credentialsPath); run on the hub machine, pass --credentials DIR/admin-credentials.json (the hub's data dir), or set TETHER_CREDENTIALS")
        }
        do {
            credentials = try JSONDecoder().decode(AdminCredentials.self, from: data)
        } catch {
            throw TetherError(.invalidArgument, "\(credentialsPath) is not a Tether credential file: \(error)")
        }
        self.credentialsPath = credentialsPath
    }

    /// GETs `path` and hands the body to `onChunk` as it arrives.
    func stream(_ path: String, onChunk: (ByteBuffer) throws -> Void) async throws {
        let client = try makeHTTPClient()
        do {
            var request = HTTPClientRequest(url: credentials.server + path)
            request.headers.add(name: "Authorization", value: "Bearer \(credentials.token)")
            let response: HTTPClientResponse
            do {
                response = try await client.execute(request, timeout: .hours(24))
            } catch {
                throw TetherError(.unavailable, "cannot reach the hub's admin API at \(credentials.server): \(error); is `tether-hub serve` running?")
            }
            guard (200..<300).contains(response.status.code) else {
                let data = Data(buffer: try await response.body.collect(upTo: 1 << 20))
                if let failure = try? JSONDecoder().decode(ErrorBody.self, from: data) {
                    throw TetherError(.init(failure.error.code), failure.error.message)
                }
                throw TetherError(.internalError, "hub answered \(response.status)")
            }
            for try await chunk in response.body { try onChunk(chunk) }
            try await client.shutdown()
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    private func makeHTTPClient() throws -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(credentials.caCertificate.utf8)))
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
    }

    func call<Response: Decodable>(_ method: HTTPMethod, _ path: String, body: (some Encodable)? = Optional<String>.none, as: Response.Type = Response.self) async throws -> Response {
        let client = try makeHTTPClient()
        do {
            var request = HTTPClientRequest(url: credentials.server + path)
            request.method = method
            request.headers.add(name: "Authorization", value: "Bearer \(credentials.token)")
            if let body {
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(ByteBuffer(bytes: try JSONEncoder.tether.encode(body)))
            }
            let response: HTTPClientResponse
            do {
                response = try await client.execute(request, timeout: .seconds(30))
            } catch {
                throw TetherError(.unavailable, "cannot reach the hub's admin API at \(credentials.server): \(error); is `tether-hub serve` running?")
            }
            let bytes = try await response.body.collect(upTo: 64 << 20)
            let data = Data(buffer: bytes)
            guard (200..<300).contains(response.status.code) else {
                if let failure = try? JSONDecoder().decode(ErrorBody.self, from: data) {
                    throw TetherError(.init(failure.error.code), failure.error.message)
                }
                throw TetherError(.internalError, "hub answered \(response.status): \(String(decoding: data, as: UTF8.self))")
            }
            try await client.shutdown()
            return try JSONDecoder.tether.decode(Response.self, from: data)
        } catch {
            try? await client.shutdown()
            throw error
        }
    }
}

/// Renders rows as an aligned text table.
enum Table {
    static func render(_ header: [String], _ rows: [[String]]) -> String {
        let all = [header] + rows
        let widths = header.indices.map { i in all.map { $0[i].count }.max() ?? 0 }
        return all.map { row in
            row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }

    static func date(_ date: Date?) -> String {
        date.map { $0.formatted(.iso8601) } ?? "-"
    }
}
