import Foundation
import GRDB
import Shared

/// A registered cluster, as stored.
package struct ClusterRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    package static let databaseTableName = "clusters"
    package var name: String
    package var labels: [String: String]
    package var createdAt: Date
    package var enrolledAt: Date?
    package var lastSeen: Date?
    package var agentVersion: String?
    package var certificateSerial: String?
    package var certificateExpiry: Date?
    package var revokedAt: Date?

    package init(name: String, labels: [String: String], createdAt: Date, enrolledAt: Date? = nil, lastSeen: Date? = nil, agentVersion: String? = nil, certificateSerial: String? = nil, certificateExpiry: Date? = nil, revokedAt: Date? = nil) {
        self.name = name
        self.labels = labels
        self.createdAt = createdAt
        self.enrolledAt = enrolledAt
        self.lastSeen = lastSeen
        self.agentVersion = agentVersion
        self.certificateSerial = certificateSerial
        self.certificateExpiry = certificateExpiry
        self.revokedAt = revokedAt
    }
}

/// A join token. Only the SHA-256 of its secret is kept.
package struct JoinTokenRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    package static let databaseTableName = "joinTokens"
    package var id: String
    package var cluster: String
    package var secretHash: Data
    package var createdAt: Date
    package var expiresAt: Date
    package var usedAt: Date?
    package var revokedAt: Date?
    /// The enrolled agent's key (SHA-256 of its public key) and what it was issued,
    /// for an enrollment asked again after a lost answer.
    package var enrolledKeyHash: Data?
    package var enrolledSerial: String?
    package var enrolledCertificate: String?

    package init(id: String, cluster: String, secretHash: Data, createdAt: Date, expiresAt: Date, usedAt: Date? = nil, revokedAt: Date? = nil) {
        self.id = id
        self.cluster = cluster
        self.secretHash = secretHash
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.usedAt = usedAt
        self.revokedAt = revokedAt
    }
}

/// Every certificate the CA issued to an agent, so any of them can be refused.
package struct CertificateRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    package static let databaseTableName = "certificates"
    package var serial: String
    package var cluster: String
    package var purpose: String  // "enroll" or "renew"
    package var issuedAt: Date
    package var notAfter: Date
    package var revokedAt: Date?

    package init(serial: String, cluster: String, purpose: String, issuedAt: Date, notAfter: Date, revokedAt: Date? = nil) {
        self.serial = serial
        self.cluster = cluster
        self.purpose = purpose
        self.issuedAt = issuedAt
        self.notAfter = notAfter
        self.revokedAt = revokedAt
    }
}

/// An operator credential for the admin API, by hash.
package struct AdminTokenRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    package static let databaseTableName = "adminTokens"
    package var tokenHash: Data
    package var createdAt: Date

    package init(tokenHash: Data, createdAt: Date) {
        self.tokenHash = tokenHash
        self.createdAt = createdAt
    }
}
