import Foundation

/// Atomic file replacement: temporary file, fsync, rename, fsync of the directory.
public enum AtomicFile {
    public static func write(_ data: Data, to path: String, mode: mode_t) throws {
        try write(to: path, mode: mode) { handle in try handle.write(contentsOf: data) }
    }

    /// Streams the file's contents through `body` into a temporary file, which replaces
    /// `path` only once `body` returned and the contents are on disk. If `body` throws,
    /// `path` is untouched and the temporary file is removed.
    public static func write(to path: String, mode: mode_t, _ body: (FileHandle) throws -> Void) throws {
        let tmp = path + ".tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode)
        guard fd >= 0 else { throw error("open", path) }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
        do {
            try body(handle)
            guard fchmod(fd, mode) == 0, fsync(fd) == 0 else { throw error("write", path) }
        } catch {
            close(fd)
            unlink(tmp)
            throw error
        }
        close(fd)
        guard rename(tmp, path) == 0 else {
            let failure = error("rename", path)
            unlink(tmp)
            throw failure
        }
        let dir = open((path as NSString).deletingLastPathComponent, O_RDONLY)
        if dir >= 0 {
            fsync(dir)
            close(dir)
        }
    }

    private static func error(_ op: String, _ path: String) -> TetherError {
        TetherError(.storage, "cannot \(op) \(path): \(String(cString: strerror(errno)))")
    }
}
