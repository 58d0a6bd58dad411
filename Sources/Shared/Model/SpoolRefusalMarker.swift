/// The audit event an agent writes into its stream when its full spool refused
/// webhook batches (answered 429): the compliance report counts these markers.
public enum SpoolRefusalMarker {
    public static let verb = "tether:spool-refused"
    /// The marker's user: only markers carry it, so the hub's user index finds them at once.
    public static let user = "system:tether-agent"
}
