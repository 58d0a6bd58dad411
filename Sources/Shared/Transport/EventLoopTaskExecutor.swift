import NIOCore

/// Runs tasks on one NIO event loop. A task that prefers it
/// (`withTaskExecutorPreference`) runs on the thread that does the I/O of the
/// connections on that loop: a message read there resumes its reader without
/// waking another thread, and what the task writes is written without one either.
/// For short, non-blocking work only (it shares the loop with its I/O).
public final class EventLoopTaskExecutor: TaskExecutor {
    public let loop: any EventLoop

    public init(_ loop: any EventLoop) { self.loop = loop }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
