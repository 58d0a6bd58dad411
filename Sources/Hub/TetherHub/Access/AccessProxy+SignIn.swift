import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import HubStore
import NIOCore
import Shared

/// Sign-in on the access listener. The CLI's flow is JSON under `/tether/v1/login`
/// (`tether-hub login` listens on a loopback port for the provider's redirect, as
/// kubelogin does); the browser's is `/login`, `/callback`, `/login/code` and
/// `/logout`, with the sign-in bound to the browser by an HttpOnly, Secure,
/// SameSite cookie.
extension AccessProxy {
    struct BeginRequest: Codable { var redirectURI: String }
    struct BeginAnswer: Codable { var state: String; var url: String }
    struct CallbackRequest: Codable { var state: String; var code: String }
    struct CodeRequest: Codable { var ticket: String; var code: String }

    /// A session handed to the person who signed in (shown once).
    struct SessionGrant: Codable, Sendable {
        var user: String
        var session: String
        var method: String
        var credential: String
        var expiresAt: Date
        var caCertificate: String?
    }

    /// What the provider's redirect leads to: the second factor owed, or a session.
    struct CallbackAnswer: Codable, Sendable {
        var user: String
        var ticket: String?
        /// `otpauth://` URI of a new authenticator to enroll (first sign-in).
        var enrollment: String?
        var session: SessionGrant?
    }

    static let signInCookie = "tether_signin"
    static let sessionCookie = "tether_session"

    /// Only a loopback redirect for the CLI: the code must come back to the
    /// person's own machine, never to a server someone else named.
    static func checkLoopbackRedirect(_ uri: String) throws {
        guard let url = URL(string: uri), url.scheme == "http", let host = url.host, OIDCProvider.isLoopback(host), url.port != nil else {
            throw TetherError(.invalidArgument, "redirectURI must be http://127.0.0.1:PORT/… (the CLI's loopback listener)")
        }
    }

    static func grant(_ session: SessionRecord, _ credential: String, core: HubCore) async -> SessionGrant {
        SessionGrant(user: session.user, session: session.id, method: session.method, credential: credential, expiresAt: session.expiresAt,
                     caCertificate: await core.accessEndpoint.value?.caCertificate)
    }

    static func addSignInRoutes(to router: Router<BasicRequestContext>, core: HubCore) {
        // The CLI's flow.
        router.post("/tether/v1/login") { request, context -> Response in
            let body = try await request.decode(as: BeginRequest.self, context: context)
            try checkLoopbackRedirect(body.redirectURI)
            let (state, url) = try await core.beginSignIn(redirectURI: body.redirectURI)
            return try AdminServer.json(BeginAnswer(state: state, url: url))
        }
        router.post("/tether/v1/login/callback") { request, context -> Response in
            let body = try await request.decode(as: CallbackRequest.self, context: context)
            switch try await core.completeSignIn(state: body.state, code: body.code, address: nil) {
            case .secondFactor(let ticket, let user, let enrollment):
                return try AdminServer.json(CallbackAnswer(user: user, ticket: ticket, enrollment: enrollment))
            case .signedIn(let session, let credential):
                return try AdminServer.json(CallbackAnswer(user: session.user, session: await grant(session, credential, core: core)))
            }
        }
        router.post("/tether/v1/login/code") { request, context -> Response in
            let body = try await request.decode(as: CodeRequest.self, context: context)
            let (session, credential) = try await core.confirmSecondFactor(ticket: body.ticket, code: body.code, address: nil)
            return try AdminServer.json(await grant(session, credential, core: core))
        }
        router.post("/tether/v1/logout") { request, _ -> Response in
            // The bearer only: a state-changing call is never made on a cookie's say
            // (the browser signs out with /logout and its CSRF token).
            let session = try await authenticate(authorization: request.headers[.authorization], core: core)
            let ended = try await core.revokeSessions(id: session.id, by: Caller(user: session.user, address: nil))
            return try AdminServer.json(ended.map(SessionView.init))
        }

        // The browser's flow.
        router.get("/login") { _, _ -> Response in
            guard let endpoint = await core.accessEndpoint.value else { throw TetherError(.unavailable, "the access listener is starting") }
            let (state, url) = try await core.beginSignIn(redirectURI: endpoint.url + "/callback")
            var headers = HTTPFields()
            headers.append(HTTPField(name: .location, value: url))
            headers.append(HTTPField(name: .setCookie, value: cookie(signInCookie, state, maxAge: Int(SignInTable.lifetime), path: "/")))
            return Response(status: .found, headers: headers)
        }
        router.get("/callback") { request, _ -> Response in
            let query = request.uri.queryParameters
            if let error = query["error"] {
                return Page.response(status: .unauthorized, title: "Sign-in refused",
                                     body: "<p>The identity provider refused the sign-in: \(Page.escape(String(error)))</p>\(Page.again)")
            }
            guard let state = query["state"].map(String.init), let code = query["code"].map(String.init),
                  request.cookies[signInCookie]?.value == state else {
                return Page.response(status: .badRequest, title: "Sign-in not recognised",
                                     body: "<p>This sign-in did not start in this browser, or it expired.</p>\(Page.again)")
            }
            do {
                switch try await core.completeSignIn(state: state, code: code, address: nil) {
                case .secondFactor(let ticket, let user, let enrollment):
                    return Page.response(status: .ok, title: "Second factor", body: Page.secondFactorForm(ticket: ticket, user: user, enrollment: enrollment),
                                         cookies: [cookie(signInCookie, "", maxAge: 0, path: "/")])
                case .signedIn(_, let credential):
                    return signedIn(credential)
                }
            } catch let error as TetherError {
                return Page.response(status: .init(code: KubeStatus.parts(for: error).code), title: "Sign-in refused",
                                     body: "<p>\(Page.escape(error.message))</p>\(Page.again)")
            }
        }
        router.post("/login/code") { request, _ -> Response in
            let form = try await formBody(request, as: CodeRequest.self)
            do {
                let (_, credential) = try await core.confirmSecondFactor(ticket: form.ticket, code: form.code, address: nil)
                return signedIn(credential)
            } catch let error as TetherError {
                // A wrong code with the sign-in still open: the form again, to try once more.
                if error.code == .unauthenticated, let ticket = core.signIns.ticket(form.ticket, now: core.clock.now()) {
                    return Page.response(status: .unauthorized, title: "Second factor",
                                         body: "<p class=\"error\">\(Page.escape(error.message))</p>"
                                             + Page.secondFactorForm(ticket: form.ticket, user: ticket.user,
                                                                    enrollment: ticket.enrolling?.uri(issuer: "Tether", account: ticket.user)))
                }
                return Page.response(status: .init(code: KubeStatus.parts(for: error).code), title: "Sign-in refused",
                                     body: "<p>\(Page.escape(error.message))</p>\(Page.again)")
            }
        }
        router.get("/") { request, _ -> Response in
            guard (try? await authenticate(request, core: core)) != nil else {
                return Response(status: .found, headers: [.location: "/login"])
            }
            return Response(status: .found, headers: [.location: "/console/"])
        }
        router.post("/logout") { request, _ -> Response in
            struct LogoutForm: Codable { var csrf: String }
            let form = try await formBody(request, as: LogoutForm.self)
            let session = try await authenticate(request, core: core)
            guard form.csrf == csrfToken(session, core: core) else {
                throw TetherError(.permissionDenied, "the sign-out form is not from this hub's page (CSRF token mismatch)")
            }
            _ = try await core.revokeSessions(id: session.id, by: Caller(user: session.user, address: nil))
            return Page.response(status: .ok, title: "Signed out", body: "<p>Your session ended; your cluster accounts are being removed.</p>\(Page.again)",
                                 cookies: [cookie(sessionCookie, "", maxAge: 0, path: "/")])
        }
    }

    /// A browser form (`application/x-www-form-urlencoded`, 64 KiB at most).
    static func formBody<Form: Decodable>(_ request: Request, as: Form.Type) async throws -> Form {
        var request = request
        let body = try await request.collectBody(upTo: 64 << 10)
        do {
            return try URLEncodedFormDecoder().decode(Form.self, from: String(buffer: body))
        } catch {
            throw TetherError(.invalidArgument, "the form is incomplete or not a form")
        }
    }

    /// The CSRF token of a session's forms: bound to the session, unguessable without
    /// the hub's session key.
    static func csrfToken(_ session: SessionRecord, core: HubCore) -> String {
        Base64URL.encode(Array(HMAC<SHA256>.authenticationCode(for: Data("csrf:\(session.id)".utf8), using: core.sessionKey)))
    }

    static func cookie(_ name: String, _ value: String, maxAge: Int, path: String) -> String {
        "\(name)=\(value); Max-Age=\(maxAge); Path=\(path); Secure; HttpOnly; SameSite=Lax"
    }

    static func signedIn(_ credential: String) -> Response {
        var headers = HTTPFields()
        headers.append(HTTPField(name: .location, value: "/console/"))
        headers.append(HTTPField(name: .setCookie, value: cookie(sessionCookie, credential, maxAge: Int(HubSettings.maxSessionTTL.components.seconds), path: "/")))
        headers.append(HTTPField(name: .setCookie, value: cookie(signInCookie, "", maxAge: 0, path: "/")))
        return Response(status: .seeOther, headers: headers)
    }
}

/// The few server-rendered pages of sign-in: no script at all, and a
/// Content-Security-Policy that would refuse one.
enum Page {
    static let again = "<p><a href=\"/login\">Sign in again</a></p>"
    /// Scripts and styles only from the hub's own files: no inline script or style runs.
    static let securityPolicy = "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
        + "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
            .replacingOccurrences(of: "\"", with: "&quot;").replacingOccurrences(of: "'", with: "&#39;")
    }

    /// A page; `header` (the console's navigation) replaces the plain title.
    static func response(status: HTTPResponse.Status, title: String, body: String, cookies: [String] = [], header: String? = nil) -> Response {
        let html = """
            <!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">            <title>\(escape(title)) · Tether</title><link rel="stylesheet" href="/console/static/console.css">            <script src="/console/static/console.js" defer></script></head>
            <body>\(header ?? "<main><h1>\(escape(title))</h1>")
            \(body)
            \(header == nil ? "</main>" : "")</body></html>
            """
        var headers = HTTPFields()
        headers.append(HTTPField(name: .contentType, value: "text/html; charset=utf-8"))
        headers.append(HTTPField(name: .contentSecurityPolicy, value: securityPolicy))
        headers.append(HTTPField(name: HTTPField.Name("X-Content-Type-Options")!, value: "nosniff"))
        headers.append(HTTPField(name: .cacheControl, value: "no-store"))
        for cookie in cookies { headers.append(HTTPField(name: .setCookie, value: cookie)) }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    static func secondFactorForm(ticket: String, user: String, enrollment: String?) -> String {
        var html = "<p>Signed in at the identity provider as <strong>\(escape(user))</strong>.</p>"
        if let enrollment {
            html += "<p>Scan this with your authenticator app, then enter the code it shows.</p>"
            if let qr = try? QRCode(text: enrollment) { html += qr.svg(moduleSize: 6) }
            html += "<p><code>\(escape(enrollment))</code></p>"
        } else {
            html += "<p>Enter the code your authenticator app shows for Tether.</p>"
        }
        html += """
            <form method="post" action="/login/code"><input type="hidden" name="ticket" value="\(escape(ticket))">\
            <label>Code <input name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" required autofocus></label> \
            <button type="submit">Continue</button></form>
            """
        return html
    }
}
