import CDPFS
import Glibc

/// A pthread, optionally pinned to one CPU: pollers and load generators run on these, never on
/// the Swift concurrency pool (whose threads may move and must not block).
public final class PinnedThread: @unchecked Sendable {
    private let thread: pthread_t

    private final class Box {
        let cpu: Int?
        let body: () -> Void
        init(cpu: Int?, body: @escaping () -> Void) {
            self.cpu = cpu
            self.body = body
        }
    }

    /// Starts `body` on a new thread, pinned to `cpu` when given.
    public init(cpu: Int? = nil, _ body: @escaping @Sendable () -> Void) throws(SystemCallError) {
        let box = Unmanaged.passRetained(Box(cpu: cpu, body: body))
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<AnyObject>.fromOpaque(raw!).takeRetainedValue() as! Box
            // A thread made by lowered control-plane work (a reload) runs at the engine's priority.
            ThreadPriority.restoreCurrent()
            if let cpu = box.cpu { _ = CDPFS_pin_current_thread(Int32(cpu)) }
            box.body()
            return nil
        }, box.toOpaque())
        guard result == 0 else {
            box.release()
            throw SystemCallError(call: "pthread_create", errno: result)
        }
        self.thread = thread
    }

    /// Waits for the thread to finish.
    public func join() {
        pthread_join(thread, nil)
    }

    /// Pins the calling thread to `cpu`.
    public static func pinCurrent(to cpu: Int) -> Bool {
        CDPFS_pin_current_thread(Int32(cpu)) == 0
    }

    public static var onlineCPUs: Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }
}
