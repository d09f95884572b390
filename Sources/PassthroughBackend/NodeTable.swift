import BackendKit
import CDPFS
import DPFSPosix
import Glibc
import Synchronization

// The device's tables of inodes and open files, shared by the pollers of every queue (Specs/
// passthrough-tables.md says why this is race-free): BackendKit's PinnedTable, whose payload here
// is a descriptor per record. A record's descriptor is closed only when its last pin goes, so a
// hostile guest racing FORGET against READ on another queue can never make a request use a closed
// — or, worse, reused — descriptor number. On top of the shared table this adds the identity of
// an inode (device, inode, mount id) and the descriptor cache: an inode with a file handle may
// lose its descriptor while the guest only remembers it, and is re-opened from the handle.

/// An inode's identity on the host.
struct InodeIdentity {
    var device: UInt64 = 0
    var inode: UInt64 = 0
    var mountID: UInt64 = 0

    var keyHash: UInt64 {
        var h = inode &* 0x9E37_79B9_7F4A_7C15
        h ^= device &* 0xC2B2_AE3D_27D4_EB4F
        h ^= mountID &* 0x1656_67B1_9E37_79F9
        return h ^ (h >> 29)
    }
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

/// What each record holds besides the shared table's pin, generation and lookups. Each field is an
/// array of its own, so the lock-free readers (pin, reopen) and the writers under the mutex never
/// touch the same Swift variable.
public struct DescriptorRecords: PinnedRecordPayload {
    /// O_PATH descriptor (inodes) or open descriptor (handles); -1 while an inode with a file handle
    /// has none open (the descriptor cache closed it). Constant while any request holds a pin.
    @usableFromInline let descriptors: UnsafeMutablePointer<Atomic<Int32>>
    /// st_mode's file-type bits (inodes) or open flags (handles): written while the record is free,
    /// published by the release store of its first pin.
    @usableFromInline let kinds: UnsafeMutablePointer<UInt32>
    /// The inode has a file handle it can be re-opened by (written like `kinds`, under the mutex).
    let reopenables: UnsafeMutablePointer<Bool>
    /// Inodes only: identity (mutex-only) and file handles (`NodeTable.fileHandleStride` each).
    let identities: UnsafeMutablePointer<InodeIdentity>?
    let fileHandles: UnsafeMutableRawPointer?
    let openDescriptors: UnsafeMutablePointer<Atomic<Int>>

    init(capacity: Int, keyed: Bool) {
        descriptors = .allocate(capacity: capacity)
        for index in 0..<capacity { (descriptors + index).initialize(to: Atomic(-1)) }
        kinds = .allocate(capacity: capacity)
        kinds.initialize(repeating: 0, count: capacity)
        reopenables = .allocate(capacity: capacity)
        reopenables.initialize(repeating: false, count: capacity)
        openDescriptors = .allocate(capacity: 1)
        openDescriptors.initialize(to: Atomic(0))
        if keyed {
            let storage = UnsafeMutablePointer<InodeIdentity>.allocate(capacity: capacity)
            storage.initialize(repeating: InodeIdentity(), count: capacity)
            identities = storage
            fileHandles = .allocate(byteCount: capacity * NodeTable.fileHandleStride, alignment: 8)
        } else {
            identities = nil
            fileHandles = nil
        }
    }

    public func recordFreed(_ index: UInt32) {
        let fd = descriptors[Int(index)].exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 {
            openDescriptors.pointee.subtract(1, ordering: .relaxed)
            _ = Glibc.close(fd)
        }
    }

    public func deallocate() {
        descriptors.deallocate()
        kinds.deallocate()
        reopenables.deallocate()
        openDescriptors.deallocate()
        identities?.deallocate()
        fileHandles?.deallocate()
    }
}

/// A bounded table of descriptor records, optionally keyed by inode identity.
public final class NodeTable: @unchecked Sendable {
    @usableFromInline let records: PinnedTable<DescriptorRecords>
    public var capacity: Int { records.capacity }
    /// Inode descriptors open at most before the cache closes the idle ones (inodes with a file
    /// handle only).
    public let descriptorsCachedMax: Int
    /// Guarded by the table's mutex: where the descriptor cache's clock stopped.
    var clockHand = 0
    /// Descriptors the cache closed, and re-opened from file handles (for reports and tests).
    public let evictions = Atomic<Int>(0)
    public let reopens = Atomic<Int>(0)
    public var descriptorsOpen: Int { records.payload.openDescriptors.pointee.load(ordering: .relaxed) }

    /// Records in use (for reports and tests); index 0 is never issued.
    public var inUse: Int { records.inUse }

    /// - Parameters:
    ///   - capacity: records at most (index 0 is reserved: an id of 0 is never valid).
    ///   - keyed: whether records are found by (device, inode, mount id).
    public init(capacity: Int, keyed: Bool, descriptorsCachedMax: Int = .max) {
        precondition(capacity >= 2 && capacity <= 1 << 24)
        precondition(descriptorsCachedMax >= 16)
        self.descriptorsCachedMax = descriptorsCachedMax
        records = PinnedTable(capacity: capacity, keyed: keyed, payload: DescriptorRecords(capacity: capacity, keyed: keyed))
    }

    /// The id of a pinned record (what the guest gets as node id or file handle).
    @inlinable
    public func id(of index: UInt32) -> UInt64 { records.id(of: index) }

    /// Pins the record `id` names, or nil when it names none (never issued, freed, stale). Lock-free;
    /// not annotated @_noLocks only because the rare stale-id path may drop the last pin, and freeing
    /// takes the table's mutex.
    @inlinable
    public func pin(_ id: UInt64) -> PinnedNode? {
        guard let index = records.pin(id) else { return nil }
        let payload = records.payload
        return PinnedNode(index: index, fd: payload.descriptors[Int(index)].load(ordering: .acquiring),
                          kind: payload.kinds[Int(index)])
    }

    /// Drops one pin; the last one closes the descriptor and frees the record.
    @inlinable
    public func unpin(_ index: UInt32) { records.unpin(index) }

    /// Fills a free record with `fd` (caller holds the mutex).
    func occupy(fd: Int32, kind: UInt32) -> UInt32? {
        guard let index = records.takeFree() else { return nil }
        records.payload.kinds[Int(index)] = kind
        records.payload.reopenables[Int(index)] = false
        records.payload.descriptors[Int(index)].store(fd, ordering: .relaxed)
        records.payload.openDescriptors.pointee.add(1, ordering: .relaxed)
        return index
    }

    // MARK: - Handles (unkeyed)

    /// Adds a record for `fd` (ownership passes to the table). Nil when the table is full.
    public func insert(fd: Int32, kind: UInt32) -> UInt32? {
        records.withLock { () -> UInt32? in
            guard let index = occupy(fd: fd, kind: kind) else { return nil }
            records.publish(index)
            return index
        }
    }

    /// Drops the "alive" pin of a handle (RELEASE): freed once in-flight users are done. Returns
    /// false when `id` names no live record, or its RELEASE came already.
    public func remove(_ id: UInt64) -> Bool { records.forget(id, count: 1) }

    // MARK: - Inodes (keyed)

    /// Finds or adds the inode (device, inode, mount id) and counts one lookup. Takes ownership of
    /// `fd`: closed when the inode was already known. Nil when the table is full (fd closed).
    /// `handle`: the file handle `captureHandle` got for `fd`, so the descriptor cache may close the
    /// descriptor while the guest only remembers the inode.
    public func lookup(fd: Int32, kind: UInt32, device: UInt64, inode: UInt64, mountID: UInt64,
                       handle: UnsafeRawPointer? = nil) -> UInt32? {
        let identity = InodeIdentity(device: device, inode: inode, mountID: mountID)
        var duplicate = false
        let found = records.withLock { () -> UInt32? in
            if let index = find(identity) {
                records.countLookup(index)
                duplicate = true
                return index
            }
            guard let index = occupy(fd: fd, kind: kind) else { return nil }
            let position = Int(index)
            let payload = records.payload
            if let handle, let storage = payload.fileHandles {
                (storage + position * Self.fileHandleStride).copyMemory(from: handle, byteCount: Self.fileHandleStride)
                payload.reopenables[position] = true
            }
            payload.identities![position] = identity
            records.publish(index, keyHash: identity.keyHash)
            return index
        }
        if duplicate || found == nil { _ = Glibc.close(fd) }
        if descriptorsOpen > descriptorsCachedMax { evictDescriptors() }
        return found
    }

    /// Counts one more lookup of an inode the table already holds, without touching `fd` (the
    /// caller closes it). Nil when the inode is not known: then `lookup` adds it.
    public func countLookup(device: UInt64, inode: UInt64, mountID: UInt64) -> UInt32? {
        let identity = InodeIdentity(device: device, inode: inode, mountID: mountID)
        return records.withLock { () -> UInt32? in
            guard let index = find(identity) else { return nil }
            records.countLookup(index)
            return index
        }
    }

    /// The record of `identity` (mutex held).
    func find(_ identity: InodeIdentity) -> UInt32? {
        guard let identities = records.payload.identities else { preconditionFailure("inode lookup on a handle table") }
        return records.find(keyHash: identity.keyHash) { index in
            let known = identities[Int(index)]
            return known.inode == identity.inode && known.device == identity.device && known.mountID == identity.mountID
        }
    }

    /// FORGET: drops `count` lookups of `id`; at zero the inode leaves the hash and is freed once
    /// in-flight users are done. Unknown ids and over-counts are ignored (a buggy guest's problem).
    public func forget(_ id: UInt64, count: UInt64) { records.forget(id, count: count) }

    /// Forgets every record (a new FUSE session: the kernel knows no inode of the old one).
    public func forgetAll() { records.forgetAll() }

    // MARK: - The descriptor cache

    /// `struct file_handle` with MAX_HANDLE_SZ bytes of handle, per record.
    public static let fileHandleStride = 8 + 128

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
        let payload = records.payload
        let current = payload.descriptors[position].load(ordering: .acquiring)
        if current >= 0 { return current }
        guard payload.reopenables[position], let storage = payload.fileHandles else { Glibc.errno = EBADF; return -1 }
        let handle = (storage + position * Self.fileHandleStride).assumingMemoryBound(to: file_handle.self)
        let fd = Retry.onInterrupt { open_by_handle_at(mountFD, handle, O_PATH | O_CLOEXEC) }
        guard fd >= 0 else { return -1 }
        let (installed, winner) = payload.descriptors[position].compareExchange(expected: -1, desired: fd, ordering: .acquiringAndReleasing)
        if !installed {
            _ = Glibc.close(fd)
            return winner
        }
        reopens.add(1, ordering: .relaxed)
        payload.openDescriptors.pointee.add(1, ordering: .relaxed)
        return fd
    }

    /// Closes descriptors of inodes nobody uses right now (only their lookup count holds them) until
    /// three quarters of the cache is left, sweeping like a clock from where the last sweep stopped.
    func evictDescriptors() {
        var closed = 0
        let payload = records.payload
        records.withLock {
            let target = descriptorsCachedMax * 3 / 4
            var examined = 0
            while descriptorsOpen - closed > target && examined < capacity {
                examined += 1
                clockHand = clockHand + 1 >= capacity ? 1 : clockHand + 1
                let index = UInt32(clockHand)
                guard payload.reopenables[clockHand], payload.descriptors[clockHand].load(ordering: .relaxed) >= 0 else { continue }
                // Only a record nobody uses (alive, no request) may lose its descriptor; the busy
                // mark holds off new users for the few instructions this takes.
                guard records.markBusyIfIdle(index) else { continue }
                let fd = payload.descriptors[clockHand].exchange(-1, ordering: .acquiringAndReleasing)
                records.clearBusy(index)
                _ = Glibc.close(fd)
                closed += 1
            }
        }
        payload.openDescriptors.pointee.subtract(closed, ordering: .relaxed)
        evictions.add(closed, ordering: .relaxed)
    }
}
