import AsyncHTTPClient
import Foundation
import KubeEmulator
import NIOCore
import NIOFoundationCompat
import NIOSSL
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherAgent
@testable import TetherHub

/// Sign-in end to end: a real OpenID Connect provider (oidc-provider-mock) on
/// loopback, the hub, an agent and the API emulator, and the real CLI and kubectl.
@Suite(.serialized) struct SignInFlowTests {
    struct Fixture {
        let dir: TemporaryDirectory
        let provider: OIDCTestProvider
        let cluster: EmulatedCluster
        let caFile: String
        /// False for the suite's shared provider, which outlives each test.
        var ownsProvider = false

        /// One provider process for the suite's tests (each signs in other people):
        /// a Python start is a good part of a second of CPU on a 2-core machine.
        static let sharedProvider = Task<OIDCTestProvider, any Error> { try await OIDCTestProvider.start() }

        static func start(_ dir: TemporaryDirectory, provider: OIDCTestProvider? = nil, trustAMR: Bool = false) async throws -> Fixture {
            let owned = provider != nil
            let provider = if let provider { provider } else { try await sharedProvider.value }
            var oidc = OIDCSettings(issuer: provider.issuer, clientID: "tether")
            oidc.clientSecret = "tether-test-secret"
            oidc.trustAMR = trustAMR
            let cluster = try await EmulatedCluster.start(dir, roles: EmulatedCluster.prodView, oidc: oidc)
            let caFile = dir.sub("hub-ca.pem")
            try (cluster.endpoint.caCertificate ?? "").write(toFile: caFile, atomically: true, encoding: .utf8)
            return Fixture(dir: dir, provider: provider, cluster: cluster, caFile: caFile, ownsProvider: owned)
        }

        var emulator: KubeEmulator { cluster.emulator }
        var hub: TestHub { cluster.hub }
        var endpoint: AccessEndpoint { cluster.endpoint }

        func stop() async throws {
            try await cluster.stop()
            if ownsProvider { await provider.stop() }
        }

        var client: AccessClient { AccessClient(hub: endpoint.url, caCertificate: endpoint.caCertificate) }

        /// `tether-hub ARGS` as the person (their HOME holds their sessions).
        func cli(_ args: [String], input: String? = nil) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await runCommand(try ChildProcess.binary("tether-hub"), args, environment: ["HOME": dir.path], input: input)
        }

        func kubectl(_ args: String...) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await runCommand(try Tools.kubectl(), ["--kubeconfig", dir.sub("kubeconfig"), "--request-timeout", "20s"] + args, environment: ["HOME": dir.path])
        }

        /// The person's just-in-time service accounts in the emulated cluster.
        func accounts(of user: String) -> [String] {
            emulator.objects(.serviceAccounts, namespace: "default").filter { $0[path: ["metadata", "annotations", "tether.dev/user"]]?.string == user }
                .compactMap { $0[path: ["metadata", "name"]]?.string }
        }

        /// Signs `sub` in through the JSON API (what the CLI does, without the CLI):
        /// the provider's redirect, then the hub's answer to it.
        func signIn(_ sub: String) async throws -> (answer: AccessProxy.CallbackAnswer, state: String, code: String) {
            let begun: AccessProxy.BeginAnswer = try await client.call(.POST, "/tether/v1/login", json: AccessProxy.BeginRequest(redirectURI: "http://127.0.0.1:9/callback"))
            let location = try await provider.authorize(begun.url, sub: sub)
            let items = URLComponents(string: location)?.queryItems ?? []
            let code = try #require(items.first { $0.name == "code" }?.value)
            #expect(items.first { $0.name == "state" }?.value == begun.state)
            let answer: AccessProxy.CallbackAnswer = try await client.call(.POST, "/tether/v1/login/callback", json: AccessProxy.CallbackRequest(state: begun.state, code: code))
            return (answer, begun.state, code)
        }

        func secondFactor(_ ticket: String, _ code: String) async throws -> AccessProxy.SessionGrant {
            try await client.call(.POST, "/tether/v1/login/code", json: AccessProxy.CodeRequest(ticket: ticket, code: code))
        }
    }

    static func secret(of uri: String) throws -> TOTP {
        let text = try #require(URLComponents(string: uri)?.queryItems?.first { $0.name == "secret" }?.value)
        return TOTP(secret: try #require(Base32.decode(text)))
    }

    @Test func loginKubectlAndLogoutFlushAccounts() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let fixture = try await Fixture.start(dir)
        try await fixture.provider.setUser("alice", claims: ["email": "alice@example.com", "groups": ["developers"]])

        // tether-hub login --no-browser: the URL is printed; the "browser" signs in at
        // the provider, which sends it to the CLI's loopback listener.
        let login = try ChildProcess(try ChildProcess.binary("tether-hub"),
                                     ["login", "--hub", fixture.endpoint.url, "--ca-file", fixture.caFile, "--no-browser"],
                                     environment: ["HOME": dir.path], interactive: true)
        try await login.waitForOutput(containing: "/oauth2/authorize?")
        let url = try #require(login.output.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.first { $0.hasPrefix("http://") })
        let back = try await fixture.provider.authorize(url, sub: "alice")
        #expect(back.hasPrefix("http://127.0.0.1:"))
        let landing = try await HTTPClient.shared.execute(HTTPClientRequest(url: back), timeout: .seconds(10))
        #expect(landing.status == .ok)
        // First sign-in: enroll an authenticator (QR code and URI), then a code from it.
        try await login.waitForOutput(containing: "Code from your authenticator app")
        #expect(login.output.contains("▀") || login.output.contains("█"), "no QR code drawn:\n\(login.output)")
        let uri = try #require(login.output.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.first { $0.hasPrefix("otpauth://") })
        let totp = try Self.secret(of: String(uri))
        try login.send("000000\n")  // a wrong code first: asked again, nothing lost
        try await login.waitForOutput(containing: "wrong or already used code; 4 more")
        let used = TOTP.step(at: Date())
        try login.send(totp.code(step: used) + "\n")
        #expect(await login.waitForExit() == 0, "\(login.output)")
        #expect(login.output.contains("Signed in as alice@example.com (sso+totp)"), "\(login.output)")
        var info = stat()
        let stored = dir.sub(".config/tether/hubs/127.0.0.1_\(try #require(URL(string: fixture.endpoint.url)?.port)).json")
        #expect(stat(stored, &info) == 0 && info.st_mode & 0o777 == 0o600, "\(stored)")

        // whoami, kubeconfig (an exec plugin, no secret in the file) and kubectl.
        let whoami = try await fixture.cli(["whoami", "--hub", fixture.endpoint.url])
        #expect(whoami.status == 0 && whoami.stdout.contains("alice@example.com") && whoami.stdout.contains("sso+totp"), "\(whoami.stderr)")
        let written = try await fixture.cli(["kubeconfig", "--hub", fixture.endpoint.url, "--output", dir.sub("kubeconfig")])
        #expect(written.status == 0, "\(written.stderr)")
        let kubeconfig = try String(contentsOfFile: dir.sub("kubeconfig"), encoding: .utf8)
        #expect(kubeconfig.contains("client.authentication.k8s.io/v1") && kubeconfig.contains("credential") && !kubeconfig.contains("tether-session.v1."))
        let got = try await fixture.kubectl("get", "configmaps", "-n", "default")
        #expect(got.status == 0, "\(got.stderr)")
        #expect(fixture.accounts(of: "alice@example.com").count == 1)
        // The secret is stored sealed (AES-GCM under otp.key), bound to the person.
        let record = try #require(try await fixture.hub.core.database.person("alice@example.com"))
        let sealed = try #require(record.otpSecret)
        #expect(sealed.range(of: Data(totp.secret)) == nil)
        #expect(try fixture.hub.core.openSecret(sealed, user: "alice@example.com") == totp.secret)
        #expect(throws: TetherError.self) { try fixture.hub.core.openSecret(sealed, user: "mallory@example.com") }
        let people = try await fixture.hub.core.personViews()
        #expect(people.map(\.name) == ["alice@example.com"] && people[0].secondFactor && people[0].groups == ["developers"] && people[0].liveSessions == 1)

        // The used code does not work again, at the next sign-in either.
        let again = try await fixture.signIn("alice")
        #expect(again.answer.enrollment == nil, "an enrolled person is not asked to enroll again")
        let ticket = try #require(again.answer.ticket)
        await #expect(throws: TetherError.self) { _ = try await fixture.secondFactor(ticket, totp.code(step: used)) }
        let second = try await fixture.secondFactor(ticket, totp.code(step: used + 1))
        #expect(second.method == "sso+totp")
        _ = try await fixture.hub.core.revokeSessions(id: second.session)

        // logout ends the session at the hub; the account leaves the cluster within 5 s.
        let logout = try await fixture.cli(["logout", "--hub", fixture.endpoint.url])
        #expect(logout.status == 0 && logout.stdout.contains("logged out"), "\(logout.stderr)")
        try await eventually(timeout: .seconds(5), "alice's account deleted") { fixture.accounts(of: "alice@example.com").isEmpty }
        let after = try await fixture.kubectl("get", "configmaps", "-n", "default")
        #expect(after.status != 0 && after.stderr.contains("tether-hub login --hub"), "\(after.stderr)")
        try await fixture.stop()
    }

    @Test func groupsAndRolesAreRecomputedAtEveryLogin() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let fixture = try await Fixture.start(dir)
        try await fixture.provider.setUser("bob", claims: ["email": "bob@example.com", "groups": ["developers"]])
        let first = try await fixture.signIn("bob")
        let totp = try Self.secret(of: try #require(first.answer.enrollment))
        let grant = try await fixture.secondFactor(try #require(first.answer.ticket), totp.code(at: Date()))
        try SessionFile(hub: fixture.endpoint.url, user: grant.user, credential: grant.credential, expiresAt: grant.expiresAt,
                        caCertificate: fixture.endpoint.caCertificate).write(to: dir.sub("bob.session"))
        let written = try await fixture.cli(["kubeconfig", "--session", dir.sub("bob.session"), "--output", dir.sub("kubeconfig")])
        #expect(written.status == 0, "\(written.stderr)")
        #expect(try await fixture.kubectl("get", "pods", "-n", "default").status == 0)
        let account = try #require(fixture.accounts(of: "bob@example.com").first)
        #expect(fixture.emulator.objects(.clusterRoleBindings).contains { $0[path: ["metadata", "name"]]?.string?.hasPrefix(account) == true })

        // Removed from the group at the provider: after his next sign-in, what the
        // group gave is gone from the cluster, for his older session too.
        try await fixture.provider.setUser("bob", claims: ["email": "bob@example.com", "groups": [String]()])
        let next = try await fixture.signIn("bob")
        _ = try await fixture.secondFactor(try #require(next.answer.ticket), totp.code(step: TOTP.step(at: Date()) + 1))
        try await eventually(timeout: .seconds(5), "bob's bindings removed") {
            !fixture.emulator.objects(.clusterRoleBindings).contains { $0[path: ["metadata", "name"]]?.string?.hasPrefix(account) == true }
        }
        let denied = try await fixture.kubectl("get", "pods", "-n", "default")
        #expect(denied.status != 0 && denied.stderr.contains("Forbidden"), "\(denied.stderr)")
        #expect(try await fixture.hub.core.personViews().first?.groups == [])
        try await fixture.stop()
    }

    @Test func refusesReplaysWrongCodesAndDisabledPeople() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let fixture = try await Fixture.start(dir)
        try await fixture.provider.setUser("carol", claims: ["email": "carol@example.com", "groups": ["developers"]])
        let first = try await fixture.signIn("carol")
        // The same redirect again (a replayed code): the hub finished that sign-in.
        do {
            let _: AccessProxy.CallbackAnswer = try await fixture.client.call(
                .POST, "/tether/v1/login/callback", json: AccessProxy.CallbackRequest(state: first.state, code: first.code))
            Issue.record("a replayed sign-in was accepted")
        } catch let error as TetherError {
            #expect(error.code == .unauthenticated && error.message.contains("already finished"), "\(error.message)")
        }
        // The same code under a sign-in of its own: the provider refuses a used code.
        let other: AccessProxy.BeginAnswer = try await fixture.client.call(
            .POST, "/tether/v1/login", json: AccessProxy.BeginRequest(redirectURI: "http://127.0.0.1:9/callback"))
        do {
            let _: AccessProxy.CallbackAnswer = try await fixture.client.call(
                .POST, "/tether/v1/login/callback", json: AccessProxy.CallbackRequest(state: other.state, code: first.code))
            Issue.record("a used authorization code was accepted")
        } catch let error as TetherError {
            #expect(error.code == .unauthenticated && error.message.contains("refused the sign-in code"), "\(error.message)")
        }
        // Five wrong codes lock her out for 15 minutes, audited; the right code then fails too.
        let ticket = try #require(first.answer.ticket)
        let totp = try Self.secret(of: try #require(first.answer.enrollment))
        for left in (1...4).reversed() {
            do {
                _ = try await fixture.secondFactor(ticket, "123456" == totp.code(at: Date()) ? "654321" : "123456")
            } catch let error as TetherError {
                #expect(error.message.contains("\(left) more before"), "\(error.message)")
            }
        }
        do {
            _ = try await fixture.secondFactor(ticket, "000001" == totp.code(at: Date()) ? "000002" : "000001")
            Issue.record("a fifth wrong code was accepted")
        } catch let error as TetherError {
            #expect(error.code == .permissionDenied && error.message.contains("locked out"), "\(error.message)")
        }
        let locked = try await fixture.hub.core.database.auditEvents(AuditQuery(cluster: "hub", user: "carol@example.com", resource: "secondfactor"))
        #expect(locked.contains { String(decoding: $0.event, as: UTF8.self).contains("locked out after 5 wrong codes") })
        await #expect(throws: TetherError.self) { _ = try await fixture.signIn("carol") }
        try await fixture.hub.core.enablePerson("carol@example.com")

        // A disabled person: sessions end, accounts leave the cluster within 2 s, sign-in refused.
        let retry = try await fixture.signIn("carol")
        let grant = try await fixture.secondFactor(try #require(retry.answer.ticket),
                                                   try Self.secret(of: try #require(retry.answer.enrollment)).code(at: Date()))
        try SessionFile(hub: fixture.endpoint.url, user: grant.user, credential: grant.credential, expiresAt: grant.expiresAt,
                        caCertificate: fixture.endpoint.caCertificate).write(to: dir.sub("carol.session"))
        #expect(try await fixture.cli(["kubeconfig", "--session", dir.sub("carol.session"), "--output", dir.sub("kubeconfig")]).status == 0)
        #expect(try await fixture.kubectl("get", "pods", "-n", "default").status == 0)
        #expect(fixture.accounts(of: "carol@example.com").count == 1)
        let credentials = ["--credentials", dir.sub("hub/admin-credentials.json")]
        let disabled = try await fixture.cli(["user", "disable", "carol@example.com"] + credentials)
        #expect(disabled.status == 0 && disabled.stdout.contains("1 session(s) ended"), "\(disabled.stderr)")
        try await eventually(timeout: .seconds(2), "carol's account flushed") { fixture.accounts(of: "carol@example.com").isEmpty }
        do {
            _ = try await fixture.signIn("carol")
            Issue.record("a disabled person signed in")
        } catch let error as TetherError {
            #expect(error.code == .permissionDenied && error.message.contains("disabled"), "\(error.message)")
        }
        let listed = try await fixture.cli(["user", "list", "--output", "json"] + credentials)
        let people = try JSONDecoder.tether.decode([PersonView].self, from: Data(listed.stdout.utf8))
        #expect(people.first { $0.name == "carol@example.com" }?.disabled == true)

        // Enabled again after a lost phone: reset-otp makes her enroll a new authenticator.
        #expect(try await fixture.cli(["user", "enable", "carol@example.com"] + credentials).status == 0)
        let reset = try await fixture.cli(["user", "reset-otp", "carol@example.com"] + credentials)
        #expect(reset.status == 0 && reset.stdout.contains("second factor reset"), "\(reset.stderr)")
        let fresh = try await fixture.signIn("carol")
        #expect(fresh.answer.enrollment != nil, "a reset person enrolls again")
        #expect(try await fixture.hub.core.personViews().first { $0.name == "carol@example.com" }?.secondFactor == false)
        try await fixture.stop()
    }

    @Test func keyRotationAndAProviderThatIsDown() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // Its own provider: this test stops and restarts it.
        let fixture = try await Fixture.start(dir, provider: try await OIDCTestProvider.start(), trustAMR: true)
        // With --oidc-trust-amr, a provider-reported second factor is enough.
        try await fixture.provider.setUser("dave", claims: ["email": "dave@example.com", "groups": ["developers"], "amr": ["pwd", "otp"]])
        let first = try await fixture.signIn("dave")
        let session = try #require(first.answer.session)
        #expect(session.method == "sso+amr")

        // The provider goes down in the middle of a sign-in: a clear error, and the
        // session made before still works.
        let begun: AccessProxy.BeginAnswer = try await fixture.client.call(
            .POST, "/tether/v1/login", json: AccessProxy.BeginRequest(redirectURI: "http://127.0.0.1:9/callback"))
        let back = try await fixture.provider.authorize(begun.url, sub: "dave")
        let code = try #require(URLComponents(string: back)?.queryItems?.first { $0.name == "code" }?.value)
        let port = fixture.provider.port
        await fixture.provider.stop()
        do {
            let _: AccessProxy.CallbackAnswer = try await fixture.client.call(
                .POST, "/tether/v1/login/callback", json: AccessProxy.CallbackRequest(state: begun.state, code: code))
            Issue.record("a sign-in finished with the provider down")
        } catch let error as TetherError {
            #expect(error.message.contains("cannot be reached (code exchange)"), "\(error.message)")
        }
        let me: AccessProxy.WhoAmI = try await fixture.client.call(.GET, "/tether/v1/whoami", bearer: session.credential)
        #expect(me.user == "dave@example.com")

        // It comes back with a new signing key (its tokens carry no key id): the hub
        // fetches the keys again when the cached one does not verify.
        let restarted = try await OIDCTestProvider.start(port: port)
        let rotated = Fixture(dir: fixture.dir, provider: restarted, cluster: fixture.cluster, caFile: fixture.caFile, ownsProvider: true)
        try await restarted.setUser("dave", claims: ["email": "dave@example.com", "groups": ["developers"], "amr": ["pwd", "otp"]])
        let afterRotation = try await rotated.signIn("dave")
        #expect(afterRotation.answer.session?.user == "dave@example.com")
        #expect(fixture.hub.core.oidc!.keyFetches.load(ordering: .relaxed) == 2)
        try await rotated.stop()
    }

    @Test func browserSignInSetsAGuardedCookie() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let fixture = try await Fixture.start(dir)
        try await fixture.provider.setUser("erin", claims: ["email": "erin@example.com", "groups": ["developers"]])
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array((fixture.endpoint.caCertificate ?? "").utf8)))
        let browser = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls, redirectConfiguration: .disallow))
        do {
            let start = try await browser.execute(HTTPClientRequest(url: fixture.endpoint.url + "/login"), timeout: .seconds(10))
            #expect(start.status == .found)
            let signInCookie = try #require(start.headers["Set-Cookie"].first { $0.hasPrefix("tether_signin=") })
            #expect(signInCookie.contains("HttpOnly") && signInCookie.contains("Secure") && signInCookie.contains("SameSite=Lax"))
            let back = try await fixture.provider.authorize(try #require(start.headers.first(name: "Location")), sub: "erin")
            #expect(back.hasPrefix(fixture.endpoint.url + "/callback?"))
            // Without the cookie the redirect is not this browser's sign-in.
            let stranger = try await browser.execute(HTTPClientRequest(url: back), timeout: .seconds(10))
            #expect(stranger.status == .badRequest)
            // That refused nothing for the real browser, which carries the cookie.
            var callback = HTTPClientRequest(url: back)
            callback.headers.add(name: "Cookie", value: String(signInCookie.prefix { $0 != ";" }))
            let form = try await browser.execute(callback, timeout: .seconds(10))
            #expect(form.status == .ok)
            #expect(form.headers.first(name: "Content-Security-Policy")?.contains("default-src 'none'") == true)
            let page = String(buffer: try await form.body.collect(upTo: 1 << 20))
            #expect(page.contains("<svg") && page.contains("otpauth://totp/"), "\(page.prefix(400))")
            let ticket = try #require(page.components(separatedBy: "name=\"ticket\" value=\"").dropFirst().first?.prefix { $0 != "\"" })
            let uri = try #require(page.components(separatedBy: "<code>").dropFirst().first?.components(separatedBy: "</code>").first)
            let code = try Self.secret(of: uri.replacingOccurrences(of: "&amp;", with: "&")).code(at: Date())
            // A wrong code: the form again, still showing what to enroll.
            var wrong = HTTPClientRequest(url: fixture.endpoint.url + "/login/code")
            wrong.method = .POST
            wrong.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
            wrong.body = .bytes(ByteBuffer(string: "ticket=\(ticket)&code=\(code == "000000" ? "111111" : "000000")"))
            let retry = try await browser.execute(wrong, timeout: .seconds(10))
            #expect(retry.status == .unauthorized)
            let retryPage = String(buffer: try await retry.body.collect(upTo: 1 << 20))
            #expect(retryPage.contains("wrong or already used code") && retryPage.contains("<svg") && retryPage.contains("name=\"ticket\""), "\(retryPage.prefix(400))")
            var submit = HTTPClientRequest(url: fixture.endpoint.url + "/login/code")
            submit.method = .POST
            submit.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
            submit.body = .bytes(ByteBuffer(string: "ticket=\(ticket)&code=\(code)"))
            let done = try await browser.execute(submit, timeout: .seconds(10))
            #expect(done.status == .seeOther)
            let sessionCookie = try #require(done.headers["Set-Cookie"].first { $0.hasPrefix("tether_session=") })
            #expect(sessionCookie.contains("HttpOnly") && sessionCookie.contains("Secure") && sessionCookie.contains("SameSite=Lax"))
            #expect(done.headers.first(name: "Location") == "/console/")
            var root = HTTPClientRequest(url: fixture.endpoint.url + "/")
            root.headers.add(name: "Cookie", value: String(sessionCookie.prefix { $0 != ";" }))
            #expect(try await browser.execute(root, timeout: .seconds(10)).headers.first(name: "Location") == "/console/")
            var home = HTTPClientRequest(url: fixture.endpoint.url + "/console/")
            home.headers.add(name: "Cookie", value: String(sessionCookie.prefix { $0 != ";" }))
            let signedIn = String(buffer: try await browser.execute(home, timeout: .seconds(10)).body.collect(upTo: 1 << 20))
            #expect(signedIn.contains("Signed in as <strong id=\"whoami\">erin@example.com</strong>"), "\(signedIn.prefix(400))")
            // A cookie never reaches a cluster path (no cross-site kubectl by cookie).
            var viaCookie = HTTPClientRequest(url: fixture.endpoint.url + "/clusters/prod-eu/api/v1/namespaces")
            viaCookie.headers.add(name: "Cookie", value: String(sessionCookie.prefix { $0 != ";" }))
            #expect(try await browser.execute(viaCookie, timeout: .seconds(10)).status == .unauthorized)
            // The CLI's logout takes the bearer only, never the cookie.
            var byCookie = HTTPClientRequest(url: fixture.endpoint.url + "/tether/v1/logout")
            byCookie.method = .POST
            byCookie.headers.add(name: "Cookie", value: String(sessionCookie.prefix { $0 != ";" }))
            #expect(try await browser.execute(byCookie, timeout: .seconds(10)).status == .unauthorized)
            // Sign out: only with the page's CSRF token; then the session is over.
            let csrf = try #require(signedIn.components(separatedBy: "name=\"csrf\" value=\"").dropFirst().first?.prefix { $0 != "\"" })
            func logout(_ token: String) async throws -> HTTPClientResponse {
                var request = HTTPClientRequest(url: fixture.endpoint.url + "/logout")
                request.method = .POST
                request.headers.add(name: "Cookie", value: String(sessionCookie.prefix { $0 != ";" }))
                request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
                request.body = .bytes(ByteBuffer(string: "csrf=\(token)"))
                return try await browser.execute(request, timeout: .seconds(10))
            }
            #expect(try await logout("forged").status == .forbidden)
            #expect(try await fixture.hub.core.sessionViews(includeEnded: false).contains { $0.user == "erin@example.com" })
            let out = try await logout(String(csrf))
            #expect(out.status == .ok && out.headers["Set-Cookie"].contains { $0.hasPrefix("tether_session=;") })
            #expect(try await fixture.hub.core.sessionViews(includeEnded: false).allSatisfy { $0.user != "erin@example.com" })
            try await browser.shutdown()
        } catch {
            try? await browser.shutdown()
            throw error
        }
        try await fixture.stop()
    }

    @Test func anEndedSessionTellsKubectlToLogInAgain() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.sub("old.session")
        try SessionFile(hub: "https://hub.example:7443", user: "alice", credential: "tether-session.v1.x.y",
                        expiresAt: Date().addingTimeInterval(-60), caCertificate: nil).write(to: file)
        let expired = try await runCommand(try ChildProcess.binary("tether-hub"), ["credential", "--session", file], environment: ["HOME": dir.path])
        #expect(expired.status != 0 && expired.stdout.isEmpty)
        #expect(expired.stderr.contains("your session at https://hub.example:7443 expired") && expired.stderr.contains("tether-hub login --hub https://hub.example:7443"),
                "\(expired.stderr)")
        try SessionFile(hub: "https://hub.example:7443", user: "alice", credential: "tether-session.v1.x.y",
                        expiresAt: Date().addingTimeInterval(600), caCertificate: nil).write(to: file)
        let live = try await runCommand(try ChildProcess.binary("tether-hub"), ["credential", "--session", file], environment: ["HOME": dir.path])
        let credential = try #require(try JSONSerialization.jsonObject(with: Data(live.stdout.utf8)) as? [String: Any], "\(live.stderr)")
        #expect(credential["apiVersion"] as? String == "client.authentication.k8s.io/v1" && credential["kind"] as? String == "ExecCredential")
        let status = try #require(credential["status"] as? [String: Any])
        #expect(status["token"] as? String == "tether-session.v1.x.y" && (status["expirationTimestamp"] as? String)?.hasSuffix("Z") == true)
        let nobody = try await runCommand(try ChildProcess.binary("tether-hub"), ["credential"], environment: ["HOME": dir.path, "TETHER_SESSION_FILE": ""])
        #expect(nobody.status != 0 && nobody.stderr.contains("you are not logged in; run: tether-hub login --hub"), "\(nobody.stderr)")
    }
}
