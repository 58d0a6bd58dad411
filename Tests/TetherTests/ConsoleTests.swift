import AsyncHTTPClient
import Foundation
import NIOCore
import NIOSSL
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherHub

/// The console's guards over plain HTTPS: the session cookie on every request, the
/// admin group on every admin route (pages, forms, JSON, the event stream), CSRF
/// tokens on every form, a Content-Security-Policy with no inline script, and text
/// from the cluster or the audit log escaped.
@Suite struct ConsoleTests {
    struct Fixture {
        let dir: TemporaryDirectory
        let hub: TestHub
        let endpoint: AccessEndpoint
        let client: HTTPClient
        let admin: String
        let person: String
        let adminSession: SessionRecord

        static func start() async throws -> Fixture {
            let dir = try TemporaryDirectory()
            let hub = try await TestHub.start(dataDir: dir.sub("hub"))
            _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: ["env": "prod"])
            guard let endpoint = await hub.core.accessEndpoint.value else { throw TetherError(.unavailable, "no access listener") }
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array((endpoint.caCertificate ?? "").utf8)))
            let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls, redirectConfiguration: .disallow))
            let admin = try await hub.core.createSession(user: "ada", groups: [HubSettings.defaultAdminGroup], ttl: nil)
            let person = try await hub.core.createSession(user: "bob", groups: ["developers"], ttl: nil)
            return Fixture(dir: dir, hub: hub, endpoint: endpoint, client: client, admin: admin.credential, person: person.credential,
                           adminSession: admin.session)
        }

        func stop() async throws {
            try await client.shutdown()
            try await hub.stop()
            dir.remove()
        }

        /// Runs `body` and stops everything whatever it throws (a client left running
        /// would abort the whole test process).
        static func with(_ body: (Fixture) async throws -> Void) async throws {
            let fixture = try await start()
            do {
                try await body(fixture)
            } catch {
                try? await fixture.stop()
                throw error
            }
            try await fixture.stop()
        }

        func get(_ path: String, as credential: String?) async throws -> (status: Int, headers: [(String, String)], body: String) {
            var request = HTTPClientRequest(url: endpoint.url + path)
            if let credential { request.headers.add(name: "Cookie", value: "\(AccessProxy.sessionCookie)=\(credential)") }
            let response = try await client.execute(request, timeout: .seconds(30))
            // The event stream never ends by itself: its first bytes are enough.
            var body = ""
            for try await chunk in response.body {
                body += String(buffer: chunk)
                if response.headers.first(name: "Content-Type") == "text/event-stream" { break }
            }
            return (Int(response.status.code), response.headers.map { ($0.name, $0.value) }, body)
        }

        func post(_ path: String, _ form: String, as credential: String) async throws -> (status: Int, body: String) {
            var request = HTTPClientRequest(url: endpoint.url + path)
            request.method = .POST
            request.headers.add(name: "Cookie", value: "\(AccessProxy.sessionCookie)=\(credential)")
            request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
            request.body = .bytes(ByteBuffer(string: form))
            let response = try await client.execute(request, timeout: .seconds(10))
            return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 1 << 20)))
        }
    }

    static let adminPages = ["/console/admin/policy", "/console/admin/audit", "/console/admin/audit/stream", "/console/admin/sessions",
                             "/console/admin/people", "/console/report", "/console/report.json"]

    @Test func everyPageNeedsASessionAndAdminPagesTheAdminGroup() async throws {
        try await Fixture.with { fixture in
            for path in ["/console/", "/console/access", "/console/clusters/prod-eu/kubeconfig"] + Self.adminPages {
                let anonymous = try await fixture.get(path, as: nil)
                #expect(anonymous.status == 302 && anonymous.headers.contains { $0 == ("Location", "/login") }, "\(path): \(anonymous.status)")
                let forged = try await fixture.get(path, as: "tether-session.v1.forged.x")
                #expect(forged.status == 302, "\(path)")
            }
            for path in Self.adminPages {
                let refused = try await fixture.get(path, as: fixture.person)
                #expect(refused.status == 403, "\(path): \(refused.status)")
                #expect(!refused.body.contains("ada") && !refused.body.contains("Zero-trust") && !refused.body.contains("\"access\""), "\(path) leaks: \(refused.body.prefix(300))")
                let allowed = try await fixture.get(path, as: fixture.admin)
                #expect(allowed.status == 200, "\(path): \(allowed.status) \(allowed.body.prefix(300))")
            }
            // Admin forms refuse a non-admin even with a valid token of their own.
            let bob = try await fixture.hub.core.authenticate(credential: fixture.person)
            let bobsToken = AccessProxy.csrfToken(bob, core: fixture.hub.core)
            let revoke = try await fixture.post("/console/admin/sessions/revoke", "csrf=\(bobsToken)&id=\(fixture.adminSession.id)", as: fixture.person)
            #expect(revoke.status == 403)
            #expect(try await fixture.hub.core.sessionViews(includeEnded: false).contains { $0.id == fixture.adminSession.id })
            // Bob reaches no cluster: his kubeconfig download is refused, the cluster not shown.
            let download = try await fixture.get("/console/clusters/prod-eu/kubeconfig", as: fixture.person)
            #expect(download.status == 403)
            #expect(!(try await fixture.get("/console/", as: fixture.person).body.contains("prod-eu")))
        }
    }

    @Test func formsNeedTheSessionsCSRFTokenAndPagesRunNoInlineScript() async throws {
        try await Fixture.with { fixture in
            let bob = try await fixture.hub.core.authenticate(credential: fixture.person)
            for form in ["id=\(bob.id)", "csrf=forged&id=\(bob.id)", "csrf=\(AccessProxy.csrfToken(bob, core: fixture.hub.core))&id=\(bob.id)"] {
                // The admin's page posting with no token, a forged one, or someone else's.
                let answer = try await fixture.post("/console/admin/sessions/revoke", form, as: fixture.admin)
                #expect(answer.status == 403 && answer.body.contains("CSRF"), "\(form): \(answer.status)")
            }
            #expect(try await fixture.hub.core.sessionViews(includeEnded: false).contains { $0.id == bob.id })
            let page = try await fixture.get("/console/admin/sessions", as: fixture.admin)
            let token = try #require(page.body.components(separatedBy: "name=\"csrf\" value=\"").dropFirst().first?.prefix { $0 != "\"" })
            let revoked = try await fixture.post("/console/admin/sessions/revoke", "csrf=\(token)&id=\(bob.id)", as: fixture.admin)
            #expect(revoked.status == 303)
            #expect(try await fixture.hub.core.sessionViews(includeEnded: false).allSatisfy { $0.id != bob.id })

            // A hostile value in the audit log is shown as text.
            await fixture.hub.core.audit(HubAction(verb: "get", resource: "pods", name: "<script>alert(1)</script>", user: "mallory", code: 200, sourceIP: nil))
            for path in ["/console/", "/console/access", "/console/admin/audit", "/console/admin/policy", "/console/admin/sessions", "/console/admin/people",
                         "/console/report"] {
                let answer = try await fixture.get(path, as: fixture.admin)
                let csp = answer.headers.first { $0.0.lowercased() == "content-security-policy" }?.1 ?? ""
                #expect(csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "\(path): \(csp)")
                // Scripts only from the hub's file, no inline handlers or styles.
                let scripts = answer.body.components(separatedBy: "<script").dropFirst()
                #expect(scripts.allSatisfy { $0.hasPrefix(" src=\"/console/static/console.js\"") }, "\(path)")
                #expect(!answer.body.contains(" onclick=") && !answer.body.contains(" style=\""), "\(path)")
                #expect(!answer.body.contains("<script>alert"), "\(path)")
            }
            #expect(try await fixture.get("/console/admin/audit", as: fixture.admin).body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"))
        }
    }

    @Test func theKubeconfigDownloadCarriesTheSessionForOneCluster() async throws {
        try await Fixture.with { fixture in
            try await fixture.hub.core.applyAccessRoles(try AccessRoleParser.parse(yaml: EmulatedCluster.prodView, file: "roles.yaml"))
            let answer = try await fixture.get("/console/clusters/prod-eu/kubeconfig", as: fixture.person)
            #expect(answer.status == 200)
            #expect(answer.headers.contains { $0.0.lowercased() == "content-disposition" && $0.1.contains("tether-prod-eu.kubeconfig") })
            #expect(answer.headers.contains { $0.0.lowercased() == "cache-control" && $0.1 == "no-store" })
            #expect(answer.body.contains("server: \(fixture.endpoint.url)/clusters/prod-eu") && answer.body.contains("token: \(fixture.person)"), "\(answer.body)")
            #expect(answer.body.contains("certificate-authority-data:") && answer.body.contains("current-context: tether-prod-eu"))
            let clusters = try await fixture.get("/console/?label=env%3Dprod&q=prod", as: fixture.person)
            #expect(clusters.body.contains("id=\"kubeconfig-prod-eu\""))
            let filtered = try await fixture.get("/console/?label=env%3Dstaging", as: fixture.person)
            #expect(!filtered.body.contains("id=\"kubeconfig-prod-eu\"") && filtered.body.contains("No cluster you can reach matches."))
            #expect(try await fixture.hub.core.database.auditEvents(AuditQuery(resource: "kubeconfigs")).count == 1)
        }
    }
}
