import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherAgent
@testable import TetherHub

/// The channel's protocol as values: the hub's `AgentSession` and the agent's
/// `RenewalSchedule`, tested without sockets and on virtual time; then the one
/// behaviour that needs the wire (one certificate per renewal), on a real channel.
@Suite struct ProtocolStateTests {
    static let hello = AgentSession.Incoming.hello(protocolVersion: ProtocolVersion.current, agentVersion: "0.1.0", observedRevision: 3)
    static let certificate = IssuedCertificate(serial: "01", notAfter: Date(timeIntervalSince1970: 1_000), pem: "PEM-1")

    @Test func theFirstMessageMustBeHelloInASpokenVersion() {
        var early = AgentSession()
        #expect(early.receive(.heartbeat(agentVersion: "0.1.0")) == .close(TetherError(.outOfOrder, "the first message on a channel must be Hello")))
        #expect(early.phase == .closed)
        #expect(early.receive(Self.hello) == .none, "a closed session does nothing more")

        var unknownFirst = AgentSession()
        guard case .close(let error) = unknownFirst.receive(.unknown) else { Issue.record("an unknown kind before Hello must close"); return }
        #expect(error.code == .outOfOrder)

        var newer = AgentSession(supported: 1...1)
        guard case .close(let mismatch) = newer.receive(.hello(protocolVersion: 2, agentVersion: "9.0.0", observedRevision: 0)) else {
            Issue.record("a protocol this hub does not speak must close"); return
        }
        #expect(mismatch.code == .protocolMismatch)
        #expect(mismatch.message.contains("agent speaks protocol v2; this hub speaks v1-v1"))

        var session = AgentSession()
        #expect(session.receive(Self.hello) == .open(agentVersion: "0.1.0", observedRevision: 3))
        #expect(session.phase == .open)
        #expect(session.receive(Self.hello) == .none, "a second Hello is ignored")
    }

    @Test func unknownMessagesAfterHelloAreCountedNotFatalAndLoggedOnce() {
        var session = AgentSession()
        _ = session.receive(Self.hello)
        #expect(session.receive(.unknown) == .countUnknown(firstTime: true))
        #expect(session.receive(.unknown) == .countUnknown(firstTime: false))
        #expect(session.receive(.heartbeat(agentVersion: "0.2.0")) == .acknowledgeHeartbeat(agentVersion: "0.2.0"))
        #expect(session.phase == .open)
        #expect(session.agentVersion == "0.2.0")
    }

    @Test func aRenewalRetriedForTheSameKeyGetsTheSameCertificate() {
        var session = AgentSession()
        _ = session.receive(Self.hello)
        #expect(session.receive(.renew(csrPEM: "csr-a", keyID: "key-1")) == .issueCertificate(csrPEM: "csr-a", keyID: "key-1"))
        session.issued(Self.certificate, keyID: "key-1")
        // The agent asked again (its retry crossed the answer): same key, new CSR bytes.
        #expect(session.receive(.renew(csrPEM: "csr-b", keyID: "key-1")) == .sendCertificate(Self.certificate))
        // The next renewal is for a new key: a new certificate.
        #expect(session.receive(.renew(csrPEM: "csr-c", keyID: "key-2")) == .issueCertificate(csrPEM: "csr-c", keyID: "key-2"))
    }

    @Test func aReportIsStoredOnlyOnAnOpenChannel() {
        var session = AgentSession()
        let results = [ObjectResult(bundle: "b", object: "ClusterRole/x", state: .applied)]
        guard case .close = session.receive(.report(revision: 1, results: results)) else { Issue.record("report before Hello"); return }
        var open = AgentSession()
        _ = open.receive(Self.hello)
        #expect(open.receive(.report(revision: 1, results: results)) == .storeReport(revision: 1, results: results))
    }

    @Test func anUnknownObjectStateFromANewerAgentIsStoredAsFailedWithItsWord() {
        let result = ObjectResult(proto: .with {
            $0.bundle = "b"
            $0.object = "Role/ns/r"
            $0.state = "quarantined"
            $0.message = "held back"
        })
        #expect(result.state == .failed)
        #expect(result.message == "agent reported state 'quarantined', unknown to this hub: held back")
        #expect(ObjectResult(proto: .with { $0.state = "drifted" }).state == .drifted)
    }

    // MARK: Agent renewal, on virtual time

    @Test func renewalWaitsForTwoThirdsThenRetriesWithTheSameKeyUntilAnswered() {
        let issued = Date(timeIntervalSince1970: 0)
        let renewalDate = issued.addingTimeInterval(16 * 3600)  // 2/3 of 24 h
        var schedule = RenewalSchedule(retry: .seconds(10))
        #expect(schedule.next(now: issued, renewalDate: renewalDate) == .wait(until: renewalDate))
        #expect(schedule.next(now: renewalDate.addingTimeInterval(-1), renewalDate: renewalDate) == .wait(until: renewalDate))
        #expect(schedule.next(now: renewalDate, renewalDate: renewalDate) == .request(newKey: true))
        // No answer yet: wait for the retry, then ask again for the same key.
        #expect(schedule.next(now: renewalDate.addingTimeInterval(5), renewalDate: renewalDate) == .wait(until: renewalDate.addingTimeInterval(10)))
        #expect(schedule.next(now: renewalDate.addingTimeInterval(10), renewalDate: renewalDate) == .request(newKey: false))
        #expect(schedule.next(now: renewalDate.addingTimeInterval(31), renewalDate: renewalDate) == .request(newKey: false))
        // Answered: the next renewal is two thirds into the new certificate, with a new key.
        schedule.answered()
        let next = renewalDate.addingTimeInterval(16 * 3600)
        #expect(schedule.next(now: renewalDate.addingTimeInterval(32), renewalDate: next) == .wait(until: next))
        #expect(schedule.next(now: next, renewalDate: next) == .request(newKey: true))
    }

    @Test func theManualClockWakesSleepersOnlyWhenMovedPastTheirDeadline() async throws {
        let clock = ManualAgentClock(now: Date(timeIntervalSince1970: 100))
        let woke = Locked(false)
        let sleeper = Task {
            try await clock.sleep(until: Date(timeIntervalSince1970: 160))
            woke.value = true
        }
        try await eventually("the sleeper waits") { clock.sleeping == 1 }
        clock.advance(by: 59)
        #expect(clock.sleeping == 1)
        #expect(!woke.value)
        clock.advance(by: 1)
        try await sleeper.value
        #expect(woke.value)
        // Cancellation ends a sleep at once.
        let cancelled = Task { try await clock.sleep(until: Date(timeIntervalSince1970: 10_000)) }
        try await eventually("the second sleeper waits") { clock.sleeping == 1 }
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        #expect(clock.sleeping == 0)
    }

    // MARK: Error codes on the wire

    @Test func errorCodesTravelAsTypedMetadataNotText() {
        let error = TetherError(.tokenUsed, "join token abc was already used").rpcError
        #expect(error.code == .unauthenticated)
        #expect(error.message == "join token abc was already used", "the message is for people only")
        #expect(Array(error.metadata[stringValues: TetherError.rpcCodeKey]) == ["token-used"])
        let back = TetherError(fromHub: error)
        #expect(back.code == .tokenUsed)
        #expect(back.message == "join token abc was already used")
        // A message that merely looks like a code is not read as one.
        let lookalike = TetherError(fromHub: RPCError(code: .internalError, message: "token-used: not really"))
        #expect(lookalike.code == .unavailable)
        #expect(TetherError(fromHub: RPCError(code: .permissionDenied, message: "no")).code == .clusterRevoked)
    }

    // MARK: On a real channel

    /// Three renewal requests on one channel: two for the same key (a retry) and one
    /// for a new key. The hub signs twice and sends the first certificate again for
    /// the retry; its store records exactly two renewals.
    @Test func theHubMintsOneCertificatePerRenewalKey() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        let identity = try await Enroller(logger: testLogger).enroll(with: try await hub.join("prod-eu"))
        let first = P256.Signing.PrivateKey()
        let second = P256.Signing.PrivateKey()
        let requests = [try PKI.makeCSR(key: first, commonName: "a"), try PKI.makeCSR(key: first, commonName: "a"), try PKI.makeCSR(key: second, commonName: "a")]
        #expect(requests[0] != requests[1], "ECDSA signatures differ: the CSRs are different bytes for one key")
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: hub.agentPort), transportSecurity: TLSProfiles.agent(identity: identity))
        let certificates = try await withGRPCClient(transport: transport) { client in
            try await Tether_V1_AgentLink.Client(wrapping: client).connect(
                requestProducer: { writer in
                    try await writer.write(.with { $0.hello = .with { $0.protocolVersion = ProtocolVersion.current; $0.agentVersion = "test" } })
                    for csr in requests { try await writer.write(.with { $0.renew = .with { $0.csrPem = csr } }) }
                    try await Task.sleep(for: .seconds(3600))
                },
                onResponse: { response in
                    var pems: [String] = []
                    for try await message in response.messages {
                        if case .renewed(let renewed) = message.kind { pems.append(renewed.certificatePem) }
                        if pems.count == requests.count { break }
                    }
                    return pems
                })
        }
        #expect(certificates.count == 3)
        #expect(certificates[0] == certificates[1], "the retry got the certificate already issued for its key")
        #expect(certificates[2] != certificates[0])
        let stored = try await hub.core.database.certificates(of: ClusterName("prod-eu"))
        #expect(stored.map(\.purpose) == ["enroll", "renew", "renew"])
        try await hub.stop()
    }
}
