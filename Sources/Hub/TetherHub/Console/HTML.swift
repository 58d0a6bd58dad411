import Foundation

/// A fragment of HTML that is safe to send: text interpolated into it is escaped,
/// other fragments are inserted as they are. The console and the report are built
/// from these, so a cluster label or an audit field can never become markup.
///
///     let row: HTML = "<tr><td>\(user)</td><td>\(count)</td></tr>"   // user escaped
///     let table: HTML = "<table>\(rows.joined())</table>"             // rows as built
struct HTML: Sendable, Equatable, ExpressibleByStringInterpolation, CustomStringConvertible {
    let rendered: String

    init(stringLiteral value: String) { rendered = value }
    init(stringInterpolation: Interpolation) { rendered = stringInterpolation.output }
    /// Markup this program built itself (an SVG it drew): never text from outside.
    init(trusted markup: String) { rendered = markup }

    var description: String { rendered }

    struct Interpolation: StringInterpolationProtocol {
        var output = ""
        init(literalCapacity: Int, interpolationCount: Int) { output.reserveCapacity(literalCapacity * 2) }
        mutating func appendLiteral(_ literal: String) { output += literal }
        mutating func appendInterpolation(_ html: HTML) { output += html.rendered }
        mutating func appendInterpolation(_ text: String) { output += HTML.escape(text) }
        mutating func appendInterpolation(_ text: String?) { output += HTML.escape(text ?? "") }
        mutating func appendInterpolation<N: BinaryInteger>(_ number: N) { output += String(number) }
        mutating func appendInterpolation(_ number: Double, decimals: Int) { output += String(format: "%.\(decimals)f", number) }
        mutating func appendInterpolation(_ date: Date?) { output += HTML.escape(date.map(HTML.time) ?? "—") }
    }

    static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for c in text.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// UTC to the second, as the CLI's tables show times.
    static func time(_ date: Date) -> String {
        date.formatted(.iso8601.year().month().day().dateTimeSeparator(.space).time(includingFractionalSeconds: false)) + " UTC"
    }

    /// A link with its query built from `items` (nil values left out).
    static func href(_ path: String, _ items: [(String, String?)]) -> String {
        var components = URLComponents()
        components.path = path
        let query = items.compactMap { item in item.1.map { URLQueryItem(name: item.0, value: $0) } }
        components.queryItems = query.isEmpty ? nil : query
        return components.string ?? path
    }
}

extension Sequence where Element == HTML {
    func joined(separator: HTML = "") -> HTML {
        HTML(trusted: map(\.rendered).joined(separator: separator.rendered))
    }
}

/// Bar charts drawn by the hub as SVG: no script, no network, prints as it shows.
enum BarChart {
    struct Bar: Sendable {
        var label: String
        var value: Int
        /// The part of `value` shown in the second colour (denied requests).
        var highlighted: Int = 0
    }

    /// Horizontal bars, one per row, scaled to the largest; at most `limit` rows.
    static func svg(_ bars: [Bar], title: String, limit: Int = 20) -> HTML {
        let shown = Array(bars.prefix(limit))
        guard !shown.isEmpty else { return "<p class=\"muted\">No data in this period.</p>" }
        let rowHeight = 22, labelWidth = 170, barWidth = 360, width = labelWidth + barWidth + 80
        let height = shown.count * rowHeight + 8
        let top = max(1, shown.map(\.value).max() ?? 1)
        var parts: [HTML] = []
        for (i, bar) in shown.enumerated() {
            let y = i * rowHeight + 4
            let w = max(1, bar.value * barWidth / top)
            let hw = bar.highlighted > 0 ? max(1, bar.highlighted * barWidth / top) : 0
            let label = bar.label.count > 26 ? String(bar.label.prefix(25)) + "…" : bar.label
            parts.append("""
                <text x="\(labelWidth - 6)" y="\(y + 15)" text-anchor="end" class="label">\(label)</text>\
                <rect x="\(labelWidth)" y="\(y + 3)" width="\(w)" height="\(rowHeight - 8)" class="bar"><title>\(bar.label): \(bar.value)</title></rect>\
                \(hw > 0 ? "<rect x=\"\(labelWidth)\" y=\"\(y + 3)\" width=\"\(hw)\" height=\"\(rowHeight - 8)\" class=\"bar denied\"><title>\(bar.label): \(bar.highlighted) denied</title></rect>" as HTML : "")\
                <text x="\(labelWidth + w + 6)" y="\(y + 15)" class="value">\(bar.value)</text>
                """)
        }
        let more: HTML = bars.count > limit ? "<p class=\"muted\">\(bars.count - limit) more not drawn; all are in the table.</p>" : ""
        return """
            <figure class="chart"><svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="\(title)" width="\(width)" height="\(height)" \
            viewBox="0 0 \(width) \(height)"><title>\(title)</title>\(parts.joined())</svg>\(more)</figure>
            """
    }
}

extension HTML {
    static func + (a: HTML, b: HTML) -> HTML { HTML(trusted: a.rendered + b.rendered) }
}
