import CDPFS
import Glibc

// One io_uring per poller (liburing underneath): the backend queues submissions while it handles a
// batch, `submit` makes at most one io_uring_enter per poller step, and completions are reaped from
// the shared completion queue without a syscall. Completions that finish asynchronously signal an
// eventfd (IORING_REGISTER_EVENTFD_ASYNC), which the idle poller sleeps on; completions that finish
// inline during submission (a page-cache read) signal nothing, because the poller reaps them in its
// next step anyway.

public final class IOURing: @unchecked Sendable {
    @usableFromInline let ring: UnsafeMutablePointer<io_uring>
    /// Submissions queued since the last `submit`.
    @usableFromInline var queued: Int = 0
    public let entries: Int
    public let eventFD: Int32

    /// `entries` submission slots (a power of two); the completion queue has twice as many.
    public init(entries: Int) throws(SystemCallError) {
        precondition(entries >= 1 && entries <= 32768 && entries & (entries - 1) == 0)
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        let result = io_uring_queue_init(UInt32(entries), ring, 0)
        guard result == 0 else {
            ring.deallocate()
            throw SystemCallError(call: "io_uring_queue_init", errno: -result)
        }
        let fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard fd >= 0 else {
            let saved = errno
            io_uring_queue_exit(ring)
            ring.deallocate()
            throw SystemCallError(call: "eventfd", errno: saved)
        }
        let registered = io_uring_register_eventfd_async(ring, fd)
        guard registered == 0 else {
            _ = Glibc.close(fd)
            io_uring_queue_exit(ring)
            ring.deallocate()
            throw SystemCallError(call: "io_uring_register_eventfd_async", errno: -registered)
        }
        self.entries = entries
        eventFD = fd
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
        _ = Glibc.close(eventFD)
    }

    /// A free submission entry, or nil when the queue is full (callers size it so it never is).
    @inlinable
    func entry() -> UnsafeMutablePointer<io_uring_sqe>? {
        guard let sqe = io_uring_get_sqe(ring) else { return nil }
        queued &+= 1
        return sqe
    }

    /// Queues a vectored read at `offset` into `count` iovecs. Returns false when the queue is full.
    @inlinable
    public func readv(fd: Int32, iovecs: UnsafePointer<iovec>, count: Int, offset: UInt64, userData: UInt64) -> Bool {
        guard let sqe = entry() else { return false }
        io_uring_prep_readv(sqe, fd, iovecs, UInt32(count), offset)
        io_uring_sqe_set_data64(sqe, userData)
        return true
    }

    /// Queues a vectored write at `offset` from `count` iovecs.
    @inlinable
    public func writev(fd: Int32, iovecs: UnsafePointer<iovec>, count: Int, offset: UInt64, userData: UInt64) -> Bool {
        guard let sqe = entry() else { return false }
        io_uring_prep_writev(sqe, fd, iovecs, UInt32(count), offset)
        io_uring_sqe_set_data64(sqe, userData)
        return true
    }

    /// Queues fsync (or fdatasync).
    @inlinable
    public func fsync(fd: Int32, dataOnly: Bool, userData: UInt64) -> Bool {
        guard let sqe = entry() else { return false }
        io_uring_prep_fsync(sqe, fd, dataOnly ? UInt32(IORING_FSYNC_DATASYNC) : 0)
        io_uring_sqe_set_data64(sqe, userData)
        return true
    }

    /// Queues a cancellation of every request in flight (quiesce); its own completion carries
    /// `userData`.
    public func cancelAll(userData: UInt64) -> Bool {
        guard let sqe = entry() else { return false }
        io_uring_prep_cancel64(sqe, 0, Int32(IORING_ASYNC_CANCEL_ANY))
        io_uring_sqe_set_data64(sqe, userData)
        return true
    }

    /// Submits everything queued with one io_uring_enter; nothing when nothing is queued.
    @inlinable
    public func submit() {
        guard queued > 0 else { return }
        var result: Int32
        repeat { result = io_uring_submit(ring) } while result == -EINTR || result == -EAGAIN
        queued = 0
    }

    /// Takes the next completion, if any: (user data, result = bytes or -errno). No syscall.
    @inlinable
    public func nextCompletion() -> (userData: UInt64, result: Int32)? {
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        guard io_uring_peek_cqe(ring, &cqe) == 0, let cqe else { return nil }
        let completion = (cqe.pointee.user_data, cqe.pointee.res)
        io_uring_cqe_seen(ring, cqe)
        return completion
    }
}
