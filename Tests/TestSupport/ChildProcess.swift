import Foundation
import Shared

/// A built binary run as a child process, its output captured for assertions.
public final class ChildProcess: Sendable {
    public let process: Process
    private let captured = Locked("")
    private let exit = AsyncValue<Int32>()

    /// The directory holding the package's built products (next to the test bundle).
    public static var productsDirectory: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    }

    public static func binary(_ name: String) throws -> String {
        let path = productsDirectory.appendingPathComponent(name).path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw TimedOut(what: "\(name) binary at \(path) (run `swift build` first)", after: .zero)
        }
        return path
    }

    public init(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: "TETHER_JOIN_TOKEN")
        env.removeValue(forKey: "TETHER_CREDENTIALS")
        for (k, v) in environment { env[k] = v }
        process.environment = env
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        let captured = self.captured
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if !data.isEmpty { captured.withLock { $0 += String(decoding: data, as: UTF8.self) } }
        }
        let exit = self.exit
        process.terminationHandler = { p in exit.set(p.terminationStatus) }
        try process.run()
    }

    public var output: String { captured.value }

    public func waitForOutput(containing text: String, timeout: Duration = .seconds(30)) async throws {
        try await eventually(timeout: timeout, "output containing '\(text)'; got:\n\(output)") { self.output.contains(text) }
    }

    public func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

    public func waitForExit() async -> Int32 { await exit.value }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

/// Runs a short command to completion: exit status, stdout and stderr apart.
/// Waits without blocking a thread: Swift concurrency has one thread per core here,
/// and a blocked one stalls every server other tests run in this process.
public func runCommand(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) async throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    process.environment = env
    process.standardInput = FileHandle.nullDevice
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    let stdout = Locked(Data()), stderr = Locked(Data())
    let outDone = AsyncValue<Void>(), errDone = AsyncValue<Void>(), exited = AsyncValue<Int32>()
    for (pipe, buffer, done) in [(out, stdout, outDone), (err, stderr, errDone)] {
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if data.isEmpty {
                handle.readabilityHandler = nil
                done.set(())
            } else {
                buffer.withLock { $0.append(data) }
            }
        }
    }
    process.terminationHandler = { exited.set($0.terminationStatus) }
    try process.run()
    let status = await exited.value
    // Output normally ends with the process. But a process another test spawns at
    // the same moment can inherit these pipes' write ends and keep them open, so
    // end-of-file is awaited for a short while only, never forever.
    let deadline = ContinuousClock.now + .seconds(2)
    while (outDone.current == nil || errDone.current == nil) && ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(10))
    }
    for pipe in [out, err] {
        pipe.fileHandleForReading.readabilityHandler = nil
    }
    return (status, String(decoding: stdout.value, as: UTF8.self), String(decoding: stderr.value, as: UTF8.self))
}
