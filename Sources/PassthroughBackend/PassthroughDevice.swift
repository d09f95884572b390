import CDPFS
import DPFSPosix
import FUSEWire
import Glibc
import Synchronization

// The state of one passthrough device, built once at start-up and shared by every queue's backend:
// the shared directory, its inode table and its open-file table.

/// How READ and WRITE reach the file.
public enum PassthroughDataPath: String, Sendable, CaseIterable {
    /// On the poller when it cannot block: RWF_NOWAIT where the file system supports it (a miss
    /// goes to io_uring), a plain call where it cannot block anyway or cannot say (tmpfs: memory
    /// copies that io_uring would only hand to its worker threads). The default.
    case inlineFirst = "inline-first"
    /// Always through the queue's io_uring (the poller never waits on the file system).
    case uring
}

public struct PassthroughConfiguration: Sendable {
    public var sharedDirectory: String
    public var cacheMode: CacheMode
    /// Inodes the guest may know at once (each holds one O_PATH descriptor).
    public var inodesMax: Int
    /// Files and directories the guest may have open at once.
    public var openFilesMax: Int
    /// Follow into other mounts below the shared directory (off: RESOLVE_NO_XDEV).
    public var crossMounts: Bool
    /// (inode, lock owner) pairs holding POSIX locks at once; contended SETLKW waiting at once; the
    /// threads that wait for them.
    /// Inode descriptors kept open at most: beyond it, descriptors of inodes no request uses are
    /// closed and re-opened from their file handle when needed (file systems with file handles).
    public var inodeDescriptorsMax: Int = DeviceTableDefaults.nodeDescriptorsMax
    public var dataPath: PassthroughDataPath = .inlineFirst
    public var lockOwnersMax: Int = 1024
    public var lockWaitersMax: Int = 256
    public var lockWorkers: Int = 2
    /// Refuse every change with EROFS (virtiofsd's --readonly).
    public var readOnly = false

    public init(sharedDirectory: String, cacheMode: CacheMode = .auto, inodesMax: Int = DeviceTableDefaults.nodesMax,
                openFilesMax: Int = DeviceTableDefaults.openFilesMax, crossMounts: Bool = false) {
        self.sharedDirectory = sharedDirectory
        self.cacheMode = cacheMode
        self.inodesMax = inodesMax
        self.openFilesMax = openFilesMax
        self.crossMounts = crossMounts
    }

    /// Descriptors the device can hold at most, for raising RLIMIT_NOFILE.
    public var descriptorsMax: Int { min(inodesMax, inodeDescriptorsMax) + openFilesMax + lockOwnersMax + 64 }
}

public struct PassthroughError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One shared directory and the tables every queue of its device uses.
public final class PassthroughDevice: @unchecked Sendable {
    public let configuration: PassthroughConfiguration
    /// O_PATH descriptor of the shared directory: node 1.
    public let rootFD: Int32
    /// A readable descriptor of the shared directory, for SYNCFS and as the mount of file handles
    /// (O_PATH descriptors can do neither).
    public let rootDirectoryFD: Int32
    /// /proc/self/fd, opened once: the engine re-opens its own O_PATH descriptors through it (an
    /// inode it already holds, never a guest-supplied path).
    public let procFD: Int32
    public let rootAttributesDevice: UInt64
    public let inodes: NodeTable
    public let handles: NodeTable
    /// POSIX locks: one descriptor per (inode, lock owner), and the workers that wait for
    /// contended locks.
    public let lockOwners: LockOwners
    public let lockWaiters: LockWaiters
    public let resolveFlags: UInt64
    /// What the shared directory's file system offers (probed at start-up on an O_TMPFILE file):
    /// non-blocking buffered reads and writes (RWF_NOWAIT).
    public let nowaitReads: Bool
    public let nowaitWrites: Bool
    public var dataPath: PassthroughDataPath { configuration.dataPath }
    /// Kernel passthrough (host mounts only): set once before any queue starts; OPEN and CREATE of
    /// regular files then answer with a backing file, when the session agreed FUSE_PASSTHROUGH.
    public var kernelPassthrough: KernelPassthroughFiles? = nil
    /// Kernel passthrough per inode slot: the backing id (low 32 bits) and how many open handles
    /// use it (high 32 bits). The kernel keeps one backing file per inode while it is open and
    /// fails an open that names a different one (EIO), so all passthrough opens of an inode share
    /// one registration, closed when the last of them is released.
    let inodeBackings: UnsafeMutablePointer<Atomic<UInt64>>
    /// Per open-file slot: 1 + the inode slot whose backing registration the handle holds (0: none).
    let handleBackings: UnsafeMutablePointer<Atomic<UInt32>>

    /// Opens the shared directory; a missing or unreadable one is an error with the reason.
    public init(configuration: PassthroughConfiguration) throws(PassthroughError) {
        precondition(configuration.inodesMax >= 16 && configuration.inodesMax <= 1 << 24)
        precondition(configuration.openFilesMax >= 16 && configuration.openFilesMax <= 1 << 24)
        self.configuration = configuration
        let path = configuration.sharedDirectory
        let root = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC)
        guard root >= 0 else {
            throw PassthroughError("shared directory \(path): \(String(cString: strerror(errno)))")
        }
        let readable = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard readable >= 0 else {
            let reason = String(cString: strerror(errno))
            _ = close(root)
            throw PassthroughError("shared directory \(path) cannot be read: \(reason)")
        }
        let proc = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC)
        guard proc >= 0 else {
            _ = close(root)
            _ = close(readable)
            throw PassthroughError("/proc/self/fd is needed to re-open inodes: \(String(cString: strerror(errno)))")
        }
        var status = stat()
        _ = fstat(root, &status)
        // The kernel sends modes with the caller's umask already applied (and the umask itself);
        // the engine's own umask must not take a second bite (a 0777 create would come out 0755).
        // Each queue thread sets a umask of 0 for itself only (PassthroughBackend.prepareThread).
        rootFD = root
        rootDirectoryFD = readable
        procFD = proc
        rootAttributesDevice = UInt64(status.st_dev)
        inodes = NodeTable(capacity: configuration.inodesMax, keyed: true, descriptorsCachedMax: configuration.inodeDescriptorsMax)
        handles = NodeTable(capacity: configuration.openFilesMax, keyed: false)
        inodeBackings = Self.allocateAtomics(UInt64.self, count: configuration.inodesMax + 1)
        handleBackings = Self.allocateAtomics(UInt32.self, count: configuration.openFilesMax + 1)
        lockOwners = LockOwners(capacity: configuration.lockOwnersMax)
        lockWaiters = LockWaiters(workers: configuration.lockWorkers, capacity: configuration.lockWaitersMax)
        var resolve = UInt64(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS)
        if !configuration.crossMounts { resolve |= UInt64(RESOLVE_NO_XDEV) }
        resolveFlags = resolve
        (nowaitReads, nowaitWrites) = Self.probeNonBlockingIO(readable)
    }

    /// Tries RWF_NOWAIT reads and writes on an unnamed temporary file in the share (nothing
    /// appears in it). A file system without O_TMPFILE is taken to support neither.
    static func probeNonBlockingIO(_ directory: Int32) -> (reads: Bool, writes: Bool) {
        let fd = openat(directory, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return (false, false) }
        defer { _ = close(fd) }
        var byte: UInt8 = 0x5A
        let writes = withUnsafeMutablePointer(to: &byte) { pointer -> Bool in
            var vector = iovec(iov_base: pointer, iov_len: 1)
            return pwritev2(fd, &vector, 1, 0, RWF_NOWAIT) == 1
        }
        // The read probe needs a byte in the page cache either way.
        if !writes { _ = pwrite(fd, &byte, 1, 0) }
        let reads = withUnsafeMutablePointer(to: &byte) { pointer -> Bool in
            var vector = iovec(iov_base: pointer, iov_len: 1)
            return preadv2(fd, &vector, 1, 0, RWF_NOWAIT) == 1
        }
        return (reads, writes)
    }

    static func allocateAtomics<Value: AtomicRepresentable & FixedWidthInteger>(_: Value.Type, count: Int) -> UnsafeMutablePointer<Atomic<Value>> {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: count * MemoryLayout<Atomic<Value>>.stride,
                                                   alignment: MemoryLayout<Atomic<Value>>.alignment)
        let atomics = raw.bindMemory(to: Atomic<Value>.self, capacity: count)
        for index in 0..<count { (atomics + index).initialize(to: Atomic(0)) }
        return atomics
    }

    deinit {
        inodeBackings.deinitialize(count: configuration.inodesMax + 1)
        UnsafeMutableRawPointer(inodeBackings).deallocate()
        handleBackings.deinitialize(count: configuration.openFilesMax + 1)
        UnsafeMutableRawPointer(handleBackings).deallocate()
        lockWaiters.shutDown()
        _ = close(rootFD)
        _ = close(rootDirectoryFD)
        _ = close(procFD)
    }

    /// A new FUSE session begins: the kernel knows none of the old inodes or handles.
    public func resetSession() {
        for index in 0...configuration.openFilesMax { handleBackings[index].store(0, ordering: .relaxed) }
        for index in 0...configuration.inodesMax {
            let id = Int32(truncatingIfNeeded: inodeBackings[index].exchange(0, ordering: .acquiringAndReleasing))
            if id > 0, let kernelPassthrough { kernelPassthrough.release(id) }
        }
        lockOwners.releaseAll()
        handles.forgetAll()
        inodes.forgetAll()
    }

    /// The backing id for a passthrough open of inode slot `inodeIndex` through handle slot
    /// `handleIndex`: the inode's registration when it has one, else `fd` registered now. 0 when
    /// it cannot be registered (the file is then served through the engine, uncached, which the
    /// kernel allows beside passthrough opens of the same inode). Lock-free: two queues opening
    /// the same inode may both register; the one that loses the exchange closes its id and uses
    /// the winner's.
    func acquireBacking(fd: Int32, inodeIndex: UInt32, handleIndex: UInt32) -> Int32 {
        guard let kernelPassthrough, Int(inodeIndex) <= configuration.inodesMax,
              Int(handleIndex) <= configuration.openFilesMax else { return 0 }
        let slot = inodeBackings + Int(inodeIndex)
        var registered: Int32 = 0
        var state = slot.pointee.load(ordering: .acquiring)
        while true {
            let id = Int32(truncatingIfNeeded: state)
            let users = state >> 32
            var use = id
            if id <= 0 {
                if registered == 0 {
                    registered = kernelPassthrough.register(fd)
                    if registered <= 0 { return 0 }
                }
                use = registered
            }
            let desired = (users + 1) << 32 | UInt64(UInt32(bitPattern: use))
            let (exchanged, original) = slot.pointee.compareExchange(expected: state, desired: desired, ordering: .acquiringAndReleasing)
            if exchanged {
                if registered > 0 && use != registered { kernelPassthrough.release(registered) }
                handleBackings[Int(handleIndex)].store(inodeIndex + 1, ordering: .releasing)
                return use
            }
            state = original
        }
    }

    /// Drops the backing registration a handle slot holds (RELEASE); the inode's id is closed with
    /// its last user. Returns whether the handle held one.
    @discardableResult
    func releaseBacking(handleIndex: UInt32) -> Bool {
        guard Int(handleIndex) <= configuration.openFilesMax, let kernelPassthrough else { return false }
        let owner = handleBackings[Int(handleIndex)].exchange(0, ordering: .acquiringAndReleasing)
        guard owner > 0 else { return false }
        let slot = inodeBackings + Int(owner - 1)
        var state = slot.pointee.load(ordering: .acquiring)
        while true {
            let id = Int32(truncatingIfNeeded: state)
            let users = state >> 32
            precondition(id > 0 && users >= 1, "a handle holds a backing registration its inode does not have")
            let desired = users == 1 ? 0 : (users - 1) << 32 | UInt64(UInt32(bitPattern: id))
            let (exchanged, original) = slot.pointee.compareExchange(expected: state, desired: desired, ordering: .acquiringAndReleasing)
            if exchanged {
                if users == 1 { kernelPassthrough.release(id) }
                return true
            }
            state = original
        }
    }

    /// Raises RLIMIT_NOFILE to what the tables can hold. Returns the limit in force.
    public static func raiseDescriptorLimit(to wanted: Int) -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < rlim_t(wanted) {
            var raised = limit
            raised.rlim_cur = min(rlim_t(wanted), limit.rlim_max)
            if raised.rlim_cur < rlim_t(wanted) { raised.rlim_max = rlim_t(wanted); raised.rlim_cur = rlim_t(wanted) }
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
            else { _ = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) }
        }
        return Int(limit.rlim_cur)
    }

    /// One line for the start-up report.
    public var report: String {
        "passthrough \(configuration.sharedDirectory)\(configuration.readOnly ? " (read-only)" : ""): cache \(configuration.cacheMode.rawValue), "
            + "\(configuration.inodesMax) inodes (\(configuration.inodeDescriptorsMax) descriptors cached), "
            + "\(configuration.openFilesMax) open files, "
            + "\(configuration.lockOwnersMax) lock owners max, \(configuration.lockWorkers) lock workers; "
            + "data path \(configuration.dataPath.rawValue) (RWF_NOWAIT reads \(nowaitReads ? "yes" : "no"), writes \(nowaitWrites ? "yes" : "no"))"
    }
}
