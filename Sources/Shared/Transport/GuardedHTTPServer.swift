import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL

/// A child channel whose connections are held to a `ConnectionGuard`: the
/// guard goes after the TLS handler (or first, without TLS) once `Base` has set
/// the channel up.
public struct GuardedChannel<Base: ServerChildChannel>: ServerChildChannel {
    public typealias Value = Base.Value
    let base: Base
    let `guard`: ConnectionGuard

    public init(_ base: Base, guard: ConnectionGuard) {
        self.base = base
        self.guard = `guard`
    }

    public func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let guarded = self.guard
        return base.setup(channel: channel, logger: logger).flatMapThrowing { value in
            try guarded.install(on: channel)
            return value
        }
    }

    public func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

extension HTTPServerBuilder {
    /// HTTP/1.1 over TLS hardened by `TLSProfiles.harden`, each connection held
    /// to `guard`, and idle keep-alive connections closed after `idleTimeout`.
    /// With `upgrades`, requests asking for a connection upgrade go there instead
    /// of to the router.
    public static func guardedTLS(_ tls: TLSConfiguration, guard: ConnectionGuard, idleTimeout: TimeAmount = .seconds(60),
                                  upgrades: UpgradeHandler? = nil) -> HTTPServerBuilder {
        var hardened = tls
        TLSProfiles.harden(&hardened)
        let tls = hardened
        if let upgrades {
            return .init { responder in
                GuardedChannel(try TLSChannel(UpgradingChannel(HTTP1Channel(responder: responder, configuration: .init(idleTimeout: idleTimeout)),
                                                               handler: upgrades), tlsConfiguration: tls),
                               guard: `guard`)
            }
        }
        return .init { responder in
            GuardedChannel(try TLSChannel(HTTP1Channel(responder: responder, configuration: .init(idleTimeout: idleTimeout)), tlsConfiguration: tls),
                           guard: `guard`)
        }
    }

    /// Plain HTTP/1.1 (health and metrics inside the cluster), each connection
    /// held to `guard`.
    public static func guardedHTTP1(guard: ConnectionGuard, idleTimeout: TimeAmount = .seconds(60)) -> HTTPServerBuilder {
        .init { responder in
            GuardedChannel(HTTP1Channel(responder: responder, configuration: .init(idleTimeout: idleTimeout)), guard: `guard`)
        }
    }
}
