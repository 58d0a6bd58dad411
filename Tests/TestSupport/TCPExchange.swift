import NIOCore
import NIOPosix

/// Connects to 127.0.0.1:`port`, sends `text`, and returns what comes back until
/// the peer closes or `expected` bytes arrived.
public func tcpExchange(port: Int, send text: String, expected: Int) async throws -> String {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port) { channel in
            channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
        }
    return try await channel.executeThenClose { inbound, outbound in
        try await outbound.write(ByteBuffer(string: text))
        var received = ""
        for try await chunk in inbound {
            received += String(buffer: chunk)
            if received.utf8.count >= expected { break }
        }
        return received
    }
}
