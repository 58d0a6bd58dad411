import GRPCCore

/// Tether's error codes cross the wire as typed metadata on the gRPC status (key
/// `tether-error-code`), beside a status code for generic clients and a message for
/// people. The agent branches on the code, never on the message's text.
extension TetherError {
    /// The metadata key that carries `TetherError.Code.rawValue`.
    public static let rpcCodeKey = "tether-error-code"

    /// The gRPC status the hub answers with.
    public var rpcError: RPCError {
        let status: RPCError.Code
        switch code {
        case .invalidArgument, .badCSR, .malformedJoinString: status = .invalidArgument
        case .notFound: status = .notFound
        case .alreadyExists: status = .alreadyExists
        case .tokenUnknown, .tokenUsed, .tokenExpired, .tokenRevoked, .unauthenticated, .certificateExpired: status = .unauthenticated
        case .clusterRevoked, .permissionDenied: status = .permissionDenied
        case .protocolMismatch, .outOfOrder: status = .failedPrecondition
        case .unavailable: status = .unavailable
        default: status = .internalError
        }
        var metadata = Metadata()
        metadata.addString(code.rawValue, forKey: Self.rpcCodeKey)
        return RPCError(code: status, message: message, metadata: metadata)
    }

    /// The hub's error, rebuilt from its status: the typed code when the hub sent
    /// one; otherwise (a transport failure, a proxy, a status grpc-swift made) a
    /// classification by gRPC status.
    public init(fromHub error: RPCError) {
        let text = error.message
        if let code = error.metadata[stringValues: Self.rpcCodeKey].first(where: { _ in true }), !code.isEmpty {
            self.init(Code(code), text)
        } else if error.code == .unavailable || error.code == .deadlineExceeded || error.code == .cancelled {
            self.init(.unavailable, "hub unreachable: \(text)")
        } else if error.code == .permissionDenied {
            self.init(.clusterRevoked, text)
        } else {
            self.init(.unavailable, "hub refused the call (\(error.code)): \(text)")
        }
    }
}
