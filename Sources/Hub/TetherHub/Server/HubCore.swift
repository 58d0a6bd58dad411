import Crypto
import Foundation
import Logging
import HubStore
import Shared
import X509

/// The hub's settings that the agent-facing and admin-facing parts share.
struct HubSettings: Sendable {
    /// Lifetime of agent client certificates (`serve --certificate-lifetime`).
    var certificateLifetime: Duration = .seconds(24 * 3600)
    /// Heartbeat interval agents are told to use (`serve --heartbeat-interval`);
    /// three missed ones mark the agent offline.
    var heartbeatInterval: Duration = .seconds(10)
    /// The host join strings tell agents to dial (the first `--advertise` name);
    /// the port is the agent listener's bound port.
    var joinHost: String
    /// The group whose members see the console's admin pages (`serve --admin-group`).
    var adminGroup = HubSettings.defaultAdminGroup
    /// Idle `Tunnel` RPCs each agent may keep open while people use its cluster
    /// (`serve --spare-tunnels`): a request on one skips the OpenTunnel round trip
    /// and the new stream. 0 turns them off.
    var spareTunnels = HubSettings.defaultSpareTunnels
    /// A spare nobody claimed for this long is ended (the agent opens spares again
    /// on the cluster's next request), so idle clusters hold none.
    var spareTunnelIdle: Duration = .seconds(300)
    static let defaultAdminGroup = "tether-admins"
    static let defaultSpareTunnels = 4
    static let defaultTokenTTL: Duration = .seconds(24 * 3600)
    static let maxTokenTTL: Duration = .seconds(7 * 24 * 3600)
}

/// The hub's operations on clusters, tokens and certificates. The gRPC services
/// and the admin API are thin edges over this type.
final class HubCore: Sendable {
    let database: HubDatabase
    let ca: CertificateAuthority
    let registry: ConnectionRegistry
    let settings: HubSettings
    let clock: HubClock
    let metrics: HubMetrics
    let logger: Logger
    /// Last-seen times, in memory and written in batches (see `PresenceRecorder`).
    let presence: PresenceRecorder
    /// Where join strings send agents; set once the agent listener is bound.
    let joinAddress = AsyncValue<HostPort>()
    /// The access listener as people's kubeconfigs name it (nil: no listener); set
    /// once it is bound.
    let accessEndpoint = AsyncValue<AccessEndpoint?>()
    /// Proxied requests waiting for their agent's tunnel, and agents' spare tunnels.
    let tunnels: TunnelBroker
    /// Just-in-time account names and the people they stand for (audit attribution).
    let jitPeople = JITPeople()
    /// The last data-path probe of each cluster (`DataPathProbeService`).
    let dataPath = DataPathTable()
    /// Test hook only: injected audit ingest failures (see `AuditIngestFaults`).
    let auditIngestFaults = AuditIngestFaults()

    /// Signs and checks people's session credentials (`SessionCredential`).
    let sessionKey: SymmetricKey
    /// Seals second-factor secrets in the database (`otp.key`).
    let otpKey: SymmetricKey
    /// The company's identity provider (nil: no `--oidc-issuer`; sessions come
    /// from operators only).
    let oidc: OIDCProvider?
    /// Sign-ins in progress.
    let signIns = SignInTable()
    /// Proxied requests' audit events being written after their responses.
    let auditBacklog = AuditBacklog()
    /// The AccessRoles every proxied request is checked against.
    let accessRoleCache = AccessRoleCache()
    /// Credentials whose signature this hub's session key verified, with their claims.
    let verifiedCredentials = VerifiedCredentials()

    init(database: HubDatabase, ca: CertificateAuthority, settings: HubSettings, clock: HubClock, metrics: HubMetrics, logger: Logger,
         sessionKey: SymmetricKey = SymmetricKey(size: .bits256), otpKey: SymmetricKey = SymmetricKey(size: .bits256), oidc: OIDCProvider? = nil) {
        self.database = database
        self.sessionKey = sessionKey
        self.otpKey = otpKey
        self.oidc = oidc
        self.ca = ca
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.logger = logger
        self.registry = ConnectionRegistry(onChange: { metrics.agentsConnected.set(Int64($0)) })
        self.tunnels = TunnelBroker(onSpareCount: { metrics.spareTunnels.set(Int64($0)) })
        self.presence = PresenceRecorder(database: database, logger: logger, commits: { _ in metrics.presenceCommits.increment() })
    }

    // MARK: Clusters

    func addCluster(_ name: ClusterName, labels: [String: String], by caller: Caller = .operator) async throws -> ClusterRecord {
        for (key, value) in labels { try LabelRules.validate(key: key, value: value) }
        let record = try await database.addCluster(name, labels: labels, now: clock.now())
        await audit(HubAction(verb: "create", resource: "clusters", name: name.rawValue, user: caller.user, code: 201, sourceIP: caller.address))
        logger.info("cluster added", metadata: ["cluster": "\(name)"])
        return record
    }

    func clusterViews() async throws -> [ClusterView] {
        let online = registry.connected
        return try await database.clusters().map { record in
            let name = try ClusterName(record.name)
            var record = record
            // Presence not yet written is newer than the row.
            if let seen = presence.latest(name), seen.at > (record.lastSeen ?? .distantPast) {
                record.lastSeen = seen.at
                record.agentVersion = seen.agentVersion
            }
            return ClusterView(record: record, online: online.contains(name), dataPath: dataPath.get(name)?.summary)
        }
    }

    /// Revokes the cluster's certificates and closes its open channel.
    func removeCluster(_ name: ClusterName, by caller: Caller = .operator) async throws -> ClusterView {
        let record = try await database.revokeCluster(name, now: clock.now())
        await audit(HubAction(verb: "delete", resource: "clusters", name: name.rawValue, user: caller.user, code: 200, sourceIP: caller.address,
                        message: "certificates revoked"))
        registry.disconnect(name, reason: TetherError(.clusterRevoked, "cluster '\(name)' was removed at the hub; its certificate is revoked"))
        presence.forget(name)
        logger.notice("cluster removed; certificates revoked", metadata: ["cluster": "\(name)"])
        return ClusterView(record: record, online: false)
    }

    // MARK: Tokens

    func createToken(cluster: ClusterName, ttl: Duration?, by caller: Caller = .operator) async throws -> (JoinTokenRecord, JoinString) {
        let ttl = ttl ?? HubSettings.defaultTokenTTL
        guard ttl > .zero, ttl <= HubSettings.maxTokenTTL else {
            throw TetherError(.invalidArgument, "token TTL must be more than 0 and at most 7d (got \(DurationParser.format(ttl)))")
        }
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)
        let id = String(decoding: (0..<8).map { _ in alphabet.randomElement(using: &rng)! }, as: UTF8.self)
        let secret = Base64URL.encode((0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) })
        let now = clock.now()
        let record = try await database.createToken(
            id: id, cluster: cluster, secretHash: Data(SHA256.hash(data: Data(secret.utf8))),
            expiresAt: now.addingTimeInterval(ttl.seconds), now: now)
        guard let address = joinAddress.current else {
            throw TetherError(.unavailable, "the agent listener is not up yet; try again in a moment")
        }
        let join = JoinString(hub: address, tokenID: id, secret: secret, caHash: try PKI.fingerprint(ca.certificate))
        await audit(HubAction(verb: "create", resource: "jointokens", name: id, user: caller.user, code: 201, sourceIP: caller.address,
                        message: "for cluster \(cluster)"))
        logger.info("join token created", metadata: ["cluster": "\(cluster)", "token": "\(id)", "expires": "\(iso8601(record.expiresAt))"])
        return (record, join)
    }

    func tokenViews() async throws -> [TokenView] {
        let now = clock.now()
        return try await database.tokens().map { TokenView(record: $0, now: now) }
    }

    func revokeToken(id: String, by caller: Caller = .operator) async throws -> TokenView {
        let record = try await database.revokeToken(id: id, now: clock.now())
        await audit(HubAction(verb: "delete", resource: "jointokens", name: id, user: caller.user, code: 200, sourceIP: caller.address))
        logger.info("join token revoked", metadata: ["token": "\(id)"])
        return TokenView(record: record, now: clock.now())
    }

    // MARK: Certificates

    /// Enrolls an agent: the CSR's key must be the key of the bootstrap certificate
    /// the agent connected with, and the token must be valid. Returns the cluster
    /// and its new certificate.
    func enroll(tokenID: String, secret: String, csrPEM: String, bootstrapKey: Certificate.PublicKey, from address: String? = nil) async throws -> (ClusterName, IssuedCertificate) {
        let csr = try CertificateAuthority.parseCSR(csrPEM)
        guard csr.publicKey == bootstrapKey else {
            throw TetherError(.badCSR, "the CSR's key is not the key of the certificate this connection was made with")
        }
        let now = clock.now()
        do {
            let (ca, lifetime) = (ca, settings.certificateLifetime)
            let keyHash = Data(SHA256.hash(data: Array(csr.publicKey.subjectPublicKeyInfoBytes)))
            let (cluster, issued, retried) = try await database.enroll(tokenID: tokenID, secret: secret, keyHash: keyHash, now: now) { name in
                try ca.issueAgentCertificate(for: csr.publicKey, cluster: name, lifetime: lifetime, now: now)
            }
            if retried {
                await audit(HubAction(verb: "create", resource: "enrollments", name: cluster.rawValue, user: "jointoken:\(tokenID)", code: 200,
                                sourceIP: address, message: "asked again by the enrolled key; certificate \(issued.serial) sent again"))
                logger.notice("agent asked again to enroll with its key; sent its certificate again",
                              metadata: ["cluster": "\(cluster)", "token": "\(tokenID)", "serial": "\(issued.serial)"])
                return (cluster, issued)
            }
            metrics.enrollments.increment()
            await audit(HubAction(verb: "create", resource: "enrollments", name: cluster.rawValue, user: "jointoken:\(tokenID)", code: 201,
                            sourceIP: address, message: "certificate \(issued.serial)"))
            logger.notice("agent enrolled", metadata: ["cluster": "\(cluster)", "token": "\(tokenID)", "serial": "\(issued.serial)"])
            return (cluster, issued)
        } catch let error as TetherError {
            metrics.enrollmentRefusals.increment()
            await audit(HubAction(verb: "create", resource: "enrollments", name: nil, user: "jointoken:\(tokenID)", code: 401,
                            sourceIP: address, message: error.code.rawValue))
            logger.warning("enrollment refused", metadata: ["token": "\(tokenID)", "reason": "\(error.code)"])
            throw error
        }
    }

    /// Renews over an authenticated channel: same cluster, new key, new certificate.
    func renew(cluster: ClusterName, csrPEM: String) async throws -> IssuedCertificate {
        let csr = try CertificateAuthority.parseCSR(csrPEM)
        let now = clock.now()
        let issued = try ca.issueAgentCertificate(for: csr.publicKey, cluster: cluster, lifetime: settings.certificateLifetime, now: now)
        try await database.recordRenewal(cluster, issued: issued, now: now)
        metrics.renewals.increment()
        await audit(HubAction(verb: "create", resource: "certificates", name: cluster.rawValue, user: "agent:\(cluster)", code: 201,
                        message: "renewed as \(issued.serial)"))
        logger.info("agent certificate renewed", metadata: ["cluster": "\(cluster)", "serial": "\(issued.serial)", "notAfter": "\(iso8601(issued.notAfter))"])
        return issued
    }
}

/// Who asked the hub to act, for its audit log.
/// Where people reach the hub with kubectl, and the CA to trust it by (nil when the
/// listener serves an operator's certificate that clients already trust).
struct AccessEndpoint: Sendable, Equatable {
    var url: String
    var caCertificate: String?
}

struct Caller: Sendable {
    var user: String
    var address: String?
    static let `operator` = Caller(user: "admin", address: nil)
}
