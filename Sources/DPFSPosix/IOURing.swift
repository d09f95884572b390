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
    /// `commands128`: 128-byte submission entries, which ring commands (FUSE-over-io_uring) need.
    /// `asyncOnly`: the eventfd fires only for completions that did not finish during submission
    /// (the poller reaps those in its next step anyway).
    public init(entries: Int, commands128: Bool = false, asyncOnly: Bool = true) throws(SystemCallError) {
        precondition(entries >= 1 && entries <= 32768 && entries & (entries - 1) == 0)
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        let result = CDPFS_uring_init_flags(UInt32(entries), ring, commands128 ? UInt32(IORING_SETUP_SQE128) : 0)
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
        let registered = asyncOnly ? io_uring_register_eventfd_async(ring, fd) : io_uring_register_eventfd(ring, fd)
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

    /// Queues a plain read into one buffer (a /dev/fuse request read: no offset).
    @inlinable
    public func read(fd: Int32, buffer: UnsafeMutableRawPointer, bytes: Int, userData: UInt64) -> Bool {
        guard let sqe = entry() else { return false }
        io_uring_prep_read(sqe, fd, buffer, UInt32(bytes), 0)
        io_uring_sqe_set_data64(sqe, userData)
        return true
    }

    /// Queues a one-shot wait for `fd` to become readable; completes with the poll mask.
    @inlinable
    public func pollReadable(fd: Int32, userData: UInt64) -> Bool {
        guard let sqe = entry() else { return false }
        io_uring_prep_poll_add(sqe, fd, UInt32(POLLIN))
        io_uring_sqe_set_data64(sqe, userData)
        return true
    }

    /// Queues a FUSE-over-io_uring command on a /dev/fuse descriptor (the ring must have been made
    /// with `commands128`): REGISTER with the entry's two iovecs, or COMMIT_AND_FETCH of `commitID`.
    @inlinable
    public func fuseCommand(fd: Int32, command: UInt32, queue: UInt16, commitID: UInt64,
                            iovecs: UnsafePointer<iovec>?, iovecCount: UInt32, userData: UInt64) -> Bool {
        guard let sqe = entry() else { return false }
        CDPFS_prep_fuse_uring_cmd(sqe, fd, command, queue, commitID, iovecs, iovecCount, userData)
        return true
    }

    /// Whether completions wait to be reaped (no syscall).
    @inlinable
    public var hasCompletions: Bool { io_uring_cq_ready(ring) > 0 }

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
