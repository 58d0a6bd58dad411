import Crypto
import Foundation
import HubStore
import Shared
import Synchronization

/// Sign-ins in progress: what the hub sent to the identity provider (by `state`),
/// and people past the provider who still owe their second factor (by ticket).
/// Both live minutes, in memory: a hub restart only makes someone start again.
final class SignInTable: Sendable {
    struct Pending: Sendable {
        var nonce: String
        var verifier: String
        var redirectURI: String
        var createdAt: Date
    }

    struct Ticket: Sendable {
        var user: String
        var groups: [String]
        /// A secret being enrolled (first sign-in, or after `user reset-otp`); stored
        /// only once a code from it is confirmed.
        var enrolling: TOTP?
        var address: String?
        var createdAt: Date
    }

    static let lifetime: TimeInterval = 600
    /// Sign-ins started and not finished, at most: anyone can start one, so the
    /// oldest give way rather than the hub's memory.
    static let maxPending = 10_000
    private let pending = Mutex<[String: Pending]>([:])
    private let tickets = Mutex<[String: Ticket]>([:])

    func add(state: String, _ value: Pending) {
        pending.withLock { table in
            table = table.filter { $0.value.createdAt.addingTimeInterval(Self.lifetime) > value.createdAt }
            if table.count >= Self.maxPending, let oldest = table.min(by: { $0.value.createdAt < $1.value.createdAt })?.key {
                table[oldest] = nil
            }
            table[state] = value
        }
    }

    var pendingCount: Int { pending.withLock { $0.count } }

    /// The sign-in `state` names, removed: a state (and so a code) works once.
    func take(state: String, now: Date) -> Pending? {
        pending.withLock { $0.removeValue(forKey: state) }.flatMap { $0.createdAt.addingTimeInterval(Self.lifetime) > now ? $0 : nil }
    }

    func add(ticket: String, _ value: Ticket) {
        tickets.withLock { table in
            table = table.filter { $0.value.createdAt.addingTimeInterval(Self.lifetime) > value.createdAt }
            table[ticket] = value
        }
    }

    func ticket(_ id: String, now: Date) -> Ticket? {
        tickets.withLock { $0[id] }.flatMap { $0.createdAt.addingTimeInterval(Self.lifetime) > now ? $0 : nil }
    }

    func removeTicket(_ id: String) { _ = tickets.withLock { $0.removeValue(forKey: id) } }

    /// Ends every sign-in step of a person (disabled, or their factor reset).
    func forget(user: String) { tickets.withLock { $0 = $0.filter { $0.value.user != user } } }
}

/// The next step of a sign-in once the provider vouched for the person.
enum SignInStep: Sendable {
    /// The hub's second factor is owed: a code for the ticket; `enrollment` is the
    /// `otpauth://` URI to scan when the person has no authenticator enrolled yet.
    case secondFactor(ticket: String, user: String, enrollment: String?)
    case signedIn(session: SessionRecord, credential: String)
}

/// A person as `user list` shows them.
struct PersonView: Codable, Sendable, Equatable {
    var name: String
    var groups: [String]
    var firstSeenAt: Date
    var lastLoginAt: Date?
    var disabled: Bool
    var secondFactor: Bool
    var lockedUntil: Date?
    var liveSessions: Int
}

extension HubCore {
    static let wrongCodesBeforeLockout = 5
    static let lockout: TimeInterval = 15 * 60

    private var provider: OIDCProvider {
        get throws {
            guard let oidc else {
                throw TetherError(.notFound, "this hub has no identity provider (serve --oidc-issuer URL --oidc-client-id ID); ask an operator for a session instead")
            }
            return oidc
        }
    }

    static func randomToken(_ bytes: Int = 32) -> String {
        var rng = SystemRandomNumberGenerator()
        return Base64URL.encode((0..<bytes).map { _ in UInt8.random(in: 0...255, using: &rng) })
    }

    /// Starts a sign-in: returns the provider's URL to send the person to. The
    /// redirect comes back to `redirectURI` (the CLI's loopback listener, or the
    /// hub's own `/callback`) with a code only this hub can redeem (PKCE).
    func beginSignIn(redirectURI: String) async throws -> (state: String, url: String) {
        let provider = try provider
        let state = Self.randomToken(), nonce = Self.randomToken(), verifier = Self.randomToken()
        let challenge = Base64URL.encode(Array(SHA256.hash(data: Data(verifier.utf8))))
        let url = try await provider.authorizationURL(state: state, nonce: nonce, codeChallenge: challenge, redirectURI: redirectURI)
        signIns.add(state: state, .init(nonce: nonce, verifier: verifier, redirectURI: redirectURI, createdAt: clock.now()))
        return (state, url)
    }

    private func refuseSignIn(_ user: String, _ error: TetherError, code: Int, address: String?) async -> TetherError {
        await audit(HubAction(verb: "login", resource: "sessions", name: nil, user: user, code: code, sourceIP: address, message: error.message))
        metrics.signIns(outcome: code == 200 ? "ok" : "refused")
        logger.notice("sign-in refused", metadata: ["user": "\(user)", "code": "\(code)", "reason": "\(error.message)"])
        return error
    }

    /// The provider's redirect came back: redeems the code, validates the ID token,
    /// records the person and their groups, and asks for the second factor (or,
    /// with `--oidc-trust-amr` and a provider-reported second factor, signs in).
    func completeSignIn(state: String, code: String, address: String?) async throws -> SignInStep {
        let provider = try provider
        let now = clock.now()
        guard let pending = signIns.take(state: state, now: now) else {
            throw await refuseSignIn("unknown", TetherError(.unauthenticated, "this sign-in is unknown, expired or already finished; start again (tether-hub login)"),
                                     code: 401, address: address)
        }
        let identity: OIDCIdentity
        do {
            let idToken = try await provider.redeem(code: code, verifier: pending.verifier, redirectURI: pending.redirectURI)
            identity = try await provider.validate(idToken: idToken, nonce: pending.nonce, now: now)
        } catch let error as TetherError {
            throw await refuseSignIn("unknown", error, code: error.code == .unavailable ? 503 : 401, address: address)
        }
        try Self.validatePerson(identity.user, groups: identity.groups)
        let groups = Array(Set(identity.groups)).sorted()
        let person = try await database.person(identity.user)
        try await checkAllowed(person, user: identity.user, now: now, address: address)
        let record = try await database.updatePerson(identity.user, create: true, now: now) { person in
            person.groups = groups
            person.lastLoginAt = now
            return (person, [])
        }
        if provider.settings.trustAMR, !Set(identity.methods).isDisjoint(with: OIDCSettings.secondFactorMethods) {
            let (session, credential) = try await finishSignIn(user: identity.user, groups: groups, method: "sso+amr", address: address)
            return .signedIn(session: session, credential: credential)
        }
        let ticket = Self.randomToken()
        let enrolled = record.otpConfirmedAt != nil && record.otpSecret != nil
        let enrolling = enrolled ? nil : TOTP.generate()
        signIns.add(ticket: ticket, .init(user: identity.user, groups: groups, enrolling: enrolling, address: address, createdAt: now))
        return .secondFactor(ticket: ticket, user: identity.user, enrollment: enrolling?.uri(issuer: "Tether", account: identity.user))
    }

    /// The session of a completed sign-in. The person's other sign-in sessions take
    /// the groups of this one, and every agent hears of it: a group removed at the
    /// provider stops granting its roles at the person's next login.
    private func finishSignIn(user: String, groups: [String], method: String, address: String?) async throws -> (session: SessionRecord, credential: String) {
        let (session, credential, _) = try await createSession(user: user, groups: groups, ttl: nil, method: method, by: Caller(user: user, address: address))
        if try await database.updateSessionGroups(user: user, groups: session.groups, methodPrefix: "sso", now: clock.now()) > 0 {
            await pushAccess()
        }
        metrics.signIns(outcome: "ok")
        return (session, credential)
    }

    /// Refuses a disabled or locked-out person, audited.
    private func checkAllowed(_ person: PersonRecord?, user: String, now: Date, address: String?) async throws {
        if person?.disabledAt != nil {
            throw await refuseSignIn(user, TetherError(.permissionDenied, "\(user) is disabled at this hub; an operator can enable them (tether-hub user enable)"),
                                     code: 403, address: address)
        }
        if let until = person?.lockedUntil, until > now {
            throw await refuseSignIn(user, TetherError(.permissionDenied, "\(user) is locked out after \(Self.wrongCodesBeforeLockout) wrong codes until \(AuditTime.format(until))"),
                                     code: 403, address: address)
        }
    }

    private enum CodeOutcome: Sendable { case accepted, wrong(left: Int), locked(until: Date) }

    /// The second factor: a code from the person's authenticator (for an enrolling
    /// ticket, from the secret just shown, which is stored once it is confirmed).
    /// A code works once; five wrong ones in a row lock the person out for 15 min.
    func confirmSecondFactor(ticket id: String, code: String, address: String?) async throws -> (session: SessionRecord, credential: String) {
        let now = clock.now()
        guard let ticket = signIns.ticket(id, now: now) else {
            throw TetherError(.unauthenticated, "this sign-in is unknown, expired or already finished; start again (tether-hub login)")
        }
        let person = try await database.person(ticket.user)
        try await checkAllowed(person, user: ticket.user, now: now, address: address)
        let secret: TOTP
        if let enrolling = ticket.enrolling {
            secret = enrolling
        } else {
            guard let sealed = person?.otpSecret else {
                signIns.removeTicket(id)
                throw TetherError(.unauthenticated, "\(ticket.user)'s authenticator was reset; sign in again to enroll a new one")
            }
            secret = TOTP(secret: try openSecret(sealed, user: ticket.user))
        }
        let sealed = try ticket.enrolling.map { try sealSecret($0.secret, user: ticket.user) }
        let user = ticket.user, enrolling = ticket.enrolling != nil
        let event = { @Sendable (message: String, code: Int) throws -> IndexedAuditEvent in
            try self.auditEvent(HubAction(verb: "login", resource: "secondfactor", name: nil, user: user, code: code, sourceIP: address, message: message), at: now)
        }
        let outcome: CodeOutcome = try await database.updatePerson(user, now: now) { person in
            if let step = secret.match(code, at: now, after: enrolling ? nil : person.otpLastStep) {
                person.otpLastStep = step
                person.failedCodes = 0
                if enrolling, let sealed {
                    person.otpSecret = sealed
                    person.otpConfirmedAt = now
                    return (.accepted, [try event("authenticator enrolled", 201)])
                }
                return (.accepted, [])
            }
            person.failedCodes += 1
            if person.failedCodes >= Self.wrongCodesBeforeLockout {
                let until = now.addingTimeInterval(Self.lockout)
                person.lockedUntil = until
                person.failedCodes = 0
                return (.locked(until: until), [try event("locked out after \(Self.wrongCodesBeforeLockout) wrong codes until \(AuditTime.format(until))", 403)])
            }
            return (.wrong(left: Self.wrongCodesBeforeLockout - person.failedCodes), [try event("wrong or reused code", 401)])
        }
        switch outcome {
        case .accepted:
            signIns.removeTicket(id)
            return try await finishSignIn(user: user, groups: ticket.groups, method: "sso+totp", address: address)
        case .wrong(let left):
            metrics.signIns(outcome: "wrong-code")
            throw TetherError(.unauthenticated, "wrong or already used code; \(left) more before \(user) is locked out for 15 minutes")
        case .locked(let until):
            signIns.removeTicket(id)
            metrics.signIns(outcome: "locked")
            logger.warning("person locked out after wrong codes", metadata: ["user": "\(user)", "until": "\(AuditTime.format(until))"])
            throw TetherError(.permissionDenied, "\(user) is locked out after \(Self.wrongCodesBeforeLockout) wrong codes until \(AuditTime.format(until))")
        }
    }

    // MARK: Secrets at rest

    func sealSecret(_ secret: [UInt8], user: String) throws -> Data {
        guard let combined = try AES.GCM.seal(secret, using: otpKey, authenticating: Data(user.utf8)).combined else {
            throw TetherError(.internalError, "cannot seal a second-factor secret")
        }
        return combined
    }

    func openSecret(_ sealed: Data, user: String) throws -> [UInt8] {
        do {
            return Array(try AES.GCM.open(try AES.GCM.SealedBox(combined: sealed), using: otpKey, authenticating: Data(user.utf8)))
        } catch {
            throw TetherError(.storage, "\(user)'s second-factor secret cannot be read with this hub's otp.key (restored without it?); reset it: tether-hub user reset-otp \(user)")
        }
    }

    // MARK: People

    func personViews() async throws -> [PersonView] {
        let live = try await database.sessions(now: clock.now())
        return try await database.people().map { person in
            PersonView(name: person.name, groups: person.groups, firstSeenAt: person.firstSeenAt, lastLoginAt: person.lastLoginAt,
                       disabled: person.disabledAt != nil, secondFactor: person.otpConfirmedAt != nil,
                       lockedUntil: person.lockedUntil.flatMap { $0 > clock.now() ? $0 : nil }, liveSessions: live.filter { $0.user == person.name }.count)
        }
    }

    /// Disables a person: their sessions end at once (and with them their
    /// just-in-time accounts on every cluster), and sign-in is refused until enabled.
    /// A person the hub has not seen yet is recorded disabled.
    func disablePerson(_ name: String, by caller: Caller = .operator) async throws -> [SessionRecord] {
        try Self.validatePerson(name, groups: [])
        let now = clock.now()
        let event = try auditEvent(HubAction(verb: "disable", resource: "people", name: name, user: caller.user, code: 200, sourceIP: caller.address), at: now)
        try await database.updatePerson(name, create: true, now: now) { person in
            person.disabledAt = person.disabledAt ?? now
            return ((), [event])
        }
        signIns.forget(user: name)
        logger.notice("person disabled", metadata: ["user": "\(name)"])
        return try await revokeSessions(user: name, by: caller)
    }

    func enablePerson(_ name: String, by caller: Caller = .operator) async throws {
        let now = clock.now()
        let event = try auditEvent(HubAction(verb: "enable", resource: "people", name: name, user: caller.user, code: 200, sourceIP: caller.address), at: now)
        try await database.updatePerson(name, now: now) { person in
            person.disabledAt = nil
            person.lockedUntil = nil
            person.failedCodes = 0
            return ((), [event])
        }
        logger.notice("person enabled", metadata: ["user": "\(name)"])
    }

    /// Forgets a person's authenticator: their next sign-in enrolls a new one.
    func resetSecondFactor(_ name: String, by caller: Caller = .operator) async throws {
        let now = clock.now()
        let event = try auditEvent(HubAction(verb: "reset-otp", resource: "people", name: name, user: caller.user, code: 200, sourceIP: caller.address), at: now)
        try await database.updatePerson(name, now: now) { person in
            person.otpSecret = nil
            person.otpConfirmedAt = nil
            person.otpLastStep = nil
            person.failedCodes = 0
            person.lockedUntil = nil
            return ((), [event])
        }
        signIns.forget(user: name)
        logger.notice("second factor reset", metadata: ["user": "\(name)"])
    }
}
