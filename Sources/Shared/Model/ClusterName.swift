/// A cluster's name at the hub: a DNS-1123 label (lowercase alphanumerics and '-',
/// starting and ending with an alphanumeric, at most 63 characters), as Kubernetes
/// names namespaces, so it is safe in certificates, URIs and label values.
public struct ClusterName: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public let rawValue: String

    public init(_ rawValue: String) throws {
        guard let problem = Self.problem(with: rawValue) else {
            self.rawValue = rawValue
            return
        }
        throw TetherError(.invalidArgument, "invalid cluster name '\(rawValue)': \(problem)")
    }

    /// The name reserved for the hub's own audit events.
    public static let reserved: Set<String> = ["hub"]

    static func problem(with name: String) -> String? {
        if name.isEmpty { return "must not be empty" }
        if name.utf8.count > 63 { return "must be at most 63 characters" }
        let allowed = name.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 }
        if !allowed { return "must consist of lowercase letters, digits and '-' (a DNS-1123 label)" }
        if name.hasPrefix("-") || name.hasSuffix("-") { return "must start and end with a letter or digit" }
        if reserved.contains(name) { return "'\(name)' is reserved" }
        return nil
    }

    public init(from decoder: any Decoder) throws {
        try self.init(try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }

    public var description: String { rawValue }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}
