import Crypto
import Foundation

/// The name of a person's just-in-time service account for one session: `tether-`,
/// the user name made a DNS label (at most 30 characters of it), then 10 hex
/// characters of the session id's SHA-256. The agent names accounts so; the hub
/// computes the same name to attribute the cluster's own audit events to the person.
public enum JITAccountName {
    public static func make(user: String, session: String) -> String {
        var safe = ""
        for scalar in user.lowercased().unicodeScalars {
            if (scalar >= "a" && scalar <= "z") || (scalar >= "0" && scalar <= "9") { safe.unicodeScalars.append(scalar) } else if !safe.hasSuffix("-") { safe += "-" }
        }
        safe = String(safe.trimmingCharacters(in: CharacterSet(charactersIn: "-")).prefix(30)).trimmingCharacters(in: CharacterSet(charactersIn: "-"))
        let hash = SHA256.hash(data: Data(session.utf8)).prefix(5).map { String(format: "%02x", $0) }.joined()
        return "tether-" + (safe.isEmpty ? "" : safe + "-") + hash
    }

    /// Whether a ServiceAccount name has the shape of one (`tether-…-` and 10 hex).
    public static func looksLikeOne(_ name: String) -> Bool {
        guard name.hasPrefix("tether-"), name.count >= 17 else { return false }
        let tail = name.suffix(11)
        return tail.first == "-" && tail.dropFirst().allSatisfy { $0.isHexDigit && !$0.isUppercase }
    }
}
