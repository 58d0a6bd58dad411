/// An error a Tether operator can act on: a stable code plus a message written for people.
///
/// Converted to `RPCError` or an HTTP status only at the edges (gRPC services, admin API).
public struct TetherError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, stable across releases so that clients can branch on it.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let invalidArgument = Code("invalid-argument")
        public static let notFound = Code("not-found")
        public static let alreadyExists = Code("already-exists")
        public static let malformedJoinString = Code("malformed-join-string")
        public static let tokenUnknown = Code("token-unknown")
        public static let tokenUsed = Code("token-used")
        public static let tokenExpired = Code("token-expired")
        public static let tokenRevoked = Code("token-revoked")
        public static let caPinMismatch = Code("ca-pin-mismatch")
        public static let clusterRevoked = Code("cluster-revoked")
        public static let certificateExpired = Code("certificate-expired")
        public static let unauthenticated = Code("unauthenticated")
        /// Authenticated, but no grant reaches what was asked for.
        public static let permissionDenied = Code("permission-denied")
        public static let protocolMismatch = Code("protocol-mismatch")
        /// A message the protocol does not allow at this point (not Hello first).
        public static let outOfOrder = Code("out-of-order")
        public static let badCSR = Code("bad-csr")
        public static let storage = Code("storage")
        public static let unavailable = Code("unavailable")
        /// Someone else kept changing the object between Tether's read and write.
        public static let conflict = Code("conflict")
        public static let internalError = Code("internal")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
