import Synchronization
import DPFSCore
import FUSEWire

// The device side of a virtio 1.2 split virtqueue (VSPEC §2.7; rust-vmm virtio-queue's job).
// Rings are read and written at explicit little-endian offsets; indexes that the other side
// publishes are read with acquire ordering and ours are published with release ordering.

/// Ring layout constants (include/uapi/linux/virtio_ring.h).
public enum VirtqueueLayout {
    public static let descriptorSize = 16
    public static let descriptorFlagNext: UInt16 = 1
    public static let descriptorFlagWrite: UInt16 = 2
    public static let descriptorFlagIndirect: UInt16 = 4
    public static let availFlagNoInterrupt: UInt16 = 1
    public static let usedFlagNoNotify: UInt16 = 1
    public static let queueSizeMax = 32768

    public static func descriptorTableBytes(size: Int) -> Int { descriptorSize * size }
    /// flags, idx, ring[size], used_event.
    public static func availRingBytes(size: Int) -> Int { 6 + 2 * size }
    /// flags, idx, ring[size] of {id, len}, avail_event.
    public static func usedRingBytes(size: Int) -> Int { 6 + 8 * size }
}

/// Why a queue was failed. The first reason is kept (and logged once by the owner).
public enum QueueFailure: UInt8, Sendable, CustomStringConvertible {
    case none = 0
    case availIndexJump
    case headOutOfRange
    case nextOutOfRange
    case chainTooLong
    case addressOutsideMemory
    case readableAfterWritable
    case indirectNotNegotiated
    case indirectNested
    case indirectWithNext
    case indirectBadLength
    case tooManySegments
    case requestTooLarge

    public var description: String {
        switch self {
        case .none: return "none"
        case .availIndexJump: return "avail index moved by more than the queue size"
        case .headOutOfRange: return "chain head outside the descriptor table"
        case .nextOutOfRange: return "descriptor next outside its table"
        case .chainTooLong: return "descriptor chain longer than its table (a loop)"
        case .addressOutsideMemory: return "buffer outside guest memory"
        case .readableAfterWritable: return "device-readable descriptor after a writable one"
        case .indirectNotNegotiated: return "indirect descriptor without VIRTIO_F_INDIRECT_DESC"
        case .indirectNested: return "indirect table inside an indirect table"
        case .indirectWithNext: return "indirect descriptor with NEXT set"
        case .indirectBadLength: return "indirect table length not a positive multiple of 16"
        case .tooManySegments: return "request spans more segments than a slot holds"
        case .requestTooLarge: return "request larger than the engine accepts"
        }
    }
}

/// Where the three rings of a queue are mapped locally.
@frozen
public struct SplitQueueAddresses: @unchecked Sendable {
    public let descriptors: UnsafeMutableRawPointer
    public let avail: UnsafeMutableRawPointer
    public let used: UnsafeMutableRawPointer

    public init(descriptors: UnsafeMutableRawPointer, avail: UnsafeMutableRawPointer, used: UnsafeMutableRawPointer) {
        precondition(Int(bitPattern: descriptors) % 16 == 0, "descriptor table must be 16-byte aligned")
        precondition(Int(bitPattern: avail) % 2 == 0, "avail ring must be 2-byte aligned")
        precondition(Int(bitPattern: used) % 4 == 0, "used ring must be 4-byte aligned")
        self.descriptors = descriptors
        self.avail = avail
        self.used = used
    }
}

/// The device side of one split virtqueue.
public struct SplitQueue: @unchecked Sendable {
    public let size: Int
    public let addresses: SplitQueueAddresses
    public var memory: GuestMemory
    public let eventIndex: Bool
    public let indirectDescriptors: Bool
    /// Bytes one request may total (both directions), beyond which the chain is refused.
    public let requestBytesMax: UInt64
    public var lastAvailIndex: UInt16 { _lastAvailIndex }
    @usableFromInline var _lastAvailIndex: UInt16
    public var nextUsedIndex: UInt16 { _nextUsedIndex }
    @usableFromInline var _nextUsedIndex: UInt16
    /// `used.idx` at the last notification decision (EVENT_IDX's old_used).
    public var usedIndexAtLastSignal: UInt16 { _usedIndexAtLastSignal }
    @usableFromInline var _usedIndexAtLastSignal: UInt16
    public var failure: QueueFailure { _failure }
    @usableFromInline var _failure: QueueFailure = .none

    public init(size: Int, addresses: SplitQueueAddresses, memory: GuestMemory, eventIndex: Bool,
                indirectDescriptors: Bool, nextAvailIndex: UInt16 = 0,
                requestBytesMax: UInt64 = UInt64(FUSELimits.requestBytesMax) * 2) {
        precondition(size > 0 && size <= VirtqueueLayout.queueSizeMax && size & (size - 1) == 0,
                     "queue size must be a power of two up to 32768")
        self.size = size
        self.addresses = addresses
        self.memory = memory
        self.eventIndex = eventIndex
        self.indirectDescriptors = indirectDescriptors
        self.requestBytesMax = requestBytesMax
        _lastAvailIndex = nextAvailIndex
        _nextUsedIndex = addresses.used.loadUnaligned(fromByteOffset: 2, as: UInt16.self).littleEndian
        _usedIndexAtLastSignal = _nextUsedIndex
    }

    @inlinable
    var availIndexAtomic: UnsafeMutablePointer<Atomic<UInt16>> {
        (addresses.avail + 2).assumingMemoryBound(to: Atomic<UInt16>.self)
    }

    @inlinable
    var usedIndexAtomic: UnsafeMutablePointer<Atomic<UInt16>> {
        (addresses.used + 2).assumingMemoryBound(to: Atomic<UInt16>.self)
    }

    public var isFailed: Bool { failure != .none }

    @usableFromInline
    mutating func fail(_ reason: QueueFailure) -> FetchResult {
        if _failure == .none { _failure = reason }
        return .failed
    }

    /// Requests the driver has made available and we have not taken.
    @inlinable
    @_noAllocation @_noLocks
    public func availableCount() -> Int {
        Int(UInt16(littleEndian: availIndexAtomic.pointee.load(ordering: .acquiring)) &- lastAvailIndex)
    }

    /// Takes the next chain and writes its segments, checked against guest memory, into `segments`.
    @inlinable
    @_noAllocation @_noLocks
    public mutating func pop(into segments: UnsafeMutablePointer<Segment>, capacity: Int) -> FetchResult {
        guard failure == .none else { return .failed }
        let availIndex = UInt16(littleEndian: availIndexAtomic.pointee.load(ordering: .acquiring))
        let pending = availIndex &- lastAvailIndex
        if pending == 0 { return .empty }
        guard Int(pending) <= size else { return fail(.availIndexJump) }
        let ringOffset = 4 + 2 * Int(lastAvailIndex & UInt16(size - 1))
        let head = UInt16(littleEndian: addresses.avail.loadUnaligned(fromByteOffset: ringOffset, as: UInt16.self))
        _lastAvailIndex &+= 1
        guard Int(head) < size else { return fail(.headOutOfRange) }
        return walkChain(head: head, into: segments, capacity: capacity)
    }

    @inlinable
    @_noAllocation @_noLocks
    mutating func walkChain(head: UInt16, into segments: UnsafeMutablePointer<Segment>, capacity: Int) -> FetchResult {
        var table = addresses.descriptors
        var tableSize = size
        var index = Int(head)
        var visited = 0
        var inIndirect = false
        var segmentCount = 0
        var readableCount = 0
        var readableBytes: UInt64 = 0
        var writableBytes: UInt64 = 0
        var sawWritable = false

        while true {
            visited += 1
            // A chain can never be longer than its table: anything longer is a loop.
            guard visited <= tableSize else { return fail(.chainTooLong) }
            let descriptor = table + index * VirtqueueLayout.descriptorSize
            let address = UInt64(littleEndian: descriptor.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
            let length = UInt32(littleEndian: descriptor.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let flags = UInt16(littleEndian: descriptor.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
            let next = UInt16(littleEndian: descriptor.loadUnaligned(fromByteOffset: 14, as: UInt16.self))

            if flags & VirtqueueLayout.descriptorFlagIndirect != 0 {
                guard indirectDescriptors else { return fail(.indirectNotNegotiated) }
                guard !inIndirect else { return fail(.indirectNested) }
                guard flags & VirtqueueLayout.descriptorFlagNext == 0 else { return fail(.indirectWithNext) }
                guard length > 0, length % UInt32(VirtqueueLayout.descriptorSize) == 0,
                      Int(length) / VirtqueueLayout.descriptorSize <= VirtqueueLayout.queueSizeMax
                else { return fail(.indirectBadLength) }
                guard let indirectTable = memory.translate(guestPhysical: address, length: UInt64(length)) else {
                    return fail(.addressOutsideMemory)
                }
                table = indirectTable
                tableSize = Int(length) / VirtqueueLayout.descriptorSize
                index = 0
                visited = 0
                inIndirect = true
                continue
            }

            let writable = flags & VirtqueueLayout.descriptorFlagWrite != 0
            if writable {
                sawWritable = true
                writableBytes &+= UInt64(length)
            } else {
                guard !sawWritable else { return fail(.readableAfterWritable) }
                readableBytes &+= UInt64(length)
            }
            guard readableBytes &+ writableBytes <= requestBytesMax else { return fail(.requestTooLarge) }

            // Translate, splitting where the buffer crosses from one region into the next.
            var remaining = UInt64(length)
            var cursor = address
            while remaining > 0 {
                guard cursor.addingReportingOverflow(remaining).overflow == false,
                      let (local, chunk) = memory.translatePrefix(guestPhysical: cursor, length: remaining)
                else { return fail(.addressOutsideMemory) }
                guard segmentCount < capacity else { return fail(.tooManySegments) }
                segments[segmentCount] = Segment(base: local, length: UInt32(chunk))
                segmentCount += 1
                if !writable { readableCount += 1 }
                remaining -= chunk
                cursor &+= chunk
            }

            guard flags & VirtqueueLayout.descriptorFlagNext != 0 else { break }
            guard Int(next) < tableSize else { return fail(.nextOutOfRange) }
            index = Int(next)
        }
        guard segmentCount <= Int(UInt16.max) else { return fail(.tooManySegments) }
        return .request(FetchedRequest(
            handle: UInt32(head), readableCount: UInt16(readableCount),
            writableCount: UInt16(segmentCount - readableCount),
            readableBytes: UInt32(readableBytes), writableBytes: UInt32(writableBytes)))
    }

    /// Places one used element; not visible to the driver until `publishUsed`.
    @inlinable
    @_noAllocation @_noLocks
    public mutating func addUsed(head: UInt32, bytesWritten: UInt32) {
        precondition(Int(head) < size)
        let offset = 4 + 8 * Int(nextUsedIndex & UInt16(size - 1))
        addresses.used.storeBytes(of: head.littleEndian, toByteOffset: offset, as: UInt32.self)
        addresses.used.storeBytes(of: bytesWritten.littleEndian, toByteOffset: offset + 4, as: UInt32.self)
        _nextUsedIndex &+= 1
    }

    /// Makes every used element added so far visible to the driver.
    @inlinable
    @_noAllocation @_noLocks
    public mutating func publishUsed() {
        usedIndexAtomic.pointee.store(nextUsedIndex.littleEndian, ordering: .releasing)
    }

    /// Whether the driver wants to be notified about what was published since the last decision
    /// (VSPEC 2.7.7/2.7.10: EVENT_IDX's used_event, else the NO_INTERRUPT flag).
    @inlinable
    @_noAllocation @_noLocks
    public mutating func needsNotification() -> Bool {
        // Our used.idx store must be visible before we read the driver's used_event / flags, or a
        // driver that just re-armed could be missed.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let newUsed = nextUsedIndex
        let oldUsed = usedIndexAtLastSignal
        _usedIndexAtLastSignal = newUsed
        if eventIndex {
            let usedEventOffset = 4 + 2 * size
            let usedEvent = UInt16(littleEndian: addresses.avail.loadUnaligned(fromByteOffset: usedEventOffset, as: UInt16.self))
            return (newUsed &- usedEvent &- 1) < (newUsed &- oldUsed)
        }
        let flags = UInt16(littleEndian: addresses.avail.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
        return newUsed != oldUsed && flags & VirtqueueLayout.availFlagNoInterrupt == 0
    }

    /// Tells the driver whether we want kicks: with EVENT_IDX by publishing avail_event, otherwise
    /// with the NO_NOTIFY flag. After enabling, the caller re-checks `availableCount` (a request
    /// may have arrived while kicks were off).
    @inlinable
    public mutating func setKicksWanted(_ wanted: Bool) {
        if eventIndex {
            if wanted {
                let availEventOffset = 4 + 8 * size
                addresses.used.storeBytes(of: lastAvailIndex.littleEndian, toByteOffset: availEventOffset, as: UInt16.self)
            }
        } else {
            let flags = UInt16(littleEndian: addresses.used.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
            let updated = wanted ? flags & ~VirtqueueLayout.usedFlagNoNotify : flags | VirtqueueLayout.usedFlagNoNotify
            addresses.used.storeBytes(of: updated.littleEndian, toByteOffset: 0, as: UInt16.self)
        }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }
}
