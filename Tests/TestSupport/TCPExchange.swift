import NIOCore
import NIOPosix

/// Connects to 127.0.0.1:`port`, sends `text` (unless the peer closed first), and returns what comes back until
/// the peer closes or `expected` bytes arrived; fails after `timeout`.
public func tcpExchange(port: Int, send text: String, expected: Int, timeout: Duration = .seconds(20)) async throws -> String {
    try await withThrowingTaskGroup(of: String?.self) { group in
        group.addTask { try await exchange(port: port, send: text, expected: expected) }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let result = try await group.next() ?? nil else {
            throw TimedOut(what: "an answer on 127.0.0.1:\(port)", after: timeout)
        }
        return result
    }
}

private func exchange(port: Int, send text: String, expected: Int) async throws -> String {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port) { channel in
            channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
        }
    return try await channel.executeThenClose { inbound, outbound in
        do {
            try await outbound.write(ByteBuffer(string: text))
        } catch let error as ChannelError where error == .ioOnClosedChannel || error == .outputClosed {
            // The peer closed first (a refused port-forward closes the connection as soon
            // as the kubelet's error arrives): what it said, if anything, is still read.
        }
        var received = ""
        for try await chunk in inbound {
            received += String(buffer: chunk)
            if received.utf8.count >= expected { break }
        }
        return received
    }
}
