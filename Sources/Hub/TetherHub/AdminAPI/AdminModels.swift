import Foundation
import HubStore
import Shared

/// A cluster as the admin API and `cluster list --output json` show it.
struct ClusterView: Codable, Sendable, Equatable {
    enum Status: String, Codable, Sendable {
        case pending, online, offline, revoked
    }

    var name: String
    var labels: [String: String]
    var status: Status
    var lastSeen: Date?
    var agentVersion: String?
    var certificateExpiry: Date?
    /// kubectl through the agent: the hub's last probe of the API server (nil: not
    /// probed since the agent connected).
    var dataPath: String?

    init(record: ClusterRecord, online: Bool, dataPath: String? = nil) {
        self.dataPath = online ? dataPath : nil
        name = record.name
        labels = record.labels
        lastSeen = record.lastSeen
        agentVersion = record.agentVersion
        certificateExpiry = record.certificateExpiry
        if record.revokedAt != nil {
            status = .revoked
        } else if online {
            status = .online
        } else if record.enrolledAt == nil {
            status = .pending
        } else {
            status = .offline
        }
    }

    // Explicit nulls: a JSON consumer sees every key on every object.
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(labels, forKey: .labels)
        try c.encode(status, forKey: .status)
        try c.encode(lastSeen, forKey: .lastSeen)
        try c.encode(agentVersion, forKey: .agentVersion)
        try c.encode(certificateExpiry, forKey: .certificateExpiry)
        try c.encode(dataPath, forKey: .dataPath)
    }
}

/// A join token, without its secret.
struct TokenView: Codable, Sendable, Equatable {
    enum Status: String, Codable, Sendable {
        case active, used, expired, revoked
    }

    var id: String
    var cluster: String
    var status: Status
    var createdAt: Date
    var expiresAt: Date
    var usedAt: Date?

    init(record: JoinTokenRecord, now: Date) {
        id = record.id
        cluster = record.cluster
        createdAt = record.createdAt
        expiresAt = record.expiresAt
        usedAt = record.usedAt
        if record.usedAt != nil {
            status = .used
        } else if record.revokedAt != nil {
            status = .revoked
        } else if record.expiresAt <= now {
            status = .expired
        } else {
            status = .active
        }
    }
}

struct AddClusterRequest: Codable, Sendable {
    var name: String
    var labels: [String: String]?
}

struct CreateTokenRequest: Codable, Sendable {
    var cluster: String
    /// Seconds; the hub's default (24h) when absent.
    var ttlSeconds: Double?
}

struct CreatedToken: Codable, Sendable {
    var token: TokenView
    var joinString: String
}

/// The admin API's error body: `{"error": {"code": ..., "message": ...}}`.
struct ErrorBody: Codable, Sendable {
    struct Detail: Codable, Sendable {
        var code: String
        var message: String
    }
    var error: Detail
}

extension JSONEncoder {
    static var tether: JSONEncoder {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        e.outputFormatting = [.sortedKeys]
        return e
    }
}

extension JSONDecoder {
    static var tether: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}
