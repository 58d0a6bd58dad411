import Foundation
import Shared

/// What the benchmarks share: their error, and child processes (`tether-hub`,
/// `tether-agent`) whose log lines can be awaited.
public struct BenchError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A child process whose output (stdout and stderr together) can be awaited.
public final class Child: Sendable {
    public let process: Process
    public let output = Locked("")
    public var pid: Int32 { process.processIdentifier }

    public init(_ exe: String, _ args: [String]) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: exe)
        process.arguments = args
        let pipe = Pipe()
        process.standardError = pipe
        process.standardOutput = pipe
        let output = self.output
        pipe.fileHandleForReading.readabilityHandler = { h in
            let d = h.availableData
            if !d.isEmpty { output.withLock { $0 += String(decoding: d, as: UTF8.self) } }
        }
        try process.run()
    }

    /// The first output line containing `marker` (a minute at most).
    public func waitFor(_ marker: String) async throws -> String {
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if let line = output.value.split(separator: "\n").first(where: { $0.contains(marker) }) { return String(line) }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw BenchError("timed out waiting for '\(marker)':\n\(output.value)")
    }

    /// SIGTERM, then waits for the exit.
    public func stop() async {
        kill()
        while process.isRunning { try? await Task.sleep(for: .milliseconds(20)) }
    }

    public func kill() {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGTERM) }
    }
}

/// One `kB` field of /proc/PID/status (`VmRSS:`, `VmHWM:`, `RssAnon:`, `RssFile:`), in KiB; 0 when absent.
public func readStatus(_ pid: Int32, _ field: String) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix(field) })
    else { return 0 }
    return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
}

/// A process's resident memory split the way it matters for a pod: anonymous
/// (heap, stacks: what the process itself allocated) and file-backed (mapped
/// code and read-only data of the binary and shared libraries, clean pages the
/// kernel can drop and re-read, shared with other processes using the same files).
public func memorySummary(_ pid: Int32) -> String {
    let mib = { (field: String) in Double(readStatus(pid, field)) / 1024 }
    return String(format: "RSS %.1f MiB (anonymous %.1f MiB, file-backed code and data %.1f MiB), peak %.1f MiB",
                  mib("VmRSS:"), mib("RssAnon:"), mib("RssFile:") + mib("RssShmem:"), mib("VmHWM:"))
}
