import Crypto
import Foundation
import HubStore
import Shared
import Synchronization

/// One row of `access who-can CLUSTER`.
struct WhoCanRow: Codable, Sendable, Equatable {
    var kind: String
    var name: String
    var accessRole: String
    var grants: [String]
}

/// An AccessRole as `access list` shows it.
struct AccessRoleView: Codable, Sendable {
    var name: String
    var subjects: [String]
    var clusterSelector: LabelSelector
    var grants: [String]
    var clusters: [String]
    var maxSessionDuration: String?
    var allowPrivileged: Bool
    /// What makes it privileged (empty for most roles).
    var privilegedGrants: [String]
    var updatedAt: Date
    var document: String?
}

/// A session as `session list` shows it (never the credential).
struct SessionView: Codable, Sendable, Equatable {
    var id: String
    var user: String
    var groups: [String]
    var method: String
    var issuedBy: String
    var createdAt: Date
    var expiresAt: Date
    var revokedAt: Date?

    init(_ record: SessionRecord) {
        id = record.id
        user = record.user
        groups = record.groups
        method = record.method
        issuedBy = record.issuedBy
        createdAt = record.createdAt
        expiresAt = record.expiresAt
        revokedAt = record.revokedAt
    }
}

/// The stored AccessRoles, decoded once and kept until they change: every proxied
/// request evaluates them. The hub is the only writer of its database while it
/// runs, and each write here invalidates; a generation number keeps a read that
/// raced a write from caching what it read before the write.
final class AccessRoleCache: Sendable {
    private let state = Mutex<(roles: [AccessRole]?, generation: UInt64)>((nil, 0))

    init() {}

    func cached() -> (roles: [AccessRole]?, generation: UInt64) { state.withLock { ($0.roles, $0.generation) } }

    func fill(_ roles: [AccessRole], readAt generation: UInt64) {
        state.withLock { if $0.generation == generation { $0.roles = roles } }
    }

    func invalidate() { state.withLock { $0.roles = nil; $0.generation &+= 1 } }
}

extension HubSettings {
    static let defaultSessionTTL: Duration = .seconds(8 * 3600)
    /// Sessions are short-lived: a day at most, whatever is asked.
    static let maxSessionTTL: Duration = .seconds(24 * 3600)
}

extension HubCore {
    // MARK: AccessRoles

    /// Stores roles; a role granting cluster-admin or a role with every verb on every
    /// resource (as the stored policy bundles define it) needs `spec.allowPrivileged`.
    func applyAccessRoles(_ roles: [AccessRole], by caller: Caller = .operator) async throws {
        let wildcard = try await wildcardRoles()
        for role in roles where !role.allowPrivileged {
            if let grant = AccessPrivilege.grants(of: role, wildcardRoles: wildcard).first {
                throw TetherError(.invalidArgument, "access role \(role.name): \(grant); an access role may grant this only with spec.allowPrivileged: true")
            }
        }
        let now = clock.now()
        let records = try roles.map { role in
            try auditEvent(HubAction(verb: "apply", resource: "accessroles", name: role.name, user: caller.user, code: 200, sourceIP: caller.address,
                                     message: (role.grants.summary + role.subjects.map { "\($0.kind.rawValue) \($0.name)" }).joined(separator: "; ")), at: now)
        }
        try await database.applyAccessRoles(roles, now: now, audit: records)
        accessRoleCache.invalidate()
        logger.info("access roles applied", metadata: ["roles": "\(roles.map(\.name).joined(separator: ","))"])
        await pushAccess()
    }

    func deleteAccessRole(_ name: String, by caller: Caller = .operator) async throws {
        let now = clock.now()
        let record = try auditEvent(HubAction(verb: "delete", resource: "accessroles", name: name, user: caller.user, code: 200, sourceIP: caller.address), at: now)
        try await database.deleteAccessRole(name, now: now, audit: [record])
        accessRoleCache.invalidate()
        await pushAccess()
    }

    /// The AccessRoles as stored (from the cache when nothing changed since).
    func currentAccessRoles() async throws -> [AccessRole] {
        let (cached, generation) = accessRoleCache.cached()
        if let cached { return cached }
        let roles = try await database.accessRoles().map(\.role)
        accessRoleCache.fill(roles, readAt: generation)
        return roles
    }

    /// The keys (`ClusterRole/NAME`, `Role/NS/NAME`) of roles the stored policy
    /// bundles define with every verb on every resource.
    func wildcardRoles() async throws -> Set<String> {
        let stored = try await database.bundleDocuments().map { try PrivilegeCheck.StoredBundle(name: $0.name, document: $0.document) }
        return Set(PrivilegeCheck.wildcardOwners(stored.map { ($0.name, $0.resources) }).keys)
    }

    func accessRoleViews(includeDocument: Bool = false) async throws -> [AccessRoleView] {
        let clusters = try await database.clusters().filter { $0.revokedAt == nil }
        let wildcard = try await wildcardRoles()
        return try await database.accessRoles().map { role, updatedAt in
            AccessRoleView(
                name: role.name, subjects: role.subjects.map { "\($0.kind.rawValue) \($0.name)" }, clusterSelector: role.clusterSelector,
                grants: role.grants.summary, clusters: clusters.filter { role.clusterSelector.matches($0.labels) }.map(\.name),
                maxSessionDuration: role.maxSessionDuration.map { DurationText.format(seconds: $0) }, allowPrivileged: role.allowPrivileged,
                privilegedGrants: AccessPrivilege.grants(of: role, wildcardRoles: wildcard), updatedAt: updatedAt,
                document: includeDocument ? String(decoding: try JSONSerialization.data(withJSONObject: role.document, options: [.sortedKeys, .withoutEscapingSlashes]),
                                                   as: UTF8.self) : nil)
        }
    }

    /// A registered (not removed) cluster, or not-found.
    func registeredCluster(_ name: ClusterName) async throws -> ClusterRecord {
        guard let record = try await database.cluster(name), record.revokedAt == nil else {
            throw TetherError(.notFound, "cluster '\(name)' not found")
        }
        return record
    }

    /// Every subject named by an AccessRole that selects the cluster, with what it gets there.
    func whoCan(_ cluster: ClusterName) async throws -> [WhoCanRow] {
        let record = try await registeredCluster(cluster)
        var rows: [WhoCanRow] = []
        for (role, _) in try await database.accessRoles() where role.clusterSelector.matches(record.labels) {
            for subject in role.subjects {
                rows.append(WhoCanRow(kind: subject.kind.rawValue, name: subject.name, accessRole: role.name, grants: role.grants.summary))
            }
        }
        return rows.sorted { ($0.kind, $0.name, $0.accessRole) < ($1.kind, $1.name, $1.accessRole) }
    }

    /// What a person (with these groups) gets on a cluster, and from which roles.
    func explainAccess(user: String, groups: [String], cluster: ClusterName) async throws -> AccessDecision {
        let record = try await registeredCluster(cluster)
        return AccessDecision.evaluate(roles: try await currentAccessRoles(), user: user, groups: groups, clusterLabels: record.labels)
    }

    // MARK: What agents hold

    /// The live sessions with a grant on `cluster`, and each one's grant there.
    func liveGrants(on cluster: ClusterName) async throws -> [(session: SessionRecord, grants: AccessGrants)] {
        guard let record = try await database.cluster(cluster), record.revokedAt == nil else { return [] }
        return Self.grants(sessions: try await database.sessions(now: clock.now()), roles: try await currentAccessRoles(),
                           labels: record.labels)
    }

    static func grants(sessions: [SessionRecord], roles: [AccessRole], labels: [String: String]) -> [(session: SessionRecord, grants: AccessGrants)] {
        sessions.compactMap { session in
            let decision = AccessDecision.evaluate(roles: roles, user: session.user, groups: session.groups, clusterLabels: labels)
            return decision.allowed ? (session, decision.grants) : nil
        }
    }

    /// Tells connected agents (all, or `only`) what every live session grants on
    /// their cluster, so they delete accounts and bindings no longer granted and bind
    /// what is newly granted: a role change takes effect without anyone touching a
    /// cluster. Errors are logged: the minute's sweep tries again.
    func pushAccess(only: ClusterName? = nil) async {
        do {
            let sessions = try await database.sessions(now: clock.now())
            let roles = try await currentAccessRoles()
            let connected = only.map { registry.isConnected($0) ? [$0] : [] } ?? Array(registry.connected)
            for cluster in connected {
                guard let record = try await database.cluster(cluster), record.revokedAt == nil else { continue }
                registry.control(cluster, .liveSessions(Self.grants(sessions: sessions, roles: roles, labels: record.labels)))
            }
        } catch {
            logger.error("cannot tell agents the live sessions' grants", metadata: ["error": "\(error)"])
        }
    }

    // MARK: Sessions

    static func validatePerson(_ user: String, groups: [String]) throws {
        func check(_ value: String, _ what: String) throws {
            guard !value.isEmpty, value.utf8.count <= 256, !value.unicodeScalars.contains(where: { CharacterSet.controlCharacters.contains($0) }) else {
                throw TetherError(.invalidArgument, "\(what) '\(value)' must be 1 to 256 characters without control characters")
            }
        }
        try check(user, "user")
        for group in groups { try check(group, "group") }
    }

    /// Issues a session; returns it and its credential (shown once, never stored).
    /// Its lifetime is `ttl` (default 8 h, at most 24 h), capped by the shortest
    /// `maxSessionDuration` of the AccessRoles that name the person.
    func createSession(user: String, groups: [String], ttl: Duration?, method: String = "operator",
                       by caller: Caller = .operator) async throws -> (session: SessionRecord, credential: String, cappedBy: String?) {
        try Self.validatePerson(user, groups: groups)
        if try await database.person(user)?.disabledAt != nil {
            throw TetherError(.permissionDenied, "\(user) is disabled at this hub; enable them first (tether-hub user enable \(user))")
        }
        let groups = Array(Set(groups)).sorted()
        let asked = ttl ?? HubSettings.defaultSessionTTL
        guard asked >= .seconds(60), asked <= HubSettings.maxSessionTTL else {
            throw TetherError(.invalidArgument, "--ttl must be between 1m and 24h (sessions are short-lived; create a new one when it ends)")
        }
        var lifetime = Int(asked.components.seconds)
        var cappedBy: String?
        for (role, _) in try await database.accessRoles() where role.applies(toUser: user, groups: groups) {
            if let limit = role.maxSessionDuration, limit < lifetime {
                lifetime = limit
                cappedBy = role.name
            }
        }
        let now = clock.now()
        let record = SessionRecord(id: Self.newSessionID(), user: user, groups: groups, method: method, issuedBy: caller.user,
                                   createdAt: now, expiresAt: now.addingTimeInterval(TimeInterval(lifetime)))
        let event = try auditEvent(HubAction(verb: "create", resource: "sessions", name: record.id, user: caller.user, code: 201, sourceIP: caller.address,
                                             message: "for \(user)" + (groups.isEmpty ? "" : " groups \(groups.joined(separator: ","))")
                                                 + ", \(method), expires \(AuditTime.format(record.expiresAt))"), at: now)
        try await database.createSession(record, audit: [event])
        jitPeople.add(account: JITAccountName.make(user: user, session: record.id), user: user)
        logger.info("session created", metadata: ["session": "\(record.id)", "user": "\(user)", "method": "\(method)"])
        return (record, try SessionCredential(session: record).encoded(key: sessionKey), cappedBy)
    }

    static func newSessionID() -> String {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)
        return "s" + String(decoding: (0..<15).map { _ in alphabet.randomElement(using: &rng)! }, as: UTF8.self)
    }

    /// The live session a credential names: signature, expiry and revocation checked.
    func authenticate(credential: String) async throws -> SessionRecord {
        let checked = try verifiedCredentials.verify(credential, key: sessionKey)
        let now = clock.now()
        guard let session = try await database.session(checked.claims.sid), session.user == checked.claims.sub else {
            throw TetherError(.unauthenticated, "the session credential is not valid; create a new session (tether-hub session create, or log in)")
        }
        if session.revokedAt != nil {
            throw TetherError(.unauthenticated, "session \(session.id) was revoked; create a new session (tether-hub session create, or log in)")
        }
        guard session.expiresAt > now else {
            throw TetherError(.unauthenticated, "session \(session.id) expired at \(AuditTime.format(session.expiresAt)); create a new session (tether-hub session create, or log in)")
        }
        return session
    }

    func sessionViews(includeEnded: Bool) async throws -> [SessionView] {
        try await database.sessions(now: clock.now(), includeEnded: includeEnded).map(SessionView.init)
    }

    /// Ends one session, or every live session of a person, at once.
    func revokeSessions(id: String? = nil, user: String? = nil, by caller: Caller = .operator) async throws -> [SessionRecord] {
        guard (id == nil) != (user == nil) else { throw TetherError(.invalidArgument, "give a session id or --user, not both") }
        let now = clock.now()
        let revoked = try await database.revokeSessions(id: id, user: user, now: now) { [self] sessions in
            try sessions.map { session in
                try auditEvent(HubAction(verb: "delete", resource: "sessions", name: session.id, user: caller.user, code: 200, sourceIP: caller.address,
                                         message: "revoked session of \(session.user)"), at: now)
            }
        }
        for session in revoked { logger.info("session revoked", metadata: ["session": "\(session.id)", "user": "\(session.user)"]) }
        // Every agent deletes the sessions' just-in-time accounts now.
        if !revoked.isEmpty { registry.broadcast(.sessionsEnded(revoked.map(\.id))) }
        return revoked
    }
}
