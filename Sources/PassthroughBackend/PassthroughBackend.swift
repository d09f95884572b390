import BackendKit
import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import Synchronization

// The passthrough backend (docs/architecture.md §7): one value per request queue, all of a device's queues
// sharing one `PassthroughDevice` (inode and open-file tables). Metadata requests run as the caller
// (per-thread fsuid/fsgid, no supplementary groups) with one or two *at() system calls on the
// poller thread: on a local file system they take microseconds, less than a hop to a worker thread
// would. READ, WRITE and FSYNC go through the queue's io_uring straight between the guest's memory
// segments and the file — no bounce copy — submitted once per poller step and reaped in the next.
// Every name is resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
// [| RESOLVE_NO_XDEV]) beneath an inode the table holds, so nothing outside the shared directory is
// ever reached and no symlink is ever followed on the host.

/// One request's state while its READ, WRITE or FSYNC is in the io_uring, in the request context the
/// poller's arena holds for its slot, after the request's iovecs (first, so the data path finds
/// them at the context's start).
struct PassthroughRequestState {
    /// What is in flight (`PendingKind`; 0 = nothing).
    var kind: UInt8
    /// The open-file record the I/O holds pinned (0 = none).
    var handle: UInt32
    var token: CompletionToken
    /// Written when the I/O is parked, read when it completes.
    var reply: FUSEReply

    /// iovecs one request may need: a whole max_pages transfer, split at page boundaries, plus slack.
    static let iovecsMax = FUSELimits.pagesMax + 8

    /// Where the record starts in the context: after the iovecs.
    static let offset = (iovecsMax * MemoryLayout<iovec>.stride + MemoryLayout<PassthroughRequestState>.alignment - 1)
        & ~(MemoryLayout<PassthroughRequestState>.alignment - 1)

    /// The request context: `iovecsMax` iovecs, then this record.
    static let layout = RequestContextLayout(
        bytes: offset + MemoryLayout<PassthroughRequestState>.stride,
        alignment: max(MemoryLayout<PassthroughRequestState>.alignment, MemoryLayout<iovec>.alignment))
}

/// Per-queue memory, allocated once when the backend is attached to its poller (the per-request
/// state lives in the arena's request contexts).
final class PassthroughQueueState: @unchecked Sendable {
    let slotCount: Int
    let ring: IOURing?
    /// Directory listings and xattr values pass through here (one request at a time per queue).
    let scratch: UnsafeMutableRawPointer
    static let scratchBytes = FUSELimits.xattrValueBytesMax + 4096
    /// "/proc/self/fd" entry names ("123\0"), written without allocating.
    let procName: UnsafeMutablePointer<CChar>
    /// A file handle being captured for the inode table (name_to_handle_at).
    let fileHandle: UnsafeMutableRawPointer
    let context: BackendContext

    init(context: BackendContext, ring: IOURing?) {
        precondition(context.requestContextStride >= PassthroughRequestState.layout.bytes, "request contexts not carved")
        self.context = context
        slotCount = context.slotCount
        self.ring = ring
        for slot in 0..<slotCount {
            let memory = context.requestContext(slot: slot)
            memory.bindMemory(to: iovec.self, capacity: PassthroughRequestState.iovecsMax)
            (memory + PassthroughRequestState.offset).bindMemory(to: PassthroughRequestState.self, capacity: 1).pointee.kind = 0
        }
        scratch = .allocate(byteCount: Self.scratchBytes, alignment: 4096)
        procName = .allocate(capacity: 24)
        fileHandle = .allocate(byteCount: NodeTable.fileHandleStride, alignment: 8)
    }

    deinit {
        scratch.deallocate()
        procName.deallocate()
        fileHandle.deallocate()
    }

    /// The state of the request in `slot`.
    @inline(__always)
    func request(_ slot: Int) -> UnsafeMutablePointer<PassthroughRequestState> {
        (context.requestContext(slot: slot) + PassthroughRequestState.offset).assumingMemoryBound(to: PassthroughRequestState.self)
    }

    /// The iovecs of the request in `slot`.
    @inline(__always)
    func iovecs(_ slot: Int) -> UnsafeMutablePointer<iovec> {
        context.requestContext(slot: slot).assumingMemoryBound(to: iovec.self)
    }
}

/// What a slot waits for in the io_uring.
enum PendingKind: UInt8 {
    case none = 0, read = 1, write = 2, fsync = 3
}

public struct PassthroughBackend: FileSystem {
    public let device: PassthroughDevice
    /// The share is read-only (a copy of the setting, so the check costs one load).
    public let refusesChanges: Bool
    var queue: PassthroughQueueState? = nil
    /// The fs credentials this thread currently has (the engine starts as root).
    var currentUID: UInt32 = 0
    var currentGID: UInt32 = 0
    var groupsDropped = false
    /// The one supplementary group this thread holds for the current request (`shareGroup`), or
    /// UInt32.max for none.
    var sharedGroup = UInt32.max
    /// The thread the credentials and the umask above were set on: a queue restarted after a
    /// reconnect or a memory change runs this value on a new thread, which has none of them.
    var preparedThread: pthread_t = 0
    let switchesCredentials: Bool
    let validity: CacheValidity
    let openFlags: UInt32
    /// The session agreed FUSE_PASSTHROUGH and the device can register backing files.
    var kernelPassthroughAgreed = false
    /// Whether io_uring is used for READ/WRITE/FSYNC (else the same calls run inline).
    public let usesIOURing: Bool

    /// What this backend asks of INIT.
    /// - POSIX record locks are kept on the host, so tenants sharing a directory see each other's
    ///   locks (and the guest's kernel forwards them instead of keeping them).
    /// - Writeback caching only where the guest owns the share (cache = always).
    /// - A host mount takes set-ID killing on itself (handle_killpriv_v2): the kernel then marks
    ///   inodes S_NOSEC after one look and stops asking GETXATTR(security.capability) before every
    ///   write (one extra round trip per write otherwise, and the only one a kernel-passthrough
    ///   write would still make). WRITE carries FUSE_WRITE_KILL_SUIDGID (killSetIDAsEngine);
    ///   SETATTR and OPEN(O_TRUNC) run as the caller, so the host file system drops the bits itself
    ///   exactly as it would locally.
    public static func initPolicy(cacheMode: CacheMode, hostMount: Bool) -> InitPolicy {
        var policy = InitPolicy()
        policy.flagsWanted |= InitFlags.posixLocks
        if cacheMode == .always { policy.flagsWanted |= InitFlags.writebackCache }
        if hostMount { policy.flagsWanted |= InitFlags.handleKillprivV2 }
        return policy
    }

    /// Each request's io_uring state and iovecs, carved by the poller beside its slot.
    public static var requestContextLayout: RequestContextLayout { PassthroughRequestState.layout }

    static let rootNodeID: UInt64 = 1
    /// utimensat's UTIME_NOW and UTIME_OMIT (expression macros the importer drops).
    static let timeNow = (1 << 30) - 1
    static let timeOmit = (1 << 30) - 2
    static let completionUserDataCancel: UInt64 = .max
    nonisolated(unsafe) static let emptyPath: UnsafePointer<CChar> = UnsafeRawPointer(("" as StaticString).utf8Start).assumingMemoryBound(to: CChar.self)
    nonisolated(unsafe) static let dotPath: UnsafePointer<CChar> = UnsafeRawPointer(("." as StaticString).utf8Start).assumingMemoryBound(to: CChar.self)

    public init(device: PassthroughDevice, useIOURing: Bool = true) {
        self.device = device
        refusesChanges = device.configuration.readOnly
        switchesCredentials = geteuid() == 0
        validity = device.configuration.cacheMode.validity
        openFlags = device.configuration.cacheMode.openFlags
        usesIOURing = useIOURing
    }

    public mutating func attach(_ context: BackendContext) {
        var ring: IOURing? = nil
        if usesIOURing {
            var entries = 1
            while entries < context.slotCount { entries <<= 1 }
            ring = try? IOURing(entries: entries)
        }
        queue = PassthroughQueueState(context: context, ring: ring)
    }

    public mutating func sessionStarted(_ session: NegotiatedSession) {
        kernelPassthroughAgreed = session.flags & InitFlags.passthrough != 0 && device.kernelPassthrough != nil
    }

    /// The kernel of a new session knows none of the old inodes: drop them all (no request of the
    /// new session exists yet, and the old session's requests were all answered).
    public mutating func deviceSessionBegins(_ session: NegotiatedSession) {
        device.resetSession()
    }

    public var eventFD: Int32 { queue?.ring?.eventFD ?? -1 }

    // MARK: - The io_uring phases

    public mutating func poll() -> Int {
        guard let queue, let ring = queue.ring else { return 0 }
        var reaped = 0
        // Bounded: at most one completion per slot can be outstanding, plus cancellations.
        while reaped < 2 * queue.slotCount, let completion = ring.nextCompletion() {
            reaped &+= 1
            let userData = completion.userData
            guard userData < UInt64(queue.slotCount) else { continue }
            let slot = Int(userData)
            let state = queue.request(slot)
            let kind = PendingKind(rawValue: state.pointee.kind) ?? .none
            guard kind != .none else { continue }
            let reply = state.pointee.reply
            let result = completion.result
            if result < 0 {
                reply.fail(Self.errno(-result))
            } else {
                switch kind {
                case .read: reply.sendInPlace(dataBytes: Int(result))
                case .write: reply.written(bytes: UInt32(result))
                case .fsync, .none: reply.send(bodyBytes: 0)
                }
            }
            state.pointee.kind = 0
            let handle = state.pointee.handle
            if handle != 0 { device.handles.unpin(handle) }
            state.pointee.handle = 0
            queue.context.complete(state.pointee.token)
        }
        return reaped
    }

    public mutating func submit() {
        queue?.ring?.submit()
    }

    public mutating func quiesce() {
        if let queue { device.lockWaiters.cancel(queueIndex: queue.context.queueIndex) }
        guard let ring = queue?.ring else { return }
        _ = ring.cancelAll(userData: Self.completionUserDataCancel)
        ring.submit()
    }

    // MARK: - Helpers

    @inlinable
    static func errno(_ value: Int32) -> FUSEErrno {
        (value > 0 && value < 512) ? FUSEErrno(value) : .io
    }

    static var lastErrno: FUSEErrno { errno(Glibc.errno) }

    /// Act as the caller for the host's permission checks.
    mutating func become(_ caller: Caller) {
        if preparedThread != pthread_self() { prepareThread() }
        guard switchesCredentials else { return }
        if !groupsDropped {
            // First request on this thread: set both ids instead of trusting the cache, whatever
            // the thread did before.
            _ = CDPFS_thread_drop_supplementary_groups()
            groupsDropped = true
            sharedGroup = UInt32.max
            _ = setfsgid(caller.gid)
            _ = setfsuid(caller.uid)
            currentGID = caller.gid
            currentUID = caller.uid
            return
        }
        if caller.gid != currentGID {
            _ = setfsgid(caller.gid)
            currentGID = caller.gid
        }
        if caller.uid != currentUID {
            _ = setfsuid(caller.uid)
            currentUID = caller.uid
        }
    }

    /// A thread this backend has not run on yet: its own umask of 0 (guest create modes arrive
    /// with the caller's umask applied; the rest of the process keeps the operator's), root's fs
    /// ids, and a note for `become` to drop the supplementary groups and set both ids afresh.
    /// Without this, a new thread inherited the previous thread's cached ids and ran a request
    /// whose uid matched the cache with the new thread's ids: root's.
    mutating func prepareThread() {
        preparedThread = pthread_self()
        // Failing, creates get the process umask on top: modes come out narrower, never wider.
        _ = CDPFS_thread_private_umask_zero()
        groupsDropped = false
        guard switchesCredentials else { return }
        _ = setfsgid(0)
        _ = setfsuid(0)
        currentUID = 0
        currentGID = 0
    }

    /// Back to root for the engine's own bookkeeping (re-opening an inode for statx, closing).
    mutating func becomeEngine() {
        if preparedThread != pthread_self() { prepareThread() }
        guard switchesCredentials else { return }
        if currentUID != 0 { _ = setfsuid(0); currentUID = 0 }
        if currentGID != 0 { _ = setfsgid(0); currentGID = 0 }
    }

    /// Back to the caller's ids after a stretch as the engine (`becomeEngine`), as `become` left them.
    mutating func resumeCaller(uid: UInt32, gid: UInt32) {
        guard switchesCredentials && (uid != 0 || gid != 0) else { return }
        _ = setfsgid(gid)
        _ = setfsuid(uid)
        currentUID = uid
        currentGID = gid
    }

    mutating func pinNode(_ nodeID: UInt64) -> PinnedNode? {
        if nodeID == Self.rootNodeID { return PinnedNode(index: 0, fd: device.rootFD, kind: FileType.directory) }
        guard let node = device.inodes.pin(nodeID) else { return nil }
        if node.fd >= 0 { return node }
        // The descriptor cache closed this inode's descriptor: open it again from its file handle,
        // with the engine's credentials (open_by_handle_at needs CAP_DAC_READ_SEARCH), then go back
        // to the caller's.
        let (uid, gid) = (currentUID, currentGID)
        becomeEngine()
        let fd = device.inodes.reopen(node, mountFD: device.rootDirectoryFD)
        resumeCaller(uid: uid, gid: gid)
        guard fd >= 0 else {
            device.inodes.unpin(node.index)
            return nil
        }
        return PinnedNode(index: node.index, fd: fd, kind: node.kind)
    }

    func unpinNode(_ node: PinnedNode) {
        if node.index != 0 { device.inodes.unpin(node.index) }
    }

    /// "/proc/self/fd" name of `fd`, for re-opening an O_PATH descriptor the engine holds.
    func procName(_ fd: Int32) -> UnsafePointer<CChar> {
        let buffer = queue!.procName
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var value = UInt32(fd)
        var count = 0
        withUnsafeMutableBytes(of: &digits) { raw in
            repeat {
                raw[count] = UInt8(ascii: "0") + UInt8(value % 10)
                value /= 10
                count += 1
            } while value > 0
            for position in 0..<count { buffer[position] = CChar(bitPattern: raw[count - 1 - position]) }
        }
        buffer[count] = 0
        return UnsafePointer(buffer)
    }

    static func isDotOrDotDot(_ name: UnsafeRawBufferPointer) -> Bool {
        (name.count == 1 && name[0] == UInt8(ascii: ".")) || (name.count == 2 && name[0] == UInt8(ascii: ".") && name[1] == UInt8(ascii: "."))
    }

    static func cString(_ name: UnsafeRawBufferPointer) -> UnsafePointer<CChar> {
        // The decoder copied the name with its NUL into engine memory.
        name.baseAddress!.assumingMemoryBound(to: CChar.self)
    }

    static func attributes(_ s: statx) -> FileAttributes {
        let rdev = (s.stx_rdev_minor & 0xFF) | (s.stx_rdev_major << 8) | ((s.stx_rdev_minor & ~0xFF) << 12)
        return FileAttributes(
            inode: s.stx_ino, sizeBytes: s.stx_size, blocks: s.stx_blocks,
            accessTime: time(s.stx_atime), modificationTime: time(s.stx_mtime), changeTime: time(s.stx_ctime),
            mode: UInt32(s.stx_mode), linkCount: s.stx_nlink, uid: s.stx_uid, gid: s.stx_gid, rdev: rdev,
            blockSizeBytes: s.stx_blksize)
    }

    static func time(_ t: statx_timestamp) -> FUSETime {
        FUSETime(seconds: UInt64(bitPattern: t.tv_sec), nanoseconds: min(t.tv_nsec, 999_999_999))
    }

    /// statx of a descriptor the engine holds (never following a symlink).
    static func status(_ fd: Int32, _ result: inout statx) -> Int32 {
        let flags = AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW
        return CDPFS_statx(fd, emptyPath, flags, CDPFS_statx_mask_basic_and_mount_id(), &result)
    }

    /// Opens `name` beneath `parent` as an O_PATH descriptor and enters it into the inode table
    /// (one lookup). Replies with the entry or an errno.
    mutating func lookupEntry(parent: PinnedNode, name: UnsafePointer<CChar>, reply: FUSEReply) {
        let fd = CDPFS_openat2(parent.fd, name, UInt64(O_PATH | O_NOFOLLOW | O_CLOEXEC), 0, device.resolveFlags)
        guard fd >= 0 else { return reply.fail(Self.lastErrno) }
        enter(fd: fd, reply: reply, handle: nil)
    }

    /// Enters an O_PATH descriptor into the inode table and replies with its entry (or, with a
    /// handle, with the entry and the open file: CREATE, TMPFILE).
    mutating func enter(fd: Int32, reply: FUSEReply, handle: UInt64?) {
        var s = CDPFS.statx()
        let failure = Self.status(fd, &s)
        guard failure == 0 else {
            _ = close(fd)
            return reply.fail(Self.errno(failure))
        }
        guard let index = register(fd: fd, status: &s) else {
            logTableFull("inode", limit: device.configuration.inodesMax)
            return reply.fail(FUSEErrno(ENFILE))
        }
        let id = device.inodes.id(of: index)
        let attributes = Self.attributes(s)
        let generation = UInt64(id >> 32)
        if let handle {
            let (flags, backingID) = passthroughOpen(handle: handle, inodeIndex: index, kind: attributes.mode & 0o170000)
            reply.created(nodeID: id, generation: generation, entryValid: validity, attrValid: validity,
                          attributes: attributes, fileHandle: handle, openFlags: flags, backingID: backingID)
        } else {
            reply.entry(nodeID: id, generation: generation, entryValid: validity, attrValid: validity, attributes: attributes)
        }
    }

    /// Enters `fd` (its statx in `s`) into the inode table with its file handle, if the file system
    /// has one; one lookup counted. Nil when the table is full (`fd` is closed either way if unused).
    func register(fd: Int32, status s: inout statx) -> UInt32? {
        let device = UInt64(s.stx_dev_major) << 32 | UInt64(s.stx_dev_minor)
        let mountID = CDPFS_statx_mount_id(&s)
        // A known inode (the common LOOKUP) needs no file handle: count it and drop the descriptor.
        if let known = self.device.inodes.countLookup(device: device, inode: s.stx_ino, mountID: mountID) {
            _ = close(fd)
            return known
        }
        let fileHandle = queue!.fileHandle
        let reopenable = NodeTable.captureHandle(of: fd, into: fileHandle)
        return self.device.inodes.lookup(fd: fd, kind: UInt32(s.stx_mode) & FileType.mask, device: device,
                                         inode: s.stx_ino, mountID: mountID,
                                         handle: reopenable ? UnsafeRawPointer(fileHandle) : nil)
    }

    func logTableFull(_ what: String, limit: Int) {
        // One line per occurrence would let a guest flood the log; the counters say how often.
        guard !PassthroughBackend.tableFullLogged.exchange(true, ordering: .relaxed) else { return }
        var message = "dpfs-engine: passthrough \(what) table full (\(limit)); requests get ENFILE until the guest forgets some\n"
        message.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }

    static let tableFullLogged = Atomic<Bool>(false)

    /// Replies with the attributes of `fd`.
    func replyAttributes(_ fd: Int32, reply: AttributesReply) -> BackendAnswer {
        var s = CDPFS.statx()
        let failure = Self.status(fd, &s)
        guard failure == 0 else { return reply.fail(Self.errno(failure)) }
        return reply.attributes(Self.attributes(s), valid: validity)
    }

    /// Re-opens an inode the engine holds with real access flags, through /proc/self/fd.
    mutating func reopen(_ node: PinnedNode, flags: Int32) -> Int32 {
        let kind = node.kind & FileType.mask
        // A symlink is never opened on the host, and nothing but files and directories is opened at
        // all: a device node a guest created must not become a door into the host.
        if kind == FileType.symlink { Glibc.errno = ELOOP; return -1 }
        if kind != FileType.regular && kind != FileType.directory { Glibc.errno = EPERM; return -1 }
        return Retry.onInterrupt { openat(device.procFD, procName(node.fd), flags | O_CLOEXEC) }
    }

    // MARK: - Requests

    /// FORGET and BATCH_FORGET (decoded by the adapter). The root is never forgotten.
    public mutating func forget(nodeID: UInt64, lookups: UInt64) {
        if nodeID != Self.rootNodeID { device.inodes.forget(nodeID, count: lookups) }
    }

    /// Only a waiting SETLKW can be interrupted (nothing else blocks). The kernel ignores the
    /// answer unless it is ENOSYS or EAGAIN.
    public mutating func interrupt(_ operation: Operation<InterruptArguments>, reply: StatusReply) -> BackendAnswer {
        _ = device.lockWaiters.cancel(unique: operation.arguments.target)
        return reply.ok()
    }

    // MARK: Data

    @inline(__always)
    public mutating func read(_ operation: Operation<ReadArguments>, reply typed: DataReply) -> BackendAnswer {
        // One copy of the fields before anything else: the calls below could change memory the
        // compiler would otherwise read the arguments from again.
        let arguments = operation.arguments.fields
        let reply = typed.wire
        let token = operation.token
        guard let handle = device.handles.pin(arguments.fh) else { return typed.fail(.badFileDescriptor) }
        let queue = self.queue!
        let slot = operation.slotIndex
        let iovecs = queue.iovecs(slot)
        var cursor = reply.data
        let count = gather(&cursor, bytes: min(Int(arguments.size), reply.dataCapacity), into: iovecs,
                           capacity: PassthroughRequestState.iovecsMax)
        let offset = off_t(Int64(bitPattern: arguments.offset))
        let wanted = iovecBytes(iovecs, count: count)
        switch device.dataPath {
        case .inlineFirst where device.nowaitReads:
            // Page-cache hit: answered now, no hop to io_uring's workers. A miss (EAGAIN), a short
            // answer (part cached, or the end of the file) goes to io_uring whole.
            let result = preadv2(handle.fd, iovecs, Int32(count), offset, RWF_NOWAIT)
            if result == wanted { return finishInline(result, reply: reply, handle: handle, read: true) }
            if result < 0 && Glibc.errno != EAGAIN { return finishInline(-1, reply: reply, handle: handle, read: true) }
        case .inlineFirst:
            // The file system cannot say "would block" (tmpfs): its reads are memory copies, which
            // io_uring would only hand to a worker thread.
            let result = Retry.onInterrupt { preadv(handle.fd, iovecs, Int32(count), offset) }
            return finishInline(result, reply: reply, handle: handle, read: true)
        case .uring:
            break
        }
        if let ring = queue.ring, ring.readv(fd: handle.fd, iovecs: iovecs, count: count, offset: arguments.offset, userData: UInt64(slot)) {
            park(slot, .read, reply: reply, token: token, handle: handle.index)
            return .pending
        }
        let result = Retry.onInterrupt { preadv(handle.fd, iovecs, Int32(count), offset) }
        return finishInline(result, reply: reply, handle: handle, read: true)
    }

    /// Replies to a READ or WRITE done on the poller (`result` < 0: errno) and unpins its handle.
    func finishInline(_ result: Int, reply: FUSEReply, handle: PinnedNode, read: Bool) -> BackendAnswer {
        if result < 0 { reply.fail(Self.lastErrno) }
        else if read { reply.sendInPlace(dataBytes: result) }
        else { reply.written(bytes: UInt32(result)) }
        device.handles.unpin(handle.index)
        return .done
    }

    func iovecBytes(_ iovecs: UnsafeMutablePointer<iovec>, count: Int) -> Int {
        var total = 0
        for index in 0..<count { total += iovecs[index].iov_len }
        return total
    }

    @inline(__always)
    public mutating func write(_ operation: Operation<WriteArguments>, reply typed: WrittenReply) -> BackendAnswer {
        let arguments = operation.arguments.fields
        let reply = typed.wire
        let token = operation.token
        let payloadLength = Int(arguments.size)
        guard let handle = device.handles.pin(arguments.fh) else { return typed.fail(.badFileDescriptor) }
        // The kernel asks for it only when the writer lacks CAP_FSETID, and a writer need not own
        // the file: the engine drops the bits itself (as the host's write path would).
        if arguments.write_flags & UInt32(FUSE_WRITE_KILL_SUIDGID) != 0 { _ = killSetIDAsEngine(handle.fd) }
        let queue = self.queue!
        let slot = operation.slotIndex
        let iovecs = queue.iovecs(slot)
        var cursor = operation.arguments.payload
        let count = gather(&cursor, bytes: payloadLength, into: iovecs, capacity: PassthroughRequestState.iovecsMax)
        let offset = off_t(Int64(bitPattern: arguments.offset))
        let appends = Int32(bitPattern: handle.kind) & O_APPEND != 0
        switch device.dataPath {
        case .inlineFirst where device.nowaitWrites && !appends:
            // A write that cannot block is done now; one that would (or stopped part way: the
            // rewrite of the same bytes at the same offset is harmless) goes to io_uring whole.
            // Appending writes never take this path: repeating one would append twice.
            let result = pwritev2(handle.fd, iovecs, Int32(count), offset, RWF_NOWAIT)
            if result == payloadLength { return finishInline(result, reply: reply, handle: handle, read: false) }
            if result < 0 && Glibc.errno != EAGAIN { return finishInline(-1, reply: reply, handle: handle, read: false) }
        case .inlineFirst:
            // No non-blocking buffered writes on this file system (tmpfs, ext4): a page-cache copy
            // on the poller beats a hop to io_uring's workers; it may wait for writeback under
            // memory pressure (`data_path = "uring"` keeps the poller out of that).
            let result = Retry.onInterrupt { pwritev(handle.fd, iovecs, Int32(count), offset) }
            return finishInline(result, reply: reply, handle: handle, read: false)
        case .uring:
            break
        }
        if let ring = queue.ring, ring.writev(fd: handle.fd, iovecs: iovecs, count: count, offset: arguments.offset, userData: UInt64(slot)) {
            park(slot, .write, reply: reply, token: token, handle: handle.index)
            return .pending
        }
        let result = Retry.onInterrupt { pwritev(handle.fd, iovecs, Int32(count), offset) }
        return finishInline(result, reply: reply, handle: handle, read: false)
    }

    /// The kernel asks the server to drop set-ID bits on a write by a caller without CAP_FSETID.
    /// As a local file system does (file_remove_privs): set-user-ID always goes, set-group-ID only
    /// with group execute (without it the bit marks mandatory locking, not a privilege).
    /// Done with the engine's credentials (a caller who is not the owner may not chmod), then back
    /// to the caller's. Returns whether the file now has no bits a write should have dropped.
    mutating func killSetIDAsEngine(_ fd: Int32) -> Bool {
        var s = stat()
        guard fstat(fd, &s) == 0 else { return false }
        var mode = s.st_mode & ~S_ISUID
        if mode & (S_ISGID | S_IXGRP) == (S_ISGID | S_IXGRP) { mode &= ~S_ISGID }
        guard mode != s.st_mode else { return true }
        let (uid, gid) = (currentUID, currentGID)
        becomeEngine()
        // A path, not the descriptor: an O_PATH node descriptor cannot fchmod.
        let result = fchmodat(device.procFD, procName(fd), mode & 0o7777, 0)
        resumeCaller(uid: uid, gid: gid)
        return result == 0
    }

    public mutating func fsync(_ operation: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer {
        syncHandle(operation, reply: reply)
    }

    public mutating func fsyncdir(_ operation: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer {
        syncHandle(operation, reply: reply)
    }

    /// FSYNC and FSYNCDIR: through the io_uring when there is one.
    mutating func syncHandle(_ operation: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer {
        guard let handle = device.handles.pin(operation.arguments.handle) else { return reply.fail(.badFileDescriptor) }
        let dataOnly = operation.arguments.dataOnly
        let queue = self.queue!
        let slot = operation.slotIndex
        if let ring = queue.ring, ring.fsync(fd: handle.fd, dataOnly: dataOnly, userData: UInt64(slot)) {
            park(slot, .fsync, reply: reply.wire, token: operation.token, handle: handle.index)
            return .pending
        }
        let result = dataOnly ? fdatasync(handle.fd) : Glibc.fsync(handle.fd)
        let answer = result == 0 ? reply.ok() : reply.fail(Self.lastErrno)
        device.handles.unpin(handle.index)
        return answer
    }

    func park(_ slot: Int, _ kind: PendingKind, reply: FUSEReply, token: CompletionToken, handle: UInt32) {
        let queue = self.queue!
        let state = queue.request(slot)
        precondition(state.pointee.kind == 0, "slot already has I/O in flight")
        state.pointee.kind = kind.rawValue
        state.pointee.reply = reply
        state.pointee.token = token
        state.pointee.handle = handle
    }

    /// iovecs for `bytes` bytes of the segments at `cursor` (guest memory, used in place).
    func gather(_ cursor: inout SegmentCursor, bytes: Int, into iovecs: UnsafeMutablePointer<iovec>, capacity: Int) -> Int {
        var count = 0
        var remaining = bytes
        while remaining > 0 && count < capacity && Int(cursor.position.index) < cursor.count {
            let segment = cursor.segments[Int(cursor.position.index)]
            let available = Int(segment.length) - Int(cursor.position.offset)
            if available <= 0 {
                cursor.position = SegmentPosition(index: cursor.position.index &+ 1, offset: 0)
                continue
            }
            let chunk = min(available, remaining)
            iovecs[count] = iovec(iov_base: segment.base + Int(cursor.position.offset), iov_len: chunk)
            count += 1
            remaining -= chunk
            cursor.position.offset &+= UInt32(chunk)
        }
        return count
    }
}
