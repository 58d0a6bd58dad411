import Foundation
import HTTPTypes
import Hummingbird
import HubStore
import NIOCore
import ServiceLifecycle
import Shared
import Yams

/// The web console on the access listener (`/console/…`), for people signed in
/// through SSO (the session cookie). Everyone sees their clusters (one click to a
/// kubeconfig) and their access; people in `--admin-group` also see policy, audit,
/// sessions, people and the compliance report. Every request checks the session and,
/// for admin pages, the group; every state-changing form carries the session's CSRF
/// token; the pages run no inline script (the Content-Security-Policy refuses it).
enum Console {
    struct Viewer: Sendable {
        var session: SessionRecord
        var credential: String
        var admin: Bool
        var csrf: String
    }

    enum Section: String { case clusters, access, policy, audit, sessions, people, report }

    static func addRoutes(to router: Router<BasicRequestContext>, core: HubCore) {
        router.get("/console/static/console.css") { _, _ in asset(ConsoleAssets.css, type: "text/css; charset=utf-8") }
        router.get("/console/static/console.js") { _, _ in asset(ConsoleAssets.script, type: "text/javascript; charset=utf-8") }

        page(router, "/console/", core: core) { request, viewer in try await clusters(request, viewer, core: core) }
        router.get("/console/clusters/:cluster/kubeconfig") { request, context -> Response in
            guard let viewer = await viewer(request, core: core) else { return signIn() }
            return try await kubeconfig(cluster: try context.parameters.require("cluster"), viewer, core: core)
        }
        page(router, "/console/access", core: core) { _, viewer in try await myAccess(viewer, core: core) }
        form(router, "/console/sessions/end", core: core) { form, viewer in
            // Only one's own sessions here; the admin page ends anyone's.
            guard let id = form["id"], let mine = try await core.database.session(id), mine.user == viewer.session.user else {
                throw TetherError(.notFound, "no session \(form["id"] ?? "") of yours")
            }
            _ = try await core.revokeSessions(id: id, by: Caller(user: viewer.session.user, address: nil))
            return id == viewer.session.id ? .signedOut : .back("/console/access")
        }

        admin(router, "/console/admin/policy", core: core) { _, viewer in try await policy(viewer, core: core) }
        admin(router, "/console/admin/audit", core: core) { request, viewer in try await audit(request, viewer, core: core) }
        router.get("/console/admin/audit/stream") { request, _ -> Response in
            guard let viewer = await viewer(request, core: core) else { return signIn() }
            guard viewer.admin else { return forbidden(viewer, core: core) }
            return try await auditStream(request, core: core)
        }
        admin(router, "/console/admin/sessions", core: core) { _, viewer in try await sessions(viewer, core: core) }
        adminForm(router, "/console/admin/sessions/revoke", core: core) { form, viewer in
            guard let id = form["id"] else { throw TetherError(.invalidArgument, "which session?") }
            _ = try await core.revokeSessions(id: id, by: Caller(user: viewer.session.user, address: nil))
            return id == viewer.session.id ? .signedOut : .back("/console/admin/sessions")
        }
        admin(router, "/console/admin/people", core: core) { _, viewer in try await people(viewer, core: core) }
        adminForm(router, "/console/admin/people/disable", core: core) { form, viewer in
            guard let name = form["name"] else { throw TetherError(.invalidArgument, "whom?") }
            _ = try await core.disablePerson(name, by: Caller(user: viewer.session.user, address: nil))
            return name == viewer.session.user ? .signedOut : .back("/console/admin/people")
        }
        adminForm(router, "/console/admin/people/enable", core: core) { form, viewer in
            guard let name = form["name"] else { throw TetherError(.invalidArgument, "whom?") }
            try await core.enablePerson(name, by: Caller(user: viewer.session.user, address: nil))
            return .back("/console/admin/people")
        }
        admin(router, "/console/report", core: core) { request, viewer in
            let report = try await core.complianceReport(since: try reportStart(request, core: core), until: try reportEnd(request))
            await core.audit(HubAction(verb: "get", resource: "report", name: nil, user: viewer.session.user, code: 200, sourceIP: nil))
            return ("Compliance report", """
                <form class="filters" method="get" action="/console/report"><label>Since<input name="since" value="\(request.uri.queryParameters["since"].map(String.init) ?? "30d")"></label>\
                <button type="submit">Show</button> <a href="\(HTML.href("/console/report.json", [("since", request.uri.queryParameters["since"].map(String.init))]))">JSON</a></form>
                \(report.html())
                """)
        }
        router.get("/console/report.json") { request, _ -> Response in
            guard let viewer = await viewer(request, core: core) else { return signIn() }
            guard viewer.admin else { return forbidden(viewer, core: core) }
            let report = try await core.complianceReport(since: try reportStart(request, core: core), until: try reportEnd(request))
            return try AdminServer.json(report)
        }
    }

    // MARK: Plumbing

    static func viewer(_ request: Request, core: HubCore) async -> Viewer? {
        guard let cookie = request.cookies[AccessProxy.sessionCookie]?.value, !cookie.isEmpty,
              let session = try? await core.authenticate(credential: cookie) else { return nil }
        return Viewer(session: session, credential: cookie, admin: session.groups.contains(core.settings.adminGroup),
                      csrf: AccessProxy.csrfToken(session, core: core))
    }

    static func signIn() -> Response { Response(status: .found, headers: [.location: "/login"]) }

    static func asset(_ text: String, type: String) -> Response {
        Response(status: .ok, headers: [.contentType: type, .cacheControl: "no-cache", HTTPField.Name("X-Content-Type-Options")!: "nosniff"],
                 body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    /// A page for everyone signed in.
    static func page(_ router: Router<BasicRequestContext>, _ path: RouterPath, core: HubCore,
                     _ build: @escaping @Sendable (Request, Viewer) async throws -> (String, HTML)) {
        router.get(path) { request, _ -> Response in
            guard let viewer = await viewer(request, core: core) else { return signIn() }
            do {
                let (title, body) = try await build(request, viewer)
                return render(title, body, viewer, section: section(of: request.uri.path), core: core)
            } catch let error as TetherError {
                let title = error.code == .permissionDenied ? "Forbidden" : error.code == .notFound ? "Not found" : "Error"
                return render(title, "<p class=\"error\">\(error.message)</p>", viewer, status: .init(code: KubeStatus.parts(for: error).code), core: core)
            }
        }
    }

    /// A page for `--admin-group` only: 403 for everyone else, and nothing of it shown.
    static func admin(_ router: Router<BasicRequestContext>, _ path: RouterPath, core: HubCore,
                      _ build: @escaping @Sendable (Request, Viewer) async throws -> (String, HTML)) {
        page(router, path, core: core) { request, viewer in
            guard viewer.admin else { throw TetherError(.permissionDenied, "this page is for the hub's admins (group \(core.settings.adminGroup))") }
            return try await build(request, viewer)
        }
    }

    enum FormOutcome { case back(String), signedOut }

    /// A state-changing form: the session, then its CSRF token, then the change.
    static func form(_ router: Router<BasicRequestContext>, _ path: RouterPath, core: HubCore, adminOnly: Bool = false,
                     _ act: @escaping @Sendable ([String: String], Viewer) async throws -> FormOutcome) {
        router.post(path) { request, _ -> Response in
            guard let viewer = await viewer(request, core: core) else { return signIn() }
            do {
                if adminOnly && !viewer.admin { throw TetherError(.permissionDenied, "this is for the hub's admins (group \(core.settings.adminGroup))") }
                let fields = try await AccessProxy.formBody(request, as: [String: String].self)
                guard let token = fields["csrf"], constantTimeEqual(Data(token.utf8), Data(viewer.csrf.utf8)) else {
                    throw TetherError(.permissionDenied, "the form is not from this hub's page (CSRF token mismatch); reload the page and try again")
                }
                switch try await act(fields, viewer) {
                case .back(let location): return Response(status: .seeOther, headers: [.location: location])
                case .signedOut:
                    return Page.response(status: .ok, title: "Signed out", body: "<p>Your session ended; your cluster accounts are being removed.</p>\(Page.again)",
                                         cookies: [AccessProxy.cookie(AccessProxy.sessionCookie, "", maxAge: 0, path: "/")])
                }
            } catch let error as TetherError {
                return render("Refused", "<p class=\"error\">\(error.message)</p>", viewer, status: .init(code: KubeStatus.parts(for: error).code), core: core)
            }
        }
    }

    static func adminForm(_ router: Router<BasicRequestContext>, _ path: RouterPath, core: HubCore,
                          _ act: @escaping @Sendable ([String: String], Viewer) async throws -> FormOutcome) {
        form(router, path, core: core, adminOnly: true, act)
    }

    static func forbidden(_ viewer: Viewer, core: HubCore) -> Response {
        render("Forbidden", "<p class=\"error\">This page is for the hub's admins (group \(core.settings.adminGroup)).</p>", viewer, status: .forbidden, core: core)
    }

    static func section(of path: String) -> Section {
        if path.hasPrefix("/console/access") { return .access }
        if path.hasPrefix("/console/admin/policy") { return .policy }
        if path.hasPrefix("/console/admin/audit") { return .audit }
        if path.hasPrefix("/console/admin/sessions") { return .sessions }
        if path.hasPrefix("/console/admin/people") { return .people }
        if path.hasPrefix("/console/report") { return .report }
        return .clusters
    }

    static func render(_ title: String, _ body: HTML, _ viewer: Viewer, section: Section? = nil, status: HTTPResponse.Status = .ok, core: HubCore) -> Response {
        var links: [(Section, String, String)] = [(.clusters, "/console/", "Clusters"), (.access, "/console/access", "My access")]
        if viewer.admin {
            links += [(.policy, "/console/admin/policy", "Policy"), (.audit, "/console/admin/audit", "Audit"), (.sessions, "/console/admin/sessions", "Sessions"),
                      (.people, "/console/admin/people", "People"), (.report, "/console/report", "Report")]
        }
        let nav = links.map { link -> HTML in "<a href=\"\(link.1)\"\(link.0 == section ? " class=\"here\"" as HTML : "")>\(link.2)</a>" }.joined()
        let header: HTML = """
            <header class="top"><span class="brand">Tether</span><nav>\(nav)</nav>\
            <span class="who">Signed in as <strong id="whoami">\(viewer.session.user)</strong>\(viewer.admin ? " (admin)" : "") · \
            until \(viewer.session.expiresAt)</span>\
            <form method="post" action="/console/sessions/end"><input type="hidden" name="csrf" value="\(viewer.csrf)">\
            <input type="hidden" name="id" value="\(viewer.session.id)"><button type="submit" id="sign-out">Sign out</button></form></header>
            """
        return Page.response(status: status, title: title, body: "<main><h1>\(HTML.escape(title))</h1>\n\(body.rendered)</main>", header: header.rendered)
    }

    // MARK: Clusters

    static func clusters(_ request: Request, _ viewer: Viewer, core: HubCore) async throws -> (String, HTML) {
        let params = request.uri.queryParameters
        let text = params["q"].map(String.init)?.trimmingCharacters(in: .whitespaces) ?? ""
        let labelFilter = params["label"].map(String.init)?.trimmingCharacters(in: .whitespaces) ?? ""
        var wanted: [(String, String?)] = []
        for part in labelFilter.split(separator: ",") {
            let pieces = part.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            wanted.append((pieces[0], pieces.count > 1 ? pieces[1] : nil))
        }
        let roles = try await core.currentAccessRoles()
        var rows: [HTML] = []
        var shown = 0
        let hub = await core.accessEndpoint.value?.url ?? "https://HUB:7443"
        let views = try await core.clusterViews().filter { $0.status != .revoked }
        for cluster in views {
            let decision = AccessDecision.evaluate(roles: roles, user: viewer.session.user, groups: viewer.session.groups, clusterLabels: cluster.labels)
            // Everyone sees the clusters they can reach; admins see every cluster.
            guard decision.allowed || viewer.admin else { continue }
            guard wanted.allSatisfy({ key, value in value.map { cluster.labels[key] == $0 } ?? (cluster.labels[key] != nil) }) else { continue }
            let haystack = ([cluster.name] + cluster.labels.map { "\($0.key)=\($0.value)" }).joined(separator: " ").lowercased()
            guard text.isEmpty || haystack.contains(text.lowercased()) else { continue }
            shown += 1
            let labels = cluster.labels.sorted { $0.key < $1.key }.map { "<span class=\"tag\">\($0.key)=\($0.value)</span>" as HTML }.joined()
            let command = "tether-hub kubeconfig --hub \(hub) --cluster \(cluster.name) --merge"
            let download: HTML = "<a class=\"kubeconfig\" id=\"kubeconfig-\(cluster.name)\" href=\"/console/clusters/\(cluster.name)/kubeconfig\" download>Kubeconfig</a> "
            let copy: HTML = "<button type=\"button\" class=\"copy\" data-copy=\"\(command)\" title=\"\(command)\">Copy CLI line</button>"
            let actions: HTML = decision.allowed ? download + copy : "<span class=\"muted\">no access</span>"
            rows.append("""
                <tr data-cluster="\(cluster.name)"><td><strong>\(cluster.name)</strong></td><td>\(labels)</td>\
                <td class="status-\(cluster.status.rawValue)">\(cluster.status.rawValue)</td><td>\(cluster.dataPath ?? "—")</td>\
                <td>\(cluster.agentVersion ?? "—")</td><td>\(cluster.lastSeen)</td><td>\(decision.grants.summary.joined(separator: ", "))</td><td>\(actions)</td></tr>
                """)
        }
        let filters: HTML = """
            <form class="filters" method="get" action="/console/"><label>Text<input id="cluster-text" name="q" value="\(text)" placeholder="name or label"></label>\
            <label>Labels<input name="label" value="\(labelFilter)" placeholder="env=prod,region"></label><button type="submit">Filter</button></form>
            """
        let empty: HTML = views.isEmpty ? "No clusters are registered." : "No cluster you can reach matches."
        return ("Clusters", """
            \(filters)
            <table id="clusters"><thead><tr><th>Cluster</th><th>Labels</th><th>Channel</th><th>Data path</th><th>Agent</th><th>Last seen</th>\
            <th>Your roles</th><th></th></tr></thead>
            <tbody>\(rows.joined())</tbody></table>
            \(shown == 0 ? "<p class=\"muted\">\(empty)</p>" as HTML : "")
            <p class="muted noprint">The kubeconfig carries this browser session's credential: it works with kubectl at once and stops when you sign out \
            or the session ends. The CLI line writes one that runs <code>tether-hub credential</code> instead.</p>
            """)
    }

    /// A kubeconfig for one cluster with this session's credential, to download.
    static func kubeconfig(cluster name: String, _ viewer: Viewer, core: HubCore) async throws -> Response {
        guard let endpoint = await core.accessEndpoint.value else { throw TetherError(.unavailable, "the access listener is starting") }
        let reachable = try await AccessProxy.reachableClusters(for: viewer.session, core: core)
        guard reachable.contains(where: { $0.name == name }) else {
            return render("Not reachable", "<p class=\"error\">Your session cannot reach cluster \(name) (or it does not exist).</p>", viewer, status: .forbidden, core: core)
        }
        let file = SessionFile(hub: endpoint.url, user: viewer.session.user, credential: viewer.credential, expiresAt: viewer.session.expiresAt,
                               caCertificate: endpoint.caCertificate)
        let document = Kubeconfig.document(for: file, clusters: [name], token: viewer.credential)
        await core.audit(HubAction(verb: "get", resource: "kubeconfigs", name: name, user: viewer.session.user, code: 200, sourceIP: nil,
                                   message: "console download for session \(viewer.session.id)"))
        var headers = HTTPFields()
        headers.append(HTTPField(name: .contentType, value: "application/yaml"))
        headers.append(HTTPField(name: .contentDisposition, value: "attachment; filename=\"tether-\(name).kubeconfig\""))
        headers.append(HTTPField(name: .cacheControl, value: "no-store"))
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: try Yams.dump(object: document))))
    }

    // MARK: My access

    static func myAccess(_ viewer: Viewer, core: HubCore) async throws -> (String, HTML) {
        let roles = try await core.currentAccessRoles()
        var rows: [HTML] = []
        for cluster in try await core.clusterViews() where cluster.status != .revoked {
            let decision = AccessDecision.evaluate(roles: roles, user: viewer.session.user, groups: viewer.session.groups, clusterLabels: cluster.labels)
            guard decision.allowed else { continue }
            let why = decision.grantedBy.map { match -> HTML in
                "<li>AccessRole <strong>\(match.accessRole)</strong>: \(match.grants.joined(separator: ", "))</li>"
            }.joined()
            rows.append("<tr><td><strong>\(cluster.name)</strong></td><td>\(decision.grants.summary.joined(separator: ", "))</td><td><ul>\(why)</ul></td></tr>")
        }
        let sessions = try await core.sessionViews(includeEnded: false).filter { $0.user == viewer.session.user }
        let sessionRows = sessions.map { s -> HTML in
            """
            <tr><td><code>\(s.id)</code>\(s.id == viewer.session.id ? " (this browser)" as HTML : "")</td><td>\(s.method)</td><td>\(s.createdAt)</td><td>\(s.expiresAt)</td>\
            <td><form method="post" action="/console/sessions/end"><input type="hidden" name="csrf" value="\(viewer.csrf)">\
            <input type="hidden" name="id" value="\(s.id)"><button type="submit" class="danger end-session" data-session="\(s.id)">End session</button></form></td></tr>
            """
        }
        return ("My access", """
            <p>You are <strong>\(viewer.session.user)</strong>, in groups \(viewer.session.groups.isEmpty ? "(none)" : viewer.session.groups.joined(separator: ", ")).</p>
            <h2>Roles per cluster</h2>
            <table id="my-roles"><thead><tr><th>Cluster</th><th>Roles</th><th>Why (AccessRoles)</th></tr></thead><tbody>\(rows.joined())</tbody></table>
            \(rows.isEmpty ? "<p class=\"muted\">No AccessRole gives you a cluster yet; ask your platform team.</p>" as HTML : "")
            <h2>My sessions</h2>
            <p class="muted">Ending a session removes its service accounts from every cluster within seconds.</p>
            <table id="my-sessions"><thead><tr><th>Session</th><th>How</th><th>Started</th><th>Ends</th><th></th></tr></thead><tbody>\(sessionRows.joined())</tbody></table>
            """)
    }

    // MARK: Admin pages

    static func policy(_ viewer: Viewer, core: HubCore) async throws -> (String, HTML) {
        var sections: [HTML] = []
        for bundle in try await AdminServer.bundleViews(core: core, includeDocument: false) {
            let rows = try await core.policyStatus(bundle: bundle.name).map { row -> HTML in
                let drift: HTML = row.lastDrift.map { "\($0.object) at \(HTML.time($0.at)): \($0.action)" } ?? "—"
                let head: HTML = "<tr><td>\(row.cluster)</td><td class=\"state-\(row.state)\">\(row.state)</td><td class=\"num\">\(row.desiredRevision)</td>"
                let tail: HTML = "<td class=\"num\">\(row.observedRevision.map(String.init) ?? "—")</td><td class=\"num\">\(row.objects)</td><td>\(row.message ?? "")</td><td>\(drift)</td></tr>"
                return head + tail
            }
            sections.append("""
                <h2>\(bundle.name) <span class="muted">(\(bundle.resources) objects, selector \(describe(bundle.clusterSelector))\
                \(bundle.privilegedGrants.isEmpty ? "" : ", privileged: \(bundle.privilegedGrants.joined(separator: "; "))"))</span></h2>
                <table class="bundle" data-bundle="\(bundle.name)"><thead><tr><th>Cluster</th><th>State</th><th>Desired</th><th>Observed</th><th>Objects</th>\
                <th>API server's message</th><th>Last drift</th></tr></thead><tbody>\(rows.joined())</tbody></table>
                """)
        }
        return ("Policy bundles", sections.isEmpty ? "<p class=\"muted\">No policy bundles; apply one with tether-hub policy apply -f FILE.</p>" : sections.joined())
    }

    static func audit(_ request: Request, _ viewer: Viewer, core: HubCore) async throws -> (String, HTML) {
        var query = try AdminServer.auditQuery(request, defaultLimit: 100)
        query.newestFirst = true
        let params = request.uri.queryParameters
        if let before = params["before"].flatMap({ Int64(String($0)) }) { query.beforeID = before }
        let events = try await core.database.auditEvents(query)
        await core.audit(HubAction(verb: "get", resource: "audit/events", name: nil, user: viewer.session.user, code: 200, sourceIP: nil,
                                   message: request.uri.query.map { "console query: \($0)" }))
        let rows = events.map { stored -> HTML in
            let row = AuditRow(stored)
            return "<tr><td>\(row.time)</td><td>\(row.cluster)</td><td>\(row.user)</td><td>\(row.verb)</td><td>\(row.resource)</td><td>\(row.object)</td><td>\(row.code.map(String.init) ?? "")</td></tr>"
        }
        func field(_ name: String, _ label: String, _ hint: String = "") -> HTML {
            "<label>\(label)<input name=\"\(name)\" value=\"\(params[name[...]].map(String.init) ?? "")\" placeholder=\"\(hint)\"></label>"
        }
        let keep = ["cluster", "user", "verb", "resource", "namespace", "name", "since", "until"].map { ($0, params[$0[...]].map(String.init)) }
        let older: HTML = events.count == query.limit
            ? "<a id=\"older\" href=\"\(HTML.href("/console/admin/audit", keep + [("before", "\(events.last!.id)")]))\">Older →</a>" : ""
        let newest: HTML = query.beforeID != nil ? "<a href=\"\(HTML.href("/console/admin/audit", keep))\">← Newest</a> " : ""
        // The tail starts at the newest event stored, whatever page this is.
        let after = try await core.database.auditEvents(Self.newest).first?.id ?? 0
        let stream = HTML.href("/console/admin/audit/stream", keep.filter { !["since", "until"].contains($0.0) } + [("after", "\(after)")])
        return ("Audit", """
            <form class="filters" method="get" action="/console/admin/audit">\(field("cluster", "Cluster", "hub or a cluster"))\(field("user", "User"))\
            \(field("verb", "Verb"))\(field("resource", "Resource"))\(field("namespace", "Namespace"))\(field("name", "Name"))\
            \(field("since", "Since", "2026-11-28T12:00:00Z"))\(field("until", "Until"))<button type="submit">Search</button></form>
            <p class="noprint"><button type="button" id="live-start">Start live tail</button> <span class="muted">new events matching the filters appear on top as they are stored</span></p>
            <table id="live-tail" data-stream="\(stream)"><thead><tr><th>Time</th><th>Cluster</th><th>User</th><th>Verb</th><th>Resource</th><th>Object</th><th>Code</th></tr></thead><tbody></tbody></table>
            <table id="audit-results"><thead><tr><th>Time</th><th>Cluster</th><th>User</th><th>Verb</th><th>Resource</th><th>Object</th><th>Code</th></tr></thead>
            <tbody>\(rows.joined())</tbody></table>
            <p>\(newest)\(older)</p>
            """)
    }

    static let newest = { var q = AuditQuery(limit: 1); q.newestFirst = true; return q }()

    /// One audit event as the console's tables show it.
    struct AuditRow: Codable, Sendable {
        var id: Int64
        var time: String
        var cluster: String
        var user: String
        var verb: String
        var resource: String
        var object: String
        var code: Int?

        init(_ stored: StoredAuditEvent) {
            let event = try? IndexedAuditEvent(raw: stored.event)
            id = stored.id
            time = event?.time ?? ""
            var cluster = stored.cluster
            // A proxied request is a hub event about a cluster: show that cluster.
            if stored.cluster == "hub", let object = try? JSONSerialization.jsonObject(with: stored.event) as? [String: Any],
               let target = (object["annotations"] as? [String: Any])?["tether.dev/cluster"] as? String {
                cluster = "hub → \(target)"
            }
            self.cluster = cluster
            user = event?.user ?? ""
            verb = event?.verb ?? ""
            resource = event?.resource ?? ""
            object = [event?.namespace, event?.name].compactMap { $0 }.joined(separator: "/")
            code = event?.code
        }
    }

    /// Server-sent events: every new event matching the filters, as stored (one
    /// query a second; `Last-Event-ID` resumes after a reconnect).
    static func auditStream(_ request: Request, core: HubCore) async throws -> Response {
        var query = try AdminServer.auditQuery(request, defaultLimit: 500)
        query.since = nil
        query.until = nil
        query.limit = 500
        let resume = request.headers[HTTPField.Name("Last-Event-ID")!].flatMap { Int64($0) }
        query.afterID = resume ?? request.uri.queryParameters["after"].flatMap { Int64(String($0)) } ?? 0
        let start = query
        var headers = HTTPFields()
        headers.append(HTTPField(name: .contentType, value: "text/event-stream"))
        headers.append(HTTPField(name: .cacheControl, value: "no-store"))
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            var page = start
            // An hour at most; the browser's EventSource reconnects where it left off.
            let deadline = ContinuousClock.now + .seconds(3600)
            try await writer.write(ByteBuffer(string: "retry: 2000\n: tail of the hub's audit log\n\n"))
            // Ends at the hub's graceful shutdown too, which would otherwise wait for it.
            while ContinuousClock.now < deadline, !Task.isCancelled, !Task.isShuttingDownGracefully {
                let events = try await core.database.auditEvents(page)
                if let last = events.last {
                    var chunk = ByteBuffer()
                    for event in events {
                        let row = AuditRow(event)
                        let json = (try? JSONEncoder().encode(row)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
                        chunk.writeString("id: \(event.id)\nevent: audit\ndata: \(json)\n\n")
                    }
                    try await writer.write(chunk)
                    page.afterID = last.id
                    if events.count == page.limit { continue }
                } else {
                    try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                }
                try await Task.sleep(for: .seconds(1))
            }
            try await writer.finish(nil)
        })
    }

    static func sessions(_ viewer: Viewer, core: HubCore) async throws -> (String, HTML) {
        let rows = try await core.sessionViews(includeEnded: false).map { s -> HTML in
            """
            <tr><td><code>\(s.id)</code></td><td>\(s.user)</td><td>\(s.groups.joined(separator: ", "))</td><td>\(s.method)</td><td>\(s.issuedBy)</td>\
            <td>\(s.createdAt)</td><td>\(s.expiresAt)</td><td><form method="post" action="/console/admin/sessions/revoke">\
            <input type="hidden" name="csrf" value="\(viewer.csrf)"><input type="hidden" name="id" value="\(s.id)">\
            <button type="submit" class="danger revoke" data-session="\(s.id)">Revoke</button></form></td></tr>
            """
        }
        return ("Sessions", """
            <table id="sessions"><thead><tr><th>Session</th><th>User</th><th>Groups</th><th>How</th><th>Issued by</th><th>Started</th><th>Ends</th><th></th></tr></thead>
            <tbody>\(rows.joined())</tbody></table>
            """)
    }

    static func people(_ viewer: Viewer, core: HubCore) async throws -> (String, HTML) {
        let rows = try await core.personViews().map { p -> HTML in
            let action = p.disabled ? "enable" : "disable"
            return """
                <tr><td>\(p.name)</td><td>\(p.groups.joined(separator: ", "))</td><td>\(p.lastLoginAt)</td><td>\(p.secondFactor ? "TOTP" : "not enrolled")</td>\
                <td class="num">\(p.liveSessions)</td><td>\(p.disabled ? "disabled" : p.lockedUntil.map { "locked until \(HTML.time($0))" } ?? "active")</td>\
                <td><form method="post" action="/console/admin/people/\(action)"><input type="hidden" name="csrf" value="\(viewer.csrf)">\
                <input type="hidden" name="name" value="\(p.name)"><button type="submit" class="\(p.disabled ? "" : "danger ")\(action)">\(action.capitalized)</button></form></td></tr>
                """
        }
        return ("People", """
            <p class="muted">People who signed in through the identity provider. Disabling someone ends their sessions and refuses their next sign-in.</p>
            <table id="people"><thead><tr><th>Person</th><th>Groups</th><th>Last sign-in</th><th>Second factor</th><th>Sessions</th><th>State</th><th></th></tr></thead>
            <tbody>\(rows.joined())</tbody></table>
            """)
    }

    /// `env=prod, region In (eu, us)`; "every cluster" for an empty selector.
    static func describe(_ selector: LabelSelector) -> String {
        let labels = (selector.matchLabels ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let expressions = (selector.matchExpressions ?? []).map { r in
            "\(r.key) \(r.operator.rawValue)" + (r.values.map { " (\($0.joined(separator: ", ")))" } ?? "")
        }
        let all = labels + expressions
        return all.isEmpty ? "every cluster" : all.joined(separator: ", ")
    }

    // MARK: Report period

    static func reportStart(_ request: Request, core: HubCore) throws -> Date {
        try ReportPeriod.start(request.uri.queryParameters["since"].map(String.init), now: core.clock.now())
    }

    static func reportEnd(_ request: Request) throws -> Date? {
        try request.uri.queryParameters["until"].map(String.init).flatMap { $0.isEmpty ? nil : try ReportPeriod.time($0, "until") }
    }
}

/// `--since 30d` or an RFC 3339 time.
enum ReportPeriod {
    static func start(_ text: String?, now: Date) throws -> Date {
        guard let text, !text.isEmpty else { return now.addingTimeInterval(-ComplianceReport.defaultPeriod.seconds) }
        if let date = AuditTime.parse(text) { return date }
        guard let duration = try? DurationParser.parse(text) else {
            throw TetherError(.invalidArgument, "since must be a duration back from now (30d, 12h) or an RFC 3339 time, not \"\(text)\"")
        }
        return now.addingTimeInterval(-duration.seconds)
    }

    static func time(_ text: String, _ what: String) throws -> Date {
        guard let date = AuditTime.parse(text) else { throw TetherError(.invalidArgument, "\(what) must be an RFC 3339 time, e.g. 2026-11-28T12:00:00Z") }
        return date
    }
}
