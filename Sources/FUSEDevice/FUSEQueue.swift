import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import Synchronization

// One request queue of a host mount, as the poller's transport. Two ways to reach the kernel:
//
// - classic: the queue's own clone of the /dev/fuse descriptor, non-blocking; `fetch` is one
//   read(2) into a preallocated request buffer, a reply is one writev(2) from the slot's reply
//   buffer (a /dev/fuse reply cannot be batched: each write is one reply).
// - uring (FUSE-over-io_uring, Linux 6.14+): ring entries registered with the kernel
//   (FUSE_IO_URING_CMD_REGISTER), each a 288-byte header and a payload buffer; the kernel writes a
//   request into a free entry and completes its command; the reply goes back in the same entry with
//   COMMIT_AND_FETCH, which also hands the entry back for the next request. One io_uring_enter per
//   poller step for all of a batch's commits, requests reaped from the completion queue without a
//   syscall. INIT, FORGET and INTERRUPT still come through /dev/fuse (non-blocking here too): a
//   one-shot POLL_ADD of the descriptor sits on the same ring, so one completion queue wakes the
//   poller for both, and the poller then reads /dev/fuse with plain read(2) until EAGAIN. Reads of
//   /dev/fuse must not go through the ring themselves: the kernel may run such a read inline in
//   the queue thread's task work, and a blocking /dev/fuse read there stalls the thread — and with
//   it every ring entry of its CPU — until the next FORGET.
//
// The layout of a ring entry's request maps onto the segment list the decoder already reads:
// [in_header (40 bytes of in_out)] [op_in (the opcode's fixed struct)] [payload (names, data)], and
// the reply onto [in_out (the 16-byte out header)] [payload (the body)], so the engine core does not
// know which way a request came.

/// What the queues of one mount share: the moment INIT was answered, after which ring entries can
/// be registered (the kernel refuses them before, with EAGAIN).
public final class FUSEConnectionState: @unchecked Sendable {
    let initAnswered = Atomic<Bool>(false)
    let ringAgreed = Atomic<Bool>(false)
    /// Set by the first queue that finds the connection gone (unmounted, aborted).
    let ended = Atomic<Bool>(false)

    public init() {}

    public var isEnded: Bool { ended.load(ordering: .acquiring) }
    public var ringInUse: Bool { ringAgreed.load(ordering: .acquiring) }
    public var initialized: Bool { initAnswered.load(ordering: .acquiring) }
}

/// Counters of one queue (plain, written by its poller thread only; reports read them racily).
public struct FUSEQueueCounters: Sendable {
    public var requestsRead: UInt64 = 0
    public var ringRequests: UInt64 = 0
    public var repliesWritten: UInt64 = 0
    /// Replies the kernel no longer waited for (ENOENT: the request was interrupted or aborted).
    public var repliesUnclaimed: UInt64 = 0
    /// Replies the kernel refused (EINVAL and the like): an engine bug, never expected.
    public var repliesRefused: UInt64 = 0
    public var ringEntriesRegistered: UInt64 = 0
    /// Ring commands the kernel completed with an error (not a request).
    public var ringErrors: UInt64 = 0
    public var lastRingError: Int32 = 0
}

/// Sizes of one queue's buffers, fixed at start-up.
public struct FUSEQueueGeometry: Sendable {
    /// Largest WRITE payload the INIT reply allows (max_write), bytes.
    public var writeBytesMax: Int
    /// Largest READ reply (max_read and max_pages), bytes.
    public var readBytesMax: Int
    /// Ring entries of this queue (uring mode; 0 for classic).
    public var ringDepth: Int
    /// /dev/fuse read buffers (every slot in classic mode; a few in uring mode for INIT, FORGET
    /// and INTERRUPT).
    public var classicBuffers: Int

    public init(writeBytesMax: Int, readBytesMax: Int, ringDepth: Int, classicBuffers: Int) {
        precondition(writeBytesMax >= 4096 && writeBytesMax <= FUSELimits.writeBytesMax)
        precondition(readBytesMax >= 4096 && readBytesMax <= 1 << 20)
        precondition(ringDepth >= 0 && ringDepth <= 1024 && classicBuffers >= 1 && classicBuffers <= 4096)
        self.writeBytesMax = writeBytesMax
        self.readBytesMax = readBytesMax
        self.ringDepth = ringDepth
        self.classicBuffers = classicBuffers
    }

    static let pageBytes = 4096
    static func roundUp(_ bytes: Int) -> Int { (bytes + pageBytes - 1) / pageBytes * pageBytes }

    /// A /dev/fuse read must offer room for the largest request: the kernel refuses smaller buffers
    /// (EINVAL) below max(FUSE_MIN_READ_BUFFER, in_header + write_in + max_write).
    public var requestBufferBytes: Int { Self.roundUp(max(8192, 40 + 80 + writeBytesMax) + Self.pageBytes) }
    /// Out header, the largest reply body (READ data, or a READDIR page, or the staging area).
    public var replyBufferBytes: Int { Self.roundUp(16 + max(readBytesMax, FUSELimits.replyStagingBytes)) }
    /// The kernel requires every entry's payload to hold max(max_write, max_pages pages).
    public var ringPayloadBytes: Int { Self.roundUp(max(8192, writeBytesMax, readBytesMax)) }
    /// One entry's header slot (288 bytes, kept 512-aligned).
    public static let ringHeaderSlotBytes = 512

    public var handlesMax: Int { ringDepth + classicBuffers }

    /// Arena bytes one queue needs: its seven allocations (as `FUSEQueue.init` makes them), each
    /// with up to a page of alignment padding.
    public var memoryBytes: Int {
        classicBuffers * (requestBufferBytes + replyBufferBytes)
            + max(64, ringDepth * ringPayloadBytes) + max(64, ringDepth * Self.ringHeaderSlotBytes)
            + max(1, ringDepth * 2) * MemoryLayout<iovec>.stride + classicBuffers * 4 + MemoryLayout<FUSEQueueCounters>.stride
            + 7 * Self.pageBytes
    }
}

public enum FUSEQueueMode: String, Sendable {
    case classic, uring
}

/// The transport of one host-mount queue (see the file comment).
public struct FUSEQueue: Transport {
    public let mode: FUSEQueueMode
    public let fd: Int32
    /// The kernel's queue index (uring: one queue per possible CPU).
    public let queueID: UInt16
    let geometry: FUSEQueueGeometry
    let connection: FUSEConnectionState
    let ring: IOURing?
    public let counters: UnsafeMutablePointer<FUSEQueueCounters>

    // Classic buffers: handles ringDepth ..< ringDepth + classicBuffers.
    let classicRequests: UnsafeMutableRawPointer
    let classicReplies: UnsafeMutableRawPointer
    let classicFree: UnsafeMutablePointer<UInt32>
    var classicFreeCount: Int
    // Ring entries: handles 0 ..< ringDepth.
    let ringHeaders: UnsafeMutableRawPointer
    let ringPayloads: UnsafeMutableRawPointer
    let ringIovecs: UnsafeMutablePointer<iovec>
    var ringRegistered = false
    /// uring mode: /dev/fuse may have a request (start, or the poll fired); false after EAGAIN.
    var deviceReadable = true
    var devicePollArmed = false
    public private(set) var ended = false

    /// Carves the queue's buffers out of `arena` (sized by `geometry.memoryBytes`). `ring` is
    /// required in uring mode (made with 128-byte entries). `fd` is non-blocking in both modes.
    public init(mode: FUSEQueueMode, fd: Int32, queueID: UInt16, geometry: FUSEQueueGeometry,
                connection: FUSEConnectionState, ring: IOURing?, arena: inout ArenaAllocator) {
        precondition(fd >= 0)
        precondition(mode == .classic ? geometry.ringDepth == 0 && ring == nil : geometry.ringDepth >= 1 && ring != nil)
        self.mode = mode
        self.fd = fd
        self.queueID = queueID
        self.geometry = geometry
        self.connection = connection
        self.ring = ring
        let page = FUSEQueueGeometry.pageBytes
        classicRequests = arena.allocate(byteCount: geometry.classicBuffers * geometry.requestBufferBytes, alignment: page)
        classicReplies = arena.allocate(byteCount: geometry.classicBuffers * geometry.replyBufferBytes, alignment: page)
        // Classic queues have no ring entries: 64 bytes stand in, so the pointers stay valid.
        ringPayloads = arena.allocate(byteCount: max(64, geometry.ringDepth * geometry.ringPayloadBytes), alignment: page)
        ringHeaders = arena.allocate(byteCount: max(64, geometry.ringDepth * FUSEQueueGeometry.ringHeaderSlotBytes), alignment: page)
        ringIovecs = arena.allocate(iovec.self, count: max(1, geometry.ringDepth * 2))
        classicFree = arena.allocate(UInt32.self, count: geometry.classicBuffers)
        counters = arena.allocate(FUSEQueueCounters.self, count: 1)
        counters.initialize(to: FUSEQueueCounters())
        for index in 0..<geometry.classicBuffers {
            classicFree[index] = UInt32(geometry.ringDepth + geometry.classicBuffers - 1 - index)
        }
        classicFreeCount = geometry.classicBuffers
        for entry in 0..<geometry.ringDepth {
            ringIovecs[2 * entry] = iovec(iov_base: ringHeaders + entry * FUSEQueueGeometry.ringHeaderSlotBytes,
                                          iov_len: MemoryLayout<CDPFS_fuse_uring_req_header>.size)
            ringIovecs[2 * entry + 1] = iovec(iov_base: ringPayloads + entry * geometry.ringPayloadBytes,
                                              iov_len: geometry.ringPayloadBytes)
        }
    }

    /// The descriptor the idle poller sleeps on: the ring's eventfd, or /dev/fuse itself.
    public var kickFD: Int32 { ring?.eventFD ?? fd }
    /// Whether `kickFD` is a counter to drain (the ring's eventfd) or /dev/fuse (not).
    public var kickIsCounter: Bool { ring != nil }

    public var isFailed: Bool { ended }

    // MARK: - Transport

    public mutating func fetch(into segments: UnsafeMutablePointer<Segment>, capacity: Int) -> FetchResult {
        precondition(capacity >= 5)
        guard !ended else { return .failed }
        if mode == .classic { return fetchClassic(into: segments) }
        return fetchRing(into: segments)
    }

    mutating func fetchClassic(into segments: UnsafeMutablePointer<Segment>) -> FetchResult {
        guard classicFreeCount > 0 else { return .empty }
        let handle = Int(classicFree[classicFreeCount &- 1])
        let request = classicRequest(handle)
        let bytes = Retry.onInterrupt { Glibc.read(fd, request, geometry.requestBufferBytes) }
        if bytes < 0 {
            let error = errno
            // EAGAIN: nothing queued. ENOENT: the kernel dropped the request while we read (it
            // was interrupted before anyone took it): nothing to answer.
            if error == EAGAIN || error == ENOENT { return .empty }
            // ENODEV: unmounted or aborted; anything else is as final.
            end()
            return .failed
        }
        classicFreeCount &-= 1
        counters.pointee.requestsRead &+= 1
        return .request(classicSegments(handle: handle, bytes: bytes, into: segments))
    }

    func classicSegments(handle: Int, bytes: Int, into segments: UnsafeMutablePointer<Segment>) -> FetchedRequest {
        segments[0] = Segment(base: classicRequest(handle), length: UInt32(bytes))
        segments[1] = Segment(base: classicReply(handle), length: UInt32(geometry.replyBufferBytes))
        return FetchedRequest(handle: UInt32(handle), readableCount: 1, writableCount: 1,
                              readableBytes: UInt32(bytes), writableBytes: UInt32(geometry.replyBufferBytes))
    }

    mutating func fetchRing(into segments: UnsafeMutablePointer<Segment>) -> FetchResult {
        guard let ring else { return .failed }
        if !ringRegistered && connection.initialized {
            ringRegistered = true
            if connection.ringInUse { registerEntries(ring: ring) }
        }
        // Bounded: every command this queue has in flight completes at most once, plus the poll.
        var looked = 0
        while looked <= geometry.handlesMax {
            looked &+= 1
            if deviceReadable && classicFreeCount > 0 {
                let result = fetchClassic(into: segments)
                if case .empty = result { deviceReadable = false } else { return result }
            }
            if !deviceReadable && !devicePollArmed {
                devicePollArmed = ring.pollReadable(fd: fd, userData: Self.devicePollUserData)
                ring.submit()
            }
            guard let completion = ring.nextCompletion() else { return .empty }
            if completion.userData == Self.devicePollUserData {
                devicePollArmed = false
                deviceReadable = true
                continue
            }
            let entry = Int(truncatingIfNeeded: completion.userData)
            guard entry < geometry.ringDepth else { continue }
            guard completion.result == 0 else {
                ringCommandFailed(completion.result)
                if ended { return .failed }
                continue
            }
            counters.pointee.ringRequests &+= 1
            return .request(ringSegments(entry: entry, into: segments))
        }
        return .empty
    }

    /// A ring command that did not deliver a request: the connection ended (ENOTCONN, ECONNABORTED,
    /// ENODEV) or the kernel refused the registration (io_uring off: EOPNOTSUPP). The entry is
    /// gone from the kernel either way; the queue goes on with /dev/fuse reads when it can.
    mutating func ringCommandFailed(_ result: Int32) {
        counters.pointee.ringErrors &+= 1
        counters.pointee.lastRingError = -result
        let error = -result
        if error == ENOTCONN || error == ECONNABORTED || error == ENODEV { end() }
    }

    func ringSegments(entry: Int, into segments: UnsafeMutablePointer<Segment>) -> FetchedRequest {
        let header = ringHeader(entry)
        let payload = ringPayload(entry)
        let length = Int(UInt32(littleEndian: header.load(fromByteOffset: InHeaderLayout.len, as: UInt32.self)))
        let payloadBytes = Int(UInt32(littleEndian: header.load(fromByteOffset: Self.entryPayloadSizeOffset, as: UInt32.self)))
        var count = 1
        segments[0] = Segment(base: header, length: UInt32(InHeaderLayout.size))
        var readable = InHeaderLayout.size
        let opBytes = length - InHeaderLayout.size - payloadBytes
        // The kernel writes these; a length that does not add up leaves only the header, which the
        // decoder then answers with an error instead of reading past a buffer.
        if opBytes >= 0 && opBytes <= 128 && payloadBytes <= geometry.ringPayloadBytes {
            if opBytes > 0 {
                segments[count] = Segment(base: header + Self.entryOpOffset, length: UInt32(opBytes))
                count &+= 1
                readable &+= opBytes
            }
            if payloadBytes > 0 {
                segments[count] = Segment(base: payload, length: UInt32(payloadBytes))
                count &+= 1
                readable &+= payloadBytes
            }
        }
        segments[count] = Segment(base: header, length: UInt32(OutHeaderLayout.size))
        segments[count &+ 1] = Segment(base: payload, length: UInt32(geometry.ringPayloadBytes))
        return FetchedRequest(handle: UInt32(entry), readableCount: UInt16(count), writableCount: 2,
                              readableBytes: UInt32(readable), writableBytes: UInt32(OutHeaderLayout.size + geometry.ringPayloadBytes))
    }

    public mutating func complete(handle: UInt32, replyBytes: UInt32) {
        let index = Int(handle)
        precondition(index < geometry.handlesMax)
        if index < geometry.ringDepth {
            commitRingEntry(index, replyBytes: Int(replyBytes))
            return
        }
        if replyBytes > 0 && !ended { writeClassicReply(index, replyBytes: Int(replyBytes)) }
        classicFree[classicFreeCount] = handle
        classicFreeCount &+= 1
    }

    public mutating func flush() -> Bool {
        guard let ring else { return false }
        ring.submit()
        return false
    }

    public mutating func armNotifications() -> Bool {
        guard let ring else { return false }
        return ring.hasCompletions || (deviceReadable && classicFreeCount > 0)
    }

    // MARK: - Replies

    mutating func writeClassicReply(_ handle: Int, replyBytes: Int) {
        let reply = classicReply(handle)
        var vector = iovec(iov_base: reply, iov_len: replyBytes)
        let written = Retry.onInterrupt { writev(fd, &vector, 1) }
        if written < 0 {
            let error = errno
            // ENOENT: the request was interrupted and the kernel no longer waits for it.
            if error == ENOENT { counters.pointee.repliesUnclaimed &+= 1; return }
            if error == ENODEV { end(); return }
            counters.pointee.repliesRefused &+= 1
            return
        }
        counters.pointee.repliesWritten &+= 1
        noteInitReply(handle, reply: reply, replyBytes: replyBytes)
    }

    /// After the INIT reply is written the kernel has applied it: ring entries may be registered now
    /// (if io_uring was agreed), on every queue.
    mutating func noteInitReply(_ handle: Int, reply: UnsafeMutableRawPointer, replyBytes: Int) {
        let request = classicRequest(handle)
        guard request.load(fromByteOffset: InHeaderLayout.opcode, as: UInt32.self) == UInt32(littleEndian: FUSEOpcode.`init`.rawValue),
              reply.load(fromByteOffset: OutHeaderLayout.error, as: Int32.self) == 0 else { return }
        var agreedRing = false
        if replyBytes >= OutHeaderLayout.size + InitLayout.outFlags2 + 4 {
            let flags2 = UInt32(littleEndian: reply.load(fromByteOffset: OutHeaderLayout.size + InitLayout.outFlags2, as: UInt32.self))
            agreedRing = UInt64(flags2) << 32 & InitFlags.overIOURing != 0
        }
        connection.ringAgreed.store(agreedRing, ordering: .releasing)
        connection.initAnswered.store(true, ordering: .releasing)
    }

    mutating func commitRingEntry(_ entry: Int, replyBytes: Int) {
        guard let ring, !ended else { return }
        let header = ringHeader(entry)
        let unique = header.load(fromByteOffset: Self.entryCommitIDOffset, as: UInt64.self)
        var body = replyBytes - OutHeaderLayout.size
        if replyBytes < OutHeaderLayout.size {
            // No reply from the engine (a request it could not decode at all): the entry only comes
            // back with a commit, so answer EIO for it.
            header.storeBytes(of: UInt32(OutHeaderLayout.size).littleEndian, toByteOffset: OutHeaderLayout.len, as: UInt32.self)
            header.storeBytes(of: (-EIO).littleEndian, toByteOffset: OutHeaderLayout.error, as: Int32.self)
            header.storeBytes(of: unique, toByteOffset: OutHeaderLayout.unique, as: UInt64.self)
            body = 0
        }
        header.storeBytes(of: UInt32(body).littleEndian, toByteOffset: Self.entryPayloadSizeOffset, as: UInt32.self)
        _ = ring.fuseCommand(fd: fd, command: UInt32(CDPFS_FUSE_IO_URING_CMD_COMMIT_AND_FETCH), queue: queueID,
                             commitID: UInt64(littleEndian: unique), iovecs: nil, iovecCount: 0, userData: UInt64(entry))
        counters.pointee.repliesWritten &+= 1
    }

    // MARK: - Ring set-up

    mutating func registerEntries(ring: IOURing) {
        for entry in 0..<geometry.ringDepth {
            _ = ring.fuseCommand(fd: fd, command: UInt32(CDPFS_FUSE_IO_URING_CMD_REGISTER), queue: queueID, commitID: 0,
                                 iovecs: UnsafePointer(ringIovecs + 2 * entry), iovecCount: 2, userData: UInt64(entry))
        }
        ring.submit()
        counters.pointee.ringEntriesRegistered &+= UInt64(geometry.ringDepth)
    }

    mutating func end() {
        ended = true
        connection.ended.store(true, ordering: .releasing)
    }

    // MARK: - Buffers

    /// The user data of the /dev/fuse poll: no ring entry has it.
    static let devicePollUserData = UInt64.max
    static let entryOpOffset = 128
    static let entryCommitIDOffset = 256 + 8
    static let entryPayloadSizeOffset = 256 + 16

    func classicRequest(_ handle: Int) -> UnsafeMutableRawPointer {
        classicRequests + (handle - geometry.ringDepth) * geometry.requestBufferBytes
    }

    func classicReply(_ handle: Int) -> UnsafeMutableRawPointer {
        classicReplies + (handle - geometry.ringDepth) * geometry.replyBufferBytes
    }

    func ringHeader(_ entry: Int) -> UnsafeMutableRawPointer { ringHeaders + entry * FUSEQueueGeometry.ringHeaderSlotBytes }
    func ringPayload(_ entry: Int) -> UnsafeMutableRawPointer { ringPayloads + entry * geometry.ringPayloadBytes }
}
