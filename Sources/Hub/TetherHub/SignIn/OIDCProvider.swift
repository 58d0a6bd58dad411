import AsyncHTTPClient
import Crypto
import Foundation
import HubStore
import JWTKit
import Logging
import NIOCore
import NIOFoundationCompat
import NIOSSL
import Shared
import Synchronization

/// How the hub signs people in with the company's identity provider
/// (`serve --oidc-*`).
struct OIDCSettings: Sendable {
    /// The issuer URL; its `/.well-known/openid-configuration` is the discovery document.
    var issuer: String
    var clientID: String
    /// The confidential client's secret (`--oidc-client-secret-file`); nil: a public
    /// client, which PKCE alone protects.
    var clientSecret: String?
    var usernameClaim = "email"
    var groupsClaim = "groups"
    var extraScopes: [String] = []
    /// Accept a second factor the provider reports in `amr` instead of the hub's TOTP.
    var trustAMR = false
    /// An unknown key id, or a signature no cached key verifies, refetches the keys
    /// (that is how key rotation is followed); a refetch that did not help blocks
    /// further ones for this long, so bad tokens cannot make the hub hammer the provider.
    var keyRefetchInterval: Duration = .seconds(10)
    /// Accepted difference between the provider's clock and the hub's.
    var clockSkew: TimeInterval = 60

    /// `amr` values (RFC 8176) that stand for a second factor.
    static let secondFactorMethods: Set<String> = ["mfa", "otp", "hwk", "swk", "sc", "fpt", "face", "iris", "retina", "vbm"]
}

/// What a validated ID token says about the person.
struct OIDCIdentity: Sendable, Equatable {
    var subject: String
    /// The username claim's value: the person's name at the hub.
    var user: String
    var groups: [String]
    /// Authentication methods the provider reports (`amr`).
    var methods: [String]
}

/// The identity provider as the hub uses it: discovery and keys fetched and
/// cached, the authorization-code exchange, and ID-token validation. The provider
/// being down fails a login with a clear error and touches nothing else.
final class OIDCProvider: Sendable {
    struct Discovery: Sendable {
        var issuer: String
        var authorizationEndpoint: String
        var tokenEndpoint: String
        var jwksURI: String
    }

    private struct Keys: Sendable {
        var collection: JWTKeyCollection
        var ids: Set<String>
        var fetchedAt: ContinuousClock.Instant
        var refetchBlockedUntil: ContinuousClock.Instant?
    }

    let settings: OIDCSettings
    private let logger: Logger
    private let discovered = Mutex<Discovery?>(nil)
    private let keys = Mutex<Keys?>(nil)
    /// How many times the key set was fetched (tests check the rate limit by it).
    let keyFetches = Atomic<Int>(0)

    static let allowedAlgorithms: Set<String> = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]

    init(settings: OIDCSettings, logger: Logger) throws {
        guard let url = URL(string: settings.issuer), let scheme = url.scheme, url.host != nil else {
            throw TetherError(.invalidArgument, "--oidc-issuer \(settings.issuer) is not a URL")
        }
        guard scheme == "https" || (scheme == "http" && Self.isLoopback(url.host ?? "")) else {
            throw TetherError(.invalidArgument, "--oidc-issuer must be https (plain http only on loopback, for testing): \(settings.issuer)")
        }
        guard !settings.clientID.isEmpty else { throw TetherError(.invalidArgument, "--oidc-client-id must not be empty") }
        var settings = settings
        settings.issuer = settings.issuer.hasSuffix("/") ? String(settings.issuer.dropLast()) : settings.issuer
        self.settings = settings
        self.logger = logger
    }

    static func isLoopback(_ host: String) -> Bool { host == "127.0.0.1" || host == "localhost" || host == "::1" || host == "[::1]" }

    var scopes: String { (["openid", "email", "profile"] + settings.extraScopes).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }.joined(separator: " ") }

    // MARK: Talking to the provider

    private func unavailable(_ what: String, _ error: any Error) -> TetherError {
        TetherError(.unavailable, "the identity provider at \(settings.issuer) cannot be reached (\(what)): \(error); try again when it is back")
    }

    /// One HTTP exchange with the provider: TLS 1.2+, 5 s (a provider that is down
    /// fails the sign-in quickly), a 1 MiB answer at most.
    private func exchange(_ request: HTTPClientRequest, what: String) async throws -> (status: UInt, body: Data) {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls, redirectConfiguration: .disallow))
        do {
            let response = try await client.execute(request, timeout: .seconds(5))
            let body = Data(buffer: try await response.body.collect(upTo: 1 << 20))
            try await client.shutdown()
            return (response.status.code, body)
        } catch {
            try? await client.shutdown()
            throw unavailable(what, error)
        }
    }

    private func json(_ data: Data, what: String) throws -> [String: Any] {
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw TetherError(.unavailable, "the identity provider at \(settings.issuer) sent a \(what) that is not a JSON object")
        }
        return object
    }

    /// The discovery document, fetched once (and again after a failure).
    func discovery() async throws -> Discovery {
        if let cached = discovered.withLock({ $0 }) { return cached }
        let (status, body) = try await exchange(HTTPClientRequest(url: settings.issuer + "/.well-known/openid-configuration"), what: "discovery")
        guard status == 200 else {
            throw TetherError(.unavailable, "the identity provider at \(settings.issuer) answered \(status) for its discovery document")
        }
        let document = try json(body, what: "discovery document")
        guard let issuer = document["issuer"] as? String, let authorize = document["authorization_endpoint"] as? String,
              let token = document["token_endpoint"] as? String, let jwks = document["jwks_uri"] as? String else {
            throw TetherError(.unavailable, "the discovery document of \(settings.issuer) lacks issuer, authorization_endpoint, token_endpoint or jwks_uri")
        }
        guard issuer.trimmingSuffix("/") == settings.issuer else {
            throw TetherError(.unavailable, "the discovery document at \(settings.issuer) names another issuer (\(issuer)); check --oidc-issuer")
        }
        let discovery = Discovery(issuer: issuer, authorizationEndpoint: authorize, tokenEndpoint: token, jwksURI: jwks)
        discovered.withLock { $0 = discovery }
        return discovery
    }

    /// The cached key set; fetched when there is none, or on `refresh` unless a
    /// refetch that did not help was made within the refetch interval.
    private func currentKeys(refresh: Bool) async throws -> Keys {
        let now = ContinuousClock.now
        if let cached = keys.withLock({ $0 }) {
            if !refresh { return cached }
            if let blocked = cached.refetchBlockedUntil, now < blocked { return cached }
        }
        let discovery = try await discovery()
        let (status, body) = try await exchange(HTTPClientRequest(url: discovery.jwksURI), what: "signing keys")
        keyFetches.add(1, ordering: .relaxed)
        guard status == 200 else { throw TetherError(.unavailable, "the identity provider answered \(status) for its signing keys (\(discovery.jwksURI))") }
        let document = try json(body, what: "key set")
        let collection = JWTKeyCollection()
        var ids = Set<String>()
        for (index, entry) in (document["keys"] as? [[String: Any]] ?? []).enumerated() {
            // Keys for other uses (encryption) and kinds jwt-kit does not know are skipped.
            if let use = entry["use"] as? String, use != "sig" { continue }
            guard let data = try? JSONSerialization.data(withJSONObject: entry), var jwk = try? JSONDecoder().decode(JWK.self, from: data) else { continue }
            let id = jwk.keyIdentifier?.string ?? "tether-unnamed-\(index)"
            jwk.keyIdentifier = JWKIdentifier(string: id)
            do {
                try await collection.add(jwk: jwk)
                ids.insert(id)
            } catch {
                logger.warning("identity provider key skipped", metadata: ["kid": "\(id)", "error": "\(error)"])
            }
        }
        guard !ids.isEmpty else { throw TetherError(.unavailable, "the identity provider's key set (\(discovery.jwksURI)) has no signing key the hub can use") }
        let fresh = Keys(collection: collection, ids: ids, fetchedAt: now)
        keys.withLock { $0 = fresh }
        logger.info("identity provider keys fetched", metadata: ["keys": "\(ids.count)"])
        return fresh
    }

    private func blockRefetches() {
        let until = ContinuousClock.now + settings.keyRefetchInterval
        keys.withLock { $0?.refetchBlockedUntil = until }
    }

    /// The URL that starts a sign-in at the provider (authorization code with PKCE).
    func authorizationURL(state: String, nonce: String, codeChallenge: String, redirectURI: String) async throws -> String {
        let discovery = try await discovery()
        var components = URLComponents(string: discovery.authorizationEndpoint)
        let existing = components?.queryItems ?? []
        components?.queryItems = existing + [
            URLQueryItem(name: "response_type", value: "code"), URLQueryItem(name: "client_id", value: settings.clientID),
            URLQueryItem(name: "redirect_uri", value: redirectURI), URLQueryItem(name: "scope", value: scopes),
            URLQueryItem(name: "state", value: state), URLQueryItem(name: "nonce", value: nonce),
            URLQueryItem(name: "code_challenge", value: codeChallenge), URLQueryItem(name: "code_challenge_method", value: "S256"),
        ]
        // `+` in a query means a space to some servers: escape it.
        guard let url = components?.url?.absoluteString.replacingOccurrences(of: "+", with: "%2B") else {
            throw TetherError(.unavailable, "the provider's authorization endpoint \(discovery.authorizationEndpoint) is not a URL")
        }
        return url
    }

    /// Trades an authorization code for the provider's ID token.
    func redeem(code: String, verifier: String, redirectURI: String) async throws -> String {
        let discovery = try await discovery()
        var form = URLComponents()
        form.queryItems = [
            URLQueryItem(name: "grant_type", value: "authorization_code"), URLQueryItem(name: "code", value: code),
            URLQueryItem(name: "redirect_uri", value: redirectURI), URLQueryItem(name: "code_verifier", value: verifier),
        ] + (settings.clientSecret == nil ? [URLQueryItem(name: "client_id", value: settings.clientID)] : [])
        var request = HTTPClientRequest(url: discovery.tokenEndpoint)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        request.headers.add(name: "Accept", value: "application/json")
        if let secret = settings.clientSecret {
            let pair = Self.formEscape(settings.clientID) + ":" + Self.formEscape(secret)
            request.headers.add(name: "Authorization", value: "Basic " + Data(pair.utf8).base64EncodedString())
        }
        let body = (form.percentEncodedQuery ?? "").replacingOccurrences(of: "+", with: "%2B")
        request.body = .bytes(ByteBuffer(string: body))
        let (status, data) = try await exchange(request, what: "code exchange")
        let answer = (try? json(data, what: "token response")) ?? [:]
        guard status == 200 else {
            let reason = [answer["error"] as? String, answer["error_description"] as? String].compactMap { $0 }.joined(separator: ": ")
            throw TetherError(.unauthenticated, "the identity provider refused the sign-in code (\(status)\(reason.isEmpty ? "" : ", \(reason)")); sign in again")
        }
        guard let idToken = answer["id_token"] as? String else {
            throw TetherError(.unauthenticated, "the identity provider's token response has no id_token (is the openid scope allowed for client \(settings.clientID)?)")
        }
        return idToken
    }

    /// RFC 6749 §2.3.1: client id and secret are form-encoded before Basic auth.
    static func formEscape(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? text
    }

    // MARK: ID tokens

    private struct SignatureOnly: JWTPayload {
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    /// Checks an ID token: signature by a key of the provider (refetching the keys,
    /// rate-limited, for an unknown key id or a signature the cached keys do not
    /// verify), then `iss`, `aud` (and `azp`), `exp`, `nbf`, `iat` with the allowed
    /// skew, and `nonce`. Every refusal is `unauthenticated` with the reason.
    func validate(idToken: String, nonce: String, now: Date) async throws -> OIDCIdentity {
        func refuse(_ reason: String) -> TetherError { TetherError(.unauthenticated, "the identity provider's ID token was refused: \(reason)") }
        let parts = idToken.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerData = Base64URL.decode(String(parts[0])),
              let header = try? JSONSerialization.jsonObject(with: Data(headerData)) as? [String: Any],
              let payloadData = Base64URL.decode(String(parts[1])),
              let claims = try? JSONSerialization.jsonObject(with: Data(payloadData)) as? [String: Any] else {
            throw refuse("not a signed JWT")
        }
        guard let alg = header["alg"] as? String, Self.allowedAlgorithms.contains(alg) else {
            throw refuse("signature algorithm \(header["alg"] ?? "none") is not accepted")
        }
        let kid = header["kid"] as? String
        var keys = try await currentKeys(refresh: false)
        if let kid, !keys.ids.contains(kid) {
            keys = try await currentKeys(refresh: true)
            guard keys.ids.contains(kid) else {
                blockRefetches()
                throw refuse("signed with key \(kid), which the provider does not publish")
            }
        }
        do {
            _ = try await keys.collection.verify(idToken, as: SignatureOnly.self, iteratingKeys: kid == nil)
        } catch {
            // A key may have been rotated under an id (or tokens carry none): look once more.
            let fresh = try await currentKeys(refresh: true)
            guard fresh.fetchedAt != keys.fetchedAt,
                  (try? await fresh.collection.verify(idToken, as: SignatureOnly.self, iteratingKeys: kid == nil)) != nil else {
                blockRefetches()
                throw refuse("the signature does not verify with the provider's keys")
            }
        }
        guard let issuer = claims["iss"] as? String, issuer.trimmingSuffix("/") == settings.issuer else {
            throw refuse("issued by \(claims["iss"] ?? "nobody"), not \(settings.issuer)")
        }
        let audiences: [String] = (claims["aud"] as? String).map { [$0] } ?? (claims["aud"] as? [String] ?? [])
        guard audiences.contains(settings.clientID) else {
            throw refuse("meant for \(audiences.isEmpty ? "no audience" : audiences.joined(separator: ", ")), not client \(settings.clientID)")
        }
        if audiences.count > 1 || claims["azp"] != nil, let azp = claims["azp"] as? String, azp != settings.clientID {
            throw refuse("authorized party \(azp) is not client \(settings.clientID)")
        }
        let time = now.timeIntervalSince1970, skew = settings.clockSkew
        guard let exp = (claims["exp"] as? NSNumber)?.doubleValue else { throw refuse("it has no expiry (exp)") }
        guard exp + skew > time else { throw refuse("it expired at \(AuditTime.format(Date(timeIntervalSince1970: exp)))") }
        if let nbf = (claims["nbf"] as? NSNumber)?.doubleValue, nbf - skew > time {
            throw refuse("it is not valid before \(AuditTime.format(Date(timeIntervalSince1970: nbf)))")
        }
        guard let iat = (claims["iat"] as? NSNumber)?.doubleValue else { throw refuse("it has no issue time (iat)") }
        guard iat - skew <= time else { throw refuse("it was issued in the future (\(AuditTime.format(Date(timeIntervalSince1970: iat))))") }
        guard let tokenNonce = claims["nonce"] as? String, tokenNonce == nonce else { throw refuse("its nonce is not the one this sign-in sent") }
        guard let subject = claims["sub"] as? String, !subject.isEmpty else { throw refuse("it has no subject (sub)") }
        guard let user = claims[settings.usernameClaim] as? String, !user.isEmpty else {
            throw refuse("it has no \(settings.usernameClaim) claim for the username (--oidc-username-claim)")
        }
        if settings.usernameClaim == "email", let verified = claims["email_verified"] as? Bool, !verified {
            throw refuse("its email \(user) is not verified at the provider")
        }
        let groups = (claims[settings.groupsClaim] as? [Any])?.compactMap { $0 as? String } ?? (claims[settings.groupsClaim] as? String).map { [$0] } ?? []
        let methods = (claims["amr"] as? [Any])?.compactMap { $0 as? String } ?? []
        return OIDCIdentity(subject: subject, user: user, groups: groups, methods: methods)
    }
}

extension String {
    func trimmingSuffix(_ suffix: String) -> String { hasSuffix(suffix) ? String(dropLast(suffix.count)) : self }
}
