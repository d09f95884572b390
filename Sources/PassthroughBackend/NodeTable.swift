import CDPFS
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

/// One record: a descriptor and what is known about it.
@usableFromInline
struct NodeRecord: ~Copyable {
    /// 0 = free; otherwise 1 (alive) + in-flight users.
    @usableFromInline let pins: Atomic<UInt32>
    /// Bumped each time the record is freed, so a stale id never reaches a reused record.
    @usableFromInline let generation: Atomic<UInt32>
    /// O_PATH descriptor (inodes) or open descriptor (handles); -1 while an inode with a file
    /// handle has none open (the descriptor cache closed it). Constant while any user holds a pin.
    @usableFromInline let descriptor: Atomic<Int32>
    /// The inode has a file handle (name_to_handle_at) it can be re-opened by, so its descriptor
    /// may be closed while the guest only remembers it.
    @usableFromInline var reopenable: Bool = false
    /// st_mode's file-type bits (inodes) or open flags (handles).
    @usableFromInline var kind: UInt32 = 0
    // Identity and lookup count: inodes only, read and written under the table's mutex.
    @usableFromInline var device: UInt64 = 0
    @usableFromInline var inode: UInt64 = 0
    @usableFromInline var mountID: UInt64 = 0
    @usableFromInline var lookups: UInt64 = 0
    @usableFromInline var hashed: Bool = false
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

/// st_mode's file-type bits (the C macros are visible twice, through Glibc and CDPFS).
public enum FileType {
    public static let mask: UInt32 = 0o170000
    public static let directory: UInt32 = 0o040000
    public static let regular: UInt32 = 0o100000
    public static let symlink: UInt32 = 0o120000
}

/// A bounded table of descriptor records, optionally keyed by inode identity.
public final class NodeTable: @unchecked Sendable {
    public let capacity: Int
    @usableFromInline let records: UnsafeMutablePointer<NodeRecord>
    /// Guards the free list, the identity hash and lookup counts.
    let mutex = Mutex<Void>(())
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

    /// Records in use (for reports and tests).
    public var inUse: Int { mutex.withLock { _ in capacity - 1 - freeCount } }   // index 0 is never issued

    /// - Parameters:
    ///   - capacity: records at most (index 0 is reserved: an id of 0 is never valid).
    ///   - keyed: whether records are found by (device, inode, mount id).
    public init(capacity: Int, keyed: Bool, descriptorsCachedMax: Int = .max) {
        precondition(capacity >= 2 && capacity <= 1 << 24)
        precondition(descriptorsCachedMax >= 16)
        self.capacity = capacity
        self.descriptorsCachedMax = descriptorsCachedMax
        records = .allocate(capacity: capacity)
        for index in 0..<capacity {
            (records + index).initialize(to: NodeRecord(pins: Atomic(0), generation: Atomic(1), descriptor: Atomic(-1)))
        }
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
            let fd = (records + index).pointee.descriptor.load(ordering: .relaxed)
            if fd >= 0 { _ = Glibc.close(fd) }
        }
        fileHandles?.deallocate()
        records.deinitialize(count: capacity)
        records.deallocate()
        freeList.deallocate()
        hashCells?.deallocate()
    }

    @inlinable
    static func id(index: UInt32, generation: UInt32) -> UInt64 { UInt64(generation) << 32 | UInt64(index) }

    /// The id of a pinned record (what the guest gets as node id or file handle).
    @inlinable
    public func id(of index: UInt32) -> UInt64 {
        Self.id(index: index, generation: (records + Int(index)).pointee.generation.load(ordering: .acquiring))
    }

    /// Pins the record `id` names, or nil when it names none (never issued, freed, stale). Lock-free;
    /// not annotated @_noLocks only because the rare stale-id path may drop the last pin, and freeing
    /// takes the table's mutex.
    @inlinable
    public func pin(_ id: UInt64) -> PinnedNode? {
        let index = Int(UInt32(truncatingIfNeeded: id))
        let generation = UInt32(truncatingIfNeeded: id >> 32)
        guard index >= 1, index < capacity else { return nil }
        let record = records + index
        var pins = record.pointee.pins.load(ordering: .acquiring)
        while true {
            guard pins != 0 else { return nil }
            // The descriptor cache is closing this record's descriptor: a few instructions' wait.
            if pins & Self.evictingBit != 0 {
                sched_yield()
                pins = record.pointee.pins.load(ordering: .acquiring)
                continue
            }
            let (exchanged, original) = record.pointee.pins.compareExchange(
                expected: pins, desired: pins &+ 1, ordering: .acquiringAndReleasing)
            if exchanged { break }
            pins = original
        }
        // Pinned: the record cannot be freed now; it may still be a newer occupant of the index.
        guard record.pointee.generation.load(ordering: .acquiring) == generation else {
            unpin(UInt32(index))
            return nil
        }
        return PinnedNode(index: UInt32(index), fd: record.pointee.descriptor.load(ordering: .acquiring), kind: record.pointee.kind)
    }

    /// Drops one pin; the last one closes the descriptor and frees the record.
    @inlinable
    public func unpin(_ index: UInt32) {
        let record = records + Int(index)
        let previous = record.pointee.pins.subtract(1, ordering: .acquiringAndReleasing).oldValue
        precondition(previous >= 1, "unpin of a free record")
        if previous == 1 { free(index) }
    }

    @usableFromInline
    func free(_ index: UInt32) {
        let record = records + Int(index)
        let fd = record.pointee.descriptor.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { openDescriptors.subtract(1, ordering: .relaxed) }
        mutex.withLock { _ in
            if record.pointee.hashed { unhash(index) }
            record.pointee.generation.add(1, ordering: .releasing)
            record.pointee.reopenable = false
            record.pointee.lookups = 0
            freeList[freeCount] = index
            freeCount += 1
        }
        if fd >= 0 { _ = Glibc.close(fd) }
    }

    // MARK: - Handles (unkeyed)

    /// Adds a record for `fd` (ownership passes to the table). Nil when the table is full.
    public func insert(fd: Int32, kind: UInt32) -> UInt32? {
        precondition(hashCells == nil)
        return mutex.withLock { _ -> UInt32? in
            guard freeCount > 0 else { return nil }
            freeCount -= 1
            let index = freeList[freeCount]
            let record = records + Int(index)
            record.pointee.descriptor.store(fd, ordering: .relaxed)
            record.pointee.kind = kind
            record.pointee.pins.store(1, ordering: .releasing)
            return index
        }
    }

    /// Drops the "alive" pin of a handle (RELEASE): freed once in-flight users are done. Returns
    /// false when `id` names no live record.
    public func remove(_ id: UInt64) -> Bool {
        guard let pinned = pin(id) else { return false }
        // Only the first RELEASE of an id may drop the alive pin: generation is re-checked under
        // the mutex together with a "released" mark (kind's top bit).
        let dropAlive = mutex.withLock { _ -> Bool in
            let record = records + Int(pinned.index)
            guard record.pointee.kind & NodeTable.releasedBit == 0 else { return false }
            record.pointee.kind |= NodeTable.releasedBit
            return true
        }
        if dropAlive { unpin(pinned.index) }
        unpin(pinned.index)
        return dropAlive
    }

    static let releasedBit: UInt32 = 1 << 31

    // MARK: - Inodes (keyed)

    /// Finds or adds the inode (device, inode, mount id) and counts one lookup. Takes ownership of
    /// `fd`: closed when the inode was already known. Nil when the table is full (fd closed).
    /// `reopenable`: the file system gave a file handle for `fd` (`captureHandle`), so the
    /// descriptor cache may close the descriptor while the guest only remembers the inode.
    public func lookup(fd: Int32, kind: UInt32, device: UInt64, inode: UInt64, mountID: UInt64,
                       handle: UnsafeRawPointer? = nil) -> UInt32? {
        precondition(hashCells != nil)
        var duplicate = false
        let found = mutex.withLock { _ -> UInt32? in
            if let index = find(device: device, inode: inode, mountID: mountID) {
                (records + Int(index)).pointee.lookups += 1
                duplicate = true
                return index
            }
            guard freeCount > 0 else { return nil }
            freeCount -= 1
            let index = freeList[freeCount]
            let record = records + Int(index)
            record.pointee.descriptor.store(fd, ordering: .relaxed)
            openDescriptors.add(1, ordering: .relaxed)
            record.pointee.kind = kind
            if let handle, let storage = fileHandles {
                (storage + Int(index) * Self.fileHandleStride).copyMemory(from: handle, byteCount: Self.fileHandleStride)
                record.pointee.reopenable = true
            }
            record.pointee.device = device
            record.pointee.inode = inode
            record.pointee.mountID = mountID
            record.pointee.lookups = 1
            hash(index)
            record.pointee.pins.store(1, ordering: .releasing)
            return index
        }
        if duplicate || found == nil { _ = Glibc.close(fd) }
        if openDescriptors.load(ordering: .relaxed) > descriptorsCachedMax { evictDescriptors() }
        return found
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
    /// CAP_DAC_READ_SEARCH: call with the engine's credentials).
    /// -1 with errno set when the inode is gone from the host.
    public func reopen(_ node: PinnedNode, mountFD: Int32) -> Int32 {
        let record = records + Int(node.index)
        let current = record.pointee.descriptor.load(ordering: .acquiring)
        if current >= 0 { return current }
        guard record.pointee.reopenable, let storage = fileHandles else { Glibc.errno = EBADF; return -1 }
        let handle = (storage + Int(node.index) * Self.fileHandleStride).assumingMemoryBound(to: file_handle.self)
        var fd: Int32
        repeat { fd = open_by_handle_at(mountFD, handle, O_PATH | O_CLOEXEC) } while fd < 0 && Glibc.errno == EINTR
        guard fd >= 0 else { return -1 }
        let (installed, winner) = record.pointee.descriptor.compareExchange(expected: -1, desired: fd, ordering: .acquiringAndReleasing)
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
        mutex.withLock { _ in
            let target = descriptorsCachedMax * 3 / 4
            var examined = 0
            while openDescriptors.load(ordering: .relaxed) - closed > target && examined < capacity {
                examined += 1
                clockHand = clockHand + 1 >= capacity ? 1 : clockHand + 1
                let record = records + clockHand
                guard record.pointee.reopenable, record.pointee.descriptor.load(ordering: .relaxed) >= 0 else { continue }
                // Only a record nobody uses (pins == 1: alive, no request) may lose its descriptor;
                // the evicting bit holds off new users for the few instructions this takes.
                let (evicting, _) = record.pointee.pins.compareExchange(expected: 1, desired: Self.evictingBit | 1, ordering: .acquiringAndReleasing)
                guard evicting else { continue }
                let fd = record.pointee.descriptor.exchange(-1, ordering: .acquiringAndReleasing)
                record.pointee.pins.store(1, ordering: .releasing)
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
        let dropAlive = mutex.withLock { _ -> Bool in
            let record = records + Int(pinned.index)
            guard record.pointee.lookups > 0 else { return false }
            record.pointee.lookups = count >= record.pointee.lookups ? 0 : record.pointee.lookups - count
            guard record.pointee.lookups == 0 else { return false }
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

    func find(device: UInt64, inode: UInt64, mountID: UInt64) -> UInt32? {
        let cells = hashCells!
        var slot = hashSlot(device: device, inode: inode, mountID: mountID)
        while cells[slot] != 0 {
            let index = cells[slot] - 1
            let record = records + Int(index)
            if record.pointee.inode == inode && record.pointee.device == device && record.pointee.mountID == mountID {
                return index
            }
            slot = (slot + 1) & hashMask
        }
        return nil
    }

    func hash(_ index: UInt32) {
        let cells = hashCells!
        let record = records + Int(index)
        var slot = hashSlot(device: record.pointee.device, inode: record.pointee.inode, mountID: record.pointee.mountID)
        while cells[slot] != 0 { slot = (slot + 1) & hashMask }
        cells[slot] = index + 1
        record.pointee.hashed = true
    }

    func unhash(_ index: UInt32) {
        let cells = hashCells!
        let record = records + Int(index)
        guard record.pointee.hashed else { return }
        record.pointee.hashed = false
        var slot = hashSlot(device: record.pointee.device, inode: record.pointee.inode, mountID: record.pointee.mountID)
        while cells[slot] != index + 1 {
            precondition(cells[slot] != 0, "hashed record missing from the hash")
            slot = (slot + 1) & hashMask
        }
        // Backward-shift deletion: move later members of the probe run into the hole.
        var hole = slot
        var next = (hole + 1) & hashMask
        while cells[next] != 0 {
            let other = records + Int(cells[next] - 1)
            let home = hashSlot(device: other.pointee.device, inode: other.pointee.inode, mountID: other.pointee.mountID)
            // Move `next` into the hole if its home is not in (hole, next] cyclically.
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
