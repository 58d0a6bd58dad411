import Foundation
import Hummingbird
import JWTKit
import NIOCore
import Shared
import Synchronization
import TestSupport
import Testing
@testable import TetherHub

/// TOTP against RFC 6238's own vectors, and ID-token validation against a provider
/// whose keys the test holds, so every refusal can be made on purpose.
@Suite struct TOTPTests {
    /// RFC 6238 Appendix B (SHA-1 secret "12345678901234567890"), last six digits.
    @Test func codesMatchTheRFCVectors() {
        let totp = TOTP(secret: Array("12345678901234567890".utf8))
        let vectors: [(TimeInterval, String)] = [(59, "287082"), (1_111_111_109, "081804"), (1_111_111_111, "050471"),
                                                 (1_234_567_890, "005924"), (2_000_000_000, "279037"), (20_000_000_000, "353130")]
        for (time, code) in vectors { #expect(totp.code(at: Date(timeIntervalSince1970: time)) == code, "at \(time)") }
    }

    @Test func aCodeWorksOnceAndOnlyNearItsTime() {
        let totp = TOTP.generate()
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let step = TOTP.step(at: now)
        #expect(totp.match(totp.code(at: now), at: now, after: nil) == step)
        // One step either side is accepted (clock skew, typing time); two are not.
        #expect(totp.match(totp.code(step: step - 1), at: now, after: nil) == step - 1)
        #expect(totp.match(totp.code(step: step + 1), at: now, after: nil) == step + 1)
        #expect(totp.match(totp.code(step: step - 2), at: now, after: nil) == nil)
        // Once a step was used, neither it nor an earlier one works again.
        #expect(totp.match(totp.code(at: now), at: now, after: step) == nil)
        #expect(totp.match(totp.code(step: step - 1), at: now, after: step) == nil)
        #expect(totp.match(totp.code(step: step + 1), at: now, after: step) == step + 1)
        for bad in ["", "12345", "1234567", "abcdef", "１２３４５６"] { #expect(totp.match(bad, at: now, after: nil) == nil, "\(bad)") }
    }

    @Test func enrollmentURIsCarryTheSecretInBase32() throws {
        #expect(Base32.encode(Array("Hello!".utf8) + [0xde, 0xad, 0xbe, 0xef]) == "JBSWY3DPEHPK3PXP")
        #expect(Base32.decode("JBSWY3DPEHPK3PXP") == Array("Hello!".utf8) + [0xde, 0xad, 0xbe, 0xef])
        #expect(Base32.decode("not base32!") == nil)
        let totp = TOTP.generate()
        let uri = totp.uri(issuer: "Tether", account: "alice@example.com")
        #expect(uri.hasPrefix("otpauth://totp/Tether:alice@example.com?secret="))
        let secret = try #require(URLComponents(string: uri)?.queryItems?.first { $0.name == "secret" }?.value)
        #expect(Base32.decode(secret) == totp.secret)
        #expect(uri.contains("&digits=6&period=30"))
    }
}

/// A provider the test controls: discovery and a key set served on loopback, and
/// ID tokens signed with its keys (or others) carrying whatever claims a test needs.
final class KeyedTestProvider: Sendable {
    /// What the provider serves, shared with its routes.
    final class State: Sendable {
        let published = Mutex<Data>(Data(#"{"keys":[]}"#.utf8))
        let jwksRequests = Atomic<Int>(0)
    }

    let signing = JWTKeyCollection()
    let state: State
    let port: Int
    private let task: Task<Void, any Error>
    var issuer: String { "http://127.0.0.1:\(port)" }
    var keyFetches: Int { state.jwksRequests.load(ordering: .relaxed) }

    static func start() async throws -> KeyedTestProvider {
        let bound = AsyncValue<Int>()
        let state = State()
        let router = Router()
        router.get("/.well-known/openid-configuration") { request, _ -> Response in
            let host = request.head.authority ?? "127.0.0.1"
            let body = #"{"issuer":"http://\#(host)","authorization_endpoint":"http://\#(host)/authorize","token_endpoint":"http://\#(host)/token","jwks_uri":"http://\#(host)/jwks"}"#
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        router.get("/jwks") { _, _ -> Response in
            state.jwksRequests.add(1, ordering: .relaxed)
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(data: state.published.withLock { $0 })))
        }
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { bound.set($0.localAddress?.port ?? 0) }, logger: testLogger)
        let task = Task { try await app.runService() }
        return KeyedTestProvider(port: await bound.value, task: task, state: state)
    }

    private init(port: Int, task: Task<Void, any Error>, state: State) {
        self.port = port
        self.task = task
        self.state = state
    }

    func stop() { task.cancel() }

    /// Makes a new P-256 key under `kid` and publishes it alone: the old ones retire.
    @discardableResult
    func rotate(to kid: String) async throws -> ES256PrivateKey {
        let key = ES256PrivateKey()
        await signing.add(ecdsa: key, kid: JWKIdentifier(string: kid))
        let (x, y) = try #require(key.publicKey.parameters)
        let entry: [String: String] = ["kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"]
        let data = try JSONSerialization.data(withJSONObject: ["keys": [entry]])
        state.published.withLock { $0 = data }
        return key
    }

    struct Claims: JWTPayload {
        var iss: String
        var aud: [String]
        var sub: String
        var exp: Int
        var iat: Int
        var nbf: Int?
        var nonce: String?
        var email: String?
        var groups: [String]?
        var amr: [String]?
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    func claims(now: Date, nonce: String = "n-1") -> Claims {
        Claims(iss: issuer, aud: ["tether"], sub: "u-1", exp: Int(now.timeIntervalSince1970) + 300, iat: Int(now.timeIntervalSince1970),
               nonce: nonce, email: "alice@example.com", groups: ["developers", "sre"], amr: ["pwd"])
    }

    func sign(_ claims: Claims, kid: String) async throws -> String {
        try await signing.sign(claims, kid: JWKIdentifier(string: kid))
    }
}

@Suite(.serialized) struct IDTokenValidationTests {
    func provider(for idp: KeyedTestProvider, refetch: Duration = .seconds(10)) throws -> OIDCProvider {
        var settings = OIDCSettings(issuer: idp.issuer, clientID: "tether")
        settings.keyRefetchInterval = refetch
        return try OIDCProvider(settings: settings, logger: testLogger)
    }

    @Test func aGoodTokenNamesThePersonAndTheirGroups() async throws {
        let idp = try await KeyedTestProvider.start()
        defer { idp.stop() }
        try await idp.rotate(to: "k1")
        let oidc = try provider(for: idp)
        let now = Date()
        let identity = try await oidc.validate(idToken: try await idp.sign(idp.claims(now: now), kid: "k1"), nonce: "n-1", now: now)
        #expect(identity == OIDCIdentity(subject: "u-1", user: "alice@example.com", groups: ["developers", "sre"], methods: ["pwd"]))
    }

    @Test func refusesWrongAudienceIssuerExpiryNonceAndSignature() async throws {
        let idp = try await KeyedTestProvider.start()
        defer { idp.stop() }
        try await idp.rotate(to: "k1")
        let oidc = try provider(for: idp)
        let now = Date()
        func refused(_ claims: KeyedTestProvider.Claims, kid: String = "k1", nonce: String = "n-1", _ reason: String) async throws {
            let token = try await idp.sign(claims, kid: kid)
            do {
                _ = try await oidc.validate(idToken: token, nonce: nonce, now: now)
                Issue.record("accepted a token that should be refused for: \(reason)")
            } catch let error as TetherError {
                #expect(error.code == .unauthenticated)
                #expect(error.message.contains(reason), "\(error.message)")
            }
        }
        var claims = idp.claims(now: now)
        claims.aud = ["someone-else"]
        try await refused(claims, "meant for someone-else, not client tether")
        claims = idp.claims(now: now)
        claims.iss = "https://evil.example"
        try await refused(claims, "issued by https://evil.example")
        claims = idp.claims(now: now)
        claims.exp = Int(now.timeIntervalSince1970) - 120
        try await refused(claims, "it expired at")
        claims = idp.claims(now: now)
        claims.nbf = Int(now.timeIntervalSince1970) + 600
        try await refused(claims, "not valid before")
        claims = idp.claims(now: now)
        claims.iat = Int(now.timeIntervalSince1970) + 600
        try await refused(claims, "issued in the future")
        try await refused(idp.claims(now: now), nonce: "another-sign-in", "nonce is not the one this sign-in sent")
        claims = idp.claims(now: now)
        claims.email = nil
        try await refused(claims, "no email claim")
        // Signed by a key the provider does not publish under that id: a forgery.
        let forger = JWTKeyCollection()
        await forger.add(ecdsa: ES256PrivateKey(), kid: JWKIdentifier(string: "k1"))
        let forged = try await forger.sign(idp.claims(now: now), kid: JWKIdentifier(string: "k1"))
        await #expect(throws: TetherError.self) { _ = try await oidc.validate(idToken: forged, nonce: "n-1", now: now) }
        // A token whose payload was changed after signing.
        let good = try await idp.sign(idp.claims(now: now), kid: "k1").split(separator: ".")
        let altered = [String(good[0]), Base64URL.encode(Array(#"{"sub":"mallory"}"#.utf8)), String(good[2])].joined(separator: ".")
        await #expect(throws: TetherError.self) { _ = try await oidc.validate(idToken: altered, nonce: "n-1", now: now) }
        // "none" is never an algorithm.
        let unsigned = Base64URL.encode(Array(#"{"alg":"none"}"#.utf8)) + "." + String(good[1]) + "."
        do {
            _ = try await oidc.validate(idToken: unsigned, nonce: "n-1", now: now)
            Issue.record("accepted an unsigned token")
        } catch let error as TetherError {
            #expect(error.message.contains("algorithm none is not accepted"), "\(error.message)")
        }
    }

    @Test func followsKeyRotationAndRateLimitsRefetches() async throws {
        let idp = try await KeyedTestProvider.start()
        defer { idp.stop() }
        try await idp.rotate(to: "k1")
        let oidc = try provider(for: idp, refetch: .seconds(3600))
        let now = Date()
        func check(_ kid: String) async throws -> OIDCIdentity {
            try await oidc.validate(idToken: try await idp.sign(idp.claims(now: now), kid: kid), nonce: "n-1", now: now)
        }
        _ = try await check("k1")
        #expect(idp.keyFetches == 1)
        // The provider rotates (only k2 published now): a token under the new id
        // makes the hub fetch the keys again, and it verifies at once.
        try await idp.rotate(to: "k2")
        _ = try await check("k2")
        #expect(idp.keyFetches == 2)
        // The retired key: one refetch that does not help, then none for the interval.
        await #expect(throws: TetherError.self) { _ = try await check("k1") }
        #expect(idp.keyFetches == 3)
        for _ in 0..<5 { await #expect(throws: TetherError.self) { _ = try await check("k1") } }
        // A forgery under a published id does not fetch either.
        let forger = JWTKeyCollection()
        await forger.add(ecdsa: ES256PrivateKey(), kid: JWKIdentifier(string: "k2"))
        let forged = try await forger.sign(idp.claims(now: now), kid: JWKIdentifier(string: "k2"))
        await #expect(throws: TetherError.self) { _ = try await oidc.validate(idToken: forged, nonce: "n-1", now: now) }
        #expect(idp.keyFetches == 3)
        // The current key still works.
        #expect(try await check("k2").user == "alice@example.com")
    }

    @Test func aProviderThatIsDownGivesAClearError() async throws {
        let closed = try ReservedPort()
        let oidc = try OIDCProvider(settings: OIDCSettings(issuer: "http://127.0.0.1:\(closed.port)", clientID: "tether"), logger: testLogger)
        do {
            _ = try await oidc.authorizationURL(state: "s", nonce: "n", codeChallenge: "c", redirectURI: "http://127.0.0.1:1/callback")
            Issue.record("a sign-in started with the provider down")
        } catch let error as TetherError {
            #expect(error.code == .unavailable)
            #expect(error.message.contains("the identity provider at http://127.0.0.1:\(closed.port) cannot be reached (discovery)"), "\(error.message)")
        }
        #expect(throws: TetherError.self) { try OIDCProvider(settings: OIDCSettings(issuer: "http://idp.example", clientID: "t"), logger: testLogger) }
    }
}
