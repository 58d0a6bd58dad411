import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import TestSupport

/// A real OpenID Connect provider on loopback: oidc-provider-mock from PyPI
/// (Tests/oidc/provider.py). A test sets a person's claims, then "signs in" by
/// posting the subject to the authorization URL the hub made, as a browser would
/// after the person typed their password.
struct ProviderTrouble: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

final class OIDCTestProvider: Sendable {
    let process: ChildProcess
    let port: Int
    var issuer: String { "http://127.0.0.1:\(port)" }

    static func start(port: Int = 0) async throws -> OIDCTestProvider {
        let (python, script) = try Tools.oidcProvider()
        let process = try ChildProcess(python, ["-u", script, "\(port)"], environment: ["PYTHONWARNINGS": "ignore"], interactive: true)
        try await process.waitForOutput(containing: "listening ")
        guard let line = process.output.split(separator: "\n").first(where: { $0.hasPrefix("listening ") }),
              let bound = Int(line.dropFirst("listening ".count).trimmingCharacters(in: .whitespaces)) else {
            throw ProviderTrouble("the provider's port in its output: \(process.output)")
        }
        return OIDCTestProvider(process: process, port: bound)
    }

    private init(process: ChildProcess, port: Int) {
        self.process = process
        self.port = port
    }

    /// Stops it (closing its stdin), waiting until it exited so its port is free.
    func stop() async {
        process.closeInput()
        _ = await process.waitForExit()
    }

    /// Sets the claims the provider puts in `sub`'s ID tokens.
    func setUser(_ sub: String, claims: [String: Any]) async throws {
        var request = HTTPClientRequest(url: issuer + "/users/" + (sub.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? sub))
        request.method = .PUT
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(data: try JSONSerialization.data(withJSONObject: claims)))
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
        guard response.status.code == 204 else { throw ProviderTrouble("the provider to take claims for \(sub) (got \(response.status))") }
    }

    /// Signs `sub` in at the authorization URL: the provider's redirect (with the code).
    func authorize(_ url: String, sub: String) async throws -> String {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        request.body = .bytes(ByteBuffer(string: "sub=" + (sub.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? sub)))
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(redirectConfiguration: .disallow))
        let response: HTTPClientResponse
        do {
            response = try await client.execute(request, timeout: .seconds(10))
            try await client.shutdown()
        } catch {
            try? await client.shutdown()
            throw error
        }
        guard response.status.code == 302, let location = response.headers.first(name: "Location") else {
            let body = String(buffer: try await response.body.collect(upTo: 1 << 20))
            throw ProviderTrouble("a redirect from the provider's authorize endpoint (got \(response.status): \(body.prefix(300)))")
        }
        return location
    }
}
