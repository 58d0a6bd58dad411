/// A parsed `labelSelector` (or `fieldSelector`) query: every requirement must hold.
public struct LabelSelector: Sendable, Equatable {
    public enum Operator: Sendable, Equatable {
        case equals(String), notEquals(String), `in`(Set<String>), notIn(Set<String>), exists, doesNotExist
        case greaterThan(Int), lessThan(Int)
    }
    public struct Requirement: Sendable, Equatable {
        public let key: String
        public let op: Operator
    }
    public let requirements: [Requirement]

    /// The selector that matches everything.
    public static let everything = LabelSelector(requirements: [])

    public init(requirements: [Requirement]) { self.requirements = requirements }

    /// Parses the Kubernetes selector syntax: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
    /// `k notin (a,b)`, `k`, `!k`, `k>1`, `k<1`, joined by commas.
    public init(parsing text: String) throws(EmulatorError) {
        var requirements: [Requirement] = []
        for part in Self.split(text) {
            let term = part.trimmingCharacters(in: .whitespaces)
            if term.isEmpty { continue }
            requirements.append(try Self.requirement(term))
        }
        self.requirements = requirements
    }

    /// Whether labels satisfy every requirement.
    public func matches(_ labels: [String: String]) -> Bool {
        requirements.allSatisfy { r in
            let value = labels[r.key]
            switch r.op {
            case .equals(let v): return value == v
            case .notEquals(let v): return value != v
            case .in(let set): return value.map(set.contains) ?? false
            case .notIn(let set): return value.map { !set.contains($0) } ?? true
            case .exists: return value != nil
            case .doesNotExist: return value == nil
            case .greaterThan(let n): return value.flatMap { Int($0) }.map { $0 > n } ?? false
            case .lessThan(let n): return value.flatMap { Int($0) }.map { $0 < n } ?? false
            }
        }
    }

    private static func split(_ text: String) -> [String] {
        var parts: [String] = [], current = "", depth = 0
        for c in text {
            if c == "(" { depth += 1 } else if c == ")" { depth -= 1 }
            if c == ",", depth == 0 { parts.append(current); current = "" } else { current.append(c) }
        }
        parts.append(current)
        return parts
    }

    private static func requirement(_ term: String) throws(EmulatorError) -> Requirement {
        func bad() -> EmulatorError { EmulatorError.badRequest("unable to parse requirement: invalid selector term \"\(term)\"") }
        if term.hasPrefix("!") {
            let key = term.dropFirst().trimmingCharacters(in: .whitespaces)
            guard isKey(key) else { throw bad() }
            return Requirement(key: key, op: .doesNotExist)
        }
        for (symbol, make) in [("!=", Operator.notEquals), ("==", Operator.equals), ("=", Operator.equals)] as [(String, (String) -> Operator)] {
            if let range = term.range(of: symbol) {
                let key = term[..<range.lowerBound].trimmingCharacters(in: .whitespaces)
                let value = term[range.upperBound...].trimmingCharacters(in: .whitespaces)
                guard isKey(key), !value.contains(where: { "=!()".contains($0) || $0 == " " }) else { throw bad() }
                return Requirement(key: key, op: make(value))
            }
        }
        for (symbol, greater) in [(">", true), ("<", false)] {
            if let range = term.range(of: symbol) {
                let key = term[..<range.lowerBound].trimmingCharacters(in: .whitespaces)
                guard isKey(key), let n = Int(term[range.upperBound...].trimmingCharacters(in: .whitespaces)) else { throw bad() }
                return Requirement(key: key, op: greater ? .greaterThan(n) : .lessThan(n))
            }
        }
        let words = term.split(separator: " ", maxSplits: 1).map(String.init)
        if words.count == 2 {
            let rest = words[1].trimmingCharacters(in: .whitespaces)
            for (word, negated) in [("notin", true), ("in", false)] where rest.hasPrefix(word) {
                let list = rest.dropFirst(word.count).trimmingCharacters(in: .whitespaces)
                guard list.hasPrefix("("), list.hasSuffix(")"), isKey(words[0]) else { throw bad() }
                let values = Set(list.dropFirst().dropLast().split(separator: ",", omittingEmptySubsequences: false)
                    .map { $0.trimmingCharacters(in: .whitespaces) })
                return Requirement(key: words[0], op: negated ? .notIn(values) : .in(values))
            }
            throw bad()
        }
        guard isKey(term) else { throw bad() }
        return Requirement(key: term, op: .exists)
    }

    private static func isKey(_ key: String) -> Bool {
        !key.isEmpty && key.allSatisfy { $0.isLetter || $0.isNumber || "-_./".contains($0) }
    }
}

import Foundation
