import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Shared

/// HTTPS to a hub's access listener, trusting its CA (or the system's roots).
struct AccessClient {
    var hub: String
    var caCertificate: String?

    func send(_ method: HTTPMethod, _ path: String, json body: (some Encodable)? = Optional<String>.none, bearer: String? = nil) async throws -> (status: UInt, data: Data) {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if let caCertificate {
            do {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(caCertificate.utf8)))
            } catch {
                throw TetherError(.invalidArgument, "the hub's CA certificate is not PEM: \(error)")
            }
        }
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls, redirectConfiguration: .disallow))
        do {
            var request = HTTPClientRequest(url: hub + path)
            request.method = method
            if let bearer { request.headers.add(name: "Authorization", value: "Bearer \(bearer)") }
            if let body {
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(ByteBuffer(bytes: try JSONEncoder.tether.encode(body)))
            }
            let response: HTTPClientResponse
            do {
                response = try await client.execute(request, timeout: .seconds(60))
            } catch {
                throw TetherError(.unavailable, "cannot reach the hub's access listener at \(hub): \(error)")
            }
            let data = Data(buffer: try await response.body.collect(upTo: 16 << 20))
            try await client.shutdown()
            return (response.status.code, data)
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    /// Sends and decodes a 200 answer; anything else is the hub's Status message.
    func call<Response: Decodable>(_ method: HTTPMethod, _ path: String, json body: (some Encodable)? = Optional<String>.none, bearer: String? = nil,
                                   as: Response.Type = Response.self) async throws -> Response {
        let (status, data) = try await send(method, path, json: body, bearer: bearer)
        guard status == 200 else {
            let message = (try? JSONSerialization.jsonObject(with: data) as? [String: Any])?["message"] as? String
            let code: TetherError.Code = switch status {
            case 401: .unauthenticated
            case 403: .permissionDenied
            case 404: .notFound
            case 400: .invalidArgument
            default: .unavailable
            }
            throw TetherError(code, "the hub refused (\(status)): \(message ?? String(decoding: data.prefix(500), as: UTF8.self))")
        }
        return try JSONDecoder.tether.decode(Response.self, from: data)
    }
}

/// Which session file a command uses: `--session FILE`, the one `login` stored for
/// `--hub URL`, `$TETHER_SESSION_FILE`, or the only one stored.
struct SessionOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The hub you logged in to (its access listener URL); picks the session `login` stored for it.", valueName: "url"))
    var hub: String?
    @Option(help: ArgumentHelp("A session file instead (from `session create --output`; env TETHER_SESSION_FILE).", valueName: "path"))
    var session: String?

    static var directory: String {
        let home = ProcessInfo.processInfo.environment["HOME"] ?? FileManager.default.homeDirectoryForCurrentUser.path
        return home + "/.config/tether"
    }

    /// Where `login` keeps the session for a hub: one file per hub (host and port).
    static func path(forHub hub: String) throws -> String {
        guard let url = URL(string: hub), url.scheme == "https", let host = url.host else {
            throw TetherError(.invalidArgument, "--hub must be the hub's https URL, e.g. https://hub.example:7443 (got \(hub))")
        }
        let name = (host + "_" + String(url.port ?? 443)).map { $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_" ? $0 : "_" }
        return directory + "/hubs/" + String(name) + ".json"
    }

    /// The session file and whether it was named explicitly (a kubeconfig then
    /// names the file; otherwise the hub).
    func resolve() throws -> (path: String, explicit: Bool) {
        if let session { return (absolute(session), true) }
        if let hub { return (try Self.path(forHub: hub.trimmingSuffix("/")), false) }
        if let env = ProcessInfo.processInfo.environment["TETHER_SESSION_FILE"], !env.isEmpty { return (absolute(env), true) }
        let stored = ((try? FileManager.default.contentsOfDirectory(atPath: Self.directory + "/hubs")) ?? []).filter { $0.hasSuffix(".json") }.sorted()
        if stored.count == 1 { return (Self.directory + "/hubs/" + stored[0], false) }
        if stored.count > 1 {
            throw TetherError(.invalidArgument, "you are logged in to several hubs (\(stored.map { $0.replacingOccurrences(of: ".json", with: "") }.joined(separator: ", "))); say which with --hub URL")
        }
        if FileManager.default.fileExists(atPath: SessionFile.defaultPath) { return (SessionFile.defaultPath, true) }
        throw TetherError(.notFound, "you are not logged in; run: tether-hub login --hub https://HUB:7443")
    }

    private func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }

    /// The session, refused with "log in again" once it has expired.
    func live() throws -> (file: SessionFile, path: String, explicit: Bool) {
        let (path, explicit) = try resolve()
        if !explicit, let hub, !FileManager.default.fileExists(atPath: path) {
            throw TetherError(.notFound, "you are not logged in to \(hub); log in: tether-hub login --hub \(hub)")
        }
        let file = try SessionFile.read(path)
        if file.expiresAt <= Date() {
            throw TetherError(.unauthenticated, "your session at \(file.hub) expired at \(Table.date(file.expiresAt)); log in again: tether-hub login --hub \(file.hub)")
        }
        return (file, path, explicit)
    }
}

/// `tether-hub login`: sign in through the company's identity provider and the
/// second factor; the session is stored for later commands and kubectl.
struct LoginCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "login",
        abstract: "Sign in to a hub through your company's identity provider, with a second factor.",
        discussion: """
            Opens the provider's sign-in page in your browser (or prints its URL with \
            --no-browser) and waits on a loopback port for the provider to send you back. \
            Then it asks for the code of your authenticator app; at your first sign-in it \
            shows a QR code (and otpauth:// URI) to add Tether to the app first. The session \
            is stored in ~/.config/tether/hubs/ (0600, one per hub); `tether-hub kubeconfig` \
            and kubectl use it until it ends. `tether-hub logout` ends it.
            """)

    @Option(help: ArgumentHelp("The hub's access listener, e.g. https://hub.example:7443.", valueName: "url"))
    var hub: String
    @Option(help: ArgumentHelp("The hub's CA certificate (PEM) when its listener is not publicly trusted (env TETHER_CA_FILE).", valueName: "path"))
    var caFile: String?
    @Flag(help: "Print the sign-in URL instead of opening a browser.")
    var noBrowser = false
    @Option(help: ArgumentHelp("Loopback port for the provider's redirect (0: any free port).", valueName: "port"))
    var listenPort = 0
    @Option(help: ArgumentHelp("How long to wait for the provider's redirect.", valueName: "duration"))
    var timeout = "5m"

    func validate() throws {
        _ = try SessionOptions.path(forHub: hub)
        _ = try DurationParser.parse(timeout)
        guard (0...65535).contains(listenPort) else { throw ValidationError("--listen-port must be 0 to 65535") }
    }

    func run() async throws {
        let hub = self.hub.trimmingSuffix("/")
        var ca: String?
        if let path = caFile ?? ProcessInfo.processInfo.environment["TETHER_CA_FILE"] {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw TetherError(.notFound, "cannot read --ca-file \(path)") }
            ca = text
        }
        let client = AccessClient(hub: hub, caCertificate: ca)
        let listener = try await RedirectListener.start(port: listenPort)
        let answer: AccessProxy.CallbackAnswer
        do {
            let begun: AccessProxy.BeginAnswer = try await client.call(.POST, "/tether/v1/login", json: AccessProxy.BeginRequest(redirectURI: listener.redirectURI))
            say("Sign in at your identity provider:\n  \(begun.url)")
            if !noBrowser { Browser.open(begun.url) }
            let redirect = try await listener.wait(timeout: try DurationParser.parse(timeout))
            if let error = redirect.error {
                throw TetherError(.unauthenticated, "the identity provider refused the sign-in: \(error)")
            }
            guard redirect.state == begun.state, let code = redirect.code else {
                throw TetherError(.unauthenticated, "the redirect did not come from this sign-in (state mismatch); try again")
            }
            answer = try await client.call(.POST, "/tether/v1/login/callback", json: AccessProxy.CallbackRequest(state: begun.state, code: code))
            await listener.close()
        } catch {
            await listener.close()
            throw error
        }
        let grant: AccessProxy.SessionGrant
        if let session = answer.session {
            grant = session
        } else {
            guard let ticket = answer.ticket else { throw TetherError(.internalError, "the hub answered neither a session nor a second-factor step") }
            if let enrollment = answer.enrollment { showEnrollment(enrollment) }
            grant = try await askForCode(client: client, ticket: ticket, user: answer.user)
        }
        let path = try SessionOptions.path(forHub: hub)
        try SessionFile(hub: hub, user: grant.user, credential: grant.credential, expiresAt: grant.expiresAt,
                        caCertificate: ca ?? grant.caCertificate).write(to: path)
        say("Signed in as \(grant.user) (\(grant.method)) until \(Table.date(grant.expiresAt)).\nNext: tether-hub kubeconfig --merge")
    }

    private func showEnrollment(_ uri: String) {
        var text = "\nFirst sign-in: add Tether to your authenticator app by scanning this QR code\n"
        if let qr = try? QRCode(text: uri) { text += qr.terminalString() + "\n" }
        text += "or entering this URI (or its secret) by hand:\n  \(uri)\n"
        say(text)
    }

    /// Asks for codes until one is accepted or the hub stops the sign-in.
    private func askForCode(client: AccessClient, ticket: String, user: String) async throws -> AccessProxy.SessionGrant {
        while true {
            FileHandle.standardError.write(Data("Code from your authenticator app for \(user): ".utf8))
            guard let line = readLine(strippingNewline: true) else {
                throw TetherError(.unauthenticated, "no code entered (stdin ended); run tether-hub login again")
            }
            let code = line.trimmingCharacters(in: .whitespaces)
            if code.isEmpty { continue }
            do {
                return try await client.call(.POST, "/tether/v1/login/code", json: AccessProxy.CodeRequest(ticket: ticket, code: code))
            } catch let error as TetherError where error.code == .unauthenticated && error.message.contains("wrong or already used code") {
                say(error.message.replacingOccurrences(of: "the hub refused (401): ", with: ""))
            }
        }
    }

    private func say(_ text: String) { FileHandle.standardError.write(Data((text + "\n").utf8)) }
}

/// Opens a URL in the person's browser, if there is one to open.
enum Browser {
    static func open(_ url: String) {
        for opener in ["/usr/bin/xdg-open", "/usr/bin/open", "/usr/bin/sensible-browser"] where FileManager.default.isExecutableFile(atPath: opener) {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: opener)
            process.arguments = [url]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            if (try? process.run()) != nil { return }
        }
    }
}

/// The CLI's loopback listener for the provider's redirect (RFC 8252 §7.3): one
/// GET to /callback, answered with a page that sends the person back to the terminal.
final class RedirectListener: Sendable {
    struct Redirect: Sendable {
        var code: String?
        var state: String?
        var error: String?
        var timedOut = false
    }

    let channel: any Channel
    let redirectURI: String
    private let result: AsyncValue<Redirect>

    private init(channel: any Channel, result: AsyncValue<Redirect>) {
        self.channel = channel
        self.result = result
        redirectURI = "http://127.0.0.1:\(channel.localAddress?.port ?? 0)/callback"
    }

    static func start(port: Int) async throws -> RedirectListener {
        let result = AsyncValue<Redirect>()
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.pipeline.configureHTTPServerPipeline().flatMap { channel.pipeline.addHandler(Handler(result: result)) }
                }
                .bind(host: "127.0.0.1", port: port).get()
        } catch {
            throw TetherError(.unavailable, "cannot listen on 127.0.0.1:\(port) for the sign-in redirect: \(error)")
        }
        return RedirectListener(channel: channel, result: result)
    }

    func wait(timeout: Duration) async throws -> Redirect {
        let result = self.result
        let timer = Task {
            guard (try? await Task.sleep(for: timeout)) != nil else { return }
            result.set(Redirect(timedOut: true))
        }
        let redirect = await result.value
        timer.cancel()
        if redirect.timedOut {
            throw TetherError(.unavailable, "no sign-in came back within \(DurationParser.format(timeout)); run tether-hub login again")
        }
        return redirect
    }

    func close() async { try? await channel.close() }

    private final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let result: AsyncValue<Redirect>
        init(result: AsyncValue<Redirect>) { self.result = result }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .head(let head) = unwrapInboundIn(data) else { return }
            let components = URLComponents(string: head.uri)
            let page: String
            let status: HTTPResponseStatus
            if components?.path == "/callback" {
                let items = components?.queryItems ?? []
                func value(_ name: String) -> String? { items.first { $0.name == name }?.value }
                result.set(Redirect(code: value("code"), state: value("state"), error: [value("error"), value("error_description")].compactMap { $0 }.joined(separator: ": ").nilIfEmpty))
                page = "<!doctype html><title>Tether</title><p>Signed in at your identity provider. Return to your terminal to finish.</p>"
                status = .ok
            } else {
                page = "<!doctype html><title>Tether</title><p>Not found.</p>"
                status = .notFound
            }
            var headers = HTTPHeaders([("Content-Type", "text/html; charset=utf-8"), ("Connection", "close"), ("Cache-Control", "no-store")])
            headers.add(name: "Content-Length", value: "\(page.utf8.count)")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: page)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
        }
    }
}

extension String {
    var nilIfEmpty: String? { isEmpty ? nil : self }
}

/// `tether-hub logout`: ends the session at the hub (its just-in-time accounts are
/// deleted from every cluster) and removes the stored file.
struct LogoutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logout", abstract: "End your session at the hub; your cluster accounts are removed within seconds.")
    @OptionGroup var options: SessionOptions

    func run() async throws {
        let (path, _) = try options.resolve()
        let file = try SessionFile.read(path)
        let client = AccessClient(hub: file.hub, caCertificate: file.caCertificate)
        let (status, data) = try await client.send(.POST, "/tether/v1/logout", bearer: file.credential)
        switch status {
        case 200:
            try? FileManager.default.removeItem(atPath: path)
            let ended = (try? JSONDecoder.tether.decode([SessionView].self, from: data)) ?? []
            print("logged out of \(file.hub)" + (ended.first.map { " (session \($0.id) ended)" } ?? ""))
        case 401:
            try? FileManager.default.removeItem(atPath: path)
            print("the session at \(file.hub) had already ended; removed \(path)")
        default:
            let message = (try? JSONSerialization.jsonObject(with: data) as? [String: Any])?["message"] as? String
            throw TetherError(.unavailable, "the hub did not end the session (\(status)\(message.map { ": \($0)" } ?? "")); it still works until it expires. Try again.")
        }
    }
}

/// `tether-hub whoami`: the session as the hub sees it.
struct WhoAmICommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "whoami", abstract: "Show who your session says you are, as the hub sees it.")
    @OptionGroup var options: SessionOptions
    @Option(help: "table or json.") var output: OutputFormat = .table

    func run() async throws {
        let (file, _, _) = try options.live()
        let me: AccessProxy.WhoAmI = try await AccessClient(hub: file.hub, caCertificate: file.caCertificate)
            .call(.GET, "/tether/v1/whoami", bearer: file.credential)
        switch output {
        case .json: print(String(decoding: try JSONEncoder.tether.encode(me), as: UTF8.self))
        case .table:
            print("""
                user:     \(me.user)
                groups:   \(me.groups.isEmpty ? "-" : me.groups.joined(separator: ", "))
                method:   \(me.method)
                session:  \(me.session)
                expires:  \(Table.date(me.expiresAt))
                hub:      \(file.hub)
                """)
        }
    }
}

/// `tether-hub credential`: kubectl's exec credential plugin. Prints an
/// `ExecCredential` with the session and its expiry, or tells the person to log in.
struct CredentialCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "credential",
        abstract: "kubectl exec credential plugin: print the session as an ExecCredential (used by kubeconfigs from tether-hub kubeconfig).")
    @OptionGroup var options: SessionOptions

    func run() throws {
        let (file, _, _) = try options.live()
        let formatter = ISO8601DateFormatter()
        let credential: [String: Any] = [
            "apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
            "status": ["token": file.credential, "expirationTimestamp": formatter.string(from: file.expiresAt)],
        ]
        print(String(decoding: try JSONSerialization.data(withJSONObject: credential, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self))
    }
}

/// `tether-hub user`: the people who signed in through the identity provider.
struct UserCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "user", abstract: "List, disable and enable people, and reset their second factor.",
        subcommands: [List.self, Disable.self, Enable.self, ResetOTP.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "People seen at sign-in: groups at their last login, live sessions, second factor.")
        @Option(help: "table or json.") var output: OutputFormat = .table
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let people: [PersonView] = try await admin.client().call(.GET, "/v1/people")
            switch output {
            case .json: print(String(decoding: try JSONEncoder.tether.encode(people), as: UTF8.self))
            case .table:
                print(Table.render(["NAME", "GROUPS", "LAST LOGIN", "SESSIONS", "2FA", "STATE"], people.map {
                    [$0.name, $0.groups.isEmpty ? "-" : $0.groups.joined(separator: ","), Table.date($0.lastLoginAt), "\($0.liveSessions)",
                     $0.secondFactor ? "totp" : "-", $0.disabled ? "disabled" : ($0.lockedUntil.map { "locked until \(Table.date($0))" } ?? "active")]
                }))
            }
        }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Disable a person: their sessions end now, their cluster accounts are flushed, and sign-in is refused.")
        @Argument(help: "The person's name (their username claim, e.g. email).") var name: String
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let ended: [SessionView] = try await admin.client().call(.POST, "/v1/people/\(Self.escape(name))/disable")
            print("user/\(name) disabled; \(ended.count) session(s) ended")
        }

        static func escape(_ name: String) -> String { name.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? name }
    }

    struct Enable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let a disabled or locked-out person sign in again.")
        @Argument(help: "The person's name.") var name: String
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let _: AdminServer.PersonChanged = try await admin.client().call(.POST, "/v1/people/\(Disable.escape(name))/enable")
            print("user/\(name) enabled")
        }
    }

    struct ResetOTP: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "reset-otp", abstract: "Forget a person's authenticator; they enroll a new one at their next sign-in.")
        @Argument(help: "The person's name.") var name: String
        @OptionGroup var admin: AdminOptions

        func run() async throws {
            let _: AdminServer.PersonChanged = try await admin.client().call(.POST, "/v1/people/\(Disable.escape(name))/reset-otp")
            print("user/\(name): second factor reset; they enroll a new one at their next sign-in")
        }
    }
}
