import DPFSCore
import FUSEWire
import Testing
import Virtio

/// A split queue laid out by hand in test memory, so each test can write exactly the descriptors a
/// hostile driver would.
final class HandmadeQueue {
    static let size = 8
    static let guestBase: UInt64 = 0x8000_0000
    let memoryBytes = 1 << 16
    let memory: UnsafeMutableRawPointer
    let regionStorage = UnsafeMutablePointer<GuestMemoryRegion>.allocate(capacity: GuestMemory.regionsMax)
    var guestMemory: GuestMemory
    var availIndex: UInt16 = 0
    let descriptors: UnsafeMutableRawPointer
    let avail: UnsafeMutableRawPointer
    let used: UnsafeMutableRawPointer
    /// Where buffers may go (inside guest memory), as a guest-physical address.
    var bufferGPA: UInt64 { Self.guestBase + 4096 }

    init() {
        memory = UnsafeMutableRawPointer.allocate(byteCount: memoryBytes, alignment: 4096)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: memoryBytes)
        guestMemory = GuestMemory(storage: regionStorage)
        _ = guestMemory.add(GuestMemoryRegion(guestPhysicalAddress: Self.guestBase, sizeBytes: UInt64(memoryBytes),
                                              frontendVirtualAddress: 0x7000_0000, local: memory))
        descriptors = memory
        avail = memory + 512
        used = memory + 1024
    }

    deinit {
        memory.deallocate()
        regionStorage.deallocate()
    }

    func local(_ gpa: UInt64) -> UnsafeMutableRawPointer { memory + Int(gpa - Self.guestBase) }

    func descriptor(_ index: Int, in table: UnsafeMutableRawPointer? = nil, address: UInt64, length: UInt32,
                    flags: UInt16 = 0, next: UInt16 = 0) {
        let d = (table ?? descriptors) + 16 * index
        d.storeBytes(of: address.littleEndian, toByteOffset: 0, as: UInt64.self)
        d.storeBytes(of: length.littleEndian, toByteOffset: 8, as: UInt32.self)
        d.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt16.self)
        d.storeBytes(of: next.littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    func makeAvailable(head: UInt16) {
        avail.storeBytes(of: head.littleEndian, toByteOffset: 4 + 2 * Int(availIndex % UInt16(Self.size)), as: UInt16.self)
        availIndex &+= 1
        avail.storeBytes(of: availIndex.littleEndian, toByteOffset: 2, as: UInt16.self)
    }

    func queue(indirect: Bool = true, eventIndex: Bool = true) -> SplitQueue {
        SplitQueue(size: Self.size, addresses: SplitQueueAddresses(descriptors: descriptors, avail: avail, used: used),
                   memory: guestMemory, eventIndex: eventIndex, indirectDescriptors: indirect)
    }

    /// Pops once with room for `capacity` segments.
    func pop(_ queue: inout SplitQueue, capacity: Int = 16) -> (FetchResult, [Segment]) {
        let segments = UnsafeMutablePointer<Segment>.allocate(capacity: capacity)
        defer { segments.deallocate() }
        let result = queue.pop(into: segments, capacity: capacity)
        var list: [Segment] = []
        if case .request(let request) = result {
            for index in 0..<Int(request.readableCount + request.writableCount) { list.append(segments[index]) }
        }
        return (result, list)
    }
}

/// Asks for a notification decision (a mutating call, which #expect cannot wrap directly).
func notify(_ queue: inout SplitQueue) -> Bool { queue.needsNotification() }

@Suite struct VirtqueueTests {
    @Test("a well-formed chain yields its readable and writable segments, translated")
    func wellFormedChain() {
        let q = HandmadeQueue()
        q.descriptor(0, address: q.bufferGPA, length: 40, flags: VirtqueueLayout.descriptorFlagNext, next: 3)
        q.descriptor(3, address: q.bufferGPA + 40, length: 24, flags: VirtqueueLayout.descriptorFlagNext, next: 5)
        q.descriptor(5, address: q.bufferGPA + 256, length: 16, flags: VirtqueueLayout.descriptorFlagWrite)
        q.makeAvailable(head: 0)
        var queue = q.queue()
        let (result, segments) = q.pop(&queue)
        #expect(result == .request(FetchedRequest(handle: 0, readableCount: 2, writableCount: 1, readableBytes: 64, writableBytes: 16)))
        #expect(segments.map(\.base) == [q.local(q.bufferGPA), q.local(q.bufferGPA + 40), q.local(q.bufferGPA + 256)])
        #expect(q.pop(&queue).0 == .empty)
        #expect(!queue.isFailed)
    }

    /// Each hostile ring below must fail the queue (and only fail it: no crash, no access outside
    /// the region, which AddressSanitizer would report).
    func expectFailure(_ expected: QueueFailure, indirect: Bool = true, capacity: Int = 16,
                       build: (HandmadeQueue) -> Void) {
        let q = HandmadeQueue()
        build(q)
        var queue = q.queue(indirect: indirect)
        let (result, _) = q.pop(&queue, capacity: capacity)
        #expect(result == .failed)
        #expect(queue.failure == expected, "failed with \(queue.failure), expected \(expected)")
        // A failed queue stays failed: nothing more is served until it is reset.
        q.descriptor(1, address: q.bufferGPA, length: 8)
        q.makeAvailable(head: 1)
        #expect(q.pop(&queue).0 == .failed)
    }

    @Test func headOutOfRange() {
        expectFailure(.headOutOfRange) { $0.makeAvailable(head: UInt16(HandmadeQueue.size)) }
    }

    @Test func nextOutOfRange() {
        expectFailure(.nextOutOfRange) { q in
            q.descriptor(0, address: q.bufferGPA, length: 8, flags: VirtqueueLayout.descriptorFlagNext, next: 200)
            q.makeAvailable(head: 0)
        }
    }

    @Test("a chain that loops is stopped after at most queue-size descriptors")
    func chainLoop() {
        expectFailure(.chainTooLong) { q in
            q.descriptor(0, address: q.bufferGPA, length: 8, flags: VirtqueueLayout.descriptorFlagNext, next: 1)
            q.descriptor(1, address: q.bufferGPA, length: 8, flags: VirtqueueLayout.descriptorFlagNext, next: 0)
            q.makeAvailable(head: 0)
        }
    }

    @Test("a self-referencing descriptor is a loop too")
    func selfLoop() {
        expectFailure(.chainTooLong) { q in
            q.descriptor(2, address: q.bufferGPA, length: 8, flags: VirtqueueLayout.descriptorFlagNext, next: 2)
            q.makeAvailable(head: 2)
        }
    }

    @Test("more segments than a slot holds")
    func tooManySegments() {
        expectFailure(.tooManySegments, capacity: 3) { q in
            for index in 0..<4 {
                q.descriptor(index, address: q.bufferGPA + UInt64(16 * index), length: 16,
                             flags: index < 3 ? VirtqueueLayout.descriptorFlagNext : 0, next: UInt16(index + 1))
            }
            q.makeAvailable(head: 0)
        }
    }

    @Test("addresses outside guest memory", arguments: [
        (UInt64(0), UInt32(16)),                               // below the region
        (HandmadeQueue.guestBase + (1 << 16), UInt32(1)),     // just past its end
        (HandmadeQueue.guestBase + (1 << 16) - 8, UInt32(16)),// starts inside, ends outside
        (UInt64.max - 4, UInt32(16)),                          // wraps around the address space
    ])
    func outsideMemory(address: UInt64, length: UInt32) {
        expectFailure(.addressOutsideMemory) { q in
            q.descriptor(0, address: address, length: length)
            q.makeAvailable(head: 0)
        }
    }

    @Test func readableAfterWritable() {
        expectFailure(.readableAfterWritable) { q in
            q.descriptor(0, address: q.bufferGPA, length: 16, flags: VirtqueueLayout.descriptorFlagWrite | VirtqueueLayout.descriptorFlagNext, next: 1)
            q.descriptor(1, address: q.bufferGPA + 64, length: 40)
            q.makeAvailable(head: 0)
        }
    }

    @Test func availIndexJump() {
        expectFailure(.availIndexJump) { q in
            q.avail.storeBytes(of: UInt16(HandmadeQueue.size + 1).littleEndian, toByteOffset: 2, as: UInt16.self)
        }
    }

    @Test func requestTooLarge() {
        expectFailure(.requestTooLarge) { q in
            q.descriptor(0, address: q.bufferGPA, length: UInt32.max)
            q.makeAvailable(head: 0)
        }
    }

    @Test("indirect tables: served when negotiated and well-formed")
    func indirectChain() {
        let q = HandmadeQueue()
        let tableGPA = q.bufferGPA + 2048
        let table = q.local(tableGPA)
        q.descriptor(0, in: table, address: q.bufferGPA, length: 40, flags: VirtqueueLayout.descriptorFlagNext, next: 1)
        q.descriptor(1, in: table, address: q.bufferGPA + 100, length: 16, flags: VirtqueueLayout.descriptorFlagWrite)
        // One direct descriptor before the indirect one is allowed (VSPEC 2.7.5.3.2).
        q.descriptor(4, address: q.bufferGPA + 512, length: 8, flags: VirtqueueLayout.descriptorFlagNext, next: 6)
        q.descriptor(6, address: tableGPA, length: 32, flags: VirtqueueLayout.descriptorFlagIndirect)
        q.makeAvailable(head: 4)
        var queue = q.queue()
        let (result, segments) = q.pop(&queue)
        #expect(result == .request(FetchedRequest(handle: 4, readableCount: 2, writableCount: 1, readableBytes: 48, writableBytes: 16)))
        #expect(segments.count == 3)
    }

    @Test func indirectNotNegotiated() {
        expectFailure(.indirectNotNegotiated, indirect: false) { q in
            q.descriptor(0, address: q.bufferGPA, length: 32, flags: VirtqueueLayout.descriptorFlagIndirect)
            q.makeAvailable(head: 0)
        }
    }

    @Test func nestedIndirect() {
        expectFailure(.indirectNested) { q in
            let tableGPA = q.bufferGPA + 2048
            q.descriptor(0, in: q.local(tableGPA), address: tableGPA, length: 32, flags: VirtqueueLayout.descriptorFlagIndirect)
            q.descriptor(0, address: tableGPA, length: 32, flags: VirtqueueLayout.descriptorFlagIndirect)
            q.makeAvailable(head: 0)
        }
    }

    @Test func indirectWithNext() {
        expectFailure(.indirectWithNext) { q in
            q.descriptor(0, address: q.bufferGPA + 2048, length: 32,
                         flags: VirtqueueLayout.descriptorFlagIndirect | VirtqueueLayout.descriptorFlagNext, next: 1)
            q.makeAvailable(head: 0)
        }
    }

    @Test("indirect table lengths that are not a positive multiple of 16", arguments: [UInt32(0), 17, 8])
    func indirectBadLength(length: UInt32) {
        expectFailure(.indirectBadLength) { q in
            q.descriptor(0, address: q.bufferGPA + 2048, length: length, flags: VirtqueueLayout.descriptorFlagIndirect)
            q.makeAvailable(head: 0)
        }
    }

    @Test func indirectTableOutsideMemory() {
        expectFailure(.addressOutsideMemory) { q in
            q.descriptor(0, address: HandmadeQueue.guestBase + (1 << 16) - 16, length: 64, flags: VirtqueueLayout.descriptorFlagIndirect)
            q.makeAvailable(head: 0)
        }
    }

    @Test("a loop inside an indirect table is bounded by the table's size")
    func indirectLoop() {
        expectFailure(.chainTooLong) { q in
            let tableGPA = q.bufferGPA + 2048
            let table = q.local(tableGPA)
            q.descriptor(0, in: table, address: q.bufferGPA, length: 8, flags: VirtqueueLayout.descriptorFlagNext, next: 1)
            q.descriptor(1, in: table, address: q.bufferGPA, length: 8, flags: VirtqueueLayout.descriptorFlagNext, next: 0)
            q.descriptor(0, address: tableGPA, length: 32, flags: VirtqueueLayout.descriptorFlagIndirect)
            q.makeAvailable(head: 0)
        }
    }

    @Test("a buffer crossing from one region into the next becomes two segments")
    func crossRegionBuffer() {
        let first = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        let second = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        let ring = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        let storage = UnsafeMutablePointer<GuestMemoryRegion>.allocate(capacity: GuestMemory.regionsMax)
        defer { first.deallocate(); second.deallocate(); ring.deallocate(); storage.deallocate() }
        ring.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        var memory = GuestMemory(storage: storage)
        let addedFirst = memory.add(GuestMemoryRegion(guestPhysicalAddress: 0x10000, sizeBytes: 4096, frontendVirtualAddress: 0, local: first))
        #expect(addedFirst)
        let addedSecond = memory.add(GuestMemoryRegion(guestPhysicalAddress: 0x11000, sizeBytes: 4096, frontendVirtualAddress: 4096, local: second))
        #expect(addedSecond)
        let addedRing = memory.add(GuestMemoryRegion(guestPhysicalAddress: 0x20000, sizeBytes: 4096, frontendVirtualAddress: 8192, local: ring))
        #expect(addedRing)
        // Overlapping regions are refused.
        let addedOverlap = memory.add(GuestMemoryRegion(guestPhysicalAddress: 0x10800, sizeBytes: 4096, frontendVirtualAddress: 0, local: first))
        #expect(!addedOverlap)
        let d = ring
        d.storeBytes(of: UInt64(0x10FF0).littleEndian, toByteOffset: 0, as: UInt64.self)
        d.storeBytes(of: UInt32(64).littleEndian, toByteOffset: 8, as: UInt32.self)
        let avail = ring + 1024, used = ring + 2048
        avail.storeBytes(of: UInt16(0), toByteOffset: 4, as: UInt16.self)
        avail.storeBytes(of: UInt16(1).littleEndian, toByteOffset: 2, as: UInt16.self)
        var queue = SplitQueue(size: 8, addresses: SplitQueueAddresses(descriptors: d, avail: avail, used: used),
                               memory: memory, eventIndex: false, indirectDescriptors: false)
        let segments = UnsafeMutablePointer<Segment>.allocate(capacity: 4)
        defer { segments.deallocate() }
        let result = queue.pop(into: segments, capacity: 4)
        #expect(result == .request(FetchedRequest(handle: 0, readableCount: 2, writableCount: 0, readableBytes: 64, writableBytes: 0)))
        #expect(segments[0].base == first + 0xFF0 && segments[0].length == 16)
        #expect(segments[1].base == second && segments[1].length == 48)
        // A front-end virtual address translates inside its region only.
        #expect(memory.translate(frontendVirtual: 8192 + 16, length: 16) == ring + 16)
        #expect(memory.translate(frontendVirtual: 4096 + 4090, length: 16) == nil)
    }

    @Test("EVENT_IDX: the device notifies only when used_event falls inside what it just published")
    func eventIndexNotification() {
        let q = HandmadeQueue()
        var queue = q.queue(eventIndex: true)
        let usedEventOffset = 4 + 2 * HandmadeQueue.size
        // The driver asks to be woken after the first used element (used_event = 0).
        q.avail.storeBytes(of: UInt16(0), toByteOffset: usedEventOffset, as: UInt16.self)
        queue.addUsed(head: 0, bytesWritten: 16)
        queue.publishUsed()
        #expect(notify(&queue))
        // Now it wants a wake-up only once the used index passes 5.
        q.avail.storeBytes(of: UInt16(5).littleEndian, toByteOffset: usedEventOffset, as: UInt16.self)
        queue.addUsed(head: 1, bytesWritten: 16)
        queue.addUsed(head: 2, bytesWritten: 16)
        queue.publishUsed()
        #expect(!notify(&queue))
        for head in 3..<7 { queue.addUsed(head: UInt32(head), bytesWritten: 16) }
        queue.publishUsed()
        #expect(notify(&queue))
        #expect(q.used.load(fromByteOffset: 2, as: UInt16.self) == 7)
    }

    @Test("without EVENT_IDX the NO_INTERRUPT flag suppresses notifications")
    func noInterruptFlag() {
        let q = HandmadeQueue()
        var queue = q.queue(eventIndex: false)
        q.avail.storeBytes(of: VirtqueueLayout.availFlagNoInterrupt, toByteOffset: 0, as: UInt16.self)
        queue.addUsed(head: 0, bytesWritten: 16)
        queue.publishUsed()
        #expect(!notify(&queue))
        q.avail.storeBytes(of: UInt16(0), toByteOffset: 0, as: UInt16.self)
        queue.addUsed(head: 1, bytesWritten: 16)
        queue.publishUsed()
        #expect(notify(&queue))
        // Nothing new published: nothing to notify about.
        #expect(!notify(&queue))
    }
}
