import Foundation
import KubeEmulator
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherAgent
@testable import TetherHub

/// A real browser (headless chromium through selenium, Tests/browser/console.py)
/// against the hub's console: sign-in through the test OpenID Connect provider with
/// the second factor, one click to a kubeconfig that kubectl uses against the
/// emulator, the session ended from the page, the report as an admin and refused to
/// a non-admin. Screenshots go to .build/artifacts/console/.
@Suite(.serialized) struct ConsoleBrowserTests {
    /// The driver process: one JSON command a line in, `REPLY N {json}` out.
    final class Browser: @unchecked Sendable {
        let process: ChildProcess
        private var sent = 0

        init(hub: String, downloads: String) async throws {
            let (python, script) = try Tools.browser()
            process = try ChildProcess(python, [script, "--hub", hub, "--artifacts", try Tools.artifacts("console"), "--downloads", downloads],
                                       interactive: true)
            let process = self.process
            try await eventually(timeout: .seconds(60), "the browser driver to start") {
                process.output.contains("READY") || process.output.contains("cannot start")
            }
            guard process.output.contains("READY") else { throw TetherError(.unavailable, process.output) }
        }

        /// Runs one command; a failure in the browser fails the test with the page it was on.
        @discardableResult
        func run(_ command: [String: Any], sourceLocation: SourceLocation = #_sourceLocation) async throws -> [String: Any] {
            sent += 1
            let tag = "REPLY \(sent) "
            try process.send(String(decoding: try JSONSerialization.data(withJSONObject: command), as: UTF8.self) + "\n")
            try await process.waitForOutput(containing: tag, timeout: .seconds(90))
            let line = try #require(process.output.components(separatedBy: "\n").first { $0.hasPrefix(tag) })
            let reply = try #require(try JSONSerialization.jsonObject(with: Data(line.dropFirst(tag.count).utf8)) as? [String: Any])
            if let failed = reply["failed"] as? String {
                Issue.record("browser: \(command["do"] ?? "?") failed: \(failed)\npage: \(reply["page"] ?? "")", sourceLocation: sourceLocation)
                throw TetherError(.internalError, "browser command failed")
            }
            return reply
        }

        func open(_ path: String) async throws -> [String: Any] { try await run(["do": "open", "path": path]) }
        func screenshot(_ name: String) async throws { try await run(["do": "screenshot", "name": name]) }

        func quit() async {
            _ = try? process.send(#"{"do": "quit"}"# + "\n")
            process.closeInput()
            _ = await process.waitForExit()
        }
    }

    func accounts(_ emulator: KubeEmulator, of user: String) -> [String] {
        emulator.objects(.serviceAccounts, namespace: "default").filter { $0[path: ["metadata", "annotations", "tether.dev/user"]]?.string == user }
            .compactMap { $0[path: ["metadata", "name"]]?.string }
    }

    @Test func signInKubeconfigKubectlEndSessionAndTheReport() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let provider = try await OIDCTestProvider.start()
        var oidc = OIDCSettings(issuer: provider.issuer, clientID: "tether")
        oidc.clientSecret = "tether-test-secret"
        let cluster = try await EmulatedCluster.start(dir, roles: EmulatedCluster.prodView, oidc: oidc)
        try await provider.setUser("bob", claims: ["email": "bob@example.com", "groups": ["developers"]])
        try await provider.setUser("ada", claims: ["email": "ada@example.com", "groups": ["developers", HubSettings.defaultAdminGroup]])
        let browser = try await Browser(hub: cluster.endpoint.url, downloads: dir.sub("downloads"))
        do {
            // Sign in: the provider's form, then the second factor the hub asks for.
            let home = try await browser.run(["do": "signin", "sub": "bob"])
            #expect((home["url"] as? String)?.hasSuffix("/console/") == true, "\(home)")
            #expect(home["h1"] as? String == "Clusters")
            let text = home["text"] as? String ?? ""
            #expect(text.contains("Signed in as bob@example.com") && text.contains("prod-eu") && text.contains("ClusterRole/view"), "\(text)")
            // A non-admin has no admin links.
            #expect(!text.contains("Report") && !text.contains("People"), "\(text)")
            try await browser.screenshot("clusters")

            // One click: a kubeconfig kubectl uses at once.
            let download = try await browser.run(["do": "download", "css": "#kubeconfig-prod-eu", "file": "tether-prod-eu.kubeconfig"])
            let kubeconfig = try #require(download["path"] as? String)
            let kubectl = try Tools.kubectl()
            let listed = try await runCommand(kubectl, ["--kubeconfig", kubeconfig, "--request-timeout", "20s", "get", "pods", "-n", "default"],
                                              environment: ["HOME": dir.path])
            #expect(listed.status == 0, "\(listed.stderr)")
            #expect(!accounts(cluster.emulator, of: "bob@example.com").isEmpty)

            // My access: the role and why, and the session to end.
            let access = try await browser.open("/console/access")
            let accessText = access["text"] as? String ?? ""
            #expect(accessText.contains("AccessRole prod-view") && accessText.contains("(this browser)"), "\(accessText)")
            try await browser.screenshot("my-access")

            // Admin pages refuse a non-admin, and show none of their content.
            for path in ["/console/report", "/console/report.json", "/console/admin/audit", "/console/admin/audit/stream", "/console/admin/sessions",
                         "/console/admin/people", "/console/admin/policy"] {
                let refused = try await browser.open(path)
                #expect(refused["h1"] as? String == "Forbidden", "\(path): \(refused)")
                #expect(!(refused["text"] as? String ?? "").contains("Zero-trust"), "\(path)")
            }
            try await browser.screenshot("report-forbidden")

            // End the session from the page: kubectl is refused, the account is gone.
            _ = try await browser.open("/console/access")
            let ended = try await browser.run(["do": "click", "css": "button.end-session"])
            #expect(ended["h1"] as? String == "Signed out", "\(ended)")
            let after = try await runCommand(kubectl, ["--kubeconfig", kubeconfig, "--request-timeout", "20s", "get", "pods", "-n", "default"],
                                             environment: ["HOME": dir.path])
            #expect(after.status != 0 && after.stderr.contains("You must be logged in to the server"), "\(after.stderr)")
            try await eventually(timeout: .seconds(5), "bob's JIT account removed") { accounts(cluster.emulator, of: "bob@example.com").isEmpty }
            let back = try await browser.open("/console/")
            #expect((back["url"] as? String)?.contains("/console/") == false, "an ended session must not reach the console: \(back)")

            // An admin: the report, with bob's requests in it.
            let admin = try await browser.run(["do": "signin", "sub": "ada"])
            #expect((admin["text"] as? String ?? "").contains("Report"), "\(admin)")
            let report = try await browser.open("/console/report")
            #expect(report["h1"] as? String == "Compliance report", "\(report)")
            let reportText = report["text"] as? String ?? ""
            #expect(reportText.contains("bob@example.com") && reportText.contains("Zero-trust checklist") && reportText.contains("intact"), "\(reportText)")
            let people = try await browser.run(["do": "texts", "css": "#access-table tbody tr"])
            let bobRow = (people["texts"] as? [String] ?? []).first { $0.contains("bob@example.com") } ?? ""
            #expect(bobRow.contains("prod-eu") && bobRow.contains("ClusterRole/view"), "\(people)")
            try await browser.screenshot("report")

            // The live tail: an event stored after the page opened appears on it.
            _ = try await browser.open("/console/admin/audit")
            try await browser.run(["do": "click", "css": "#live-start"])
            await cluster.hub.core.audit(HubAction(verb: "create", resource: "livetailprobes", name: "probe-1", user: "test", code: 201, sourceIP: nil))
            try await browser.run(["do": "wait-text", "css": "#live-tail", "text": "livetailprobes"])
            try await browser.screenshot("audit-live-tail")

            // People: disable bob from the page.
            _ = try await browser.open("/console/admin/people")
            try await browser.run(["do": "click", "css": "form[action='/console/admin/people/disable'] input[value='bob@example.com'] ~ button"])
            #expect(try await cluster.hub.core.personViews().first { $0.name == "bob@example.com" }?.disabled == true)
            try await browser.screenshot("people")
        } catch {
            await browser.quit()
            try? await cluster.stop()
            await provider.stop()
            throw error
        }
        await browser.quit()
        try await cluster.stop()
        await provider.stop()
    }
}
