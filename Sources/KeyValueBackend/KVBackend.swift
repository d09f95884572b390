import BackendKit
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import RESP

// The key-value backend: files and directories in a Redis server (KeyValueStore's functions), one
// connection per request queue, driven from its poller's own loop: a request writes one FCALL into
// the connection's command buffer, `submit` sends everything the step queued with one send, and
// `poll` reads the replies, which come in order, token by token, and finishes each request from its
// reply. Node ids are the store's inode numbers (never reused: an atomic counter hands them out),
// so the backend keeps no node table; the file handle of an open file is its inode number too.
//
// Faults: a connection that ends fails every change in flight EIO (the server may or may not have
// made it), and waits what is safe to send again (reads, attributes, writes of the same bytes) for
// the next connection, made with exponential back-off; a server loading its data answers LOADING,
// and what it refused is sent again. No request waits longer than the timeout: one that does
// fails EIO, and a call still in flight past it takes the connection down (the server is stalled).

enum KVSlotState: UInt8 {
    case free = 0
    /// Its command is queued or sent; its reply is due.
    case inFlight
    /// Waiting for a connection (or for room in the command buffer) to send its command.
    case waiting
}

/// The function a request's command calls, which decides how its reply is read.
enum KVCall: UInt8 {
    case none = 0
    case getattr, lookup, create, unlink, rmdir, rename, link, write, read, setattr, readlink
    case readdir, readdirplus, setxattr, getxattr, listxattr, removexattr, statfs, access, punch

    /// Whether sending it again after a lost connection does no harm: it reads, or sets what it
    /// sets to the same values.
    var repeatable: Bool {
        switch self {
        case .create, .unlink, .rmdir, .rename, .link, .setxattr, .removexattr: false
        default: true
        }
    }
}

/// One request's state while the backend works on it: its request context, one per slot, in the
/// poller's arena. Names and payloads point into the slot's own memory, which lives until the
/// request is answered, so a command written again after a reconnect sees them.
struct KVRequestState {
    var state: KVSlotState
    var call: KVCall
    /// When its command was last written for the server (a stall is judged by time in flight,
    /// not by the request's age: one that waited through an outage is not the server's fault).
    var sentAt: UInt64
    /// Bumped at every send: a reply tagged with an older one is not this request's.
    var sequence: UInt16
    var opcodeRaw: UInt32
    var reply: FUSEReply
    var token: CompletionToken
    var deadline: UInt64
    var nodeID: UInt64
    /// RENAME's new parent, LINK's target inode.
    var secondNode: UInt64
    var name: UnsafeRawBufferPointer
    /// RENAME's new name, SYMLINK's target.
    var secondName: UnsafeRawBufferPointer
    /// WRITE's data, SETXATTR's value.
    var payload: SegmentCursor?
    var offset: UInt64
    var size: UInt32
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var rdev: UInt32
    /// RENAME's and SETXATTR's flags, CREATE's open(2) flags, ACCESS's mask, SETATTR's changes.
    var flags: UInt32
    var setSize: UInt64
    var accessTime: FUSETime
    var modificationTime: FUSETime
    /// The time the request stamps on what it changes (kept for a resend).
    var now: FUSETime
    // Reading the reply.
    /// Tokens of the reply seen so far.
    var field: Int
    /// An error reply's errno, or -1 for "not done, send again later" (LOADING).
    var failure: Int32
    /// The reply broke the shape its function answers (EIO, counted).
    var malformed: Bool
    var values: InlineArray<16, UInt64>
    /// READDIR: bytes of entries written, and no room for more.
    var listed: Int
    var listingFull: Bool
}

enum KVConnectionState: UInt8 {
    case down, connecting, up
}

/// Per-queue memory and the connection, allocated when the backend is attached.
final class KVQueue: @unchecked Sendable {
    let device: KVDevice
    let context: BackendContext
    let slotCount: Int
    let records: UnsafeMutablePointer<KVRequestState>
    let connection: KVConnection
    let timeoutNanoseconds: UInt64
    var state = KVConnectionState.down
    var reconnectAt: UInt64 = 0
    var backoffNanoseconds: UInt64 = KVQueue.backoffMin
    /// Slots waiting to send, oldest first (a ring of `slotCount`).
    let waitingSlots: UnsafeMutablePointer<UInt16>
    var waitingHead = 0
    var waitingCount = 0
    /// Waiting slots are not sent before this (a server still loading its data).
    var retryAt: UInt64 = 0
    var inFlight = 0
    var unsent = false
    var nextDeadlineScan: UInt64 = 0
    var completed = 0
    var reconnects = 0
    /// The functions' load at connect was refused (the server was loading its data): the
    /// connection is made again, so the library is loaded before requests rely on it.
    var reloadWanted = false
    /// The tag of a connection's FUNCTION LOAD.
    static let loadTag = UInt32.max - 1

    static let backoffMin: UInt64 = 10_000_000
    static let backoffMax: UInt64 = 1_000_000_000
    /// The tag of commands no request waits for (function loads, reclaims).
    static let controlTag = UInt32.max
    static let deadlineScanNanoseconds: UInt64 = 20_000_000

    init(device: KVDevice, context: BackendContext) {
        self.device = device
        self.context = context
        slotCount = context.slotCount
        precondition(slotCount <= 1 << 16, "slots are tagged with 16 bits")
        precondition(context.requestContextStride == MemoryLayout<KVRequestState>.stride,
                     "request contexts of \(context.requestContextStride) bytes, not the \(MemoryLayout<KVRequestState>.stride) of the key-value backend")
        records = context.requestContext(slot: 0).bindMemory(to: KVRequestState.self, capacity: slotCount)
        // The largest command is a WRITE of 1 MiB (or the functions' text); the largest reply a READ.
        connection = KVConnection(endpoint: device.configuration.endpoint, sendBytes: 2 * FUSELimits.writeBytesMax + 65536,
                                  receiveBytes: FUSELimits.writeBytesMax + 65536, tagsMax: min(slotCount + 256, 1 << 16),
                                  limits: RESPLimits(bulkBytesMax: FUSELimits.writeBytesMax + 4096, arrayElementsMax: 8192, depthMax: 2))
        timeoutNanoseconds = UInt64(device.configuration.requestTimeoutMilliseconds) * 1_000_000
        waitingSlots = .allocate(capacity: slotCount)
    }

    deinit { waitingSlots.deallocate() }

    func tag(_ slot: Int) -> UInt32 { UInt32(records[slot].sequence) << 16 | UInt32(slot) }

    // MARK: - Requests

    /// Starts the request in `slot` (its arguments already in the record).
    func begin(_ slot: Int, call: KVCall, reply: FUSEReply, token: CompletionToken) -> BackendAnswer {
        precondition(records[slot].state == .free, "a request on a busy slot")
        records[slot].call = call
        records[slot].reply = reply
        records[slot].token = token
        records[slot].deadline = monotonicNanoseconds() &+ timeoutNanoseconds
        if state == .up && waitingCount == 0 && issue(slot) { return .pending }
        wait(slot)
        return .pending
    }

    /// Writes the slot's command into the connection's buffer; false when there is no room.
    func issue(_ slot: Int) -> Bool {
        records[slot].sequence &+= 1
        records[slot].field = 0
        records[slot].failure = 0
        records[slot].malformed = false
        records[slot].listed = 0
        records[slot].listingFull = false
        guard connection.queue(tag: tag(slot), { writer in writeCommand(slot, &writer) }) else { return false }
        records[slot].state = .inFlight
        records[slot].sentAt = monotonicNanoseconds()
        inFlight += 1
        unsent = true
        return true
    }

    func wait(_ slot: Int) {
        precondition(waitingCount < slotCount)
        records[slot].state = .waiting
        waitingSlots[(waitingHead + waitingCount) % slotCount] = UInt16(slot)
        waitingCount += 1
    }

    /// Sends what waits, oldest first, as long as the buffer takes it.
    func issueWaiting(now: UInt64) {
        guard state == .up, now >= retryAt else { return }
        while waitingCount > 0 {
            let slot = Int(waitingSlots[waitingHead])
            guard records[slot].state == .waiting else {
                // Answered meanwhile (timed out): drop its place.
                waitingHead = (waitingHead + 1) % slotCount
                waitingCount -= 1
                continue
            }
            guard issue(slot) else { return }
            waitingHead = (waitingHead + 1) % slotCount
            waitingCount -= 1
        }
    }

    /// Answers the request: the reply is written; the slot is free again.
    func complete(_ slot: Int) {
        if records[slot].state == .inFlight { inFlight -= 1 }
        records[slot].state = .free
        records[slot].call = .none
        completed += 1
        context.complete(records[slot].token)
    }

    func fail(_ slot: Int, _ errno: FUSEErrno) {
        records[slot].reply.fail(errno)
        complete(slot)
    }

    /// A command no request waits for (a reclaim); dropped when there is no connection, since the
    /// next start reclaims every orphan.
    func queueControl(_ write: (inout RESPCommandWriter) -> Bool) {
        guard state == .up else { return }
        if connection.queue(tag: Self.controlTag, write) { unsent = true }
    }
}

public struct KVBackend: FileSystem {
    public let device: KVDevice
    var queue: KVQueue? = nil

    /// What this backend asks of INIT: no atomic O_TRUNC (the kernel truncates with a SETATTR,
    /// and an OPEN then needs no round trip to the server).
    public static func initPolicy(_ device: KVDevice) -> InitPolicy {
        var policy = InitPolicy()
        policy.flagsWanted &= ~InitFlags.atomicOpenTruncate
        return policy
    }

    public static var requestContextLayout: RequestContextLayout {
        RequestContextLayout(bytes: MemoryLayout<KVRequestState>.stride, alignment: MemoryLayout<KVRequestState>.alignment)
    }

    public init(device: KVDevice) {
        self.device = device
    }

    /// A new session on this device: the old session's opens are gone, and with them the reason
    /// to keep its orphans (no request of the new session exists yet).
    public mutating func deviceSessionBegins(_ session: NegotiatedSession) {
        device.opens.reset()
        // Before the INIT reply goes out, so no file of the new session can be an orphan yet: a
        // blocking exchange on the control plane (INIT is rare), not through the queue, whose
        // connection may be down while other queues already serve the new session.
        device.reclaimAllOrphans()
    }

    public mutating func attach(_ context: BackendContext) {
        let queue = KVQueue(device: device, context: context)
        self.queue = queue
        queue.connect(now: monotonicNanoseconds())
    }

    public var eventFD: Int32 {
        guard let queue, queue.state != .down else { return -1 }
        return queue.connection.fd
    }

    public var eventFDEvents: Int16 {
        guard let queue else { return Int16(POLLIN) }
        return queue.state == .connecting || queue.unsent ? Int16(POLLIN | POLLOUT) : Int16(POLLIN)
    }

    /// Connections made after the first, and requests failed by the timeout (this queue's).
    public var reconnects: Int { queue?.reconnects ?? 0 }

    public mutating func poll() -> Int {
        guard let queue else { return 0 }
        return queue.service()
    }

    public mutating func submit() {
        queue?.send()
    }
}
