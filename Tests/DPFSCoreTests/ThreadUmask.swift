import CDPFS
import DPFSPosix
import Glibc

/// Runs `body` on a new thread whose umask is `umaskBits`, that thread's alone (the tests of the
/// process run in parallel and must keep theirs).
func withThreadUmask<T: Sendable>(_ umaskBits: mode_t, _ body: @escaping @Sendable () -> T) throws -> T {
    let box = ResultBox<T>()
    let thread = try PinnedThread {
        precondition(CDPFS_thread_private_umask_zero() == 0)
        umask(umaskBits)
        box.value = body()
    }
    thread.join()
    return box.value!
}

final class ResultBox<T>: @unchecked Sendable { var value: T? }
