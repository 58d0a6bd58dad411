/// Which request and response headers a tunnel carries. The hub strips these
/// before a request leaves it and the agent strips them again before the API
/// server sees it: the person's credential (the agent uses the just-in-time
/// account's), impersonation, cookies and hop-by-hop headers.
public enum TunnelHeaders {
    public static let dropped: Set<String> = [
        "authorization", "connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "content-length", "cookie",
    ]

    public static func isCarried(_ name: String) -> Bool {
        let lower = name.lowercased()
        return !dropped.contains(lower) && !lower.hasPrefix("impersonate-")
    }

    public static func carried(_ headers: [(name: String, value: String)]) -> [(name: String, value: String)] {
        headers.filter { isCarried($0.name) }
    }
}
