import Foundation

/// The documents captured from a real kube-apiserver v1.36, kept in the repository
/// under `Tests/Fixtures` (see its README). Every test, the emulator and the
/// benchmarks read them through here, so a missing file is an error that names
/// the path, never an empty result.
public enum Fixtures {
    /// `<repo>/Tests/Fixtures`, found from this file's path (`Tests/TestSupport/`).
    public static var root: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures")
    }

    /// The fixture at `relative` (for example `kube/status/get-notfound.json`).
    public static func url(_ relative: String) throws -> URL {
        let url = root.appendingPathComponent(relative)
        guard FileManager.default.fileExists(atPath: url.path) else { throw Missing(path: url.path) }
        return url
    }

    /// The bytes of the fixture at `relative`.
    public static func data(_ relative: String) throws -> Data {
        try Data(contentsOf: url(relative))
    }

    /// The files ending in `suffix` in the fixture folder `relative`, sorted by
    /// name; a folder that is missing or holds none is an error.
    public static func files(in relative: String, suffix: String = ".json") throws -> [URL] {
        let dir = try url(relative)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(suffix) }.sorted()
        guard !names.isEmpty else { throw Missing(path: dir.path + "/*" + suffix) }
        return names.map { dir.appendingPathComponent($0) }
    }

    /// A fixture the tests need is not where it should be.
    public struct Missing: Error, CustomStringConvertible {
        public let path: String
        public var description: String {
            "fixture missing: \(path) (the captured API server fixtures live in Tests/Fixtures; see its README)"
        }
    }
}
