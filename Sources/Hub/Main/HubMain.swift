import TetherHub

/// `tether-hub`: the whole program lives in the TetherHub library (and its store in
/// HubStore), so tests and benchmarks run the same code this binary runs.
@main
enum HubMain {
    static func main() async {
        // In an async context the async `main` of AsyncParsableCommand is chosen.
        await TetherHubCommand.main()
    }
}
