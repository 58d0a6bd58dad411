/// A Kubernetes `LabelSelector` (`matchLabels` and `matchExpressions`), with the
/// API's semantics: every requirement must hold; an empty selector matches
/// everything.
public struct LabelSelector: Codable, Hashable, Sendable {
    public var matchLabels: [String: String]?
    public var matchExpressions: [Requirement]?

    public struct Requirement: Codable, Hashable, Sendable {
        public var key: String
        public var `operator`: Operator
        public var values: [String]?

        public init(key: String, operator: Operator, values: [String]? = nil) {
            self.key = key
            self.operator = `operator`
            self.values = values
        }
    }

    public enum Operator: String, Codable, Hashable, Sendable, CaseIterable {
        case `in` = "In"
        case notIn = "NotIn"
        case exists = "Exists"
        case doesNotExist = "DoesNotExist"
    }

    public init(matchLabels: [String: String]? = nil, matchExpressions: [Requirement]? = nil) {
        self.matchLabels = matchLabels
        self.matchExpressions = matchExpressions
    }

    /// Refuses what the API server refuses: bad keys or values, In/NotIn without
    /// values, Exists/DoesNotExist with values.
    public func validate() throws {
        for (key, value) in matchLabels ?? [:] {
            try LabelRules.validate(key: key, value: value)
        }
        for (i, requirement) in (matchExpressions ?? []).enumerated() {
            let at = "matchExpressions[\(i)]"
            try LabelRules.validate(key: requirement.key, value: "")
            switch requirement.operator {
            case .in, .notIn:
                guard let values = requirement.values, !values.isEmpty else {
                    throw TetherError(.invalidArgument, "\(at): values must be non-empty for operator \(requirement.operator.rawValue)")
                }
                for value in values { try LabelRules.validate(key: requirement.key, value: value) }
            case .exists, .doesNotExist:
                guard requirement.values?.isEmpty ?? true else {
                    throw TetherError(.invalidArgument, "\(at): values must be empty for operator \(requirement.operator.rawValue)")
                }
            }
        }
    }

    public func matches(_ labels: [String: String]) -> Bool {
        for (key, value) in matchLabels ?? [:] where labels[key] != value {
            return false
        }
        for requirement in matchExpressions ?? [] {
            let value = labels[requirement.key]
            let values = requirement.values ?? []
            switch requirement.operator {
            case .in:
                guard let value, values.contains(value) else { return false }
            case .notIn:
                if let value, values.contains(value) { return false }
            case .exists:
                if value == nil { return false }
            case .doesNotExist:
                if value != nil { return false }
            }
        }
        return true
    }
}
