import BackendKit
import DPFSPosix
import Glibc
import Synchronization

// The tables an NFS device's queues share: the inodes the guest knows (keyed by NFS file handle,
// never by path, so a rename on the server cannot make a node id name another file) and the files
// it has open. The inode table is BackendKit's PinnedTable, as the passthrough backend's
// (Specs/passthrough-tables.md): a request pins a record lock-free, copies what it needs (the file
// handle is encoded into the RPC at once, so the pin lasts only while the call is built) and unpins.

/// The longest NFSv3 file handle (RFC 1813 NFS3_FHSIZE).
public let nfsFileHandleBytesMax = 64

/// What each node record holds besides the shared table's pin, generation and lookups.
public struct NFSNodeRecords: PinnedRecordPayload {
    /// File handle bytes and length: written while the record is free (under the mutex, which
    /// `find` compares them under), published by its first pin.
    let handles: UnsafeMutableRawPointer
    let handleLengths: UnsafeMutablePointer<UInt8>
    /// st_mode file-type bits, written like the handle.
    let kinds: UnsafeMutablePointer<UInt32>
    /// FUSE opens of the node (each also holds a pin): an unlinked file that is still open is
    /// renamed to a hidden name instead of removed, and removed by its last RELEASE.
    let opens: UnsafeMutablePointer<Atomic<UInt32>>
    /// 0 = visible; 1 = hidden (its last RELEASE removes it); 2 = removal claimed or done.
    let hiddenStates: UnsafeMutablePointer<Atomic<UInt8>>

    init(capacity: Int) {
        handles = .allocate(byteCount: capacity * nfsFileHandleBytesMax, alignment: 8)
        handleLengths = .allocate(capacity: capacity)
        handleLengths.initialize(repeating: 0, count: capacity)
        kinds = .allocate(capacity: capacity)
        kinds.initialize(repeating: 0, count: capacity)
        opens = .allocate(capacity: capacity)
        hiddenStates = .allocate(capacity: capacity)
        for index in 0..<capacity {
            (opens + index).initialize(to: Atomic(0))
            (hiddenStates + index).initialize(to: Atomic(0))
        }
    }

    public func recordFreed(_ index: UInt32) {
        opens[Int(index)].store(0, ordering: .relaxed)
        hiddenStates[Int(index)].store(0, ordering: .relaxed)
    }

    public func deallocate() {
        handles.deallocate()
        handleLengths.deallocate()
        kinds.deallocate()
        opens.deallocate()
        hiddenStates.deallocate()
    }

    func handle(_ index: UInt32) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: handles + Int(index) * nfsFileHandleBytesMax, count: Int(handleLengths[Int(index)]))
    }

    func fill(_ index: UInt32, handle: UnsafeRawBufferPointer, kind: UInt32) {
        (handles + Int(index) * nfsFileHandleBytesMax).copyMemory(from: handle.baseAddress!, byteCount: handle.count)
        handleLengths[Int(index)] = UInt8(handle.count)
        kinds[Int(index)] = kind
    }
}

/// The inodes the guest knows: BackendKit's PinnedTable keyed by NFS file handle, with the root
/// at index 1 (generation 0, so its id is FUSE's node 1) pinned for ever.
public final class FileHandleTable: @unchecked Sendable {
    let records: PinnedTable<NFSNodeRecords>
    public var capacity: Int { records.capacity }
    public static let rootIndex: UInt32 = 1
    /// FUSE's root node id: index 1, generation 0 (every other record starts at generation 1).
    public static let rootID: UInt64 = 1

    /// Records in use besides the root (for reports and tests).
    public var inUse: Int { records.inUse }

    public init(capacity: Int, rootHandle: UnsafeRawBufferPointer, rootKind: UInt32) {
        precondition(capacity >= 4 && capacity <= 1 << 24)
        precondition(rootHandle.count >= 1 && rootHandle.count <= nfsFileHandleBytesMax)
        records = PinnedTable(capacity: capacity, keyed: true, reservedIndices: 1, payload: NFSNodeRecords(capacity: capacity))
        // The root is pinned alive for ever and hashed, so a LOOKUP that returns the root's handle
        // (".." of a top directory) finds node 1.
        records.payload.fill(Self.rootIndex, handle: rootHandle, kind: rootKind)
        records.installPermanent(Self.rootIndex, keyHash: Self.hashValue(rootHandle))
    }

    public func id(of index: UInt32) -> UInt64 { records.id(of: index) }

    /// Pins the record `id` names, or nil (never issued, forgotten, stale generation).
    public func pin(_ id: UInt64) -> UInt32? { records.pin(id) }

    public func unpin(_ index: UInt32) { records.unpin(index) }

    /// The file handle of a pinned record (valid while pinned).
    public func handle(_ index: UInt32) -> UnsafeRawBufferPointer { records.payload.handle(index) }

    public func kind(_ index: UInt32) -> UInt32 { records.payload.kinds[Int(index)] }

    /// One more pin of a record the caller already holds pinned.
    public func retain(_ index: UInt32) { records.retain(index) }

    /// The record holding `handle`, pinned, without counting a lookup (nil: the guest does not know it).
    public func findPinned(handle: UnsafeRawBufferPointer) -> UInt32? {
        guard handle.count >= 1 && handle.count <= nfsFileHandleBytesMax else { return nil }
        return records.withLock { () -> UInt32? in
            // A hashed record holds its alive pin (only forget and free unhash, both under this mutex).
            guard let index = find(handle) else { return nil }
            retain(index)
            return index
        }
    }

    // MARK: - Open counts and hidden ("silly renamed") files

    /// A FUSE open of a pinned node: the open keeps a pin of its own until `closed`.
    public func opened(_ index: UInt32) {
        retain(index)
        records.payload.opens[Int(index)].add(1, ordering: .sequentiallyConsistent)
    }

    public func openCount(_ index: UInt32) -> UInt32 { records.payload.opens[Int(index)].load(ordering: .sequentiallyConsistent) }

    /// The open's end (its pin stays with the caller, who unpins it). True when the caller must
    /// now remove the node's hidden name: it was the last open of a hidden node.
    public func closed(_ index: UInt32) -> Bool {
        let payload = records.payload
        let previous = payload.opens[Int(index)].subtract(1, ordering: .sequentiallyConsistent).oldValue
        precondition(previous >= 1, "close of a node with no open")
        guard previous == 1 else { return false }
        return payload.hiddenStates[Int(index)].compareExchange(expected: 1, desired: 2, ordering: .sequentiallyConsistent).exchanged
    }

    /// The node was renamed to its hidden name. True when the caller must remove it at once: its
    /// last open ended meanwhile. Exactly one of this and `closed` claims the removal.
    public func hid(_ index: UInt32) -> Bool {
        let payload = records.payload
        payload.hiddenStates[Int(index)].store(1, ordering: .sequentiallyConsistent)
        guard payload.opens[Int(index)].load(ordering: .sequentiallyConsistent) == 0 else { return false }
        return payload.hiddenStates[Int(index)].compareExchange(expected: 1, desired: 2, ordering: .sequentiallyConsistent).exchanged
    }

    public func isHidden(_ index: UInt32) -> Bool { records.payload.hiddenStates[Int(index)].load(ordering: .acquiring) != 0 }

    /// Finds or adds the inode with file handle `handle` and counts one lookup the kernel will
    /// FORGET. Nil when the table is full or the handle is not a valid NFSv3 handle.
    public func lookup(handle: UnsafeRawBufferPointer, kind: UInt32) -> UInt64? {
        guard handle.count >= 1 && handle.count <= nfsFileHandleBytesMax else { return nil }
        return records.withLock { () -> UInt64? in
            if let index = find(handle) {
                records.countLookup(index)
                return id(of: index)
            }
            guard let index = records.takeFree() else { return nil }
            records.payload.fill(index, handle: handle, kind: kind)
            records.publish(index, keyHash: Self.hashValue(handle))
            return id(of: index)
        }
    }

    /// One more lookup of a record the caller holds pinned (LINK answers with the linked inode).
    public func countLookup(_ index: UInt32) {
        records.withLock { records.countLookup(index) }
    }

    /// FORGET: drops `count` lookups; at zero the record leaves the hash and is freed once its
    /// in-flight users are done. The root and unknown ids are ignored.
    public func forget(_ id: UInt64, count: UInt64) {
        guard id != Self.rootID else { return }
        records.forget(id, count: count)
    }

    /// A new FUSE session: the kernel knows no inode of the old one.
    public func forgetAll() { records.forgetAll() }

    static func hashValue(_ handle: UnsafeRawBufferPointer) -> UInt64 {
        // FNV-1a: handles are short and the server's bytes are not adversarial to this table.
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in handle { h = (h ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return h
    }

    /// The record holding `handle` (mutex held).
    func find(_ handle: UnsafeRawBufferPointer) -> UInt32? {
        let payload = records.payload
        return records.find(keyHash: Self.hashValue(handle)) { index in
            let stored = payload.handle(index)
            return stored.count == handle.count && memcmp(stored.baseAddress!, handle.baseAddress!, handle.count) == 0
        }
    }
}

/// The files the guest has open: per open, whether unstable data was written since the last
/// COMMIT and the server's write verifier of that data, and for directories the listing's cookie
/// verifier. A FUSE file handle is generation << 32 | index.
public final class OpenFileTable: @unchecked Sendable {
    public let capacity: Int
    let generations: UnsafeMutablePointer<Atomic<UInt32>>
    let live: UnsafeMutablePointer<Atomic<Bool>>
    /// UNSTABLE answers counted per open, and the count the last successful COMMIT covered (the
    /// count when it was sent): the open is dirty while the first is ahead. A WRITE answered while
    /// a COMMIT is in flight is not covered by it, and stays dirty for the next FSYNC.
    let writtenSequences: UnsafeMutablePointer<Atomic<UInt64>>
    let committedSequences: UnsafeMutablePointer<Atomic<UInt64>>
    /// The one queue that wrote through this open (-1: none yet; -2: several). Only a sole writer's
    /// journal holds all its uncommitted data, so only then can a changed verifier be repaired.
    let writers: UnsafeMutablePointer<Atomic<Int32>>
    /// The verifier the server gave the first unstable WRITE since the last COMMIT (0 = none yet).
    let writeVerifiers: UnsafeMutablePointer<Atomic<UInt64>>
    /// Two unstable WRITEs got different verifiers, or a COMMIT's differs: the server restarted
    /// and may have dropped data this open wrote. Every later FSYNC, FLUSH and RELEASE fails EIO.
    let dataLost: UnsafeMutablePointer<Atomic<Bool>>
    /// READDIR's cookie verifier of a directory open (one listing request at a time per open).
    let cookieVerifiers: UnsafeMutablePointer<UInt64>
    /// The node record each open holds pinned (and counted in its node's opens).
    let nodes: UnsafeMutablePointer<UInt32>
    let mutex = HostMutex()
    let freeList: UnsafeMutablePointer<UInt32>
    var freeCount = 0

    public var inUse: Int { mutex.withLock { capacity - 1 - freeCount } }

    public init(capacity: Int) {
        precondition(capacity >= 2 && capacity <= 1 << 24)
        self.capacity = capacity
        generations = .allocate(capacity: capacity)
        live = .allocate(capacity: capacity)
        writtenSequences = .allocate(capacity: capacity)
        committedSequences = .allocate(capacity: capacity)
        writers = .allocate(capacity: capacity)
        writeVerifiers = .allocate(capacity: capacity)
        dataLost = .allocate(capacity: capacity)
        for index in 0..<capacity {
            (generations + index).initialize(to: Atomic(1))
            (live + index).initialize(to: Atomic(false))
            (writtenSequences + index).initialize(to: Atomic(0))
            (committedSequences + index).initialize(to: Atomic(0))
            (writers + index).initialize(to: Atomic(-1))
            (writeVerifiers + index).initialize(to: Atomic(0))
            (dataLost + index).initialize(to: Atomic(false))
        }
        cookieVerifiers = .allocate(capacity: capacity)
        cookieVerifiers.initialize(repeating: 0, count: capacity)
        nodes = .allocate(capacity: capacity)
        nodes.initialize(repeating: 0, count: capacity)
        freeList = .allocate(capacity: capacity)
        for index in stride(from: capacity - 1, through: 1, by: -1) {
            freeList[freeCount] = UInt32(index)
            freeCount += 1
        }
    }

    deinit {
        generations.deallocate()
        live.deallocate()
        writtenSequences.deallocate()
        committedSequences.deallocate()
        writers.deallocate()
        writeVerifiers.deallocate()
        dataLost.deallocate()
        cookieVerifiers.deallocate()
        nodes.deallocate()
        freeList.deallocate()
    }

    /// A new open of `node`, which the caller has counted with `FileHandleTable.opened`.
    public func open(node: UInt32) -> UInt64? {
        mutex.withLock { () -> UInt64? in
            guard freeCount > 0 else { return nil }
            freeCount -= 1
            let index = Int(freeList[freeCount])
            writtenSequences[index].store(0, ordering: .relaxed)
            committedSequences[index].store(0, ordering: .relaxed)
            writers[index].store(-1, ordering: .relaxed)
            writeVerifiers[index].store(0, ordering: .relaxed)
            dataLost[index].store(false, ordering: .relaxed)
            cookieVerifiers[index] = 0
            nodes[index] = node
            live[index].store(true, ordering: .releasing)
            return UInt64(generations[index].load(ordering: .relaxed)) << 32 | UInt64(index)
        }
    }

    /// The index `fh` names while it is open, else nil (a guest's stale or invented handle).
    public func index(_ fh: UInt64) -> Int? {
        let index = Int(UInt32(truncatingIfNeeded: fh))
        guard index >= 1, index < capacity, live[index].load(ordering: .acquiring),
              generations[index].load(ordering: .acquiring) == UInt32(truncatingIfNeeded: fh >> 32) else { return nil }
        return index
    }

    /// Ends the open `fh`: the node record it held (pinned and counted, for the caller to
    /// `closed` and unpin), or 0 when `fh` was not open.
    public func close(_ fh: UInt64) -> UInt32 {
        guard let index = index(fh) else { return 0 }
        return mutex.withLock { () -> UInt32 in
            guard live[index].load(ordering: .relaxed) else { return 0 }
            live[index].store(false, ordering: .releasing)
            generations[index].add(1, ordering: .releasing)
            let node = nodes[index]
            nodes[index] = 0
            freeList[freeCount] = UInt32(index)
            freeCount += 1
            return node
        }
    }

    /// Every open ends (a new session); `release` gets each one's node.
    public func closeAll(_ release: (UInt32) -> Void) {
        for index in 1..<capacity where live[index].load(ordering: .relaxed) {
            let node = close(UInt64(generations[index].load(ordering: .relaxed)) << 32 | UInt64(index))
            if node != 0 { release(node) }
        }
    }

    /// Unstable data was written through this open that no successful COMMIT covered.
    public func isDirty(_ index: Int) -> Bool {
        writtenSequences[index].load(ordering: .acquiring) > committedSequences[index].load(ordering: .acquiring)
    }

    /// What a COMMIT sent now covers (pass it back to `committed`).
    public func commitSnapshot(_ index: Int) -> UInt64 { writtenSequences[index].load(ordering: .acquiring) }

    /// Records `queue` as a writer of the open: true while it is the only one.
    public func claimWriter(_ index: Int, queue: Int32) -> Bool {
        var current = writers[index].load(ordering: .acquiring)
        while true {
            if current == queue { return true }
            if current == -2 { return false }
            let desired: Int32 = current == -1 ? queue : -2
            let (exchanged, original) = writers[index].compareExchange(expected: current, desired: desired, ordering: .acquiringAndReleasing)
            if exchanged { return desired == queue }
            current = original
        }
    }

    /// The journal could not keep one of this open's writes: it cannot be repaired any more.
    public func giveUpRepair(_ index: Int) { writers[index].store(-2, ordering: .releasing) }

    /// The open's writes all went through `queue` (or there were none).
    public func isSoleWriter(_ index: Int, queue: Int32) -> Bool {
        let current = writers[index].load(ordering: .acquiring)
        return current == queue || current == -1
    }

    /// The server may have dropped data this open wrote (FSYNC, FLUSH and RELEASE fail EIO).
    public func hasLostData(_ index: Int) -> Bool { dataLost[index].load(ordering: .relaxed) }

    /// An unstable WRITE came back with `verifier`.
    func wrote(_ index: Int, verifier: UInt64) {
        writtenSequences[index].add(1, ordering: .acquiringAndReleasing)
        let (exchanged, original) = writeVerifiers[index].compareExchange(expected: 0, desired: verifier, ordering: .relaxed)
        if !exchanged && original != verifier { dataLost[index].store(true, ordering: .relaxed) }
    }

    /// A COMMIT sent at `snapshot` came back with `verifier`: true when everything written since
    /// the last one is safe. `repaired`: the queue's journal wrote again whatever the server may
    /// have dropped, and a COMMIT with this verifier then covered it.
    func committed(_ index: Int, verifier: UInt64, snapshot: UInt64, repaired: Bool = false) -> Bool {
        let written = writeVerifiers[index].exchange(0, ordering: .relaxed)
        if repaired {
            dataLost[index].store(false, ordering: .relaxed)
        } else if written != 0 && written != verifier {
            dataLost[index].store(true, ordering: .relaxed)
        }
        var covered = committedSequences[index].load(ordering: .acquiring)
        while covered < snapshot {
            let (exchanged, original) = committedSequences[index].compareExchange(expected: covered, desired: snapshot,
                                                                                  ordering: .acquiringAndReleasing)
            if exchanged { break }
            covered = original
        }
        return !dataLost[index].load(ordering: .relaxed)
    }
}
