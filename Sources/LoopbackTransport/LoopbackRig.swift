import Synchronization
import DPFSCore
import FUSEWire
import Virtio

/// An engine poller serving a loopback queue, and the driver feeding it, carved from one arena.
/// Tests step both on one thread; benchmarks move the driver to a thread of its own.
public struct LoopbackRig<B: Backend> {
    public var poller: Poller<LoopbackDevice, B>
    public var driver: LoopbackDriver
    public let callCounter: UnsafeMutablePointer<Atomic<UInt64>>
    let regionStorage: UnsafeMutablePointer<GuestMemoryRegion>

    public static func arenaBytes(poller: PollerConfiguration, driver: LoopbackDriverConfiguration) -> Int {
        poller.arenaBytes(for: B.self) + driver.regionBytes + 4096 + driver.bookkeepingBytes + 64 * 3
            + MemoryLayout<GuestMemoryRegion>.stride * GuestMemory.regionsMax + 4096
    }

    public init(poller pollerConfiguration: PollerConfiguration, driver driverConfiguration: LoopbackDriverConfiguration,
                backend: B, arena: inout ArenaAllocator) {
        let region = arena.allocate(byteCount: driverConfiguration.regionBytes, alignment: 4096)
        let bookkeeping = arena.allocate(byteCount: driverConfiguration.bookkeepingBytes)
        driver = LoopbackDriver(configuration: driverConfiguration, region: region, bookkeeping: bookkeeping)
        regionStorage = arena.allocate(GuestMemoryRegion.self, count: GuestMemory.regionsMax)
        var memory = GuestMemory(storage: regionStorage)
        let added = memory.add(driver.guestMemoryRegion)
        precondition(added)
        callCounter = arena.allocate(byteCount: 64).bindMemory(to: Atomic<UInt64>.self, capacity: 1)
        callCounter.initialize(to: Atomic(0))
        let queue = SplitQueue(size: driverConfiguration.queueSize, addresses: driver.queueAddresses, memory: memory,
                               eventIndex: driverConfiguration.eventIndex,
                               indirectDescriptors: driverConfiguration.indirectDescriptors)
        poller = Poller(configuration: pollerConfiguration, transport: LoopbackDevice(queue: queue, callCounter: callCounter),
                        backend: backend, arena: &arena)
    }
}
