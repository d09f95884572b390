import Glibc
import Synchronization
import DPFSCore
import FUSEWire

// A guest that never stops: keeps a fixed number of FUSE requests in flight through a loopback
// driver, checks every reply it gets back, and records round-trip latency. Used by `dpfs-bench core`
// and the allocation gate; after start-up it allocates nothing.

/// The request classes the load generator can send, with what a null backend must answer.
public enum LoadOperation: UInt8, CaseIterable, Sendable {
    case read4KiB, write4KiB, getattr, lookup, statfs, statx, readdir, readdirplus, open, release, forget,
         access, flush, fsync, lseek, getxattr, lyingLength
    /// GETATTR of the root (node 1): answered by any back-end, so it compares engines.
    case getattrRoot

    /// The mix `dpfs-bench core` measures.
    public static let benchmarkMix: [LoadOperation] = [.read4KiB, .write4KiB, .getattr, .lookup]

    /// Used length and `error` the reply must have (used length 0 = no reply expected).
    public var expectedReply: (usedLength: UInt32, error: Int32) {
        switch self {
        case .read4KiB: return (16 + 4096, 0)
        case .write4KiB: return (16 + 8, 0)
        case .getattr, .getattrRoot: return (16 + 104, 0)
        case .lookup: return (16 + 128, 0)
        case .statfs: return (16 + 80, 0)
        case .statx: return (16 + 288, 0)
        case .readdir: return (16 + 3 * 32, 0)
        case .readdirplus: return (16 + 3 * (128 + 32), 0)
        case .open: return (16 + 16, 0)
        case .release, .access, .flush, .fsync: return (16, 0)
        case .forget: return (0, 0)
        case .lseek: return (16 + 8, 0)
        case .getxattr: return (16, -61)       // ENODATA
        case .lyingLength: return (16, -22)    // EINVAL
        }
    }
}

public final class LoadGenerator: @unchecked Sendable {
    public var driver: LoopbackDriver
    public let depth: Int
    let operations: UnsafeMutablePointer<LoadOperation>
    let operationCount: Int
    let submitCycles: UnsafeMutablePointer<UInt64>
    let slotOperation: UnsafeMutablePointer<LoadOperation>
    let histogramCounts: UnsafeMutablePointer<UInt64>
    /// Submit-to-reap time of every request, in cycles.
    public let roundTrip: LatencyHistogram
    public private(set) var errorReplies = 0
    public private(set) var unexpectedReplies = 0
    public private(set) var completed = 0
    var nextUnique: UInt64 = 1
    var nextOperation = 0
    /// The back-end's kick eventfd, written when the device asks for kicks (-1: a polling device).
    public var kickFD: Int32 = -1
    public private(set) var kicks: UInt64 = 0
    /// How long the generator waits without any reply before it gives up with a clear message:
    /// a back-end that stopped answering must fail a test, not hang it.
    public var stallLimitNanoseconds: UInt64 = 20_000_000_000
    var idleSpins: UInt64 = 0
    var idleSince: UInt64 = 0
    /// Round trips at least this long are noted with their completion time (`slowRequests`), so a
    /// test can tell which of them overlapped something it did. `.max`: none are noted.
    public var slowThresholdCycles: UInt64 = .max
    public static let slowRequestsMax = 256
    let slowStorage: UnsafeMutablePointer<(completedCycles: UInt64, roundTripCycles: UInt64)>
    /// Slow round trips seen (only the first `slowRequestsMax` are kept).
    public private(set) var slowCount = 0

    /// - Parameters:
    ///   - operations: the mix, sent round-robin.
    public init(driver: LoopbackDriver, depth: Int, operations: [LoadOperation] = LoadOperation.benchmarkMix) {
        precondition(depth >= 1 && depth <= driver.configuration.requestSlots)
        precondition(!operations.isEmpty)
        precondition(driver.configuration.readableBufferBytes >= 4096 + 80 && driver.configuration.writableBufferBytes >= 4096 + 16,
                     "the load generator's 4 KiB requests need 4 KiB + headers of buffer per direction")
        self.driver = driver
        self.depth = depth
        operationCount = operations.count
        self.operations = .allocate(capacity: operations.count)
        self.operations.initialize(from: operations, count: operations.count)
        submitCycles = .allocate(capacity: driver.configuration.requestSlots)
        submitCycles.initialize(repeating: 0, count: driver.configuration.requestSlots)
        slotOperation = .allocate(capacity: driver.configuration.requestSlots)
        slotOperation.initialize(repeating: .getattr, count: driver.configuration.requestSlots)
        histogramCounts = .allocate(capacity: LatencyHistogram.bucketCount)
        histogramCounts.initialize(repeating: 0, count: LatencyHistogram.bucketCount)
        roundTrip = LatencyHistogram(counts: histogramCounts)
        slowStorage = .allocate(capacity: Self.slowRequestsMax)
    }

    /// The slow round trips kept: when each completed and how long it took, in cycles.
    public var slowRequests: [(completedCycles: UInt64, roundTripCycles: UInt64)] {
        (0..<min(slowCount, Self.slowRequestsMax)).map { slowStorage[$0] }
    }

    deinit {
        operations.deallocate()
        submitCycles.deallocate()
        slotOperation.deallocate()
        histogramCounts.deallocate()
        slowStorage.deallocate()
    }

    public func resetMeasurements() {
        roundTrip.reset()
        errorReplies = 0
        unexpectedReplies = 0
        completed = 0
        slowCount = 0
    }

    /// Sends FUSE_INIT and waits for its answer, calling `step` while waiting (inline pollers).
    public func establishSession(step: () -> Void) {
        guard let slot = driver.acquireSlot() else { preconditionFailure("no free slot for INIT") }
        let length = RequestEncoder.initRequest(into: driver.readableBuffer(slot), unique: nextUnique)
        nextUnique += 1
        let submitted = driver.submit(slot: slot, readableBytes: length, writableBytes: 16 + 64,
                                      segmentation: .linux(payloadOffset: length))
        precondition(submitted)
        kickIfNeeded()
        while true {
            step()
            if let (reaped, usedLength) = driver.reap() {
                let error = driver.writableBuffer(reaped).load(fromByteOffset: OutHeaderLayout.error, as: Int32.self)
                // 64-byte fuse_init_out from 7.23 on; older back-ends answer with 24 bytes.
                precondition(usedLength >= 16 + 24 && error == 0, "INIT was refused (error \(error), \(usedLength) bytes)")
                driver.releaseSlot(reaped)
                return
            }
            noteIdle()
        }
    }

    /// Completes `requests` more requests, keeping `depth` in flight; calls `step` once per pass
    /// (an inline poller), or pass an empty closure when the poller has its own thread.
    /// Stops at `deadlineCycles` (the cycle counter) if that comes first; `completed` says how many.
    public func run(requests: Int, deadlineCycles: UInt64 = .max, step: () -> Void) {
        var submitted = 0
        var done = 0
        var limit = requests
        // Read once: a class property read per reply is a dynamic exclusivity check per reply.
        let slowThreshold = slowThresholdCycles
        while done < limit {
            while driver.inFlight < depth && submitted < limit {
                // The deadline is read once per 1024 requests: a clock read per request would cost.
                if submitted & 1023 == 0 && deadlineCycles != .max && cycleCounter() >= deadlineCycles {
                    limit = submitted
                    break
                }
                guard let slot = driver.acquireSlot() else { break }
                let operation = operations[nextOperation]
                nextOperation = nextOperation + 1 == operationCount ? 0 : nextOperation + 1
                guard submit(operation, slot: slot) else {
                    driver.releaseSlot(slot)
                    break
                }
                submitted += 1
            }
            kickIfNeeded()
            step()
            var reapedAny = false
            while let (slot, usedLength) = driver.reap() {
                reapedAny = true
                check(slot: slot, usedLength: usedLength, slowThreshold: slowThreshold)
                driver.releaseSlot(slot)
                done += 1
            }
            if reapedAny { idleSpins = 0 } else { noteIdle() }
        }
        completed += done
    }

    /// Called while no reply arrives; every 64k spins, checks the clock against the stall limit.
    @inline(__always)
    func noteIdle() {
        spinHint()
        idleSpins &+= 1
        guard idleSpins & 0xFFFF == 0 else { return }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let nanoseconds = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
        if idleSpins == 0x10000 { idleSince = nanoseconds; return }
        precondition(nanoseconds &- idleSince < stallLimitNanoseconds,
                     "no reply from the device for \(stallLimitNanoseconds / 1_000_000_000) s: it stopped serving the queue")
    }

    @inline(__always)
    func kickIfNeeded() {
        guard driver.kickNeeded(), kickFD >= 0 else { return }
        var one: UInt64 = 1
        _ = write(kickFD, &one, 8)
        kicks &+= 1
    }

    @inline(__always)
    func check(slot: Int, usedLength: UInt32, slowThreshold: UInt64) {
        let now = cycleCounter()
        let elapsed = now &- submitCycles[slot]
        roundTrip.record(elapsed)
        if elapsed >= slowThreshold {
            if slowCount < Self.slowRequestsMax { slowStorage[slowCount] = (now, elapsed) }
            slowCount += 1
        }
        let expected = slotOperation[slot].expectedReply
        if usedLength == 0 {
            if expected.usedLength != 0 { unexpectedReplies += 1 }
            return
        }
        let reply = driver.writableBuffer(slot)
        let length = UInt32(littleEndian: reply.load(fromByteOffset: OutHeaderLayout.len, as: UInt32.self))
        let error = Int32(littleEndian: reply.load(fromByteOffset: OutHeaderLayout.error, as: Int32.self))
        if error != 0 && expected.error == 0 { errorReplies += 1 }
        if length != usedLength || usedLength != expected.usedLength || error != expected.error {
            unexpectedReplies += 1
        }
    }

    @inline(__always)
    func submit(_ operation: LoadOperation, slot: Int) -> Bool {
        let buffer = driver.readableBuffer(slot)
        let unique = nextUnique
        nextUnique &+= 1
        let file = UInt64(2), root = UInt64(1)
        var readable = 0
        var writable = Int(operation.expectedReply.usedLength)
        var payloadOffset = 0
        switch operation {
        case .read4KiB:
            readable = RequestEncoder.read(into: buffer, unique: unique, nodeID: file, fileHandle: file, offset: 0, size: 4096)
        case .write4KiB:
            readable = RequestEncoder.write(into: buffer, unique: unique, nodeID: file, fileHandle: file, offset: 0, size: 4096)
            payloadOffset = RequestEncoder.writePayloadOffset
        case .getattr:
            readable = RequestEncoder.getattr(into: buffer, unique: unique, nodeID: file)
        case .getattrRoot:
            readable = RequestEncoder.getattr(into: buffer, unique: unique, nodeID: root)
        case .lookup:
            // "null" in the root directory.
            let name: UInt32 = 0x6C6C_756E
            readable = withUnsafeBytes(of: name.littleEndian) {
                RequestEncoder.lookup(into: buffer, unique: unique, parent: root, name: $0)
            }
        case .statfs:
            readable = RequestEncoder.statfs(into: buffer, unique: unique)
        case .statx:
            readable = fixed(.statx, into: buffer, unique: unique, nodeID: file, argsBytes: 24)
        case .readdir, .readdirplus:
            readable = RequestEncoder.read(into: buffer, opcode: operation == .readdir ? .readdir : .readdirplus,
                                           unique: unique, nodeID: root, fileHandle: root, offset: 0, size: 4096)
        case .open:
            readable = fixed(.open, into: buffer, unique: unique, nodeID: file, argsBytes: 8)
        case .release:
            readable = fixed(.release, into: buffer, unique: unique, nodeID: file, argsBytes: 24)
        case .forget:
            readable = fixed(.forget, into: buffer, unique: unique, nodeID: file, argsBytes: 8)
        case .access:
            readable = fixed(.access, into: buffer, unique: unique, nodeID: file, argsBytes: 8)
        case .flush:
            readable = fixed(.flush, into: buffer, unique: unique, nodeID: file, argsBytes: 24)
        case .fsync:
            readable = fixed(.fsync, into: buffer, unique: unique, nodeID: file, argsBytes: 16)
        case .lseek:
            readable = fixed(.lseek, into: buffer, unique: unique, nodeID: file, argsBytes: 24)
            (buffer + InHeaderLayout.size).storeBytes(of: UInt32(3).littleEndian, toByteOffset: 16, as: UInt32.self)  // SEEK_DATA
        case .getxattr:
            readable = fixedName(into: buffer, unique: unique)
            writable = 16 + 8
        case .lyingLength:
            // A GETATTR whose header claims 8 bytes more than the chain carries.
            readable = RequestEncoder.getattr(into: buffer, unique: unique, nodeID: file)
            buffer.storeBytes(of: UInt32(readable + 8).littleEndian, toByteOffset: InHeaderLayout.len, as: UInt32.self)
            writable = 16 + 104
        }
        if operation == .read4KiB || operation == .readdir || operation == .readdirplus { writable = 16 + 4096 }
        slotOperation[slot] = operation
        submitCycles[slot] = cycleCounter()
        return driver.submit(slot: slot, readableBytes: readable, writableBytes: writable,
                             segmentation: .linux(payloadOffset: payloadOffset == 0 ? readable : payloadOffset))
    }

    @inline(__always)
    func fixed(_ opcode: FUSEOpcode, into buffer: UnsafeMutableRawPointer, unique: UInt64, nodeID: UInt64, argsBytes: Int) -> Int {
        let length = InHeaderLayout.size + argsBytes
        RequestEncoder.header(into: buffer, length: length, opcode: opcode, unique: unique, nodeID: nodeID)
        (buffer + InHeaderLayout.size).initializeMemory(as: UInt8.self, repeating: 0, count: argsBytes)
        return length
    }

    /// GETXATTR of "user.a" with a size-probe (size 0) `fuse_getxattr_in`.
    @inline(__always)
    func fixedName(into buffer: UnsafeMutableRawPointer, unique: UInt64) -> Int {
        let name: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0x75, 0x73, 0x65, 0x72, 0x2E, 0x61, 0)
        let length = InHeaderLayout.size + 8 + 7
        RequestEncoder.header(into: buffer, length: length, opcode: .getxattr, unique: unique, nodeID: 2)
        (buffer + InHeaderLayout.size).initializeMemory(as: UInt8.self, repeating: 0, count: 8)
        withUnsafeBytes(of: name) { (buffer + InHeaderLayout.size + 8).copyMemory(from: $0.baseAddress!, byteCount: 7) }
        return length
    }
}
