import Synchronization
import DPFSCore
import FUSEWire
import Virtio

// The driver side of the in-process transport: it lays out a split virtqueue exactly as a virtio 1.2
// driver does (descriptor table, avail ring with used_event, used ring with avail_event) inside a
// region of "guest" memory addressed by guest-physical addresses, and submits FUSE requests into it.
// It runs on its own thread; after start-up it allocates nothing.

/// How a request's bytes are cut into descriptors.
@frozen
public enum Segmentation {
    /// One descriptor per direction.
    case single
    /// As Linux's virtio-fs does: in = header | arguments | 4 KiB pages from `payloadOffset`;
    /// out = out header | the rest in 4 KiB pages.
    case linux(payloadOffset: Int)
    /// Explicit cut offsets (ascending, inside the buffer), for oddly segmented tests.
    case cuts(readable: UnsafeBufferPointer<Int>, writable: UnsafeBufferPointer<Int>)
}

public struct LoopbackDriverConfiguration: Sendable {
    public var queueSize: Int
    /// Requests in flight at most.
    public var requestSlots: Int
    public var readableBufferBytes: Int
    public var writableBufferBytes: Int
    /// Descriptors one request may use (per direction together), and the indirect table size.
    public var descriptorsPerRequestMax: Int
    public var eventIndex: Bool
    public var indirectDescriptors: Bool
    /// Guest-physical address of the region's first byte. Not zero, so no code can confuse a GPA
    /// with an offset.
    public var guestPhysicalBase: UInt64

    public init(queueSize: Int = 256, requestSlots: Int = 128, readableBufferBytes: Int = 8192,
                writableBufferBytes: Int = 8192, descriptorsPerRequestMax: Int = 16, eventIndex: Bool = true,
                indirectDescriptors: Bool = true, guestPhysicalBase: UInt64 = 0x4000_0000) {
        precondition(queueSize > 0 && queueSize & (queueSize - 1) == 0 && queueSize <= VirtqueueLayout.queueSizeMax)
        precondition(requestSlots > 0 && requestSlots <= queueSize)
        precondition(descriptorsPerRequestMax >= 2 && descriptorsPerRequestMax <= queueSize)
        precondition(readableBufferBytes >= 64 && writableBufferBytes >= 16)
        self.queueSize = queueSize
        self.requestSlots = requestSlots
        self.readableBufferBytes = (readableBufferBytes + 63) & ~63
        self.writableBufferBytes = (writableBufferBytes + 63) & ~63
        self.descriptorsPerRequestMax = descriptorsPerRequestMax
        self.eventIndex = eventIndex
        self.indirectDescriptors = indirectDescriptors
        self.guestPhysicalBase = guestPhysicalBase
    }

    // Region layout, in order: descriptor table, avail ring, used ring, indirect tables,
    // readable buffers, writable buffers. Offsets are aligned as virtio requires (and to 64).
    var descriptorOffset: Int { 0 }
    var availOffset: Int { align(descriptorOffset + VirtqueueLayout.descriptorTableBytes(size: queueSize)) }
    var usedOffset: Int { align(availOffset + VirtqueueLayout.availRingBytes(size: queueSize)) }
    var indirectOffset: Int { align(usedOffset + VirtqueueLayout.usedRingBytes(size: queueSize)) }
    var indirectStride: Int { align(descriptorsPerRequestMax * VirtqueueLayout.descriptorSize) }
    var readableOffset: Int { indirectOffset + indirectStride * requestSlots }
    var writableOffset: Int { readableOffset + readableBufferBytes * requestSlots }

    /// Bytes of guest memory the queue and its buffers take.
    public var regionBytes: Int { align(writableOffset + writableBufferBytes * requestSlots, 4096) }

    /// Bytes of driver-private bookkeeping.
    public var bookkeepingBytes: Int { 8 * (3 * queueSize + 3 * requestSlots) + 256 }

    func align(_ value: Int, _ alignment: Int = 64) -> Int { (value + alignment - 1) & ~(alignment - 1) }
}

/// The in-process virtio driver.
public struct LoopbackDriver: @unchecked Sendable {
    public let configuration: LoopbackDriverConfiguration
    public let region: UnsafeMutableRawPointer
    let descriptors: UnsafeMutableRawPointer
    let avail: UnsafeMutableRawPointer
    let used: UnsafeMutableRawPointer

    // Bookkeeping (driver-private memory, carved at start-up).
    let freeDescriptors: UnsafeMutablePointer<UInt16>
    var freeDescriptorCount: Int
    let chainLength: UnsafeMutablePointer<UInt16>      // per head: descriptors used
    let slotOfHead: UnsafeMutablePointer<UInt16>       // per head: request slot
    let freeSlots: UnsafeMutablePointer<UInt16>
    var freeSlotCount: Int
    let slotInFlight: UnsafeMutablePointer<UInt8>

    var availIndex: UInt16 = 0
    var lastUsedIndex: UInt16 = 0
    /// avail.idx at the last kick decision (EVENT_IDX's old index).
    var availIndexAtLastKick: UInt16 = 0
    public private(set) var kicks: UInt64 = 0
    public private(set) var submitted: UInt64 = 0
    public private(set) var reaped: UInt64 = 0

    /// Lays out the queue in `region` (`configuration.regionBytes`, zeroed, 4096-aligned) with
    /// bookkeeping in `bookkeeping` (`configuration.bookkeepingBytes`).
    public init(configuration: LoopbackDriverConfiguration, region: UnsafeMutableRawPointer,
                bookkeeping: UnsafeMutableRawPointer) {
        precondition(Int(bitPattern: region) % 4096 == 0)
        let c = configuration
        self.configuration = c
        self.region = region
        region.initializeMemory(as: UInt8.self, repeating: 0, count: c.regionBytes)
        descriptors = region + c.descriptorOffset
        avail = region + c.availOffset
        used = region + c.usedOffset
        var cursor = bookkeeping
        func take<T>(_ type: T.Type, _ count: Int) -> UnsafeMutablePointer<T> {
            let pointer = cursor.bindMemory(to: T.self, capacity: count)
            cursor += (MemoryLayout<T>.stride * count + 7) & ~7
            return pointer
        }
        freeDescriptors = take(UInt16.self, c.queueSize)
        chainLength = take(UInt16.self, c.queueSize)
        slotOfHead = take(UInt16.self, c.queueSize)
        freeSlots = take(UInt16.self, c.requestSlots)
        slotInFlight = take(UInt8.self, c.requestSlots)
        precondition(cursor - bookkeeping <= c.bookkeepingBytes)
        for index in 0..<c.queueSize { freeDescriptors[index] = UInt16(c.queueSize - 1 - index) }
        freeDescriptorCount = c.queueSize
        for index in 0..<c.requestSlots {
            freeSlots[index] = UInt16(c.requestSlots - 1 - index)
            slotInFlight[index] = 0
        }
        freeSlotCount = c.requestSlots
    }

    /// The guest memory map the device side needs to serve this queue.
    public var guestMemoryRegion: GuestMemoryRegion {
        GuestMemoryRegion(guestPhysicalAddress: configuration.guestPhysicalBase,
                          sizeBytes: UInt64(configuration.regionBytes),
                          frontendVirtualAddress: UInt64(UInt(bitPattern: region)), local: region)
    }

    public var queueAddresses: SplitQueueAddresses {
        SplitQueueAddresses(descriptors: descriptors, avail: avail, used: used)
    }

    @inlinable
    public func guestPhysical(_ pointer: UnsafeMutableRawPointer) -> UInt64 {
        configuration.guestPhysicalBase + UInt64(pointer - region)
    }

    public var inFlight: Int { configuration.requestSlots - freeSlotCount }

    public func readableBuffer(_ slot: Int) -> UnsafeMutableRawPointer {
        precondition(slot >= 0 && slot < configuration.requestSlots)
        return region + configuration.readableOffset + slot * configuration.readableBufferBytes
    }

    public func writableBuffer(_ slot: Int) -> UnsafeMutableRawPointer {
        precondition(slot >= 0 && slot < configuration.requestSlots)
        return region + configuration.writableOffset + slot * configuration.writableBufferBytes
    }

    func indirectTable(_ slot: Int) -> UnsafeMutableRawPointer {
        region + configuration.indirectOffset + slot * configuration.indirectStride
    }

    /// A free request slot, or nil when every slot is in flight.
    public mutating func acquireSlot() -> Int? {
        guard freeSlotCount > 0 else { return nil }
        freeSlotCount -= 1
        let slot = Int(freeSlots[freeSlotCount])
        precondition(slotInFlight[slot] == 0)
        slotInFlight[slot] = 1
        return slot
    }

    /// Gives a slot back (after `reap`, or when a submit was refused).
    public mutating func releaseSlot(_ slot: Int) {
        precondition(slot >= 0 && slot < configuration.requestSlots && slotInFlight[slot] == 1)
        slotInFlight[slot] = 0
        freeSlots[freeSlotCount] = UInt16(slot)
        freeSlotCount += 1
    }

    // MARK: - Submitting

    func nextCut(after position: Int, total: Int, segmentation: Segmentation, readable: Bool) -> Int {
        switch segmentation {
        case .single:
            return total
        case .linux(let payloadOffset):
            if readable {
                if position < InHeaderLayout.size { return min(InHeaderLayout.size, total) }
                if position < payloadOffset { return min(payloadOffset, total) }
                return min(position + 4096 - (position - payloadOffset) % 4096, total)
            }
            if position < OutHeaderLayout.size { return min(OutHeaderLayout.size, total) }
            return min(position + 4096, total)
        case .cuts(let readableCuts, let writableCuts):
            for cut in readable ? readableCuts : writableCuts where cut > position && cut < total { return cut }
            return total
        }
    }

    func descriptorCount(readableBytes: Int, writableBytes: Int, segmentation: Segmentation) -> Int {
        var count = 0
        var position = 0
        while position < readableBytes {
            position = nextCut(after: position, total: readableBytes, segmentation: segmentation, readable: true)
            count += 1
        }
        position = 0
        while position < writableBytes {
            position = nextCut(after: position, total: writableBytes, segmentation: segmentation, readable: false)
            count += 1
        }
        return count
    }

    /// Makes request slot `slot` available to the device: `readableBytes` from its readable buffer
    /// and `writableBytes` of its writable buffer, cut as `segmentation` says; with `indirect`, the
    /// chain sits in an indirect table behind one ring descriptor. Returns false when the queue has
    /// no room (the slot stays acquired).
    public mutating func submit(slot: Int, readableBytes: Int, writableBytes: Int,
                                segmentation: Segmentation = .single, indirect: Bool = false) -> Bool {
        precondition(slot >= 0 && slot < configuration.requestSlots && slotInFlight[slot] == 1)
        precondition(readableBytes >= 0 && readableBytes <= configuration.readableBufferBytes)
        precondition(writableBytes >= 0 && writableBytes <= configuration.writableBufferBytes)
        let count = descriptorCount(readableBytes: readableBytes, writableBytes: writableBytes, segmentation: segmentation)
        precondition(count > 0 && count <= configuration.descriptorsPerRequestMax, "request needs too many descriptors")
        precondition(!indirect || configuration.indirectDescriptors)
        let ringDescriptors = indirect ? 1 : count
        guard freeDescriptorCount >= ringDescriptors else { return false }

        let head: UInt16
        if indirect {
            freeDescriptorCount -= 1
            head = freeDescriptors[freeDescriptorCount]
            let table = indirectTable(slot)
            fillChain(table: table, indices: nil, readableBytes: readableBytes, writableBytes: writableBytes,
                      slot: slot, segmentation: segmentation)
            writeDescriptor(descriptors, index: Int(head), address: guestPhysical(table),
                            length: UInt32(count * VirtqueueLayout.descriptorSize),
                            flags: VirtqueueLayout.descriptorFlagIndirect, next: 0)
        } else {
            head = freeDescriptors[freeDescriptorCount - 1]
            fillChain(table: descriptors, indices: freeDescriptors + (freeDescriptorCount - count),
                      readableBytes: readableBytes, writableBytes: writableBytes, slot: slot, segmentation: segmentation)
            freeDescriptorCount -= count
        }
        chainLength[Int(head)] = UInt16(ringDescriptors)
        slotOfHead[Int(head)] = UInt16(slot)

        let ringOffset = 4 + 2 * Int(availIndex & UInt16(configuration.queueSize - 1))
        avail.storeBytes(of: head.littleEndian, toByteOffset: ringOffset, as: UInt16.self)
        availIndex &+= 1
        // Descriptors and the ring entry must be visible before the new index.
        (avail + 2).assumingMemoryBound(to: Atomic<UInt16>.self).pointee.store(availIndex.littleEndian, ordering: .releasing)
        submitted += 1
        return true
    }

    /// Writes the chain's descriptors. `indices` lists table positions to use (taken from the top of
    /// the free stack, so position count-1 is the head); nil means 0, 1, 2… in an indirect table.
    mutating func fillChain(table: UnsafeMutableRawPointer, indices: UnsafeMutablePointer<UInt16>?,
                            readableBytes: Int, writableBytes: Int, slot: Int, segmentation: Segmentation) {
        let count = descriptorCount(readableBytes: readableBytes, writableBytes: writableBytes, segmentation: segmentation)
        func index(_ n: Int) -> Int { indices.map { Int($0[count - 1 - n]) } ?? n }
        var n = 0
        for pass in 0..<2 {
            let readable = pass == 0
            let total = readable ? readableBytes : writableBytes
            let buffer = readable ? readableBuffer(slot) : writableBuffer(slot)
            var position = 0
            while position < total {
                let cut = nextCut(after: position, total: total, segmentation: segmentation, readable: readable)
                var flags: UInt16 = readable ? 0 : VirtqueueLayout.descriptorFlagWrite
                let isLast = n == count - 1
                if !isLast { flags |= VirtqueueLayout.descriptorFlagNext }
                writeDescriptor(table, index: index(n), address: guestPhysical(buffer + position),
                                length: UInt32(cut - position), flags: flags, next: isLast ? 0 : UInt16(index(n + 1)))
                position = cut
                n += 1
            }
        }
    }

    func writeDescriptor(_ table: UnsafeMutableRawPointer, index: Int, address: UInt64, length: UInt32,
                         flags: UInt16, next: UInt16) {
        let d = table + index * VirtqueueLayout.descriptorSize
        d.storeBytes(of: address.littleEndian, toByteOffset: 0, as: UInt64.self)
        d.storeBytes(of: length.littleEndian, toByteOffset: 8, as: UInt32.self)
        d.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt16.self)
        d.storeBytes(of: next.littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    /// Whether the device asked to be kicked for what was submitted since the last call
    /// (EVENT_IDX's avail_event, else the used ring's NO_NOTIFY flag). Counts kicks.
    public mutating func kickNeeded() -> Bool {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let newIndex = availIndex
        let oldIndex = availIndexAtLastKick
        availIndexAtLastKick = newIndex
        let needed: Bool
        if configuration.eventIndex {
            let availEvent = UInt16(littleEndian: used.loadUnaligned(fromByteOffset: 4 + 8 * configuration.queueSize, as: UInt16.self))
            needed = (newIndex &- availEvent &- 1) < (newIndex &- oldIndex)
        } else {
            let flags = UInt16(littleEndian: used.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
            needed = newIndex != oldIndex && flags & VirtqueueLayout.usedFlagNoNotify == 0
        }
        if needed { kicks += 1 }
        return needed
    }

    // MARK: - Reaping

    /// The next completed request: its slot and the used length the device reported. The slot
    /// stays acquired so the caller can read the reply; `releaseSlot` gives it back.
    public mutating func reap() -> (slot: Int, usedLength: UInt32)? {
        let usedIndex = UInt16(littleEndian: (used + 2).assumingMemoryBound(to: Atomic<UInt16>.self).pointee.load(ordering: .acquiring))
        guard usedIndex != lastUsedIndex else { return nil }
        let offset = 4 + 8 * Int(lastUsedIndex & UInt16(configuration.queueSize - 1))
        let head = Int(UInt32(littleEndian: used.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
        let length = UInt32(littleEndian: used.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))
        lastUsedIndex &+= 1
        precondition(head < configuration.queueSize && chainLength[head] > 0, "device returned a head it was never given")
        // Return the chain's ring descriptors to the free stack, following next links.
        var index = head
        let count = Int(chainLength[head])
        chainLength[head] = 0
        for position in 0..<count {
            freeDescriptors[freeDescriptorCount] = UInt16(index)
            freeDescriptorCount += 1
            if position + 1 < count {
                index = Int(UInt16(littleEndian: descriptors.loadUnaligned(fromByteOffset: index * 16 + 14, as: UInt16.self)))
            }
        }
        if configuration.eventIndex {
            // used_event: interrupt us once the device has used past what we reaped.
            avail.storeBytes(of: lastUsedIndex.littleEndian, toByteOffset: 4 + 2 * configuration.queueSize, as: UInt16.self)
        }
        reaped += 1
        return (Int(slotOfHead[head]), length)
    }
}
