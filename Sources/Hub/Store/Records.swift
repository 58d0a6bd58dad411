import Foundation
import GRDB
import Shared

/// A registered cluster, as stored.
struct ClusterRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "clusters"
    var name: String
    var labels: [String: String]
    var createdAt: Date
    var enrolledAt: Date?
    var lastSeen: Date?
    var agentVersion: String?
    var certificateSerial: String?
    var certificateExpiry: Date?
    var revokedAt: Date?
}

/// A join token. Only the SHA-256 of its secret is kept.
struct JoinTokenRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "joinTokens"
    var id: String
    var cluster: String
    var secretHash: Data
    var createdAt: Date
    var expiresAt: Date
    var usedAt: Date?
    var revokedAt: Date?
}

/// Every certificate the CA issued to an agent, so any of them can be refused.
struct CertificateRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "certificates"
    var serial: String
    var cluster: String
    var purpose: String  // "enroll" or "renew"
    var issuedAt: Date
    var notAfter: Date
    var revokedAt: Date?
}

/// An operator credential for the admin API, by hash.
struct AdminTokenRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "adminTokens"
    var tokenHash: Data
    var createdAt: Date
}
