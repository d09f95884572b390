import BackendKit
import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc

// The NFS backend (NFSv3 through libnfs's raw asynchronous RPC layer). One value per request queue;
// each owns one TCP connection to the server, driven from its poller's own loop: `submit` writes
// what a step queued, `poll` reads answers and runs their callbacks, and a sleeping poller waits on
// the socket with its other event sources. Every request carries AUTH_SYS with the caller's uid
// and gid, so the server decides permissions. Nodes are NFS file handles (NFSTables.swift).
//
// Faults: a broken connection fails every call in flight; those that are safe to send again (reads,
// attribute calls, WRITE of the same bytes, COMMIT, and anything never sent) wait for the next
// connection, made with exponential back-off; the rest fail EIO, since the server may or may not
// have done them. No request waits longer than the configured timeout: one that does fails EIO,
// and a call still in flight past it takes the connection down with it (the server is stalled).

/// What a slot's request is doing.
enum NFSSlotState: UInt8 {
    case free = 0
    /// An RPC of this slot is in libnfs (exactly one callback will come).
    case inFlight
    /// Waiting for a connection to (re)send its current stage.
    case waiting
}

/// The RPC a slot's current stage issues.
enum NFSCall: UInt8 {
    case none = 0
    case lookup, getattr, setattr, readlink, symlink, mknod, mkdir, create, remove, rmdir, rename, link
    case access, read, write, commit, fsstat, readdir, readdirplus
    /// A journal entry written again after a COMMIT's verifier showed the server restarted.
    case resendWrite
    // NFSv4.1 only (NFSQueue+Locks4.swift): byte-range locks.
    /// The lock table decides what a SETLK, SETLKW or FLUSH sends (it may wait or answer at once).
    case lockBegin
    /// OPEN of the file for a (node, lock owner) pair's first lock; LOCK, LOCKU, LOCKT; FLUSH's
    /// LOCKU of everything, FREE_STATEID and CLOSE.
    case lockOpen, lock, unlock, lockTest, unlockAll

    var isLock: Bool { rawValue >= NFSCall.lockBegin.rawValue }
}

/// Where an unlinked-but-open file goes (Specs/nfs-semantics.md): the export's top directory
/// `.dpfs-hidden`, under the engine instance's random number and the node id in hex, so two hidden
/// files never share a name, not even between engines serving one export. Its own directory keeps
/// the file out of the one it was unlinked from, which RMDIR can then remove. The guest cannot
/// look up, create or change a name with the prefix, and listings leave such names out.
enum HiddenName {
    static let prefix = Array(".dpfs-hidden".utf8)
    static let directory = ".dpfs-hidden"
    /// 16 hex digits, '-', 16 hex digits and the NUL.
    static let bytesMax = 40

    static func write(instance: UInt64, nodeID: UInt64, into destination: UnsafeMutableRawPointer) {
        hex(instance, into: destination)
        destination.storeBytes(of: UInt8(ascii: "-"), toByteOffset: 16, as: UInt8.self)
        hex(nodeID, into: destination + 17)
        destination.storeBytes(of: 0, toByteOffset: 33, as: UInt8.self)
    }

    @_noAllocation @_noLocks
    static func hex(_ value: UInt64, into destination: UnsafeMutableRawPointer) {
        for digit in 0..<16 {
            let nibble = UInt8(truncatingIfNeeded: value >> UInt64(60 - 4 * digit)) & 0xF
            let character = nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
            destination.storeBytes(of: character, toByteOffset: digit, as: UInt8.self)
        }
    }

    static func isReserved(_ name: UnsafeRawBufferPointer) -> Bool {
        guard name.count >= prefix.count else { return false }
        for (offset, byte) in prefix.enumerated() where name[offset] != byte { return false }
        return true
    }
}

/// What an NFS request's stages need of its FUSE request, taken from the typed arguments when it
/// starts (NFSBackend+Operations.swift). Names and the payload point into the slot's own memory,
/// which lives until the request is answered, so a stage built again after a reconnect sees them.
struct NFSRequestArguments {
    var opcodeRaw: UInt32
    var nodeID: UInt64
    var uid: UInt32
    var gid: UInt32
    var unique: UInt64
    /// The entry name (LOOKUP, CREATE, UNLINK, ..., RENAME's old name).
    var name = UnsafeRawBufferPointer(start: nil, count: 0)
    /// RENAME's new name, SYMLINK's target.
    var secondName = UnsafeRawBufferPointer(start: nil, count: 0)
    /// The open file (READ, WRITE, READDIR*, RELEASE*, FLUSH, FSYNC*).
    var fh: UInt64 = 0
    var offset: UInt64 = 0
    /// Bytes asked for (READ, READDIR*) or carried (WRITE).
    var size: UInt32 = 0
    /// MKNOD's, MKDIR's and CREATE's mode.
    var mode: UInt32 = 0
    var rdev: UInt32 = 0
    /// OPEN's and CREATE's open(2) flags.
    var flags: UInt32 = 0
    /// ACCESS's mask.
    var mask: UInt32 = 0
    /// WRITE's data, in place.
    var payload: SegmentCursor? = nil
    var setattr = fuse_setattr_in()
    /// SETLK, SETLKW, GETLK, FLUSH: the lock owner; the lock's last byte (inclusive), type
    /// (F_RDLCK, F_WRLCK, F_UNLCK) and whether it waits; its entry in the lock table (-1: none yet).
    var lockOwner: UInt64 = 0
    var lockEnd: UInt64 = 0
    var lockType: UInt32 = 0
    var lockWaits = false
    var lockEntry = -1

    init<Arguments>(_ opcode: FUSEOpcode, _ operation: Operation<Arguments>) {
        opcodeRaw = opcode.rawValue
        nodeID = operation.nodeID
        let caller = operation.caller
        uid = caller.uid
        gid = caller.gid
        unique = operation.unique
    }

    var payloadLength: Int { Int(size) }
}

/// One request's state while the NFS backend works on it: its request context, one per slot, in
/// the poller's arena (`NFSBackend.requestContextLayout`).
struct NFSRequestState {
    var state: NFSSlotState
    /// Which call the request's current stage sends, and what decides the next (NFSStagePlan.swift).
    var plan: NFSStagePlan
    /// The request was sent at least once (a non-idempotent call lost in flight cannot be resent).
    var sent: Bool
    /// The connection its call went out on.
    var connection: UInt8
    var request: NFSRequestArguments
    var reply: FUSEReply
    var token: CompletionToken
    var deadline: UInt64
    /// Node records the request holds pinned until it is answered (0 = none).
    var primaryNode: UInt32
    var secondaryNode: UInt32
    /// A node record a stage found (UNLINK's or RENAME's target, RELEASE's hidden file), pinned
    /// until the request is answered (0 = none); its hidden name is in `hiddenNameBytes`.
    var stagedNode: UInt32
    /// The open-file index the request works on (0 = none).
    var openFile: Int
    /// A file handle an earlier stage got (CREATE's new file, LOOKUP's answer), for the next stage.
    var stagedHandleLength: Int
    var stagedAttributes: FileAttributes
    /// An exclusive CREATE's verifier, kept for the resends of the same request.
    var createVerifier: UInt64
    /// The journal entry a WRITE stage reserved (-1 = none), and the entry a resend stage writes.
    var journalEntry: Int
    var resendEntry: Int
    /// What a COMMIT stage covers: the open's write count and the journal's answer count when sent.
    var commitSnapshot: UInt64
    var journalSnapshot: UInt64
    /// The verifier a repair brings every covered entry to, and the one the last COMMIT answered.
    var resendVerifier: UInt64
    var commitVerifier: UInt64
    var stagedHandleBytes: InlineArray<64, UInt8>
    /// The hidden name of `stagedNode`, NUL-terminated.
    var hiddenNameBytes: InlineArray<40, UInt8>
}

/// Where the callbacks find their queue and slot.
struct NFSCallTag {
    var queue: UnsafeMutableRawPointer
    var slot: UInt32
}

enum NFSConnectionState: UInt8 {
    case down, connecting, up
}

/// Per-queue memory and the connection, allocated when the backend is attached. A class because
/// libnfs calls back into it from inside `rpc_service`, while the backend value is mid-call.
final class NFSQueue: @unchecked Sendable {
    let device: NFSDevice
    let context: BackendContext
    let slotCount: Int
    let validity: CacheValidity
    let timeoutNanoseconds: UInt64

    /// Every request's state while it is in flight (`NFSRequestState`), in the request contexts
    /// the poller carved from its arena beside each slot.
    let records: UnsafeMutablePointer<NFSRequestState>
    /// Where, inside a record, its staged file handle and hidden name are (resolved once).
    let stagedHandleOffset: Int
    let hiddenNameOffset: Int
    let tags: UnsafeMutablePointer<NFSCallTag>
    let journal: WriteJournal
    /// This queue's number within the device.
    let queueNumber: Int32
    /// WRITE payloads spread over several guest segments are gathered here (the call encodes them
    /// at once, so one buffer per queue is enough).
    let gather: UnsafeMutableRawPointer
    /// The queue's NFSv4.1 session (nil on an NFSv3 device): see NFSQueue+Version4.swift.
    let v4: NFSv4QueueSession?

    // The connections (NFSQueue+Connection.swift).
    let connections: [NFSConnection]
    var upCount = 0
    var nextConnection = 0
    /// With several connections: the epoll set of their sockets the poller sleeps on (else -1).
    let epollFD: Int32
    var inFlight = 0
    var waiting = 0
    var pendingCount = 0
    var completedSinceLastPoll = 0
    var nextDeadlineScanNanoseconds: UInt64 = 0
    /// Counters for reports and tests.
    var reconnects = 0
    var timeouts = 0
    /// NFSv4.1 lease renewals sent by this idle queue.
    var renewals = 0
    /// SETLKW refusals this queue asked again (NFSv4.1 locks).
    var lockRetries = 0
    /// The device stops or resets: no SETLKW waits any more.
    var stopping = false
    /// The slot `begin` is issuing: an answer written before it returns is `.done`, not a completion.
    var startingSlot = -1
    var startAnsweredInline = false
    var createSequence: UInt64 = 0

    init(device: NFSDevice, context: BackendContext) {
        self.device = device
        self.context = context
        slotCount = context.slotCount
        validity = device.configuration.validity
        timeoutNanoseconds = UInt64(device.configuration.requestTimeoutMilliseconds) * 1_000_000
        let backoff = UInt64(device.configuration.reconnectBackoffMillisecondsMin) * 1_000_000
        let connectionCount = device.configuration.connectionsPerQueue
        connections = (0..<connectionCount).map { NFSConnection(index: $0, backoffNanoseconds: backoff) }
        epollFD = connectionCount > 1 ? epoll_create1(Int32(EPOLL_CLOEXEC)) : -1
        precondition(connectionCount == 1 || epollFD >= 0, "epoll_create1 failed: errno \(errno)")
        precondition(context.requestContextStride == MemoryLayout<NFSRequestState>.stride,
                     "request contexts of \(context.requestContextStride) bytes, not the \(MemoryLayout<NFSRequestState>.stride) of NFS")
        precondition(MemoryLayout<InlineArray<64, UInt8>>.size == nfsFileHandleBytesMax
                     && MemoryLayout<InlineArray<40, UInt8>>.size == HiddenName.bytesMax, "record buffers out of step with the limits")
        records = context.requestContext(slot: 0).bindMemory(to: NFSRequestState.self, capacity: slotCount)
        for slot in 0..<slotCount {
            // The arena zero-filled the records: a free slot, no call, no progress, no nodes.
            records[slot].journalEntry = -1
            records[slot].resendEntry = -1
        }
        stagedHandleOffset = MemoryLayout<NFSRequestState>.offset(of: \NFSRequestState.stagedHandleBytes)!
        hiddenNameOffset = MemoryLayout<NFSRequestState>.offset(of: \NFSRequestState.hiddenNameBytes)!
        // One tag per slot, per connection, and NFSv4.1's lease renewal.
        tags = .allocate(capacity: slotCount + connectionCount + 1)
        let journalBytes = device.configuration.journalBytesPerQueue
        journal = WriteJournal(capacityBytes: journalBytes, entryCapacity: max(64, journalBytes / 1024))
        queueNumber = device.queueNumbers.add(1, ordering: .relaxed).oldValue
        let slots = slotCount, number = queueNumber
        v4 = device.v4.map { NFSv4QueueSession(engineSlots: slots, queueNumber: number, minorVersion: $0.control.minorVersion) }
        gather = .allocate(byteCount: FUSELimits.writeBytesMax, alignment: 4096)
        let me = Unmanaged.passUnretained(self).toOpaque()
        for slot in 0...slotCount + connectionCount { (tags + slot).initialize(to: NFSCallTag(queue: me, slot: UInt32(slot))) }
    }

    deinit {
        for link in connections {
            if let rpc = link.rpc { rpc_destroy_context(rpc) }
        }
        if epollFD >= 0 { Glibc.close(epollFD) }
        tags.deallocate()
        gather.deallocate()
    }

    func connectTag(_ connection: Int) -> UnsafeMutableRawPointer { UnsafeMutableRawPointer(tags + slotCount + connection) }
    /// The tag of NFSv4.1's SEQUENCE-only lease renewal (no slot of the engine's).
    var renewalTag: Int { slotCount + connections.count }
}

public struct NFSBackend: FileSystem {
    public let device: NFSDevice
    var queue: NFSQueue? = nil

    /// What this backend asks of INIT for `device`'s server.
    /// - No atomic O_TRUNC: the kernel truncates with a SETATTR of its own (an NFSv3 OPEN cannot
    ///   truncate).
    /// - No READ or WRITE larger than the server takes in one call: the kernel would read a short
    ///   READ in the middle of a file as its end.
    public static func initPolicy(_ device: NFSDevice) -> InitPolicy {
        var policy = InitPolicy()
        policy.flagsWanted &= ~InitFlags.atomicOpenTruncate
        policy.writeBytesMax = UInt32(device.transferBytesMax)
        // NFSv4.1 speaks locks (LOCK, LOCKT, LOCKU); NFSv3 without NLM cannot, nor (yet) this
        // backend's NFSv4.0, so there the guest's kernel keeps them.
        if device.locksOnServer { policy.flagsWanted |= InitFlags.posixLocks }
        return policy
    }

    /// Each request's stages, pins and staged answers, carved by the poller beside its slot.
    public static var requestContextLayout: RequestContextLayout {
        RequestContextLayout(bytes: MemoryLayout<NFSRequestState>.stride, alignment: MemoryLayout<NFSRequestState>.alignment)
    }

    public init(device: NFSDevice) {
        self.device = device
    }

    public mutating func attach(_ context: BackendContext) {
        let queue = NFSQueue(device: device, context: context)
        self.queue = queue
        let now = monotonicNanoseconds()
        for link in queue.connections { queue.connect(link, now: now) }
    }

    public mutating func sessionEnded() {
        // Every open of the old session is gone, and with them what the journal kept for them.
        queue?.journal.reset()
    }

    /// A new session (after a reset the device quiesced for): its SETLKWs wait again.
    public mutating func sessionStarted(_ session: NegotiatedSession) {
        queue?.stopping = false
    }

    public mutating func deviceSessionBegins(_ session: NegotiatedSession) {
        device.resetSession()
    }

    public var eventFD: Int32 {
        guard let queue else { return -1 }
        if queue.epollFD >= 0 { return queue.epollFD }
        let link = queue.connections[0]
        guard let rpc = link.rpc, link.state != .down else { return -1 }
        return rpc_get_fd(rpc)
    }

    public var eventFDEvents: Int16 {
        guard let queue else { return Int16(POLLIN) }
        if queue.epollFD >= 0 {
            queue.refreshEpollSet()
            return Int16(POLLIN)
        }
        let wanted = NFSQueue.wantedEvents(queue.connections[0])
        return wanted == 0 ? Int16(POLLIN) : Int16(truncatingIfNeeded: wanted)
    }

    /// Connections made after the first (reconnects) and requests failed by the timeout.
    public var reconnects: Int { queue?.reconnects ?? 0 }
    public var timeouts: Int { queue?.timeouts ?? 0 }
    /// Journal entries written again after a changed verifier, and WRITEs the full journal could not keep.
    public var resentWrites: Int { queue?.journal.resent ?? 0 }
    public var journalFallbacks: Int { queue?.journal.fullFallbacks ?? 0 }

    public mutating func poll() -> Int {
        guard let queue else { return 0 }
        return queue.service()
    }

    public mutating func submit() {
        queue?.flushOutput()
    }

    public mutating func quiesce() {
        // NFS calls cannot be recalled: in-flight ones finish or time out. A SETLKW waiting for a
        // lock has no deadline, so it ends here (EINTR) rather than hold the stop forever.
        queue?.cancelLockWaits4()
    }
}
