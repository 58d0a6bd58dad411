/// Parses the durations operators type: `90s`, `15m`, `24h`, `7d`, or combinations
/// such as `1h30m`. A bare number is refused so that units are never guessed.
public enum DurationParser {
    /// The longest duration accepted anywhere (100 years). Far beyond any setting
    /// that makes sense, and far below where the millisecond count, `Date`
    /// arithmetic or certificate validity dates would overflow: a typo such as
    /// `1000000000000000000000d` is refused instead of trapping the process.
    public static let maximum: Duration = .seconds(36_500 * 86_400)

    public static func parse(_ text: String) throws -> Duration {
        let fail = TetherError(.invalidArgument,
            "invalid duration '\(text)': use a number with a unit, e.g. 90s, 15m, 24h, 7d or 1h30m")
        var total: Double = 0
        var number = ""
        var sawUnit = false
        for ch in text {
            // ASCII only: `isNumber` would also let through digits of other scripts
            // and fractions such as '½'.
            if ch.isASCII, ch.isNumber || ch == "." {
                number.append(ch)
                continue
            }
            guard let value = Double(number), value.isFinite else { throw fail }
            let unit: Double
            switch ch {
            case "s": unit = 1
            case "m": unit = 60
            case "h": unit = 3600
            case "d": unit = 86_400
            default: throw fail
            }
            total += value * unit
            number = ""
            sawUnit = true
        }
        guard number.isEmpty, sawUnit, total > 0 else { throw fail }
        // Checked before converting: Int64(Double) traps on values it cannot hold.
        guard total.isFinite, total <= maximum.seconds else {
            throw TetherError(.invalidArgument, "duration '\(text)' is too long: at most \(format(maximum)) (100 years)")
        }
        return .milliseconds(Int64((total * 1000).rounded()))
    }

    /// A number of seconds a client sent (JSON), as a duration; refuses values that
    /// are not finite, not positive or longer than `maximum` before converting them.
    public static func duration(seconds: Double, field: String) throws -> Duration {
        guard seconds.isFinite, seconds > 0, seconds <= maximum.seconds else {
            throw TetherError(.invalidArgument, "\(field) must be a number of seconds more than 0 and at most \(Int64(maximum.seconds)) (got \(seconds))")
        }
        return .milliseconds(Int64((seconds * 1000).rounded()))
    }

    /// Formats a duration the way `parse` reads it (largest units first).
    public static func format(_ duration: Duration) -> String {
        var seconds = Int64(duration.components.seconds)
        if seconds == 0 { return "0s" }
        var out = ""
        for (unit, size) in [("d", Int64(86_400)), ("h", 3600), ("m", 60), ("s", 1)] where seconds >= size {
            out += "\(seconds / size)\(unit)"
            seconds %= size
        }
        return out
    }
}

extension Duration {
    /// The duration in seconds as a floating-point number.
    public var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
