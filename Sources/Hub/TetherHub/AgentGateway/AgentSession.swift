import Foundation
import HubStore
import Shared

/// The hub's side of one agent channel as a value: messages in, actions out. No
/// sockets, tasks or store here; `AgentLinkService` converts the wire messages to
/// `Incoming`, carries out each `Action`, and feeds back what came of it.
///
/// What it decides:
/// - the first message must be Hello, in a protocol version this hub speaks;
/// - a message of a kind this hub does not know (from a newer agent) after Hello is
///   ignored and counted, never fatal;
/// - a renewal for the key the hub already signed on this channel (the agent
///   retrying while the answer was on its way) gets the same certificate again:
///   one certificate per renewal, however often the agent asks.
struct AgentSession {
    /// A message from the agent, as domain values.
    enum Incoming: Equatable {
        case hello(protocolVersion: UInt32, agentVersion: String, observedRevision: UInt64)
        case heartbeat(agentVersion: String)
        /// `keyID`: the CSR's public key (SHA-256 of its DER), which names the renewal.
        case renew(csrPEM: String, keyID: String)
        case report(revision: UInt64, results: [ObjectResult])
        /// A kind this hub does not know.
        case unknown
    }

    enum Action: Equatable {
        /// End the channel with this error.
        case close(TetherError)
        /// Hello accepted: register the channel, record the sighting, check the
        /// certificate is still active, send Welcome, then the desired state if the
        /// agent is behind `observedRevision`.
        case open(agentVersion: String, observedRevision: UInt64)
        /// Record that the agent was seen (presence) and acknowledge the heartbeat.
        case acknowledgeHeartbeat(agentVersion: String)
        /// Sign a certificate for this CSR, then call `issued(_:keyID:)`.
        case issueCertificate(csrPEM: String, keyID: String)
        /// Send this certificate (issued earlier for the same key) again.
        case sendCertificate(IssuedCertificate)
        /// Store the agent's report; log and audit each drift repaired in it.
        case storeReport(revision: UInt64, results: [ObjectResult])
        /// Count an unknown message; `firstTime`: also log it (once per channel).
        case countUnknown(firstTime: Bool)
        /// Nothing to do (a second Hello).
        case none
    }

    enum Phase: Equatable {
        case awaitingHello
        case open
        case closed
    }

    private(set) var phase = Phase.awaitingHello
    private(set) var agentVersion = ""
    /// The last certificate issued on this channel, by the key it certifies.
    private(set) var lastIssued: (keyID: String, certificate: IssuedCertificate)?
    private var sawUnknown = false
    let supported: ClosedRange<UInt32>

    init(supported: ClosedRange<UInt32> = ProtocolVersion.supported) {
        self.supported = supported
    }

    mutating func receive(_ message: Incoming) -> Action {
        switch (phase, message) {
        case (.closed, _):
            return .none
        case (.awaitingHello, .hello(let version, let agentVersion, let observed)):
            guard supported.contains(version) else {
                phase = .closed
                return .close(TetherError(.protocolMismatch,
                    "agent speaks protocol v\(version); this hub speaks v\(supported.lowerBound)-v\(supported.upperBound); upgrade the older side"))
            }
            phase = .open
            self.agentVersion = agentVersion
            return .open(agentVersion: agentVersion, observedRevision: observed)
        case (.awaitingHello, _):
            phase = .closed
            return .close(TetherError(.outOfOrder, "the first message on a channel must be Hello"))
        case (.open, .hello):
            return .none
        case (.open, .heartbeat(let agentVersion)):
            self.agentVersion = agentVersion
            return .acknowledgeHeartbeat(agentVersion: agentVersion)
        case (.open, .renew(let csr, let keyID)):
            if let last = lastIssued, last.keyID == keyID { return .sendCertificate(last.certificate) }
            return .issueCertificate(csrPEM: csr, keyID: keyID)
        case (.open, .report(let revision, let results)):
            return .storeReport(revision: revision, results: results)
        case (.open, .unknown):
            defer { sawUnknown = true }
            return .countUnknown(firstTime: !sawUnknown)
        }
    }

    /// The certificate `issueCertificate` asked for was signed and recorded.
    mutating func issued(_ certificate: IssuedCertificate, keyID: String) {
        lastIssued = (keyID, certificate)
    }
}
