import Crypto
import Foundation

/// The operator credential file the hub writes into its data dir and the CLI reads:
/// where the admin API is, the bearer token, and the CA to trust it by.
public struct AdminCredentials: Codable, Sendable {
    public var server: String
    public var token: String
    public var caCertificate: String

    public init(server: String, token: String, caCertificate: String) {
        self.server = server
        self.token = token
        self.caCertificate = caCertificate
    }

    public static func newToken() -> String {
        var rng = SystemRandomNumberGenerator()
        return Base64URL.encode((0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) })
    }

    /// SHA-256: tokens are 256-bit random, so a fast hash is enough at rest.
    public static func hash(_ token: String) -> Data {
        Data(SHA256.hash(data: Data(token.utf8)))
    }
}
