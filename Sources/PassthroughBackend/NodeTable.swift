import CDPFS
import DPFSPosix
import Glibc
import Synchronization

// The device's tables of inodes and open files, shared by the pollers of every queue (Specs/
// passthrough-tables.md says why this is race-free). A record is reached from a 64-bit id —
// generation in the high half, index in the low half — with one array access, a compare-and-swap
// that pins it and a generation check: no lock on the path of GETATTR, READ or WRITE of a known
// inode or handle. Only adding and removing records (LOOKUP of a new inode, FORGET, OPEN, RELEASE)
// takes the table's mutex. A record's descriptor is closed only when its last pin goes, so a hostile
// guest racing FORGET against READ on another queue can never make a request use a closed — or,
// worse, reused — descriptor number.

/// What is known of a record besides its atomics: identity, lookup count, hash and release marks.
/// Read and written only under the table's mutex (and while the record is free).
@usableFromInline
struct NodeInfo {
    var device: UInt64 = 0
    var inode: UInt64 = 0
    var mountID: UInt64 = 0
    var lookups: UInt64 = 0
    var hashed = false
    /// A handle's first RELEASE happened (a second one must not drop the alive pin again).
    var released = false
}

/// A record pinned for the length of one request. Unpin with `NodeTable.unpin`.
@frozen
public struct PinnedNode: Sendable {
    public let index: UInt32
    public let fd: Int32
    public let kind: UInt32

    @inlinable
    public init(index: UInt32, fd: Int32, kind: UInt32) {
        self.index = index
        self.fd = fd
        self.kind = kind
    }
}

/// A bounded table of descriptor records, optionally keyed by inode identity. Each field lives in
/// an array of its own, so the lock-free readers (pin, reopen) and the writers under the mutex never
/// touch the same Swift variable.
public final class NodeTable: @unchecked Sendable {
    public let capacity: Int
    /// 0 = free; otherwise 1 (alive) + in-flight users; `evictingBit` while the descriptor cache
    /// closes the record's descriptor.
    @usableFromInline let pins: UnsafeMutablePointer<Atomic<UInt32>>
    /// Bumped each time a record is freed, so a stale id never reaches a reused record.
    @usableFromInline let generations: UnsafeMutablePointer<Atomic<UInt32>>
    /// O_PATH descriptor (inodes) or open descriptor (handles); -1 while an inode with a file handle
    /// has none open (the descriptor cache closed it). Constant while any request holds a pin.
    @usableFromInline let descriptors: UnsafeMutablePointer<Atomic<Int32>>
    /// st_mode's file-type bits (inodes) or open flags (handles): written while the record is free,
    /// published by the release store of its first pin.
    @usableFromInline let kinds: UnsafeMutablePointer<UInt32>
    /// The inode has a file handle it can be re-opened by (written like `kinds`).
    let reopenables: UnsafeMutablePointer<Bool>
    /// Mutex-only bookkeeping.
    let infos: UnsafeMutablePointer<NodeInfo>
    /// Guards the free list, the identity hash, `infos` and the descriptor cache's clock.
    let mutex = HostMutex()
    let freeList: UnsafeMutablePointer<UInt32>
    var freeCount: Int
    /// Open addressing (linear probing, backward-shift deletion), index + 1 per cell, 0 = empty;
    /// twice the records so probes stay short. Nil for handle tables.
    let hashCells: UnsafeMutablePointer<UInt32>?
    let hashMask: Int
    /// Inode descriptors open at most before the cache closes the idle ones (inodes with a file
    /// handle only).
    public let descriptorsCachedMax: Int
    let openDescriptors = Atomic<Int>(0)
    let fileHandles: UnsafeMutableRawPointer?
    var clockHand = 0
    /// Descriptors the cache closed, and re-opened from file handles (for reports and tests).
    public let evictions = Atomic<Int>(0)
    public let reopens = Atomic<Int>(0)
    public var descriptorsOpen: Int { openDescriptors.load(ordering: .relaxed) }

    /// Records in use (for reports and tests); index 0 is never issued.
    public var inUse: Int { mutex.withLock { capacity - 1 - freeCount } }

    /// - Parameters:
    ///   - capacity: records at most (index 0 is reserved: an id of 0 is never valid).
    ///   - keyed: whether records are found by (device, inode, mount id).
    public init(capacity: Int, keyed: Bool, descriptorsCachedMax: Int = .max) {
        precondition(capacity >= 2 && capacity <= 1 << 24)
        precondition(descriptorsCachedMax >= 16)
        self.capacity = capacity
        self.descriptorsCachedMax = descriptorsCachedMax
        pins = .allocate(capacity: capacity)
        generations = .allocate(capacity: capacity)
        descriptors = .allocate(capacity: capacity)
        for index in 0..<capacity {
            (pins + index).initialize(to: Atomic(0))
            (generations + index).initialize(to: Atomic(1))
            (descriptors + index).initialize(to: Atomic(-1))
        }
        kinds = .allocate(capacity: capacity)
        kinds.initialize(repeating: 0, count: capacity)
        reopenables = .allocate(capacity: capacity)
        reopenables.initialize(repeating: false, count: capacity)
        infos = .allocate(capacity: capacity)
        infos.initialize(repeating: NodeInfo(), count: capacity)
        freeList = .allocate(capacity: capacity)
        freeCount = 0
        // Index 0 is never handed out; the lowest indices are on top.
        for index in stride(from: capacity - 1, through: 1, by: -1) {
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
            fileHandles = .allocate(byteCount: capacity * Self.fileHandleStride, alignment: 8)
        } else {
            hashCells = nil
            hashMask = 0
            fileHandles = nil
        }
    }

    deinit {
        for index in 0..<capacity {
            let fd = descriptors[index].load(ordering: .relaxed)
            if fd >= 0 { _ = Glibc.close(fd) }
        }
        fileHandles?.deallocate()
        pins.deinitialize(count: capacity)
        pins.deallocate()
        generations.deinitialize(count: capacity)
        generations.deallocate()
        descriptors.deinitialize(count: capacity)
        descriptors.deallocate()
        kinds.deallocate()
        reopenables.deallocate()
        infos.deallocate()
        freeList.deallocate()
        hashCells?.deallocate()
    }

    @inlinable
    static func id(index: UInt32, generation: UInt32) -> UInt64 { UInt64(generation) << 32 | UInt64(index) }

    /// The id of a pinned record (what the guest gets as node id or file handle).
    @inlinable
    public func id(of index: UInt32) -> UInt64 {
        Self.id(index: index, generation: generations[Int(index)].load(ordering: .acquiring))
    }

    /// Pins the record `id` names, or nil when it names none (never issued, freed, stale). Lock-free;
    /// not annotated @_noLocks only because the rare stale-id path may drop the last pin, and freeing
    /// takes the table's mutex.
    @inlinable
    public func pin(_ id: UInt64) -> PinnedNode? {
        let index = Int(UInt32(truncatingIfNeeded: id))
        let generation = UInt32(truncatingIfNeeded: id >> 32)
        guard index >= 1, index < capacity else { return nil }
        var current = pins[index].load(ordering: .acquiring)
        while true {
            guard current != 0 else { return nil }
            // The descriptor cache is closing this record's descriptor: a few instructions' wait.
            if current & Self.evictingBit != 0 {
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
        return PinnedNode(index: UInt32(index), fd: descriptors[index].load(ordering: .acquiring), kind: kinds[index])
    }

    /// Drops one pin; the last one closes the descriptor and frees the record.
    @inlinable
    public func unpin(_ index: UInt32) {
        let previous = pins[Int(index)].subtract(1, ordering: .acquiringAndReleasing).oldValue
        precondition(previous >= 1 && previous & Self.evictingBit == 0, "unpin of a free record")
        if previous == 1 { free(index) }
    }

    @usableFromInline
    func free(_ index: UInt32) {
        let position = Int(index)
        let fd = descriptors[position].exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { openDescriptors.subtract(1, ordering: .relaxed) }
        mutex.withLock {
            if infos[position].hashed { unhash(index) }
            generations[position].add(1, ordering: .releasing)
            reopenables[position] = false
            infos[position] = NodeInfo()
            freeList[freeCount] = index
            freeCount += 1
        }
        if fd >= 0 { _ = Glibc.close(fd) }
    }

    /// Takes a free record and publishes it with `fd` (caller holds the mutex).
    func occupy(fd: Int32, kind: UInt32) -> UInt32? {
        guard freeCount > 0 else { return nil }
        freeCount -= 1
        let index = freeList[freeCount]
        kinds[Int(index)] = kind
        descriptors[Int(index)].store(fd, ordering: .relaxed)
        return index
    }

    // MARK: - Handles (unkeyed)

    /// Adds a record for `fd` (ownership passes to the table). Nil when the table is full.
    public func insert(fd: Int32, kind: UInt32) -> UInt32? {
        precondition(hashCells == nil)
        return mutex.withLock { () -> UInt32? in
            guard let index = occupy(fd: fd, kind: kind) else { return nil }
            pins[Int(index)].store(1, ordering: .releasing)
            return index
        }
    }

    /// Drops the "alive" pin of a handle (RELEASE): freed once in-flight users are done. Returns
    /// false when `id` names no live record.
    public func remove(_ id: UInt64) -> Bool {
        guard let pinned = pin(id) else { return false }
        // Only the first RELEASE of an id may drop the alive pin.
        let dropAlive = mutex.withLock { () -> Bool in
            guard !infos[Int(pinned.index)].released else { return false }
            infos[Int(pinned.index)].released = true
            return true
        }
        if dropAlive { unpin(pinned.index) }
        unpin(pinned.index)
        return dropAlive
    }

    // MARK: - Inodes (keyed)

    /// Finds or adds the inode (device, inode, mount id) and counts one lookup. Takes ownership of
    /// `fd`: closed when the inode was already known. Nil when the table is full (fd closed).
    /// `handle`: the file handle `captureHandle` got for `fd`, so the descriptor cache may close the
    /// descriptor while the guest only remembers the inode.
    public func lookup(fd: Int32, kind: UInt32, device: UInt64, inode: UInt64, mountID: UInt64,
                       handle: UnsafeRawPointer? = nil) -> UInt32? {
        precondition(hashCells != nil)
        var duplicate = false
        let found = mutex.withLock { () -> UInt32? in
            if let index = find(device: device, inode: inode, mountID: mountID) {
                infos[Int(index)].lookups += 1
                duplicate = true
                return index
            }
            guard let index = occupy(fd: fd, kind: kind) else { return nil }
            let position = Int(index)
            openDescriptors.add(1, ordering: .relaxed)
            if let handle, let storage = fileHandles {
                (storage + position * Self.fileHandleStride).copyMemory(from: handle, byteCount: Self.fileHandleStride)
                reopenables[position] = true
            }
            infos[position] = NodeInfo(device: device, inode: inode, mountID: mountID, lookups: 1)
            hash(index)
            pins[position].store(1, ordering: .releasing)
            return index
        }
        if duplicate || found == nil { _ = Glibc.close(fd) }
        if openDescriptors.load(ordering: .relaxed) > descriptorsCachedMax { evictDescriptors() }
        return found
    }

    /// Counts one more lookup of an inode the table already holds, without touching `fd` (the
    /// caller closes it). Nil when the inode is not known: then `lookup` adds it.
    public func countLookup(device: UInt64, inode: UInt64, mountID: UInt64) -> UInt32? {
        precondition(hashCells != nil)
        return mutex.withLock { () -> UInt32? in
            guard let index = find(device: device, inode: inode, mountID: mountID) else { return nil }
            infos[Int(index)].lookups += 1
            return index
        }
    }

    // MARK: - The descriptor cache

    /// `struct file_handle` with MAX_HANDLE_SZ bytes of handle, per record.
    public static let fileHandleStride = 8 + 128
    @usableFromInline static let evictingBit: UInt32 = 1 << 31

    /// Fills `handle` (`fileHandleStride` bytes) with the file handle of `fd`. False when the file
    /// system has none (then the inode keeps its descriptor for as long as the guest knows it).
    public static func captureHandle(of fd: Int32, into handle: UnsafeMutableRawPointer) -> Bool {
        handle.storeBytes(of: UInt32(128), toByteOffset: 0, as: UInt32.self)
        var mountID: Int32 = 0
        // A static empty C string: a "" literal here would be bridged through a heap copy.
        return name_to_handle_at(fd, PassthroughBackend.emptyPath, handle.assumingMemoryBound(to: file_handle.self), &mountID, AT_EMPTY_PATH) == 0
    }

    /// The descriptor of a pinned inode whose descriptor the cache had closed: opened again from its
    /// file handle beneath `mountFD`, a real (not O_PATH) descriptor on the inode's mount (needs
    /// CAP_DAC_READ_SEARCH: call with the engine's credentials). -1 with errno set when the inode is
    /// gone from the host.
    public func reopen(_ node: PinnedNode, mountFD: Int32) -> Int32 {
        let position = Int(node.index)
        let current = descriptors[position].load(ordering: .acquiring)
        if current >= 0 { return current }
        guard reopenables[position], let storage = fileHandles else { Glibc.errno = EBADF; return -1 }
        let handle = (storage + position * Self.fileHandleStride).assumingMemoryBound(to: file_handle.self)
        let fd = Retry.onInterrupt { open_by_handle_at(mountFD, handle, O_PATH | O_CLOEXEC) }
        guard fd >= 0 else { return -1 }
        let (installed, winner) = descriptors[position].compareExchange(expected: -1, desired: fd, ordering: .acquiringAndReleasing)
        if !installed {
            _ = Glibc.close(fd)
            return winner
        }
        reopens.add(1, ordering: .relaxed)
        openDescriptors.add(1, ordering: .relaxed)
        return fd
    }

    /// Closes descriptors of inodes nobody uses right now (only their lookup count holds them) until
    /// three quarters of the cache is left, sweeping like a clock from where the last sweep stopped.
    func evictDescriptors() {
        var closed = 0
        mutex.withLock {
            let target = descriptorsCachedMax * 3 / 4
            var examined = 0
            while openDescriptors.load(ordering: .relaxed) - closed > target && examined < capacity {
                examined += 1
                clockHand = clockHand + 1 >= capacity ? 1 : clockHand + 1
                let position = clockHand
                guard reopenables[position], descriptors[position].load(ordering: .relaxed) >= 0 else { continue }
                // Only a record nobody uses (pins == 1: alive, no request) may lose its descriptor;
                // the evicting bit holds off new users for the few instructions this takes.
                let (evicting, _) = pins[position].compareExchange(expected: 1, desired: Self.evictingBit | 1, ordering: .acquiringAndReleasing)
                guard evicting else { continue }
                let fd = descriptors[position].exchange(-1, ordering: .acquiringAndReleasing)
                pins[position].store(1, ordering: .releasing)
                _ = Glibc.close(fd)
                closed += 1
            }
        }
        openDescriptors.subtract(closed, ordering: .relaxed)
        evictions.add(closed, ordering: .relaxed)
    }

    /// FORGET: drops `count` lookups of `id`; at zero the inode leaves the hash and is freed once
    /// in-flight users are done. Unknown ids and over-counts are ignored (a buggy guest's problem).
    public func forget(_ id: UInt64, count: UInt64) {
        guard let pinned = pin(id) else { return }
        let position = Int(pinned.index)
        let dropAlive = mutex.withLock { () -> Bool in
            guard infos[position].lookups > 0 else { return false }
            infos[position].lookups = count >= infos[position].lookups ? 0 : infos[position].lookups - count
            guard infos[position].lookups == 0 else { return false }
            // Out of the hash now: a LOOKUP racing with the last users gets a fresh record.
            unhash(pinned.index)
            return true
        }
        if dropAlive { unpin(pinned.index) }
        unpin(pinned.index)
    }

    /// Forgets every record (a new FUSE session: the kernel knows no inode of the old one).
    public func forgetAll() {
        for index in 1..<capacity {
            let id = self.id(of: UInt32(index))
            if hashCells != nil {
                forget(id, count: .max)
            } else {
                _ = remove(id)
            }
        }
    }

    func hashSlot(device: UInt64, inode: UInt64, mountID: UInt64) -> Int {
        var h = inode &* 0x9E37_79B9_7F4A_7C15
        h ^= device &* 0xC2B2_AE3D_27D4_EB4F
        h ^= mountID &* 0x1656_67B1_9E37_79F9
        h ^= h >> 29
        return Int(truncatingIfNeeded: h) & hashMask
    }

    func hashSlot(of index: UInt32) -> Int {
        let info = infos[Int(index)]
        return hashSlot(device: info.device, inode: info.inode, mountID: info.mountID)
    }

    func find(device: UInt64, inode: UInt64, mountID: UInt64) -> UInt32? {
        let cells = hashCells!
        var slot = hashSlot(device: device, inode: inode, mountID: mountID)
        while cells[slot] != 0 {
            let index = cells[slot] - 1
            let info = infos[Int(index)]
            if info.inode == inode && info.device == device && info.mountID == mountID { return index }
            slot = (slot + 1) & hashMask
        }
        return nil
    }

    func hash(_ index: UInt32) {
        let cells = hashCells!
        var slot = hashSlot(of: index)
        while cells[slot] != 0 { slot = (slot + 1) & hashMask }
        cells[slot] = index + 1
        infos[Int(index)].hashed = true
    }

    func unhash(_ index: UInt32) {
        let cells = hashCells!
        guard infos[Int(index)].hashed else { return }
        infos[Int(index)].hashed = false
        var slot = hashSlot(of: index)
        while cells[slot] != index + 1 {
            precondition(cells[slot] != 0, "hashed record missing from the hash")
            slot = (slot + 1) & hashMask
        }
        // Backward-shift deletion: move later members of the probe run into the hole.
        var hole = slot
        var next = (hole + 1) & hashMask
        while cells[next] != 0 {
            let home = hashSlot(of: cells[next] - 1)
            // Move `next` into the hole unless its home lies cyclically in (hole, next].
            let distanceHome = (next - home) & hashMask
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
