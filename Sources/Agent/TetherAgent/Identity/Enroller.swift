import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Shared
import X509

/// Enrolls an agent with a join string: pins the hub's CA by the string's hash,
/// connects with a bootstrap certificate for a fresh P-256 key, sends a CSR with the
/// token, and checks what comes back before anything is stored.
struct Enroller {
    let logger: Logger

    /// `key`: the agent's new key. Keep it across retries: a hub whose answer was
    /// lost recognises the key and sends the same certificate again, where a new
    /// key would meet "token already used".
    func enroll(with join: JoinString, key: P256.Signing.PrivateKey = P256.Signing.PrivateKey()) async throws -> AgentIdentity {
        let bootstrap = try PKI.makeBootstrapCertificate(key: key)
        let failure = VerificationFailure()
        let transport = try HTTP2ClientTransport.Posix(
            target: ResolvableTargets.hub(join.hub),
            transportSecurity: TLSProfiles.enrollment(pin: join.caHash, host: join.hub.host, bootstrap: bootstrap, key: key, failure: failure))

        var request = Tether_V1_EnrollRequest()
        request.protocolVersion = ProtocolVersion.current
        request.tokenID = join.tokenID
        request.tokenSecret = join.secret
        request.csrPem = try PKI.makeCSR(key: key, commonName: "tether-agent")
        request.agentVersion = TetherVersion.current
        var options = CallOptions.defaults
        options.timeout = .seconds(30)
        options.waitForReady = false

        logger.info("enrolling", metadata: ["hub": "\(join.hub)", "token": "\(join.tokenID)"])
        let response: Tether_V1_EnrollResponse
        do {
            response = try await withGRPCClient(transport: transport) { client in
                try await Tether_V1_Enrollment.Client(wrapping: client).enroll(request, options: options)
            }
        } catch let error as RPCError {
            if let pinned = failure.error { throw pinned }
            logger.debug("enrollment call failed", metadata: ["code": "\(error.code)", "cause": "\(String(describing: error.cause))"])
            throw TetherError(fromHub: error)
        } catch {
            // Cancelled (the agent is stopping) or a transport error before any call:
            // the hub link's retry loop handles TetherErrors, and sees the shutdown.
            if let pinned = failure.error { throw pinned }
            if Task.isCancelled || error is CancellationError {
                throw TetherError(.unavailable, "enrollment stopped: the agent is shutting down")
            }
            throw TetherError(.unavailable, "cannot reach the hub at \(join.hub) to enroll: \(error)")
        }

        let certificate = try PKI.certificate(pem: response.certificatePem)
        let ca = try PKI.certificate(pem: response.caCertificatePem)
        guard try PKI.fingerprint(ca) == join.caHash else {
            throw TetherError(.caPinMismatch, "the hub returned a CA that does not match the join string's CA hash")
        }
        let cluster = try ClusterName(response.clusterName)
        let identity = AgentIdentity(
            cluster: cluster, hub: join.hub, privateKeyPEM: key.pemRepresentation,
            certificatePEM: response.certificatePem, caCertificatePEM: response.caCertificatePem)
        try identity.validate()
        logger.notice("enrolled", metadata: ["cluster": "\(cluster)", "notAfter": "\(certificate.notValidAfter)"])
        return identity
    }
}
