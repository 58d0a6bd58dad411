import Foundation
import Shared

/// Where a child's output goes: a temporary file, not a pipe.
///
/// Reading pipes through `FileHandle.readabilityHandler` registers a libdispatch
/// read source per pipe; clearing the handler cancels it asynchronously, so the
/// pipe's descriptor could be closed, and its number reused by another test's
/// socket, while the source was still registered. libdispatch's manager thread
/// then crashed in `_dispatch_event_loop_drain` ("bad pointer dereference") about
/// once in five full runs. A file needs no source, and a child another test spawns
/// at the same moment that inherits the descriptor cannot hold up end-of-file.
final class OutputFile: Sendable {
    let path: String
    let handle: FileHandle

    init(_ label: String) throws {
        path = FileManager.default.temporaryDirectory.path + "/tether-\(label)-\(UUID().uuidString.prefix(8)).out"
        guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600]),
              let handle = FileHandle(forWritingAtPath: path) else {
            throw TimedOut(what: "a temporary output file at \(path)", after: .zero)
        }
        self.handle = handle
    }

    /// Everything written so far.
    var contents: String {
        String(decoding: FileManager.default.contents(atPath: path) ?? Data(), as: UTF8.self)
    }

    /// Our copy of the write end; the child keeps its own.
    func closeWriter() { try? handle.close() }

    deinit {
        // The handle closes itself if `closeWriter` never ran.
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// A built binary run as a child process, its output captured for assertions.
public final class ChildProcess: Sendable {
    public let process: Process
    private let captured: OutputFile
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

    /// The write end of the child's standard input (`interactive` children only).
    private let input: FileHandle?

    /// `interactive`: the child reads a pipe the test writes with `send` (a prompt
    /// answered); otherwise its standard input is empty.
    public init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], interactive: Bool = false) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: "TETHER_JOIN_TOKEN")
        env.removeValue(forKey: "TETHER_CREDENTIALS")
        for (k, v) in environment { env[k] = v }
        process.environment = env
        captured = try OutputFile(URL(fileURLWithPath: executable).lastPathComponent)
        process.standardOutput = captured.handle
        process.standardError = captured.handle
        if interactive {
            let pipe = Pipe()
            process.standardInput = pipe
            input = pipe.fileHandleForWriting
        } else {
            process.standardInput = FileHandle.nullDevice
            input = nil
        }
        let exit = self.exit
        process.terminationHandler = { p in exit.set(p.terminationStatus) }
        defer { captured.closeWriter() }
        try process.run()
    }

    /// Everything the child wrote to stdout and stderr so far.
    public var output: String { captured.contents }

    public func waitForOutput(containing text: String, timeout: Duration = .seconds(30)) async throws {
        try await eventually(timeout: timeout, "output containing '\(text)'; got:\n\(output)") { self.output.contains(text) }
    }

    public func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

    /// Writes to the child's standard input (an `interactive` child).
    public func send(_ text: String) throws {
        guard let input else { throw TimedOut(what: "an interactive child (started without interactive: true)", after: .zero) }
        try input.write(contentsOf: Data(text.utf8))
    }

    /// Ends the child's standard input.
    public func closeInput() { try? input?.close() }

    public func waitForExit() async -> Int32 { await exit.value }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

/// Runs a short command to completion: exit status, stdout and stderr apart.
/// Waits without blocking a thread: Swift concurrency has one thread per core here,
/// and a blocked one stalls every server other tests run in this process.
/// `input`, when given, is the child's whole standard input.
public func runCommand(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                       input: String? = nil) async throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    process.environment = env
    process.standardInput = FileHandle.nullDevice
    var inputFile: String?
    if let input {
        let path = NSTemporaryDirectory() + "stdin-\(UUID().uuidString)"
        try input.write(toFile: path, atomically: true, encoding: .utf8)
        process.standardInput = FileHandle(forReadingAtPath: path)
        inputFile = path
    }
    defer { if let inputFile { try? FileManager.default.removeItem(atPath: inputFile) } }
    let name = URL(fileURLWithPath: executable).lastPathComponent
    let out = try OutputFile(name), err = try OutputFile(name)
    process.standardOutput = out.handle
    process.standardError = err.handle
    let exited = AsyncValue<Int32>()
    process.terminationHandler = { exited.set($0.terminationStatus) }
    do {
        defer { out.closeWriter(); err.closeWriter() }
        try process.run()
    }
    let status = await exited.value
    return (status, out.contents, err.contents)
}
