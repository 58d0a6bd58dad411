import Foundation
import Shared

/// An audit.k8s.io/v1 Event as received, with the fields the hub indexes.
package struct IndexedAuditEvent: Sendable {
    package var raw: Data
    package var auditID: String
    package var stage: String
    /// `stageTimestamp` in fixed-width UTC (`2026-11-28T12:25:47.318195Z`): sorts as text.
    package var time: String
    package var user: String?
    package var impersonatedUser: String?
    package var verb: String?
    package var resource: String?
    package var namespace: String?
    package var name: String?
    package var code: Int?

    /// Reads the indexed fields of one event; the error names what is missing.
    /// Scans the JSON rather than parsing all of it: this runs for every event.
    package init(raw: Data) throws {
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

extension IndexedAuditEvent {
    /// An event the hub cannot index (no auditID, stage or time): kept anyway, under
    /// a made-up audit ID, so nothing the agent sent is dropped.
    package init(unindexable raw: Data, sequence: UInt64, now: Date) {
        self.raw = raw
        auditID = "unindexed-\(sequence)-\(UUID().uuidString.lowercased())"
        stage = "Unknown"
        time = AuditTime.format(now)
    }
}

/// An event as read back from the store.
package struct StoredAuditEvent: Sendable {
    package var id: Int64
    package var cluster: String
    package var sequence: UInt64
    package var event: Data

    package init(id: Int64, cluster: String, sequence: UInt64, event: Data) {
        self.id = id
        self.cluster = cluster
        self.sequence = sequence
        self.event = event
    }
}

/// A filter over the audit log; nil fields match everything.
package struct AuditQuery: Sendable, Codable {
    package var cluster: String?
    package var user: String?
    package var verb: String?
    package var resource: String?
    package var namespace: String?
    package var name: String?
    package var since: Date?
    package var until: Date?
    package var limit: Int = 100
    /// Keyset paging for exports: only events stored after this row id, in id order.
    package var afterID: Int64?
    /// The console's paging: newest stored first, and only those stored before this row id.
    package var newestFirst = false
    package var beforeID: Int64?

    package init(cluster: String? = nil, user: String? = nil, verb: String? = nil, resource: String? = nil, namespace: String? = nil, name: String? = nil, since: Date? = nil, until: Date? = nil, limit: Int = 100, afterID: Int64? = nil) {
        self.cluster = cluster
        self.user = user
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        self.name = name
        self.since = since
        self.until = until
        self.limit = limit
        self.afterID = afterID
    }
}

/// Kubernetes MicroTime handling: `2006-01-02T15:04:05.000000Z`.
package enum AuditTime {
    package static func normalize(_ text: String) -> String? {
        let u = text.utf8
        if u.count == 27, text.hasSuffix("Z"), text.dropFirst(19).first == "." { return text }
        guard let date = parse(text) else { return nil }
        return format(date)
    }

    package static func parse(_ text: String) -> Date? {
        if let d = try? Date(text, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted)) {
            return d
        }
        if let d = try? Date(text, strategy: .iso8601) { return d }
        return nil
    }

    package static func format(_ date: Date) -> String {
        let seconds = date.timeIntervalSince1970
        let whole = floor(seconds)
        let micros = Int(((seconds - whole) * 1_000_000).rounded())
        let base = Date(timeIntervalSince1970: whole).formatted(.iso8601.year().month().day().time(includingFractionalSeconds: false).timeZone(separator: .omitted))
        // base ends in "Z"
        return String(base.dropLast()) + String(format: ".%06dZ", min(micros, 999_999))
    }
}
