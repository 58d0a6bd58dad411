import GRPCCore
import GRPCNIOTransportHTTP2
import Shared
import X509

/// Who is on the other end of an agent-listener RPC, from the TLS handshake.
enum AgentPeer {
    /// An enrolled agent's certificate, issued by this hub's CA.
    case agent(cluster: ClusterName, serial: String, certificate: Certificate)
    /// A self-signed bootstrap certificate: may only call `Enroll`.
    case bootstrap(Certificate)

    init(context: ServerContext, ca: Certificate) throws {
        guard let certificate = (context.transportSpecific as? HTTP2ServerTransport.Posix.Context)?.peerCertificate else {
            throw RPCError(code: .unauthenticated, message: "a client certificate is required")
        }
        switch CertificateChecks.classifyClient(certificate, ca: ca) {
        case .agent:
            self = .agent(cluster: PKI.clusterName(in: certificate)!, serial: PKI.serialHex(certificate), certificate: certificate)
        case .bootstrap:
            self = .bootstrap(certificate)
        case .refused(let why):
            throw RPCError(code: .unauthenticated, message: why)
        }
    }
}

/// Enforces, before the first message of every RPC, that the peer may make it:
/// `Enroll` needs a bootstrap certificate; every other method needs an agent
/// certificate from this hub's CA that the hub has issued and not revoked.
struct AgentAuthInterceptor: ServerInterceptor {
    let core: HubCore

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        do {
            let peer = try AgentPeer(context: context, ca: core.ca.certificate)
            let isEnroll = context.descriptor == Tether_V1_Enrollment.Method.Enroll.descriptor
            switch peer {
            case .bootstrap:
                guard isEnroll else {
                    throw RPCError(code: .unauthenticated, message: "an enrollment certificate may only be used to enroll")
                }
            case .agent(let cluster, let serial, _):
                guard !isEnroll else {
                    throw RPCError(code: .failedPrecondition, message: "already enrolled as cluster '\(cluster)'")
                }
                switch try await core.database.standing(ofCertificate: serial) {
                case .active:
                    break
                case .revoked:
                    throw RPCError(code: .permissionDenied, message: TetherError.Code.clusterRevoked.rawValue + ": the certificate for cluster '\(cluster)' was revoked")
                case .unknown:
                    throw RPCError(code: .permissionDenied, message: "certificate \(serial) was not issued by this hub")
                }
            }
        } catch let error as RPCError {
            core.metrics.rpcRefusals.increment()
            core.logger.warning("agent RPC refused", metadata: ["method": "\(context.descriptor)", "reason": "\(error.message)", "peer": "\(context.remotePeer)"])
            throw error
        }
        return try await next(request, context)
    }
}
