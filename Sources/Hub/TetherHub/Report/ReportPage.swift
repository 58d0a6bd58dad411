import Foundation

/// The compliance report as a page: the console shows it, `tether-hub report
/// --format html` writes it as one file (its stylesheet inside, nothing fetched),
/// and the browser's print makes the auditor's PDF.
extension ComplianceReport {
    func html() -> HTML {
        let period = "\(HTML.time(since)) to \(HTML.time(until))"
        let failedClusters = checklist.filter { !$0.passed }.map(\.cluster)
        return """
            <section class="report">
            <p class="muted">Period \(period). Generated \(generatedAt) by tether-hub \(hubVersion).</p>
            <section id="summary"><h2>Summary</h2><ul>
            <li><span id="total-requests">\(access.requests)</span> requests by <span id="total-people">\(access.byPerson.count)</span> people \
            to <span id="total-clusters">\(access.byCluster.count)</span> clusters; <span id="total-denied">\(access.denied)</span> denied.</li>
            <li><span id="jit-created">\(credentials.created)</span> just-in-time accounts created, \(credentials.deleted) deleted, \
            \(credentials.live) live; <span id="jit-dangling">\(credentials.dangling.count)</span> dangling.</li>
            <li><span id="drift-events">\(policy.driftEvents)</span> drift events repaired.</li>
            <li>Audit hash chain: <span id="chain" class="\(audit.chain.intact ? "pass" : "fail")">\(audit.chain.intact ? "intact" : "BROKEN")</span> \
            (\(audit.chain.batchesChecked) batches, \(audit.chain.eventsChecked) events verified).</li>
            <li>Zero-trust checklist: \(checklist.count - failedClusters.count) of \(checklist.count) clusters pass\
            \(failedClusters.isEmpty ? "" : "; failing: \(failedClusters.joined(separator: ", "))").</li>
            </ul></section>
            \(accessSection())
            \(credentialSection())
            \(policySection())
            \(auditSection())
            \(checklistSection())
            </section>
            """
    }

    private func accessSection() -> HTML {
        let rows = access.rows.map { row -> HTML in
            "<tr><td>\(row.user)</td><td>\(row.cluster)</td><td>\(row.roles.joined(separator: ", "))</td><td class=\"num\">\(row.requests)</td><td class=\"num\">\(row.denied)</td></tr>"
        }
        let refusals = access.refusals.map { r -> HTML in "<tr><td>\(r.user)</td><td>\(r.cluster)</td><td class=\"num\">\(r.count)</td></tr>" }
        return """
            <section id="access"><h2>Who reached which cluster</h2>
            <div class="charts"><div><h3>Requests per person</h3>\(BarChart.svg(access.byPerson.map { .init(label: $0.name, value: $0.requests, highlighted: $0.denied) }, title: "Requests per person"))</div>
            <div><h3>Requests per cluster</h3>\(BarChart.svg(access.byCluster.map { .init(label: $0.name, value: $0.requests, highlighted: $0.denied) }, title: "Requests per cluster"))</div></div>
            <table id="access-table"><thead><tr><th>Person</th><th>Cluster</th><th>Roles</th><th>Requests</th><th>Denied (403)</th></tr></thead>
            <tbody>\(rows.isEmpty ? "<tr><td colspan=\"5\" class=\"muted\">Nobody reached a cluster in this period.</td></tr>" : rows.joined())</tbody></table>
            <h3>Refused at the hub (no AccessRole)</h3>
            <table id="refusals-table"><thead><tr><th>Person</th><th>Cluster</th><th>Times</th></tr></thead>
            <tbody>\(refusals.isEmpty ? "<tr><td colspan=\"3\" class=\"muted\">None.</td></tr>" : refusals.joined())</tbody></table>
            </section>
            """
    }

    private func credentialSection() -> HTML {
        func account(_ a: Account) -> HTML {
            "<tr><td>\(a.user)</td><td>\(a.cluster)</td><td><code>\(a.session)</code></td><td>\(a.createdAt)</td><td>\(a.endedAt)</td><td class=\"num\">\(Report.duration(a.seconds))</td></tr>"
        }
        let head: HTML = "<thead><tr><th>Person</th><th>Cluster</th><th>Session</th><th>Created</th><th>Ended</th><th>Lived</th></tr></thead>"
        return """
            <section id="credentials"><h2>Just-in-time credentials</h2>
            <p>Created <strong>\(credentials.created)</strong>, deleted <strong>\(credentials.deleted)</strong>, live now \
            <strong>\(credentials.live)</strong>, dangling <strong class="\(credentials.dangling.isEmpty ? "pass" : "fail")">\(credentials.dangling.count)</strong>.</p>
            \(credentials.longestLived.map { "<h3>Longest lived</h3><table>\(head)<tbody>\(account($0))</tbody></table>" as HTML } ?? "")
            \(credentials.dangling.isEmpty ? "<p class=\"pass\">No account of an ended session is left in any cluster.</p>" as HTML
                : "<h3>Dangling (the cluster's agent has not been back since the session ended)</h3><table id=\"dangling-table\">\(head)<tbody>\(credentials.dangling.map(account).joined())</tbody></table>")
            </section>
            """
    }

    private func policySection() -> HTML {
        let rows = policy.bundles.map { b -> HTML in
            "<tr><td>\(b.name)</td><td class=\"num\">\(b.clusters)</td><td class=\"num\">\(b.inSync)</td><td class=\"num\">\(b.pending)</td><td class=\"num\">\(b.failed)</td><td class=\"num\">\(b.drifted)</td><td>\(b.failures.joined(separator: "; "))</td></tr>"
        }
        let repairs = policy.repairs.prefix(200).map { r -> HTML in
            "<tr><td>\(r.at)</td><td>\(r.cluster)</td><td>\(r.object)</td><td>\(r.message)</td></tr>"
        }
        let timing: HTML = policy.medianRepairSeconds.map { median in
            "<p>Time to repair: median <strong>\(median * 1000, decimals: 0) ms</strong>, longest <strong>\((policy.maxRepairSeconds ?? 0) * 1000, decimals: 0) ms</strong>.</p>"
        } ?? ""
        return """
            <section id="policy"><h2>Policy coverage</h2>
            <table id="policy-table"><thead><tr><th>Bundle</th><th>Clusters</th><th>In sync</th><th>Pending</th><th>Failed</th><th>Drifted in period</th><th>Failures</th></tr></thead>
            <tbody>\(rows.isEmpty ? "<tr><td colspan=\"7\" class=\"muted\">No policy bundles.</td></tr>" : rows.joined())</tbody></table>
            <p><strong>\(policy.driftEvents)</strong> drift events, each repaired by the cluster's agent.</p>\(timing)
            \(repairs.isEmpty ? "" : "<table id=\"repairs-table\"><thead><tr><th>When</th><th>Cluster</th><th>Object</th><th>What the agent did</th></tr></thead><tbody>\(repairs.joined())</tbody></table>" as HTML)
            </section>
            """
    }

    private func auditSection() -> HTML {
        let rows = audit.clusters.map { c -> HTML in
            let periods = c.offline.map { p -> HTML in "\(p.from) – \(p.until.map(HTML.time) ?? "still offline")" }.joined(separator: "<br>")
            return "<tr><td>\(c.cluster)</td><td class=\"num\">\(c.eventsReceived)</td><td class=\"num\">\(c.spoolRefused)</td><td class=\"num\">\(Report.duration(c.offlineSeconds))</td><td>\(periods)</td></tr>"
        }
        return """
            <section id="audit"><h2>Audit completeness</h2>
            <p>Hash chain: <strong class="\(audit.chain.intact ? "pass" : "fail")">\(audit.chain.intact ? "intact" : "broken: \(audit.chain.problem ?? "")")</strong>, \
            \(audit.chain.batchesChecked) batches and \(audit.chain.eventsChecked) events verified.</p>
            <div class="charts"><div><h3>Events received per cluster</h3>\(BarChart.svg(audit.clusters.sorted { $0.eventsReceived > $1.eventsReceived }.map { .init(label: $0.cluster, value: $0.eventsReceived) }, title: "Audit events received per cluster"))</div></div>
            <table id="audit-table"><thead><tr><th>Cluster</th><th>Events received</th><th>Spool refused (429)</th><th>Offline</th><th>Offline periods</th></tr></thead>
            <tbody>\(rows.joined())</tbody></table>
            </section>
            """
    }

    private func checklistSection() -> HTML {
        let clusters = checklist.map { c -> HTML in
            let checks = c.checks.map { check -> HTML in
                "<tr><td class=\"\(check.passed ? "pass" : "fail")\">\(check.passed ? "✓" : "✗")</td><td>\(check.name)</td><td>\(check.detail)</td></tr>"
            }
            return """
                <div class="checklist" id="checklist-\(c.cluster)"><h3>\(c.cluster) <span class="\(c.passed ? "pass" : "fail")">\(c.passed ? "passes" : "fails")</span></h3>
                <table><tbody>\(checks.joined())</tbody></table></div>
                """
        }
        return "<section id=\"checklist\"><h2>Zero-trust checklist</h2>\(clusters.joined())</section>"
    }

    /// The report as a page of its own (`tether-hub report --format html`).
    func standaloneHTML() -> String {
        """
        <!doctype html><html lang="en"><head><meta charset="utf-8"><title>Tether compliance report</title>
        <style>\(ConsoleAssets.css)</style></head>
        <body><main><h1>Tether compliance report</h1>
        \(html().rendered)
        </main></body></html>
        """
    }
}
