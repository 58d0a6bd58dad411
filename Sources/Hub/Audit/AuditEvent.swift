import Foundation
import Shared

/// An audit.k8s.io/v1 Event as received, with the fields the hub indexes.
struct IndexedAuditEvent: Sendable {
    var raw: Data
    var auditID: String
    var stage: String
    /// `stageTimestamp` in fixed-width UTC (`2026-11-28T12:25:47.318195Z`): sorts as text.
    var time: String
    var user: String?
    var impersonatedUser: String?
    var verb: String?
    var resource: String?
    var namespace: String?
    var name: String?
    var code: Int?

    /// Reads the indexed fields of one event; the error names what is missing.
    /// Scans the JSON rather than parsing all of it: this runs for every event.
    init(raw: Data) throws {
        var fields: [String: String] = [:]
        var code: Int?
        do {
            try JSONScanner.with(raw) { scanner in
                for (key, range) in try scanner.members() {
                    switch String(Substring(key)) {
                    case "auditID", "stage", "stageTimestamp", "requestReceivedTimestamp", "verb":
                        if let value = scanner.string(range) { fields[String(Substring(key))] = value }
                    case "user", "impersonatedUser":
                        var sub = scanner.at(range)
                        for (k, r) in (try? sub.members()) ?? [] where Substring(k) == "username" {
                            fields[String(Substring(key))] = sub.string(r)
                        }
                    case "objectRef":
                        var sub = scanner.at(range)
                        for (k, r) in (try? sub.members()) ?? [] {
                            let name = String(Substring(k))
                            if ["resource", "namespace", "name"].contains(name) { fields["ref." + name] = sub.string(r) }
                        }
                    case "responseStatus":
                        var sub = scanner.at(range)
                        for (k, r) in (try? sub.members()) ?? [] where Substring(k) == "code" { code = sub.int(r) }
                    default:
                        continue
                    }
                }
            }
        } catch {
            throw TetherError(.invalidArgument, "audit event is not a JSON object")
        }
        guard let auditID = fields["auditID"], !auditID.isEmpty else {
            throw TetherError(.invalidArgument, "audit event has no auditID")
        }
        guard let stage = fields["stage"], !stage.isEmpty else {
            throw TetherError(.invalidArgument, "audit event \(auditID) has no stage")
        }
        guard let timestamp = fields["stageTimestamp"] ?? fields["requestReceivedTimestamp"], let time = AuditTime.normalize(timestamp) else {
            throw TetherError(.invalidArgument, "audit event \(auditID) has no valid stageTimestamp")
        }
        self.raw = raw
        self.auditID = auditID
        self.stage = stage
        self.time = time
        user = fields["user"]
        impersonatedUser = fields["impersonatedUser"]
        verb = fields["verb"]
        resource = fields["ref.resource"]
        namespace = fields["ref.namespace"]
        name = fields["ref.name"]
        self.code = code
    }
}

/// An event as read back from the store.
struct StoredAuditEvent: Sendable {
    var id: Int64
    var cluster: String
    var sequence: UInt64
    var event: Data
}

/// A filter over the audit log; nil fields match everything.
struct AuditQuery: Sendable, Codable {
    var cluster: String?
    var user: String?
    var verb: String?
    var resource: String?
    var namespace: String?
    var name: String?
    var since: Date?
    var until: Date?
    var limit: Int = 100
    /// Keyset paging for exports: only events stored after this row id, in id order.
    var afterID: Int64?
}

/// Kubernetes MicroTime handling: `2006-01-02T15:04:05.000000Z`.
enum AuditTime {
    static func normalize(_ text: String) -> String? {
        let u = text.utf8
        if u.count == 27, text.hasSuffix("Z"), text.dropFirst(19).first == "." { return text }
        guard let date = parse(text) else { return nil }
        return format(date)
    }

    static func parse(_ text: String) -> Date? {
        if let d = try? Date(text, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted)) {
            return d
        }
        if let d = try? Date(text, strategy: .iso8601) { return d }
        return nil
    }

    static func format(_ date: Date) -> String {
        let seconds = date.timeIntervalSince1970
        let whole = floor(seconds)
        let micros = Int(((seconds - whole) * 1_000_000).rounded())
        let base = Date(timeIntervalSince1970: whole).formatted(.iso8601.year().month().day().time(includingFractionalSeconds: false).timeZone(separator: .omitted))
        // base ends in "Z"
        return String(base.dropLast()) + String(format: ".%06dZ", min(micros, 999_999))
    }
}
