import Foundation
import HubStore
import NIOCore
import NIOHTTP1
import Shared

extension AccessProxy {
    /// exec, attach and port-forward: an HTTP/1.1 upgrade (WebSocket or SPDY/3.1)
    /// under `/clusters/NAME/`. Checked as every request is, then carried down its
    /// own tunnel: the API server's answer comes back as it is (a refusal with its
    /// status and body, so kubectl can fall back to SPDY), and after `101` the
    /// connection's bytes flow both ways untouched until either end closes.
    static func upgrade(_ head: HTTPRequestHead, exchange: UpgradeExchange, core: HubCore) async {
        let started = ContinuousClock.now
        let upgrade = head.headers.upgradeProtocol ?? ""
        let (fullPath, query) = Self.split(head.uri)
        let segments = fullPath.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: true).map(String.init)
        guard segments.count >= 2, segments[0] == "clusters" else {
            await refuse(exchange, TetherError(.notFound, "the access listener serves /clusters/NAME/... (Kubernetes API paths) and /tether/v1/..."),
                         cluster: "", core: core)
            return
        }
        let clusterName = segments[1]
        let path = "/" + (segments.count > 2 ? segments[2] : "") + (query.isEmpty ? "" : "?" + query)
        let admitted: Admitted
        do {
            admitted = try await admit(authorization: head.headers.first(name: "authorization"), clusterName: clusterName, core: core)
        } catch {
            await refuse(exchange, error as? TetherError ?? TetherError(.internalError, "\(error)"), cluster: clusterName, core: core)
            return
        }
        let session = admitted.session
        let headers = carried(head.headers) + [("Upgrade", upgrade), ("Connection", "Upgrade")]
        let tunnel = TunnelRequest(id: TunnelBroker.newID(), method: head.method.rawValue, path: path, headers: headers,
                                   session: session, grants: admitted.grants, upgrade: upgrade)
        let streams: TunnelStreams
        do {
            streams = try await core.openTunnel(tunnel, to: admitted.cluster)
        } catch {
            await refuse(exchange, error as? TetherError ?? TetherError(.unavailable, "\(error)"), cluster: clusterName, core: core)
            return
        }
        core.metrics.tunnelsOpen.increment()
        defer { core.metrics.tunnelsOpen.decrement() }

        var status = 502
        var up = 0, down = 0
        var outcome: String
        var frames = streams.fromAgent.makeAsyncIterator()
        do {
            guard case .response(let code, let answer)? = try await frames.next() else {
                throw TetherError(.unavailable, "the agent of cluster \(clusterName) ended the tunnel without an answer")
            }
            status = code
            var fields = HTTPHeaders()
            for (name, value) in answer { fields.add(name: name, value: value) }
            if code == 101 {
                let raw = try await exchange.switchProtocols(headers: fields)
                core.logger.debug("upgrade switched", metadata: ["tunnel": "\(tunnel.id)", "cluster": "\(clusterName)", "user": "\(session.user)"])
                outcome = "upgraded to \(upgrade)"
                up = await withTaskGroup(of: Int.self) { group in
                    // The person's bytes to the cluster, until they close.
                    group.addTask {
                        var sent = 0
                        while true {
                            let chunk: ByteBuffer?
                            do { chunk = try await raw.read() } catch {
                                core.logger.debug("upgrade client read failed", metadata: ["tunnel": "\(tunnel.id)", "error": "\(error)"])
                                break
                            }
                            guard let chunk else { break }
                            sent += chunk.readableBytes
                            await streams.toAgent.send(.body(chunk))
                        }
                        core.logger.debug("upgrade client side ended", metadata: ["tunnel": "\(tunnel.id)", "bytes": "\(sent)"])
                        await streams.toAgent.send(.end(error: nil))
                        streams.toAgent.finish()
                        return sent
                    }
                    // The cluster's bytes to the person, until the API server closes.
                    loop: while let frame = try? await frames.next() {
                        switch frame {
                        case .body(let chunk):
                            down += chunk.readableBytes
                            guard (try? await raw.write(chunk)) != nil else { break loop }
                        case .end(let error):
                            if let error { outcome += ", ended by the agent: \(error)" }
                            break loop
                        case .response: continue
                        }
                    }
                    await raw.close()
                    // Nothing more is taken from the agent: its frames in flight are
                    // dropped instead of holding the tunnel's RPC open forever.
                    streams.fromAgent.finish()
                    streams.toAgent.finish()
                    return await group.next() ?? 0
                }
            } else {
                // Refused upstream: its status and body, unchanged.
                outcome = "upgrade refused by the API server"
                try await exchange.respond(status: .init(statusCode: code), headers: fields)
                loop: while let frame = try await frames.next() {
                    switch frame {
                    case .body(let chunk):
                        down += chunk.readableBytes
                        try await exchange.write(chunk)
                    case .end: break loop
                    case .response: continue
                    }
                }
                try await exchange.end()
                streams.fromAgent.finish()
                streams.toAgent.finish()
            }
        } catch {
            streams.toAgent.finish()
            streams.fromAgent.finish()
            outcome = "failed: \(error)"
            if status == 502 {
                await refuse(exchange, TetherError(.unavailable, "the tunnel to cluster \(clusterName) failed: \(error)"), cluster: clusterName, core: core)
                return
            }
        }
        core.logger.debug("upgrade ended", metadata: ["tunnel": "\(tunnel.id)", "code": "\(status)", "outcome": "\(outcome)", "in": "\(up)", "out": "\(down)"])
        core.metrics.accessRequest(cluster: clusterName, code: status)
        let ms = Int((ContinuousClock.now - started).seconds * 1000)
        let info = KubeRequestInfo(method: head.method.rawValue, path: path)
        await core.audit(HubAction(
            verb: info.verb, resource: info.resource ?? path, name: info.name, user: session.user, code: status,
            sourceIP: exchange.remoteAddress?.ipAddress,
            message: "\(head.method.rawValue) \(path) on cluster \(clusterName): \(outcome)", namespace: info.namespace,
            apiGroup: info.apiGroup ?? "", groups: session.groups,
            annotations: ["tether.dev/cluster": clusterName, "tether.dev/session": session.id, "tether.dev/latency-ms": "\(ms)",
                          "tether.dev/response-bytes": "\(down)", "tether.dev/request-bytes": "\(up)", "tether.dev/proxied": "true",
                          "tether.dev/upgrade": upgrade, "tether.dev/grants": admitted.grants.summary.joined(separator: ", ")]))
    }

    /// A refusal at the hub, as a Kubernetes `Status` (kubectl prints it as it
    /// prints the API server's own).
    private static func refuse(_ exchange: UpgradeExchange, _ error: TetherError, cluster: String, core: HubCore) async {
        let (code, headers, body) = KubeStatus.parts(for: error)
        var fields = HTTPHeaders()
        for (name, value) in headers { fields.add(name: name, value: value) }
        try? await exchange.respond(status: .init(statusCode: code), headers: fields)
        try? await exchange.write(ByteBuffer(bytes: body))
        try? await exchange.end()
        core.metrics.accessRequest(cluster: error.code == .notFound ? "" : cluster, code: code)
    }

    static func carried(_ headers: HTTPHeaders) -> [(name: String, value: String)] {
        TunnelHeaders.carried(headers.map { ($0.name, $0.value) })
    }

    private static func split(_ uri: String) -> (String, String) {
        guard let mark = uri.firstIndex(of: "?") else { return (uri, "") }
        return (String(uri[..<mark]), String(uri[uri.index(after: mark)...]))
    }
}
