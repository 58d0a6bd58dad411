/// Kubernetes-style label validation, shared by the hub's API and the CLI.
public enum LabelRules {
    /// Parses `KEY=VALUE`.
    public static func parseAssignment(_ text: String) throws -> (key: String, value: String) {
        guard let eq = text.firstIndex(of: "=") else {
            throw TetherError(.invalidArgument, "label '\(text)' must be KEY=VALUE")
        }
        let key = String(text[..<eq])
        let value = String(text[text.index(after: eq)...])
        try validate(key: key, value: value)
        return (key, value)
    }

    /// Checks a label key (optional DNS subdomain prefix + '/' + name) and value the way
    /// the Kubernetes API does, so labels can later select clusters like objects.
    public static func validate(key: String, value: String) throws {
        var name = Substring(key)
        if let slash = key.lastIndex(of: "/") {
            let prefix = key[..<slash]
            name = key[key.index(after: slash)...]
            let prefixOK = !prefix.isEmpty && prefix.count <= 253
                && prefix.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { part in
                    !part.isEmpty && part.utf8.allSatisfy { isLowerAlnum($0) || $0 == 45 }
                        && isLowerAlnum(part.utf8.first!) && isLowerAlnum(part.utf8.last!)
                }
            guard prefixOK else {
                throw TetherError(.invalidArgument, "label key '\(key)': prefix must be a DNS subdomain")
            }
        }
        guard isQualifiedName(name) else {
            throw TetherError(.invalidArgument,
                "label key '\(key)': name must be 1-63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric")
        }
        guard value.isEmpty || isQualifiedName(Substring(value)) else {
            throw TetherError(.invalidArgument,
                "label value '\(value)' for '\(key)': must be at most 63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric")
        }
    }

    static func isLowerAlnum(_ c: UInt8) -> Bool { (c >= 97 && c <= 122) || (c >= 48 && c <= 57) }
    static func isAlnum(_ c: UInt8) -> Bool { isLowerAlnum(c) || (c >= 65 && c <= 90) }

    static func isQualifiedName(_ s: Substring) -> Bool {
        let u = s.utf8
        guard let first = u.first, let last = u.last, u.count <= 63 else { return false }
        return isAlnum(first) && isAlnum(last) && u.allSatisfy { isAlnum($0) || $0 == 45 || $0 == 95 || $0 == 46 }
    }
}
