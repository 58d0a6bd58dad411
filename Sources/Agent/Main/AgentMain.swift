import TetherAgent

/// `tether-agent`: the whole program lives in the TetherAgent library, so tests and
/// benchmarks run the same code this binary runs.
@main
enum AgentMain {
    static func main() async {
        // In an async context the async `main` of AsyncParsableCommand is chosen.
        await TetherAgentCommand.main()
    }
}
