import GRPCCore
import Shared

/// `tether.v1.Enrollment`: the thin edge over `HubCore.enroll`.
struct EnrollmentService: Tether_V1_Enrollment.SimpleServiceProtocol {
    let core: HubCore

    func enroll(request: Tether_V1_EnrollRequest, context: ServerContext) async throws -> Tether_V1_EnrollResponse {
        guard ProtocolVersion.supported.contains(request.protocolVersion) else {
            throw TetherError(.protocolMismatch,
                "agent speaks protocol v\(request.protocolVersion); this hub (\(TetherVersion.current)) speaks v\(ProtocolVersion.supported.lowerBound)-v\(ProtocolVersion.supported.upperBound); upgrade the older side").rpcError
        }
        guard case .bootstrap(let bootstrap) = try AgentPeer(context: context, ca: core.ca.certificate) else {
            throw RPCError(code: .unauthenticated, message: "enroll with a bootstrap certificate")
        }
        do {
            let (cluster, issued) = try await core.enroll(
                tokenID: request.tokenID, secret: request.tokenSecret, csrPEM: request.csrPem, bootstrapKey: bootstrap.publicKey,
                from: context.remotePeer)
            var response = Tether_V1_EnrollResponse()
            response.protocolVersion = ProtocolVersion.current
            response.clusterName = cluster.rawValue
            response.certificatePem = issued.pem
            response.caCertificatePem = try PKI.pem(core.ca.certificate)
            return response
        } catch let error as TetherError {
            throw error.rpcError
        }
    }
}
