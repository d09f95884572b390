import DPFSPosix
import Glibc
import Synchronization

// The one table of records a backend hands out ids for — inodes (FUSE node ids) and open files
// (FUSE file handles) — shared by every queue of a device (docs/architecture.md §7). A record is
// reached from a 64-bit id (generation in the high half, index in the low half) with one array
// access, a compare-and-swap that pins it and a generation check: no lock on the path of GETATTR,
// READ or WRITE of a known node. Only adding and removing records (LOOKUP of a new inode, FORGET,
// OPEN, RELEASE) takes the table's mutex. A record is freed — and its payload released — only
// when its last pin goes, so a guest racing FORGET against READ on another queue can never make a
// request use a released descriptor or file handle.
//
// The table owns ids, pins, lookup counts, the free list and the optional identity hash; what a
// record *is* (a descriptor, an NFS file handle, a key-value inode) lives in the backend's payload
// arrays, indexed by the same index. The pin protocol is Specs/passthrough-tables.md.

/// What a backend keeps per record, in arrays of its own indexed by the record's index.
public protocol PinnedRecordPayload {
    /// The record's last pin went: release what it holds (close a descriptor). No request can
    /// reach the record any more; it returns to the free list right after. Called outside the
    /// table's mutex (a close may be slow), so it touches only atomics and nothing `find`'s
    /// comparison or other code under the mutex reads; the rest is overwritten when the record is
    /// filled again.
    func recordFreed(_ index: UInt32)
    /// The table is going away: free the payload's storage (records still live are released first).
    func deallocate()
}

/// The pin count bit an owner sets while it works on an idle record (`markBusyIfIdle`).
@usableFromInline let pinnedRecordBusyBit: UInt32 = 1 << 31

/// A bounded, generation-tagged table of pinned records, optionally keyed by an identity the
/// payload stores (the table keeps only each key's hash and asks the caller to compare).
public final class PinnedTable<Payload: PinnedRecordPayload>: @unchecked Sendable {
    public let capacity: Int
    public let payload: Payload
    /// 0 = free; otherwise 1 (alive) + in-flight users; `busyBit` while an owner briefly works on
    /// a record nobody uses (the passthrough descriptor cache closing its descriptor).
    @usableFromInline let pins: UnsafeMutablePointer<Atomic<UInt32>>
    /// Bumped each time a record is freed, so a stale id never reaches a reused record.
    @usableFromInline let generations: UnsafeMutablePointer<Atomic<UInt32>>
    /// Mutex-only: lookups the kernel will FORGET (or 1 for an open until its RELEASE), the key's
    /// hash, hash membership, the free list.
    let lookups: UnsafeMutablePointer<UInt64>
    let keyHashes: UnsafeMutablePointer<UInt64>
    let hashed: UnsafeMutablePointer<Bool>
    @usableFromInline let mutex = HostMutex()
    let freeList: UnsafeMutablePointer<UInt32>
    var freeCount = 0
    /// Open addressing (linear probing, backward-shift deletion), index + 1 per cell, 0 = empty;
    /// twice the records so probes stay short. Nil for unkeyed tables (open files).
    let hashCells: UnsafeMutablePointer<UInt32>?
    let hashMask: Int
    /// The lowest index ever handed out by `takeFree` (index 0 is never valid; a backend may keep
    /// index 1 for its root with `installPermanent`).
    public let firstIndex: Int

    /// Records in use, permanent ones excluded (for reports and tests).
    public var inUse: Int { mutex.withLock { capacity - firstIndex - freeCount } }

    /// - Parameters:
    ///   - capacity: records at most, index 0 included (an id of 0 is never valid).
    ///   - keyed: whether records are found by an identity (`find`).
    ///   - reservedIndices: indices after 0 kept out of the free list for `installPermanent`.
    public init(capacity: Int, keyed: Bool, reservedIndices: Int = 0, payload: Payload) {
        precondition(capacity >= 2 + reservedIndices && capacity <= 1 << 24, "table capacity out of range")
        precondition(reservedIndices >= 0 && reservedIndices <= 1)
        self.capacity = capacity
        self.payload = payload
        firstIndex = 1 + reservedIndices
        pins = .allocate(capacity: capacity)
        generations = .allocate(capacity: capacity)
        for index in 0..<capacity {
            (pins + index).initialize(to: Atomic(0))
            (generations + index).initialize(to: Atomic(1))
        }
        lookups = .allocate(capacity: capacity)
        lookups.initialize(repeating: 0, count: capacity)
        keyHashes = .allocate(capacity: capacity)
        keyHashes.initialize(repeating: 0, count: capacity)
        hashed = .allocate(capacity: capacity)
        hashed.initialize(repeating: false, count: capacity)
        freeList = .allocate(capacity: capacity)
        // The lowest indices are on top.
        for index in stride(from: capacity - 1, through: firstIndex, by: -1) {
            freeList[freeCount] = UInt32(index)
            freeCount += 1
        }
        if keyed {
            var cells = 1
            while cells < 2 * capacity { cells <<= 1 }
            let storage = UnsafeMutablePointer<UInt32>.allocate(capacity: cells)
            storage.initialize(repeating: 0, count: cells)
            hashCells = storage
            hashMask = cells - 1
        } else {
            hashCells = nil
            hashMask = 0
        }
    }

    deinit {
        for index in 1..<capacity where pins[index].load(ordering: .relaxed) != 0 { payload.recordFreed(UInt32(index)) }
        payload.deallocate()
        pins.deinitialize(count: capacity)
        pins.deallocate()
        generations.deinitialize(count: capacity)
        generations.deallocate()
        lookups.deallocate()
        keyHashes.deallocate()
        hashed.deallocate()
        freeList.deallocate()
        hashCells?.deallocate()
    }

    // MARK: - Ids and pins (lock-free)

    @inlinable
    public static func id(index: UInt32, generation: UInt32) -> UInt64 { UInt64(generation) << 32 | UInt64(index) }

    /// The id of a pinned (or just published) record: what the guest gets as node id or handle.
    @inlinable
    public func id(of index: UInt32) -> UInt64 {
        Self.id(index: index, generation: generations[Int(index)].load(ordering: .acquiring))
    }

    /// Pins the record `id` names, or nil when it names none (never issued, freed, stale).
    /// Lock-free; the rare stale-id path may drop a record's last pin, and freeing takes the mutex.
    /// Always inlined: it is on the path of every request that names a node or a handle.
    @inlinable @inline(__always)
    public func pin(_ id: UInt64) -> UInt32? {
        let index = Int(UInt32(truncatingIfNeeded: id))
        let generation = UInt32(truncatingIfNeeded: id >> 32)
        guard index >= 1, index < capacity else { return nil }
        var current = pins[index].load(ordering: .acquiring)
        while true {
            guard current != 0 else { return nil }
            // An owner is working on this idle record: a few instructions' wait.
            if current & pinnedRecordBusyBit != 0 {
                sched_yield()
                current = pins[index].load(ordering: .acquiring)
                continue
            }
            let (exchanged, original) = pins[index].compareExchange(expected: current, desired: current &+ 1,
                                                                     ordering: .acquiringAndReleasing)
            if exchanged { break }
            current = original
        }
        // Pinned: the record cannot be freed now; it may still be a newer occupant of the index.
        guard generations[index].load(ordering: .acquiring) == generation else {
            unpin(UInt32(index))
            return nil
        }
        return UInt32(index)
    }

    /// Drops one pin; the last one releases the payload and frees the record.
    @inlinable @inline(__always)
    public func unpin(_ index: UInt32) {
        let previous = pins[Int(index)].subtract(1, ordering: .acquiringAndReleasing).oldValue
        precondition(previous >= 1 && previous & pinnedRecordBusyBit == 0, "unpin of a free record")
        // A static call keeps the caller's own `self` (swiftself) intact, so this is a tail call.
        if previous == 1 { Self.free(self, index) }
    }

    /// One more pin of a record the caller already holds pinned.
    @inlinable
    public func retain(_ index: UInt32) {
        let previous = pins[Int(index)].add(1, ordering: .acquiringAndReleasing).oldValue
        precondition(previous >= 1 && previous & pinnedRecordBusyBit == 0, "retain of a free record")
    }

    /// Never inlined: the rare path, kept out of `unpin` so its callers stay lean (inlined, it
    /// cost every unpin a dozen register saves).
    @usableFromInline @inline(never)
    static func free(_ table: PinnedTable, _ index: UInt32) { table.free(index) }

    func free(_ index: UInt32) {
        payload.recordFreed(index)
        let position = Int(index)
        mutex.withLock {
            if hashed[position] { unhash(index) }
            generations[position].add(1, ordering: .releasing)
            lookups[position] = 0
            freeList[freeCount] = index
            freeCount += 1
        }
    }

    /// Marks an idle record (only its alive pin: no request uses it) busy, holding off new pins.
    /// False when it is in use. Clear with `clearBusy`.
    public func markBusyIfIdle(_ index: UInt32) -> Bool {
        pins[Int(index)].compareExchange(expected: 1, desired: pinnedRecordBusyBit | 1, ordering: .acquiringAndReleasing).exchanged
    }

    public func clearBusy(_ index: UInt32) {
        pins[Int(index)].store(1, ordering: .releasing)
    }

    // MARK: - Adding records (mutex held: call inside `withLock`)

    @inlinable
    public func withLock<T>(_ body: () throws -> T) rethrows -> T { try mutex.withLock(body) }

    /// The record whose key hashes to `keyHash` and that `matches` (the caller compares the keys
    /// its payload stores). Mutex held.
    public func find(keyHash: UInt64, matches: (UInt32) -> Bool) -> UInt32? {
        guard let cells = hashCells else { preconditionFailure("find on an unkeyed table") }
        var slot = Int(truncatingIfNeeded: keyHash) & hashMask
        while cells[slot] != 0 {
            let index = cells[slot] - 1
            if keyHashes[Int(index)] == keyHash && matches(index) { return index }
            slot = (slot + 1) & hashMask
        }
        return nil
    }

    /// Takes a free record for the caller to fill (its payload) and then `publish`. Nil when the
    /// table is full. Mutex held.
    public func takeFree() -> UInt32? {
        guard freeCount > 0 else { return nil }
        freeCount -= 1
        return freeList[freeCount]
    }

    /// Publishes a filled record with one lookup (a new inode) or as one open (a new handle), and
    /// hashes it by `keyHash` on a keyed table. Mutex held.
    public func publish(_ index: UInt32, keyHash: UInt64 = 0) {
        let position = Int(index)
        precondition(pins[position].load(ordering: .relaxed) == 0, "publish of a live record")
        lookups[position] = 1
        if hashCells != nil {
            keyHashes[position] = keyHash
            hash(index)
        }
        pins[position].store(1, ordering: .releasing)
    }

    /// Publishes a reserved record that is never freed (a backend's root: generation 0, so the id
    /// of index 1 is FUSE's root node id 1). Before any queue runs.
    public func installPermanent(_ index: UInt32, keyHash: UInt64 = 0) {
        precondition(Int(index) >= 1 && Int(index) < firstIndex, "not a reserved index")
        mutex.withLock {
            generations[Int(index)].store(0, ordering: .relaxed)
            if hashCells != nil {
                keyHashes[Int(index)] = keyHash
                hash(index)
            }
            pins[Int(index)].store(1, ordering: .releasing)
        }
    }

    /// Counts one more lookup of a live record (a LOOKUP hit, LINK). Mutex held.
    public func countLookup(_ index: UInt32) {
        guard Int(index) >= firstIndex else { return }
        lookups[Int(index)] += 1
    }

    // MARK: - Removing records

    /// FORGET (or RELEASE of a handle, with `count` 1): drops `count` lookups of `id`; at zero the
    /// record leaves the hash and is freed once its in-flight users are done. Unknown ids,
    /// permanent records and over-counts are ignored (a buggy guest's problem). True when this
    /// call dropped the record's alive pin (a second RELEASE of a handle gets false).
    @discardableResult
    public func forget(_ id: UInt64, count: UInt64) -> Bool {
        guard let index = pin(id) else { return false }
        let position = Int(index)
        let dropAlive = mutex.withLock { () -> Bool in
            guard position >= firstIndex, lookups[position] > 0 else { return false }
            lookups[position] = count >= lookups[position] ? 0 : lookups[position] - count
            guard lookups[position] == 0 else { return false }
            // Out of the hash now: a LOOKUP racing with the last users gets a fresh record.
            if hashed[position] { unhash(index) }
            return true
        }
        if dropAlive { unpin(index) }
        unpin(index)
        return dropAlive
    }

    /// Forgets every record but the permanent ones (a new FUSE session: the kernel knows none).
    public func forgetAll() {
        for index in firstIndex..<capacity { forget(id(of: UInt32(index)), count: .max) }
    }

    // MARK: - The identity hash (mutex held)

    func home(_ index: UInt32) -> Int { Int(truncatingIfNeeded: keyHashes[Int(index)]) & hashMask }

    func hash(_ index: UInt32) {
        let cells = hashCells!
        var slot = home(index)
        while cells[slot] != 0 { slot = (slot + 1) & hashMask }
        cells[slot] = index + 1
        hashed[Int(index)] = true
    }

    func unhash(_ index: UInt32) {
        let cells = hashCells!
        hashed[Int(index)] = false
        var slot = home(index)
        while cells[slot] != index + 1 {
            precondition(cells[slot] != 0, "hashed record missing from the hash")
            slot = (slot + 1) & hashMask
        }
        // Backward-shift deletion: move later members of the probe run into the hole unless their
        // home lies cyclically in (hole, next].
        var hole = slot
        var next = (hole + 1) & hashMask
        while cells[next] != 0 {
            let distanceHome = (next - home(cells[next] - 1)) & hashMask
            let distanceHole = (next - hole) & hashMask
            if distanceHome >= distanceHole {
                cells[hole] = cells[next]
                hole = next
            }
            next = (next + 1) & hashMask
        }
        cells[hole] = 0
    }
}
