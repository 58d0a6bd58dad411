/// Versions every Tether binary reports.
public enum TetherVersion {
    /// The release of this build, reported by agents in heartbeats and by `--version`.
    public static let current = "0.1.0"
}

/// The wire protocol version. A hub refuses an agent whose version it does not speak,
/// with an error naming both versions, instead of failing on a message it cannot read.
public enum ProtocolVersion {
    public static let current: UInt32 = 1
    /// Versions this build can talk to.
    public static let supported: ClosedRange<UInt32> = 1...1
}
