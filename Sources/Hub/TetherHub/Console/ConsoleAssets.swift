/// The console's stylesheet and its one script, served by the hub itself
/// (`/console/static/…`): an air-gapped hub needs nothing from a CDN.
enum ConsoleAssets {
    static let css = """
        :root { --ink: #1d2430; --muted: #677084; --line: #d9dde5; --accent: #2457c5; --bad: #b3261e; --good: #1b7f3b; --bar: #5b84d6; }
        * { box-sizing: border-box; }
        body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); margin: 0; }
        header.top { display: flex; gap: 1.2em; align-items: center; padding: .6em 1.2em; border-bottom: 1px solid var(--line); background: #f6f7f9; flex-wrap: wrap; }
        header.top .brand { font-weight: 700; }
        header.top nav a { margin-right: .9em; color: var(--accent); text-decoration: none; }
        header.top nav a.here { font-weight: 700; color: var(--ink); }
        header.top .who { margin-left: auto; color: var(--muted); }
        header.top form { display: inline; }
        main { padding: 1em 1.2em 3em; max-width: 1200px; }
        h1 { font-size: 1.5em; margin: .3em 0 .6em; }
        h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid var(--line); padding-bottom: .2em; }
        h3 { font-size: 1em; margin: 1em 0 .4em; }
        table { border-collapse: collapse; width: 100%; margin: .4em 0 1em; }
        th, td { text-align: left; padding: .3em .5em; border-bottom: 1px solid var(--line); vertical-align: top; }
        th { background: #f0f2f5; font-weight: 600; }
        td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
        code { font: 12px ui-monospace, monospace; background: #f0f2f5; padding: 0 .25em; word-break: break-all; }
        .muted { color: var(--muted); }
        .pass { color: var(--good); font-weight: 600; }
        .fail, .error { color: var(--bad); font-weight: 600; }
        .status-online { color: var(--good); }
        .status-offline, .status-revoked { color: var(--bad); }
        .label { font-size: 12px; fill: var(--ink); }
        .tag { display: inline-block; background: #eef2fb; border: 1px solid #d3dcf3; border-radius: 3px; padding: 0 .35em; margin: 0 .2em .2em 0; font-size: 12px; }
        .chart svg .bar { fill: var(--bar); }
        .chart svg .bar.denied { fill: var(--bad); }
        .chart svg .value { font-size: 11px; fill: var(--muted); }
        .charts { display: flex; flex-wrap: wrap; gap: 2em; }
        form.filters { display: flex; flex-wrap: wrap; gap: .6em; align-items: end; margin-bottom: 1em; }
        form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
        input, button { font: inherit; padding: .25em .5em; }
        button { cursor: pointer; }
        button.danger { color: var(--bad); }
        .checklist { break-inside: avoid; page-break-inside: avoid; }
        @media print {
            header.top, form, .noprint, button { display: none !important; }
            main { max-width: none; padding: 0; }
            body { font-size: 11px; }
            a { color: inherit; text-decoration: none; }
            section, table, figure { break-inside: avoid-page; }
            h2 { break-after: avoid; }
        }
        """

    /// Enhancements only: every page works without it.
    static let script = """
        "use strict";
        document.addEventListener("DOMContentLoaded", () => {
          // Clusters: narrow the table while typing (the form filters on the server too).
          const filter = document.getElementById("cluster-text");
          const table = document.getElementById("clusters");
          if (filter && table) {
            filter.addEventListener("input", () => {
              const q = filter.value.toLowerCase();
              for (const row of table.tBodies[0].rows) row.hidden = q !== "" && !row.textContent.toLowerCase().includes(q);
            });
          }
          // Copy a command line.
          for (const button of document.querySelectorAll("button.copy")) {
            button.addEventListener("click", () => {
              if (navigator.clipboard) navigator.clipboard.writeText(button.dataset.copy);
              button.textContent = "Copied";
            });
          }
          // Audit: the live tail (server-sent events), newest on top.
          const tail = document.getElementById("live-tail");
          const start = document.getElementById("live-start");
          if (tail && start) {
            let source = null;
            start.addEventListener("click", () => {
              if (source) { source.close(); source = null; start.textContent = "Start live tail"; return; }
              source = new EventSource(tail.dataset.stream);
              start.textContent = "Stop live tail";
              source.addEventListener("audit", (message) => {
                const event = JSON.parse(message.data);
                const row = tail.tBodies[0].insertRow(0);
                for (const value of [event.time, event.cluster, event.user, event.verb, event.resource, event.object, event.code]) {
                  row.insertCell().textContent = value === undefined || value === null ? "" : String(value);
                }
                while (tail.tBodies[0].rows.length > 500) tail.tBodies[0].deleteRow(-1);
              });
            });
          }
        });
        """
}
