import Crypto
import Foundation
import HubStore
import Shared

// Generated protobuf types stop here: the gateway converts them to and from the
// store's domain types, and nothing past it sees `Tether_V1_*`.

extension ObjectResult {
    /// An object's status as an agent reported it. A state this hub does not know
    /// (a newer agent) is stored as failed, with the agent's word for it kept.
    init(proto: Tether_V1_ObjectResult) {
        let message = proto.message.isEmpty ? nil : proto.message
        if let state = ObjectState(rawValue: proto.state) {
            self.init(bundle: proto.bundle, object: proto.object, state: state, message: message)
        } else {
            self.init(bundle: proto.bundle, object: proto.object, state: .failed,
                      message: "agent reported state '\(proto.state)', unknown to this hub" + (message.map { ": \($0)" } ?? ""))
        }
    }
}

extension Tether_V1_DesiredState {
    init(_ state: DesiredState) {
        self.init()
        revision = state.revision
        hash = state.hash
        objects = state.objects.map { object in .with { $0.bundle = object.bundle; $0.object = object.json } }
    }
}

extension AgentSession.Incoming {
    /// Reads a wire message. A renewal's CSR is parsed here only for its key (the
    /// CA checks it in full when signing); one that cannot be parsed is refused.
    init(proto message: Tether_V1_AgentMessage) throws {
        switch message.kind {
        case .hello(let hello):
            self = .hello(protocolVersion: hello.protocolVersion, agentVersion: hello.agentVersion, observedRevision: hello.observedRevision)
        case .heartbeat(let heartbeat):
            self = .heartbeat(agentVersion: heartbeat.agentVersion)
        case .renew(let renew):
            let csr = try CertificateAuthority.parseCSR(renew.csrPem)
            self = .renew(csrPEM: renew.csrPem, keyID: PKI.hex(SHA256.hash(data: Array(csr.publicKey.subjectPublicKeyInfoBytes))))
        case .report(let report):
            self = .report(revision: report.revision, results: report.results.map(ObjectResult.init(proto:)))
        case .none:
            self = .unknown
        }
    }
}
