import Crypto
import Foundation
import HubStore
import Shared
import Synchronization

/// A person's session credential: `tether-session.v1.PAYLOAD.MAC`, the payload
/// (base64url JSON: session id, user, groups, method, issued and expiry times)
/// signed with HMAC-SHA256 under the hub's session key. The signature makes a
/// forged or altered credential fail before any lookup; the stored session record
/// (by id) makes a revocation immediate. The hub never stores the credential.
struct SessionCredential: Equatable, Sendable {
    static let prefix = "tether-session.v1."

    struct Claims: Codable, Equatable, Sendable {
        var sid: String
        var sub: String
        var groups: [String]
        var amr: String
        var iat: Int64
        var exp: Int64
    }

    var claims: Claims

    init(session: SessionRecord) {
        claims = Claims(sid: session.id, sub: session.user, groups: session.groups, amr: session.method,
                        iat: Int64(session.createdAt.timeIntervalSince1970), exp: Int64(session.expiresAt.timeIntervalSince1970))
    }

    func encoded(key: SymmetricKey) throws -> String {
        let payload = Base64URL.encode(try JSONEncoder.sorted.encode(claims))
        let mac = HMAC<SHA256>.authenticationCode(for: Data(payload.utf8), using: key)
        return Self.prefix + payload + "." + Base64URL.encode(Array(mac))
    }

    /// Checks the form and the signature (not expiry or revocation: the caller
    /// checks those against the clock and the store). Every failure is the same
    /// error, so a caller learns nothing about which part was wrong.
    static func verify(_ text: String, key: SymmetricKey) throws -> SessionCredential {
        let invalid = TetherError(.unauthenticated, "the session credential is not valid; create a new session (tether-hub session create, or log in)")
        guard text.hasPrefix(prefix), text.utf8.count < 8192 else { throw invalid }
        let parts = text.dropFirst(prefix.count).split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, let mac = Base64URL.decode(String(parts[1])), mac.count == 32 else { throw invalid }
        guard HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: Data(parts[0].utf8), using: key) else { throw invalid }
        guard let payload = Base64URL.decode(String(parts[0])), let claims = try? JSONDecoder().decode(Claims.self, from: payload) else { throw invalid }
        return SessionCredential(claims: claims)
    }

    private init(claims: Claims) { self.claims = claims }
}

/// The credentials a hub has verified, so a person's every request is not another
/// HMAC and JSON decode: the signature of a given text under the hub's one key
/// verifies the same way each time. Expiry and revocation are still checked against
/// the clock and the store on every request. Bounded: emptied when full.
final class VerifiedCredentials: Sendable {
    private let verified = Mutex<[String: SessionCredential]>([:])
    private let limit: Int

    init(limit: Int = 10_000) { self.limit = limit }

    func verify(_ text: String, key: SymmetricKey) throws -> SessionCredential {
        if let known = verified.withLock({ $0[text] }) { return known }
        let credential = try SessionCredential.verify(text, key: key)
        verified.withLock { table in
            if table.count >= limit { table.removeAll(keepingCapacity: true) }
            table[text] = credential
        }
        return credential
    }
}
