import BackendKit
import CDPFS
import DPFSCore
import DPFSPosix
import Dispatch
import FUSEWire
import Glibc
import Synchronization

// POSIX record locks for the guest (GETLK, SETLK, SETLKW), on the host's open-file-description
// locks. POSIX locks belong to a lock owner (a process of the guest), so each (inode, owner) pair
// gets a descriptor of its own, opened on the inode: OFD locks on different descriptors conflict
// exactly as locks of different owners do, and unlocking part of a range splits it as POSIX says.
// FLUSH with the owner (every close(2) in the guest) closes that descriptor, which drops the
// owner's locks on the file, as close(2) does on a local file system.
//
// A SETLKW that would block cannot wait on the poller: it goes to the device's bounded pool of
// lock workers, which retry the non-blocking lock every `retryMicroseconds` until it is granted,
// fails, or an INTERRUPT for its request arrives, and complete through the completion ring.

/// The descriptors that carry each lock owner's locks. Bounded; found by linear scan under a mutex
/// (locking is rare next to READ and WRITE, and the scan allocates nothing).
public final class LockOwners: @unchecked Sendable {
    struct Entry {
        var inodeID: UInt64 = 0
        var owner: UInt64 = 0
        var fd: Int32 = -1
    }

    public let capacity: Int
    let entries: UnsafeMutablePointer<Entry>
    let mutex = HostMutex()

    public init(capacity: Int) {
        precondition(capacity >= 1 && capacity <= 1 << 16)
        self.capacity = capacity
        entries = .allocate(capacity: capacity)
        entries.initialize(repeating: Entry(), count: capacity)
    }

    deinit {
        for index in 0..<capacity where entries[index].fd >= 0 { _ = close(entries[index].fd) }
        entries.deallocate()
    }

    /// The owner's descriptor for the inode, opened with `open` when it has none. -1 with errno set
    /// when it cannot be opened, or ENOLCK when the table is full.
    func descriptor(inodeID: UInt64, owner: UInt64, open: () -> Int32) -> Int32 {
        mutex.withLock { () -> Int32 in
            var free = -1
            for index in 0..<capacity {
                if entries[index].fd >= 0 && entries[index].inodeID == inodeID && entries[index].owner == owner {
                    return entries[index].fd
                }
                if free < 0 && entries[index].fd < 0 { free = index }
            }
            guard free >= 0 else { Glibc.errno = ENOLCK; return -1 }
            let fd = open()
            guard fd >= 0 else { return -1 }
            entries[free] = Entry(inodeID: inodeID, owner: owner, fd: fd)
            return fd
        }
    }

    /// The owner closed the file: its locks on the inode go with its descriptor.
    func release(inodeID: UInt64, owner: UInt64) {
        let fd = mutex.withLock { () -> Int32 in
            for index in 0..<capacity where entries[index].fd >= 0 && entries[index].inodeID == inodeID && entries[index].owner == owner {
                let fd = entries[index].fd
                entries[index] = Entry()
                return fd
            }
            return -1
        }
        if fd >= 0 { _ = close(fd) }
    }

    /// A new FUSE session: no owner of the old one holds anything.
    func releaseAll() {
        for index in 0..<capacity {
            let fd = mutex.withLock { () -> Int32 in
                let fd = entries[index].fd
                entries[index] = Entry()
                return fd
            }
            if fd >= 0 { _ = close(fd) }
        }
    }

    public var inUse: Int { mutex.withLock { (0..<capacity).reduce(0) { $0 + (entries[$1].fd >= 0 ? 1 : 0) } } }
}

/// The bounded pool that waits for contended locks (SETLKW) off the poller.
public final class LockWaiters: @unchecked Sendable {
    enum State: UInt8 { case free, queued, running, cancelled }

    struct Job {
        var state: State = .free
        var fd: Int32 = -1
        var lock = flock()
        var unique: UInt64 = 0
        var token = CompletionToken(rawValue: 0)
        var reply: FUSEReply? = nil
        var context: BackendContext? = nil
        var sequence: UInt64 = 0
    }

    public let capacity: Int
    public let retryMicroseconds: UInt32
    let jobs: UnsafeMutablePointer<Job>
    let mutex = HostMutex()
    /// The next sequence number (under the mutex): jobs start in arrival order.
    var nextSequence: UInt64 = 0
    let available = DispatchSemaphore(value: 0)
    let stopping = Atomic<Bool>(false)
    var threads: [pthread_t] = []

    /// `workers` threads wait for at most `capacity` contended locks at once.
    public init(workers: Int, capacity: Int, retryMicroseconds: UInt32 = 2000) {
        precondition(workers >= 1 && workers <= 64 && capacity >= workers && capacity <= 4096)
        self.capacity = capacity
        self.retryMicroseconds = retryMicroseconds
        jobs = .allocate(capacity: capacity)
        jobs.initialize(repeating: Job(), count: capacity)
        for _ in 0..<workers {
            var thread = pthread_t()
            let box = Unmanaged.passRetained(self)
            let created = pthread_create(&thread, nil, { raw in
                let pool = Unmanaged<LockWaiters>.fromOpaque(raw!).takeRetainedValue()
                ThreadPriority.restoreCurrent()      // made during a reload: the engine's priority
                pool.work()
                return nil
            }, box.toOpaque())
            if created == 0 { threads.append(thread) } else { box.release() }
        }
        precondition(!threads.isEmpty, "no lock worker thread could be started")
    }

    /// Stops the workers (every waiting lock is answered EINTR) and waits for them.
    public func shutDown() {
        stopping.store(true, ordering: .releasing)
        for _ in threads { available.signal() }
        for thread in threads { pthread_join(thread, nil) }
        threads = []
    }

    deinit { jobs.deallocate() }

    /// Queues a contended SETLKW. False when `capacity` locks already wait (the caller answers ENOLCK).
    func enqueue(fd: Int32, lock: flock, unique: UInt64, token: CompletionToken, reply: FUSEReply, context: BackendContext) -> Bool {
        let queued = mutex.withLock { () -> Bool in
            for index in 0..<capacity where jobs[index].state == .free {
                jobs[index] = Job(state: .queued, fd: fd, lock: lock, unique: unique, token: token, reply: reply,
                                  context: context, sequence: nextSequence)
                nextSequence &+= 1
                return true
            }
            return false
        }
        if queued { available.signal() }
        return queued
    }

    /// INTERRUPT: the lock request `unique` gives up at its next retry. False when none waits.
    func cancel(unique: UInt64) -> Bool {
        mutex.withLock { () -> Bool in
            for index in 0..<capacity where jobs[index].unique == unique && (jobs[index].state == .queued || jobs[index].state == .running) {
                jobs[index].state = .cancelled
                return true
            }
            return false
        }
    }

    /// A queue stops: its waiting locks give up (EINTR), so the quiesce that follows can finish.
    func cancel(queueIndex: Int) {
        mutex.withLock {
            for index in 0..<capacity where (jobs[index].state == .queued || jobs[index].state == .running)
                && jobs[index].context?.queueIndex == queueIndex {
                jobs[index].state = .cancelled
            }
        }
    }

    /// Jobs waiting or running (for tests and reports).
    public var waiting: Int {
        mutex.withLock { (0..<capacity).reduce(0) { $0 + (jobs[$1].state == .free ? 0 : 1) } }
    }

    func work() {
        while true {
            available.wait()
            if stopping.load(ordering: .acquiring) && waiting == 0 { return }
            // The oldest queued job.
            let taken = mutex.withLock { () -> Int? in
                var oldest: Int? = nil
                for index in 0..<capacity where jobs[index].state == .queued {
                    if oldest == nil || jobs[index].sequence < jobs[oldest!].sequence { oldest = index }
                }
                if let oldest { jobs[oldest].state = .running }
                return oldest
            }
            guard let index = taken else { continue }
            run(index)
        }
    }

    func run(_ index: Int) {
        var (lock, fd) = mutex.withLock { (jobs[index].lock, jobs[index].fd) }
        var failure: Int32 = 0
        while true {
            let cancelled = mutex.withLock { jobs[index].state == .cancelled }
            if cancelled || stopping.load(ordering: .acquiring) { failure = EINTR; break }
            if fcntl(fd, F_OFD_SETLK, &lock) == 0 { break }
            let error = Glibc.errno
            guard error == EAGAIN || error == EACCES || error == EINTR else { failure = error; break }
            usleep(retryMicroseconds)
        }
        let (reply, token, context) = mutex.withLock { (jobs[index].reply!, jobs[index].token, jobs[index].context!) }
        if failure == 0 { reply.send(bodyBytes: 0) } else { reply.fail(FUSEErrno(failure)) }
        mutex.withLock { jobs[index] = Job() }
        context.complete(token)
    }
}

extension PassthroughBackend {
    /// The kernel's `fuse_file_lock` as a host `flock` (OFD locks need l_pid 0).
    static func hostLock(_ lock: LockArguments) -> flock {
        var result = flock()
        result.l_type = Int16(truncatingIfNeeded: lock.type)
        result.l_whence = Int16(SEEK_SET)
        result.l_start = off_t(Int64(bitPattern: lock.start))
        // `end` is the last byte; OFFSET_MAX means "to the end of the file", which flock says as 0.
        result.l_len = lock.end >= UInt64(Int64.max) ? 0 : off_t(Int64(bitPattern: lock.end &- lock.start &+ 1))
        result.l_pid = 0
        return result
    }

    /// The lock owner's descriptor on the inode behind `handle`.
    mutating func ownerDescriptor(nodeID: UInt64, handle: PinnedNode, owner: UInt64) -> Int32 {
        let accessMode = Int32(bitPattern: handle.kind) & O_ACCMODE
        let procFD = device.procFD
        let handleFD = handle.fd
        // Opened through the guest's own open file (same access), so no new permission is granted.
        return device.lockOwners.descriptor(inodeID: nodeID, owner: owner) {
            let name = procName(handleFD)
            return Retry.onInterrupt { openat(procFD, name, accessMode | O_CLOEXEC | O_NONBLOCK) }
        }
    }

    /// The prologue of GETLK and SETLK(W): as the engine, the lock owner's OFD descriptor on the
    /// inode behind the request's open file (nil and the errno when there is none; flock(2) locks
    /// are the guest kernel's own business).
    mutating func lockOwnerDescriptor(_ operation: Operation<LockArguments>) -> (Int32?, FUSEErrno) {
        becomeEngine()
        let arguments = operation.arguments
        guard !arguments.isFlock else { return (nil, .notImplemented) }
        guard let handle = device.handles.pin(arguments.handle) else { return (nil, .badFileDescriptor) }
        defer { device.handles.unpin(handle.index) }
        let fd = ownerDescriptor(nodeID: operation.nodeID, handle: handle, owner: arguments.owner)
        return fd >= 0 ? (fd, .io) : (nil, Self.lastErrno)
    }

    /// GETLK: the lock that would conflict, asked as the engine (the owner's OFD descriptor).
    public mutating func getlk(_ operation: Operation<LockArguments>, reply: LockReply) -> BackendAnswer {
        let (fd, failure) = lockOwnerDescriptor(operation)
        guard let fd else { return reply.fail(failure) }
        var lock = Self.hostLock(operation.arguments)
        guard fcntl(fd, F_OFD_GETLK, &lock) == 0 else { return reply.fail(Self.lastErrno) }
        let end = lock.l_len == 0 ? UInt64(Int64.max) : UInt64(lock.l_start + lock.l_len - 1)
        return reply.lock(start: UInt64(lock.l_start), end: lock.l_type == Int16(F_UNLCK) ? 0 : end, type: UInt32(lock.l_type),
                          pid: lock.l_pid > 0 ? UInt32(lock.l_pid) : 0)
    }

    /// SETLK, and SETLKW (`wait`): a conflicting lock parks the request with the lock waiters,
    /// which answer it when the lock is granted or the request interrupted.
    public mutating func setlk(_ operation: Operation<LockArguments>, wait: Bool, reply: StatusReply) -> BackendAnswer {
        let (fd, failure) = lockOwnerDescriptor(operation)
        guard let fd else { return reply.fail(failure) }
        var lock = Self.hostLock(operation.arguments)
        if fcntl(fd, F_OFD_SETLK, &lock) == 0 { return reply.ok() }
        let error = Glibc.errno
        guard wait, error == EAGAIN || error == EACCES, let context = queue?.context else {
            return reply.fail(Self.errno(error == EACCES ? EAGAIN : error))
        }
        guard device.lockWaiters.enqueue(fd: fd, lock: lock, unique: operation.unique, token: operation.token,
                                         reply: reply.wire, context: context) else {
            return reply.fail(FUSEErrno(ENOLCK))
        }
        return .pending
    }
}
