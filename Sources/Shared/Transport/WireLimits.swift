/// Message sizes on the agent channel, one set for both ends.
///
/// gRPC refuses a message over its receiver's limit ("Failed to decode message"),
/// and grpc-swift's default is 4 MiB: a cluster whose desired state grew past it
/// could no longer receive it and reconnected forever. Both ends now allow
/// `maxMessageBytes`, and the hub refuses, at `policy apply`, any change that
/// would make a cluster's desired state larger than `maxDesiredStateBytes`, which
/// leaves room for the message's own framing.
public enum WireLimits {
    /// The largest message either end accepts (after decompression).
    public static let maxMessageBytes = 32 << 20

    /// The largest desired state the hub compiles for one cluster, counted as
    /// the objects' JSON plus their bundle names.
    public static let maxDesiredStateBytes = 16 << 20

    /// What a desired state of these objects weighs against `maxDesiredStateBytes`:
    /// each object's JSON and bundle name plus 16 bytes of protobuf framing, and
    /// 128 for the revision and hash.
    public static func desiredStateBytes(objects: some Sequence<(bundle: String, json: Int)>) -> Int {
        objects.reduce(128) { $0 + $1.json + $1.bundle.utf8.count + 16 }
    }
}
