import DPFSCore
import FUSEWire
import Glibc
import LoopbackTransport

// Real-file operations for `dpfs-bench vhost-user`, for any passthrough back-end (dpfs-engine's
// passthrough backend, the C virtiofsd). Nothing here assumes node ids: at set-up the generator
// LOOKUPs (or CREATEs) its benchmark file in the root, fills it with WRITEs and keeps the node id and
// file handle the back-end gave it. Every reply is checked (error 0, used length = out.len = the
// expected size). Lookup counts are given back with FORGET, as the kernel does, so the back-end's
// inode table stays bounded however long the run; the FORGETs travel on the request queue (Linux
// sends them on hiprio), so they reach the queue whose LOOKUPs they answer and the hiprio queue
// stays idle for both back-ends. After set-up the hot path allocates nothing.

/// The file operations, by the name `--operations` takes.
enum FileOperation: String, CaseIterable, Sendable {
    case lookupFile = "lookup-file"      // LOOKUP of the benchmark file in the root (+ batched FORGET)
    case getattrFile = "getattr-file"    // GETATTR of its node id
    case readFile = "read-file"          // READ 4 KiB at varying aligned offsets through the file handle
    case writeFile = "write-file"        // WRITE 4 KiB at varying aligned offsets
    case createUnlink = "create-unlink"  // CREATE a unique name + RELEASE + UNLINK (+ FORGET): one op
    case mkdirRmdir = "mkdir-rmdir"      // MKDIR a unique name + RMDIR (+ FORGET): one op
    // A whole small file as a program uses one (open, read or write 4 KiB, close), the requests a
    // guest kernel sends for it with its caches off: OPEN, READ or WRITE, FLUSH, RELEASE: one op.
    case openReadClose = "open-read-close"
    case openWriteClose = "open-write-close"

    var isWholeFile: Bool { self == .openReadClose || self == .openWriteClose }
}

/// A request or reply the back-end got wrong; the benchmark reports it and exits non-zero.
struct BenchFailure: Error, CustomStringConvertible {
    let description: String
}

final class FileLoadGenerator {
    /// What a slot's request in flight is.
    enum Step: UInt8 {
        case lookup, getattr, read, write, create, release, unlink, mkdir, rmdir, forget
        /// The whole-file operations' OPEN, FLUSH and closing RELEASE.
        case open, flush, close
    }

    var driver: LoopbackDriver
    let kickFD: Int32
    /// With a call eventfd the generator sleeps on it while nothing completes, as a guest waits for
    /// its interrupt; else it spins (the lowest latency, and a whole CPU). Sleeping matters where
    /// the back-end's server shares the machine's few CPUs (the NFS benchmark).
    var callFD: Int32 = -1
    let fileName: [UInt8]
    let fileSizeBytes: UInt64
    let blockCount: UInt64
    static let rootNodeID: UInt64 = 1
    static let blockBytes = 4096
    /// LOOKUPs given back with one FORGET once this many have succeeded (and at the end of a run).
    static let lookupsPerForget: UInt64 = 256

    private(set) var fileNodeID: UInt64 = 0
    private(set) var fileHandle: UInt64 = 0
    private(set) var setupDescription = ""

    var operation: FileOperation = .getattrFile
    var depth = 1

    // Per request slot.
    let slotStep: UnsafeMutablePointer<Step>
    let slotStart: UnsafeMutablePointer<UInt64>
    let slotNodeID: UnsafeMutablePointer<UInt64>
    let slotHandle: UnsafeMutablePointer<UInt64>
    let slotName: UnsafeMutablePointer<UInt64>
    let histogramCounts: UnsafeMutablePointer<UInt64>
    /// First submit to last reply of each operation, in cycles.
    let roundTrip: LatencyHistogram

    private(set) var failures = 0
    private(set) var completed = 0
    private(set) var kicks: UInt64 = 0
    /// One-way FORGETs sent (not counted as operations).
    private(set) var forgetsSent: UInt64 = 0
    /// The first failure's details, for the final message.
    private(set) var firstFailure: String?

    var nextUnique: UInt64 = 1 << 48
    var nameCounter: UInt64 = 0
    var blockCursor: UInt64 = 0
    /// Successful LOOKUPs of the benchmark file not yet given back with FORGET.
    var lookupsOutstanding: UInt64 = 0
    /// Operations in flight (FORGETs excluded) and FORGETs in flight.
    var operationsInFlight = 0
    var forgetsInFlight = 0
    let pid: UInt32 = UInt32(getpid())
    var stallLimitNanoseconds: UInt64 = 20_000_000_000

    init(driver: LoopbackDriver, kickFD: Int32, fileName: String, fileSizeBytes: UInt64) {
        precondition(fileSizeBytes >= UInt64(Self.blockBytes))
        self.driver = driver
        self.kickFD = kickFD
        self.fileName = Array(fileName.utf8)
        self.fileSizeBytes = fileSizeBytes
        blockCount = fileSizeBytes / UInt64(Self.blockBytes)
        let slots = driver.configuration.requestSlots
        slotStep = .allocate(capacity: slots)
        slotStep.initialize(repeating: .getattr, count: slots)
        slotStart = .allocate(capacity: slots)
        slotStart.initialize(repeating: 0, count: slots)
        slotNodeID = .allocate(capacity: slots)
        slotNodeID.initialize(repeating: 0, count: slots)
        slotHandle = .allocate(capacity: slots)
        slotHandle.initialize(repeating: 0, count: slots)
        slotName = .allocate(capacity: slots)
        slotName.initialize(repeating: 0, count: slots)
        histogramCounts = .allocate(capacity: LatencyHistogram.bucketCount)
        histogramCounts.initialize(repeating: 0, count: LatencyHistogram.bucketCount)
        roundTrip = LatencyHistogram(counts: histogramCounts)
    }

    deinit {
        slotStep.deallocate()
        slotStart.deallocate()
        slotNodeID.deallocate()
        slotHandle.deallocate()
        slotName.deallocate()
        histogramCounts.deallocate()
    }

    func resetMeasurements() {
        roundTrip.reset()
        failures = 0
        completed = 0
    }

    // MARK: - Set-up and tear-down (one request at a time; may allocate)

    /// One request, waited for. `encode` writes it into the readable buffer and returns its length,
    /// the writable bytes to offer and where the bulk payload starts (0: none).
    func call(_ encode: (UnsafeMutableRawPointer, UInt64) -> (readable: Int, writable: Int, payloadOffset: Int))
        throws -> (error: Int32, usedLength: UInt32, outLength: UInt32, body: [UInt8]) {
        guard let slot = driver.acquireSlot() else { throw BenchFailure(description: "no free request slot for set-up") }
        let unique = nextUnique
        nextUnique &+= 1
        let (readable, writable, payloadOffset) = encode(driver.readableBuffer(slot), unique)
        driver.writableBuffer(slot).initializeMemory(as: UInt8.self, repeating: 0, count: OutHeaderLayout.size)
        guard driver.submit(slot: slot, readableBytes: readable, writableBytes: writable,
                            segmentation: .linux(payloadOffset: payloadOffset == 0 ? readable : payloadOffset)) else {
            driver.releaseSlot(slot)
            throw BenchFailure(description: "the queue has no room for a set-up request")
        }
        kickIfNeeded()
        let deadline = monotonicNanosecondsHere() + stallLimitNanoseconds
        while true {
            if let (reaped, usedLength) = driver.reap() {
                precondition(reaped == slot)
                let reply = driver.writableBuffer(reaped)
                let error = Int32(littleEndian: reply.load(fromByteOffset: OutHeaderLayout.error, as: Int32.self))
                let outLength = UInt32(littleEndian: reply.load(fromByteOffset: OutHeaderLayout.len, as: UInt32.self))
                let bodyBytes = max(0, min(Int(usedLength), writable) - OutHeaderLayout.size)
                let body = [UInt8](UnsafeRawBufferPointer(start: reply + OutHeaderLayout.size, count: bodyBytes))
                driver.releaseSlot(reaped)
                return (error, usedLength, outLength, body)
            }
            spinHint()
            if monotonicNanosecondsHere() > deadline {
                throw BenchFailure(description: "no reply to a set-up request within \(stallLimitNanoseconds / 1_000_000_000) s")
            }
        }
    }

    /// Checks a set-up reply: error 0 and exactly `expectedBody` bytes.
    func require(_ reply: (error: Int32, usedLength: UInt32, outLength: UInt32, body: [UInt8]), _ what: String,
                 expectedBody: Int) throws {
        guard reply.error == 0 else {
            throw BenchFailure(description: "\(what) failed: \(Self.errnoName(reply.error))")
        }
        guard reply.usedLength == reply.outLength, Int(reply.usedLength) == OutHeaderLayout.size + expectedBody else {
            throw BenchFailure(description: "\(what): reply of \(reply.usedLength) bytes (out.len \(reply.outLength)), expected \(OutHeaderLayout.size + expectedBody)")
        }
    }

    static func errnoName(_ error: Int32) -> String {
        let code = -error
        return "error \(error) (\(code > 0 ? String(cString: strerror(code)) : "?"))"
    }

    static func u64(_ bytes: [UInt8], at offset: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << UInt64(8 * $1) }
    }

    /// LOOKUP (or CREATE) the benchmark file, OPEN it, fill it with WRITEs; keeps node id and handle.
    /// `readOnly`: the file must exist already with the fill's contents; it is opened O_RDONLY
    /// and nothing is written (a read-only share).
    func setUp(readOnly: Bool = false) throws {
        let name = fileName
        let lookup = try call { buffer, unique in
            (Self.encodeNamed(.lookup, into: buffer, unique: unique, parent: Self.rootNodeID, prefix: [], name: name),
             OutHeaderLayout.size + EntryOutLayout.size, 0)
        }
        var how: String
        if lookup.error == -ENOENT && !readOnly {
            // O_RDWR | O_CREAT, a regular file rw-r--r--.
            let create = try call { buffer, unique in
                (Self.encodeNamed(.create, into: buffer, unique: unique, parent: Self.rootNodeID,
                                  prefix: Self.createIn(flags: 0o102, mode: 0o100644), name: name),
                 OutHeaderLayout.size + EntryOutLayout.size + OpenOutLayout.size, 0)
            }
            try require(create, "CREATE \(String(decoding: name, as: UTF8.self)) in the root", expectedBody: EntryOutLayout.size + OpenOutLayout.size)
            fileNodeID = Self.u64(create.body, at: EntryOutLayout.nodeID)
            fileHandle = Self.u64(create.body, at: EntryOutLayout.size + OpenOutLayout.fileHandle)
            how = "created"
        } else {
            try require(lookup, "LOOKUP \(String(decoding: name, as: UTF8.self)) in the root", expectedBody: EntryOutLayout.size)
            fileNodeID = Self.u64(lookup.body, at: EntryOutLayout.nodeID)
            let node = fileNodeID
            let open = try call { buffer, unique in
                let length = InHeaderLayout.size + 8
                RequestEncoder.header(into: buffer, length: length, opcode: .open, unique: unique, nodeID: node)
                (buffer + InHeaderLayout.size).storeBytes(of: UInt32(readOnly ? 0 : 2).littleEndian, as: UInt32.self)   // O_RDONLY, O_RDWR
                (buffer + InHeaderLayout.size + 4).storeBytes(of: UInt32(0), as: UInt32.self)
                return (length, OutHeaderLayout.size + OpenOutLayout.size, 0)
            }
            try require(open, "OPEN of node \(node)", expectedBody: OpenOutLayout.size)
            fileHandle = Self.u64(open.body, at: OpenOutLayout.fileHandle)
            how = "found"
        }
        let node = fileNodeID, handle = fileHandle
        for block in 0..<(readOnly ? 0 : blockCount) {
            let write = try call { buffer, unique in
                let length = RequestEncoder.write(into: buffer, unique: unique, nodeID: node, fileHandle: handle,
                                                  offset: block * UInt64(Self.blockBytes), size: UInt32(Self.blockBytes))
                (buffer + RequestEncoder.writePayloadOffset).initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: block), count: Self.blockBytes)
                return (length, OutHeaderLayout.size + WriteOutLayout.size, RequestEncoder.writePayloadOffset)
            }
            try require(write, "WRITE of block \(block) while filling the file", expectedBody: WriteOutLayout.size)
            let written = UInt32(truncatingIfNeeded: Self.u64(write.body + [0, 0, 0, 0], at: 0))
            guard written == UInt32(Self.blockBytes) else {
                throw BenchFailure(description: "WRITE while filling the file wrote \(written) of \(Self.blockBytes) bytes")
            }
        }
        let getattr = try call { buffer, unique in
            (RequestEncoder.getattr(into: buffer, unique: unique, nodeID: node), OutHeaderLayout.size + AttrOutLayout.size, 0)
        }
        try require(getattr, "GETATTR of node \(node)", expectedBody: AttrOutLayout.size)
        let size = Self.u64(getattr.body, at: AttrOutLayout.attr + AttrLayout.fileSize)
        guard size >= fileSizeBytes else { throw BenchFailure(description: "the benchmark file is \(size) bytes after filling, expected ≥ \(fileSizeBytes)") }
        setupDescription = "file \(String(decoding: name, as: UTF8.self)) \(how): node \(node), fh \(handle), \(fileSizeBytes) bytes written"
    }

    /// RELEASE the handle and FORGET the set-up's lookup (the file itself stays).
    func tearDown() throws {
        let node = fileNodeID, handle = fileHandle
        let release = try call { buffer, unique in
            (Self.encodeRelease(into: buffer, unique: unique, nodeID: node, fileHandle: handle), OutHeaderLayout.size, 0)
        }
        try require(release, "RELEASE of the benchmark file", expectedBody: 0)
        let forget = try call { buffer, unique in
            (Self.encodeForget(into: buffer, unique: unique, nodeID: node, lookups: 1), 0, 0)
        }
        guard forget.usedLength == 0 else { throw BenchFailure(description: "FORGET got a \(forget.usedLength)-byte reply; it is one-way") }
        forgetsSent += 1
    }

    // MARK: - Measured load

    /// Completes `requests` operations with `depth` in flight, then waits for the FORGETs it sent.
    func run(requests: Int) {
        var started = 0
        var done = 0
        var idleSpins: UInt64 = 0
        var idleSince: UInt64 = 0
        while done < requests || forgetsInFlight > 0 || (done == requests && lookupsOutstanding > 0) {
            while operationsInFlight < depth && started < requests {
                guard let slot = driver.acquireSlot() else { break }
                slotStart[slot] = cycleCounter()
                guard submitFirst(slot: slot) else {
                    driver.releaseSlot(slot)
                    break
                }
                operationsInFlight += 1
                started += 1
            }
            if done == requests && lookupsOutstanding > 0 && operationsInFlight == 0, let slot = driver.acquireSlot() {
                // Give the last lookups back before the next measurement.
                if submitForget(slot: slot, nodeID: fileNodeID, lookups: lookupsOutstanding) {
                    lookupsOutstanding = 0
                } else {
                    driver.releaseSlot(slot)
                }
            }
            kickIfNeeded()
            var reapedAny = false
            while let (slot, usedLength) = driver.reap() {
                reapedAny = true
                if advance(slot: slot, usedLength: usedLength) { done += 1 }
            }
            if reapedAny {
                idleSpins = 0
            } else if callFD >= 0 && operationsInFlight > 0 {
                // EVENT_IDX's used_event is set at every reap, so the device signals the next use.
                var entry = pollfd(fd: callFD, events: Int16(POLLIN), revents: 0)
                if poll(&entry, 1, 1000) > 0 {
                    var counter: UInt64 = 0
                    _ = read(callFD, &counter, 8)
                } else {
                    let now = monotonicNanosecondsHere()
                    if idleSince == 0 { idleSince = now }
                    precondition(now &- idleSince < stallLimitNanoseconds,
                                 "no reply from the back-end for \(stallLimitNanoseconds / 1_000_000_000) s: it stopped serving the queue")
                }
            } else {
                spinHint()
                idleSpins &+= 1
                if idleSpins & 0xFFFF == 0 {
                    let now = monotonicNanosecondsHere()
                    if idleSpins == 0x10000 { idleSince = now }
                    precondition(now &- idleSince < stallLimitNanoseconds,
                                 "no reply from the back-end for \(stallLimitNanoseconds / 1_000_000_000) s: it stopped serving the queue")
                }
            }
        }
        completed += done
    }

    /// The first request of one operation.
    @inline(__always)
    func submitFirst(slot: Int) -> Bool {
        switch operation {
        case .lookupFile:
            return submitNamed(.lookup, slot: slot, step: .lookup, prefix: nil, name: nil)
        case .getattrFile:
            let buffer = driver.readableBuffer(slot)
            let length = RequestEncoder.getattr(into: buffer, unique: takeUnique(), nodeID: fileNodeID)
            return submit(slot: slot, step: .getattr, readable: length, writable: OutHeaderLayout.size + AttrOutLayout.size)
        case .readFile:
            let length = RequestEncoder.read(into: driver.readableBuffer(slot), unique: takeUnique(), nodeID: fileNodeID,
                                             fileHandle: fileHandle, offset: nextBlockOffset(), size: UInt32(Self.blockBytes))
            return submit(slot: slot, step: .read, readable: length, writable: OutHeaderLayout.size + Self.blockBytes)
        case .writeFile:
            let length = RequestEncoder.write(into: driver.readableBuffer(slot), unique: takeUnique(), nodeID: fileNodeID,
                                              fileHandle: fileHandle, offset: nextBlockOffset(), size: UInt32(Self.blockBytes))
            return submit(slot: slot, step: .write, readable: length, writable: OutHeaderLayout.size + WriteOutLayout.size,
                          payloadOffset: RequestEncoder.writePayloadOffset)
        case .createUnlink:
            slotName[slot] = nameCounter
            nameCounter &+= 1
            return submitNamed(.create, slot: slot, step: .create, prefix: UInt8(ascii: "f"), name: slotName[slot])
        case .mkdirRmdir:
            slotName[slot] = nameCounter
            nameCounter &+= 1
            return submitNamed(.mkdir, slot: slot, step: .mkdir, prefix: UInt8(ascii: "d"), name: slotName[slot])
        case .openReadClose, .openWriteClose:
            let buffer = driver.readableBuffer(slot)
            let length = InHeaderLayout.size + 8
            RequestEncoder.header(into: buffer, length: length, opcode: .open, unique: takeUnique(), nodeID: fileNodeID)
            let flags: UInt32 = operation == .openReadClose ? 0 : 1   // O_RDONLY, O_WRONLY
            (buffer + InHeaderLayout.size).storeBytes(of: flags.littleEndian, as: UInt32.self)
            (buffer + InHeaderLayout.size + 4).storeBytes(of: UInt32(0), as: UInt32.self)
            return submit(slot: slot, step: .open, readable: length, writable: Int(Self.expectedUsedLength(.open)))
        }
    }

    /// The whole-file operations: the READ or WRITE through the handle OPEN gave, then FLUSH and
    /// RELEASE of it, each in the same slot.
    @inline(__always)
    func advanceWholeFile(slot: Int, step: Step, body: UnsafeMutableRawPointer) -> Bool {
        let buffer = driver.readableBuffer(slot)
        let handle = slotHandle[slot]
        var submitted: Bool
        switch step {
        case .open:
            slotHandle[slot] = UInt64(littleEndian: body.loadUnaligned(fromByteOffset: OpenOutLayout.fileHandle, as: UInt64.self))
            if operation == .openReadClose {
                let length = RequestEncoder.read(into: buffer, unique: takeUnique(), nodeID: fileNodeID, fileHandle: slotHandle[slot],
                                                 offset: nextBlockOffset(), size: UInt32(Self.blockBytes))
                submitted = submit(slot: slot, step: .read, readable: length, writable: OutHeaderLayout.size + Self.blockBytes)
            } else {
                let length = RequestEncoder.write(into: buffer, unique: takeUnique(), nodeID: fileNodeID, fileHandle: slotHandle[slot],
                                                  offset: nextBlockOffset(), size: UInt32(Self.blockBytes))
                submitted = submit(slot: slot, step: .write, readable: length, writable: OutHeaderLayout.size + WriteOutLayout.size,
                                   payloadOffset: RequestEncoder.writePayloadOffset)
            }
        case .read, .write:
            // fuse_flush_in: fh, unused, padding, lock_owner.
            let length = InHeaderLayout.size + 24
            RequestEncoder.header(into: buffer, length: length, opcode: .flush, unique: takeUnique(), nodeID: fileNodeID)
            (buffer + InHeaderLayout.size).initializeMemory(as: UInt8.self, repeating: 0, count: 24)
            (buffer + InHeaderLayout.size).storeBytes(of: handle.littleEndian, as: UInt64.self)
            submitted = submit(slot: slot, step: .flush, readable: length, writable: OutHeaderLayout.size)
        case .flush:
            let length = Self.encodeRelease(into: buffer, unique: takeUnique(), nodeID: fileNodeID, fileHandle: handle)
            submitted = submit(slot: slot, step: .close, readable: length, writable: OutHeaderLayout.size)
        default:
            return finish(slot: slot)
        }
        precondition(submitted, "the next request of a whole-file operation found no room in the queue its last one left")
        return false
    }

    /// Handles one reply; returns whether it finished an operation. Follow-up requests of a pair go
    /// out in the same slot (they need no more descriptors than the request just returned).
    @inline(__always)
    func advance(slot: Int, usedLength: UInt32) -> Bool {
        let step = slotStep[slot]
        if step == .forget {
            forgetsInFlight -= 1
            if usedLength != 0 { fail(step, slot: slot, usedLength: usedLength, expected: 0) }
            driver.releaseSlot(slot)
            return false
        }
        let reply = driver.writableBuffer(slot)
        let outLength = UInt32(littleEndian: reply.load(fromByteOffset: OutHeaderLayout.len, as: UInt32.self))
        let error = Int32(littleEndian: reply.load(fromByteOffset: OutHeaderLayout.error, as: Int32.self))
        let expected = Self.expectedUsedLength(step)
        guard error == 0, outLength == usedLength, usedLength == expected else {
            fail(step, slot: slot, usedLength: usedLength, expected: expected)
            return finish(slot: slot)
        }
        let body = reply + OutHeaderLayout.size
        if operation.isWholeFile && step != .write { return advanceWholeFile(slot: slot, step: step, body: body) }
        switch step {
        case .lookup:
            let node = UInt64(littleEndian: body.loadUnaligned(fromByteOffset: EntryOutLayout.nodeID, as: UInt64.self))
            if node != fileNodeID { fail(step, slot: slot, usedLength: usedLength, expected: expected, note: "node \(node), expected \(fileNodeID)") }
            lookupsOutstanding += 1
            if lookupsOutstanding >= Self.lookupsPerForget {
                // Give the lookups back in this slot; the operation is done either way.
                recordDone(slot: slot)
                let lookups = lookupsOutstanding
                lookupsOutstanding = 0
                let submitted = submitForget(slot: slot, nodeID: fileNodeID, lookups: lookups)
                precondition(submitted, "a FORGET found no room in the queue the LOOKUP just left")
                return true
            }
            return finish(slot: slot)
        case .write:
            let written = UInt32(littleEndian: body.loadUnaligned(fromByteOffset: WriteOutLayout.bytes, as: UInt32.self))
            if written != UInt32(Self.blockBytes) { fail(step, slot: slot, usedLength: usedLength, expected: expected, note: "wrote \(written) bytes") }
            if operation.isWholeFile { return advanceWholeFile(slot: slot, step: step, body: body) }
            return finish(slot: slot)
        case .getattr, .read:
            return finish(slot: slot)
        case .create:
            slotNodeID[slot] = UInt64(littleEndian: body.loadUnaligned(fromByteOffset: EntryOutLayout.nodeID, as: UInt64.self))
            slotHandle[slot] = UInt64(littleEndian: body.loadUnaligned(fromByteOffset: EntryOutLayout.size + OpenOutLayout.fileHandle, as: UInt64.self))
            let length = Self.encodeRelease(into: driver.readableBuffer(slot), unique: takeUnique(), nodeID: slotNodeID[slot],
                                            fileHandle: slotHandle[slot])
            let submitted = submit(slot: slot, step: .release, readable: length, writable: OutHeaderLayout.size)
            precondition(submitted, "RELEASE found no room in the queue the CREATE just left")
            return false
        case .release:
            let submitted = submitNamed(.unlink, slot: slot, step: .unlink, prefix: UInt8(ascii: "f"), name: slotName[slot])
            precondition(submitted, "UNLINK found no room in the queue the RELEASE just left")
            return false
        case .mkdir:
            slotNodeID[slot] = UInt64(littleEndian: body.loadUnaligned(fromByteOffset: EntryOutLayout.nodeID, as: UInt64.self))
            let submitted = submitNamed(.rmdir, slot: slot, step: .rmdir, prefix: UInt8(ascii: "d"), name: slotName[slot])
            precondition(submitted, "RMDIR found no room in the queue the MKDIR just left")
            return false
        case .unlink, .rmdir:
            // The name is gone; give back the lookup CREATE/MKDIR counted, as the kernel does on eviction.
            recordDone(slot: slot)
            let submitted = submitForget(slot: slot, nodeID: slotNodeID[slot], lookups: 1)
            precondition(submitted, "FORGET found no room in the queue the UNLINK/RMDIR just left")
            return true
        case .forget, .open, .flush, .close:
            preconditionFailure("a whole-file step outside a whole-file operation")
        }
    }

    @inline(__always)
    func recordDone(slot: Int) {
        roundTrip.record(cycleCounter() &- slotStart[slot])
        operationsInFlight -= 1
    }

    @inline(__always)
    func finish(slot: Int) -> Bool {
        recordDone(slot: slot)
        driver.releaseSlot(slot)
        return true
    }

    func fail(_ step: Step, slot: Int, usedLength: UInt32, expected: UInt32, note: String? = nil) {
        failures += 1
        guard firstFailure == nil else { return }
        let reply = driver.writableBuffer(slot)
        let error = Int32(littleEndian: reply.load(fromByteOffset: OutHeaderLayout.error, as: Int32.self))
        let outLength = UInt32(littleEndian: reply.load(fromByteOffset: OutHeaderLayout.len, as: UInt32.self))
        var text = "\(operation.rawValue): \(step) reply "
        if step == .forget {
            text += "of \(usedLength) bytes to a one-way FORGET"
        } else if usedLength >= UInt32(OutHeaderLayout.size) && error != 0 {
            text += Self.errnoName(error)
        } else {
            text += "of \(usedLength) bytes (out.len \(outLength)), expected \(expected)"
        }
        if let note { text += ", " + note }
        firstFailure = text
    }

    static func expectedUsedLength(_ step: Step) -> UInt32 {
        let header = UInt32(OutHeaderLayout.size)
        switch step {
        case .lookup, .mkdir: return header + UInt32(EntryOutLayout.size)
        case .getattr: return header + UInt32(AttrOutLayout.size)
        case .read: return header + UInt32(blockBytes)
        case .write: return header + UInt32(WriteOutLayout.size)
        case .create: return header + UInt32(EntryOutLayout.size + OpenOutLayout.size)
        case .release, .unlink, .rmdir, .flush, .close: return header
        case .open: return header + UInt32(OpenOutLayout.size)
        case .forget: return 0
        }
    }

    // MARK: - Encoding

    @inline(__always)
    func takeUnique() -> UInt64 {
        let unique = nextUnique
        nextUnique &+= 1
        return unique
    }

    /// Block offsets visit every block of the file in a scattered order (a stride coprime to the
    /// block count when it is a power of two).
    @inline(__always)
    func nextBlockOffset() -> UInt64 {
        let block = (blockCursor &* 37) % blockCount
        blockCursor &+= 1
        return block * UInt64(Self.blockBytes)
    }

    @inline(__always)
    func submit(slot: Int, step: Step, readable: Int, writable: Int, payloadOffset: Int = 0) -> Bool {
        slotStep[slot] = step
        // A stale header from an earlier reply must not pass for this one's.
        driver.writableBuffer(slot).storeBytes(of: UInt64(0), as: UInt64.self)
        return driver.submit(slot: slot, readableBytes: readable, writableBytes: writable,
                             segmentation: .linux(payloadOffset: payloadOffset == 0 ? readable : payloadOffset))
    }

    @inline(__always)
    func submitForget(slot: Int, nodeID: UInt64, lookups: UInt64) -> Bool {
        let length = Self.encodeForget(into: driver.readableBuffer(slot), unique: takeUnique(), nodeID: nodeID, lookups: lookups)
        slotStep[slot] = .forget
        guard driver.submit(slot: slot, readableBytes: length, writableBytes: 0, segmentation: .linux(payloadOffset: length)) else { return false }
        forgetsInFlight += 1
        forgetsSent += 1
        return true
    }

    /// LOOKUP of the benchmark file (`prefix` nil), or CREATE/MKDIR/UNLINK/RMDIR of the unique name
    /// `dpfs-bench-<prefix><pid>-<number>`.
    @inline(__always)
    func submitNamed(_ opcode: FUSEOpcode, slot: Int, step: Step, prefix: UInt8?, name number: UInt64?) -> Bool {
        let buffer = driver.readableBuffer(slot)
        let unique = takeUnique()
        var argumentBytes = 0
        switch opcode {
        case .create:
            Self.storeCreateIn(buffer + InHeaderLayout.size, flags: 0o302, mode: 0o100644)   // O_RDWR|O_CREAT|O_EXCL
            argumentBytes = 16
        case .mkdir:
            (buffer + InHeaderLayout.size).storeBytes(of: UInt32(0o040755).littleEndian, as: UInt32.self)
            (buffer + InHeaderLayout.size + 4).storeBytes(of: UInt32(0).littleEndian, as: UInt32.self)
            argumentBytes = 8
        default:
            break
        }
        var nameBytes: Int
        let name = buffer + InHeaderLayout.size + argumentBytes
        if let prefix, let number {
            nameBytes = Self.writeUniqueName(into: name, prefix: prefix, pid: pid, number: number)
        } else {
            nameBytes = fileName.count
            fileName.withUnsafeBytes { name.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        }
        name.storeBytes(of: UInt8(0), toByteOffset: nameBytes, as: UInt8.self)
        let length = InHeaderLayout.size + argumentBytes + nameBytes + 1
        RequestEncoder.header(into: buffer, length: length, opcode: opcode, unique: unique, nodeID: Self.rootNodeID)
        return submit(slot: slot, step: step, readable: length, writable: Int(Self.expectedUsedLength(step)))
    }

    static func writeUniqueName(into name: UnsafeMutableRawPointer, prefix: UInt8, pid: UInt32, number: UInt64) -> Int {
        var position = 0
        func put(_ byte: UInt8) {
            name.storeBytes(of: byte, toByteOffset: position, as: UInt8.self)
            position += 1
        }
        func putNumber(_ value: UInt64) {
            var digits: UInt64 = 1
            while value / digits >= 10 { digits *= 10 }
            while digits > 0 {
                put(UInt8(ascii: "0") + UInt8((value / digits) % 10))
                digits /= 10
            }
        }
        for byte in "dpfs-bench-".utf8 { put(byte) }
        put(prefix)
        putNumber(UInt64(pid))
        put(UInt8(ascii: "-"))
        putNumber(number)
        return position
    }

    static func storeCreateIn(_ arguments: UnsafeMutableRawPointer, flags: UInt32, mode: UInt32) {
        // fuse_create_in: flags, mode, umask, open_flags.
        arguments.storeBytes(of: flags.littleEndian, toByteOffset: 0, as: UInt32.self)
        arguments.storeBytes(of: mode.littleEndian, toByteOffset: 4, as: UInt32.self)
        arguments.storeBytes(of: UInt32(0), toByteOffset: 8, as: UInt32.self)
        arguments.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self)
    }

    static func createIn(flags: UInt32, mode: UInt32) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 16)
        bytes.withUnsafeMutableBytes { storeCreateIn($0.baseAddress!, flags: flags, mode: mode) }
        return bytes
    }

    /// A request of fixed arguments `prefix` followed by a NUL-terminated `name` (set-up only).
    static func encodeNamed(_ opcode: FUSEOpcode, into buffer: UnsafeMutableRawPointer, unique: UInt64, parent: UInt64,
                            prefix: [UInt8], name: [UInt8]) -> Int {
        let bytes = prefix + name + [0]
        let length = InHeaderLayout.size + bytes.count
        RequestEncoder.header(into: buffer, length: length, opcode: opcode, unique: unique, nodeID: parent)
        bytes.withUnsafeBytes { (buffer + InHeaderLayout.size).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return length
    }

    /// FUSE_RELEASE (`fuse_release_in`: fh, flags, release_flags, lock_owner).
    @inline(__always)
    static func encodeRelease(into buffer: UnsafeMutableRawPointer, unique: UInt64, nodeID: UInt64, fileHandle: UInt64) -> Int {
        let length = InHeaderLayout.size + 24
        RequestEncoder.header(into: buffer, length: length, opcode: .release, unique: unique, nodeID: nodeID)
        let arguments = buffer + InHeaderLayout.size
        arguments.initializeMemory(as: UInt8.self, repeating: 0, count: 24)
        arguments.storeBytes(of: fileHandle.littleEndian, toByteOffset: 0, as: UInt64.self)
        arguments.storeBytes(of: UInt32(2).littleEndian, toByteOffset: 8, as: UInt32.self)   // the O_RDWR it was opened with
        return length
    }

    /// FUSE_FORGET (`fuse_forget_in`: nlookup). One-way.
    @inline(__always)
    static func encodeForget(into buffer: UnsafeMutableRawPointer, unique: UInt64, nodeID: UInt64, lookups: UInt64) -> Int {
        let length = InHeaderLayout.size + 8
        RequestEncoder.header(into: buffer, length: length, opcode: .forget, unique: unique, nodeID: nodeID)
        (buffer + InHeaderLayout.size).storeBytes(of: lookups.littleEndian, as: UInt64.self)
        return length
    }

    @inline(__always)
    func kickIfNeeded() {
        guard driver.kickNeeded(), kickFD >= 0 else { return }
        var one: UInt64 = 1
        _ = write(kickFD, &one, 8)
        kicks &+= 1
    }
}

@inline(__always)
func monotonicNanosecondsHere() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// CPU time (user + system, all threads) of another process and its descendants: the C virtiofsd
/// forks into its sandbox once the front-end connects, and the child serves the queues.
struct DaemonCPU {
    let pids: [Int32]
    let clocks: [clockid_t]
    /// How the time is read, for the report.
    let source: String

    /// Call after the back-end answered its first message, so a sandboxed child exists.
    init(pid: Int32) throws {
        guard kill(pid, 0) == 0 || errno == EPERM else { throw BenchFailure(description: "--daemon-pid \(pid): no such process") }
        var pids = [pid]
        var index = 0
        while index < pids.count {
            pids += Self.children(of: pids[index])
            index += 1
        }
        self.pids = pids
        // A process CPU clock has nanosecond resolution; /proc/PID/stat counts clock ticks (10 ms),
        // too coarse for runs of a fraction of a second.
        var clocks: [clockid_t] = []
        for pid in pids {
            var clock = clockid_t()
            var now = timespec()
            if clock_getcpuclockid(pid, &clock) == 0 && clock_gettime(clock, &now) == 0 { clocks.append(clock) }
        }
        let list = pids.map(String.init).joined(separator: "+")
        if clocks.count == pids.count {
            self.clocks = clocks
            source = "process CPU clocks of pid \(list) (user+system, all threads, ns)"
        } else {
            self.clocks = []
            source = "/proc/{\(list)}/stat utime+stime (all threads, \(sysconf(Int32(_SC_CLK_TCK))) ticks/s)"
        }
    }

    /// Nanoseconds of CPU the processes have used so far.
    func sample() -> UInt64? {
        var total: UInt64 = 0
        if !clocks.isEmpty {
            for clock in clocks {
                var now = timespec()
                guard clock_gettime(clock, &now) == 0 else { return nil }
                total += UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
            }
            return total
        }
        for pid in pids {
            guard let nanoseconds = Self.procStatNanoseconds(pid: pid) else { return nil }
            total += nanoseconds
        }
        return total
    }

    static func readSmallFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count >= 0 else { return nil }
        return Array(buffer[..<count])
    }

    /// Child processes, from /proc/PID/task/*/children.
    static func children(of pid: Int32) -> [Int32] {
        guard let directory = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(directory) }
        var children: [Int32] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let task = Int32(name), let text = readSmallFile("/proc/\(pid)/task/\(task)/children") else { continue }
            children += text.split(separator: UInt8(ascii: " ")).compactMap { Int32(String(decoding: $0, as: UTF8.self)) }
        }
        return children
    }

    /// utime + stime from /proc/PID/stat (fields 14 and 15, after the parenthesised command name).
    static func procStatNanoseconds(pid: Int32) -> UInt64? {
        guard let text = readSmallFile("/proc/\(pid)/stat"),
              let parenthesis = text.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = text[(parenthesis + 1)...].split(separator: UInt8(ascii: " "))
        // fields[0] is field 3 (state); utime is field 14, stime 15.
        guard fields.count > 13, let user = UInt64(String(decoding: fields[11], as: UTF8.self)),
              let system = UInt64(String(decoding: fields[12], as: UTF8.self)) else { return nil }
        let ticks = UInt64(sysconf(Int32(_SC_CLK_TCK)))
        return (user + system) * (1_000_000_000 / ticks)
    }
}
