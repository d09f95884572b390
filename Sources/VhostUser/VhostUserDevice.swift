import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import Logging
import Synchronization
import Virtio

/// How one virtio-fs device is served.
public struct VhostUserDeviceConfiguration: Sendable {
    /// For logs and the start-up report.
    public var name: String
    /// Request queues (the front-end's `num-request-queues`); queue 0 (hiprio) comes on top.
    public var requestQueues: Int
    /// Per-queue engine memory and batching.
    public var poller: PollerConfiguration
    /// How long a poller keeps spinning after its last request before it sleeps on the kick eventfd.
    public var busyPollMicroseconds: Int
    /// CPUs to pin queue threads to (queue i → cpus[i % count]); empty = no pinning.
    public var cpus: [Int]

    public init(name: String = "dpfs", requestQueues: Int = 1,
                poller: PollerConfiguration = PollerConfiguration(slotCount: 256, batchMax: 32),
                busyPollMicroseconds: Int = 50, cpus: [Int] = []) {
        precondition(requestQueues >= 1 && requestQueues <= 64, "request queues must be 1...64")
        precondition(busyPollMicroseconds >= 0 && busyPollMicroseconds <= 1_000_000)
        self.name = name
        self.requestQueues = requestQueues
        self.poller = poller
        self.busyPollMicroseconds = busyPollMicroseconds
        self.cpus = cpus
    }

    public var queueCount: Int { requestQueues + 1 }
}

/// A mapped guest memory region and what is needed to unmap it.
struct MappedRegion {
    let description: VhostUserMemoryRegion
    let mapping: UnsafeMutableRawPointer
    let mappingBytes: Int
    var local: UnsafeMutableRawPointer { mapping + Int(description.mmapOffset) }
}

/// Everything the front-end told us about one virtqueue.
struct QueueSetup {
    var size: Int = 0
    var nextAvailIndex: UInt16 = 0
    var descriptorAddress: UInt64? = nil
    var availAddress: UInt64? = nil
    var usedAddress: UInt64? = nil
    var kickFD: Int32 = -1
    var kickPolled = false
    var callFD: Int32 = -1
    var errorFD: Int32 = -1
    var enabled = false
}

/// A poller and the thread that runs it. The control plane touches the poller only while no
/// thread runs it.
final class QueueRunner<B: Backend>: @unchecked Sendable {
    var poller: Poller<VhostUserQueue, B>
    let stop = Atomic<Bool>(false)
    var thread: PinnedThread? = nil
    /// Set by the poller thread the first time its queue fails; read by the control plane.
    let failed = Atomic<Bool>(false)

    init(poller: Poller<VhostUserQueue, B>) {
        self.poller = poller
    }
}

/// One virtio-fs device served over vhost-user: the control plane state machine for the messages
/// of one front-end, and the poller threads of its queues.
public final class VhostUserDevice<B: Backend>: @unchecked Sendable {
    public let configuration: VhostUserDeviceConfiguration
    let logger: Logger
    let arena: HugepageArena
    let runners: [QueueRunner<B>]
    let session: SharedSession
    let regionStorage: UnsafeMutablePointer<GuestMemoryRegion>
    var regions: [MappedRegion] = []
    var queues: [QueueSetup]
    var ackedFeatures: UInt64 = 0
    var protocolFeatures: UInt64 = 0
    let busyPollCycles: UInt64
    /// Queues whose failure was already logged, so a broken guest cannot flood the log.
    var failureLogged: Set<Int> = []

    /// Allocates the engine memory of every queue once, from one arena on this thread's NUMA node.
    public init(configuration: VhostUserDeviceConfiguration, logger: Logger, cyclesPerNanosecond: Double,
                makeBackend: () -> B) throws(SystemCallError) {
        self.configuration = configuration
        self.logger = logger
        let perQueue = configuration.poller.arenaBytes
        arena = try HugepageArena(bytes: perQueue * configuration.queueCount + 4096)
        var allocator = arena.allocator()
        session = SharedSession(arena: &allocator)
        var runners: [QueueRunner<B>] = []
        for _ in 0..<configuration.queueCount {
            let poller = Poller(configuration: configuration.poller, transport: VhostUserQueue(), backend: makeBackend(),
                                session: session, arena: &allocator)
            runners.append(QueueRunner(poller: poller))
        }
        self.runners = runners
        regionStorage = .allocate(capacity: GuestMemory.regionsMax)
        queues = Array(repeating: QueueSetup(), count: configuration.queueCount)
        busyPollCycles = UInt64(Double(configuration.busyPollMicroseconds) * 1000 * cyclesPerNanosecond)
    }

    deinit {
        reset()
        regionStorage.deallocate()
    }

    /// One line for the start-up report.
    public var report: String {
        "device \(configuration.name): \(configuration.requestQueues) request queue(s) + hiprio, "
            + "\(configuration.poller.slotCount) slots per queue; \(arena.report)"
    }

    // MARK: - Messages

    /// Handles one message. Returns the reply payload for messages that have one (or for REPLY_ACK),
    /// nil otherwise. Takes ownership of the message's descriptors: they are kept or closed.
    public func handle(_ message: VhostUserMessage) -> [UInt8]? {
        var unused = message.fds
        defer { for fd in unused { _ = Glibc.close(fd) } }
        let ackWanted = message.needsReply && protocolFeatures & VhostUserProtocolFeatures.replyAck != 0
        do {
            let reply = try dispatch(message, fds: &unused)
            if let reply { return reply }
            return ackWanted ? VhostUserPayload.u64(0) : nil
        } catch {
            logger.warning("refused \(message.request.map { "\($0)" } ?? "request \(message.requestRaw)"): \(error.message)")
            if let request = message.request, Self.alwaysAnswered(request) {
                // The front-end waits for this reply whatever happens: answer with zeroes rather than
                // leave it hanging, after logging the refusal.
                return request == .getVringBase ? VhostUserPayload.vringState(index: 0, number: 0) : VhostUserPayload.u64(0)
            }
            return ackWanted ? VhostUserPayload.u64(1) : nil
        }
    }

    static func alwaysAnswered(_ request: VhostUserRequest) -> Bool {
        switch request {
        case .getFeatures, .getProtocolFeatures, .getQueueNum, .getVringBase, .getMaxMemSlots: return true
        default: return false
        }
    }

    func dispatch(_ message: VhostUserMessage, fds: inout [Int32]) throws(VhostUserError) -> [UInt8]? {
        guard let request = message.request else {
            throw VhostUserError("unknown request id \(message.requestRaw)")
        }
        logger.trace("\(request) (\(message.payload.count) bytes, \(message.fds.count) fds)")
        switch request {
        case .getFeatures:
            return VhostUserPayload.u64(VirtioFeatures.offered)
        case .setFeatures:
            ackedFeatures = try acknowledged(message, offered: VirtioFeatures.offered, what: "features")
            return nil
        case .getProtocolFeatures:
            return VhostUserPayload.u64(VhostUserProtocolFeatures.offered)
        case .setProtocolFeatures:
            protocolFeatures = try acknowledged(message, offered: VhostUserProtocolFeatures.offered, what: "protocol features")
            return nil
        case .setOwner:
            return nil
        case .resetOwner, .resetDevice:
            reset()
            return nil
        case .getQueueNum:
            return VhostUserPayload.u64(UInt64(configuration.queueCount))
        case .getMaxMemSlots:
            return VhostUserPayload.u64(UInt64(GuestMemory.regionsMax))
        case .setMemTable:
            try setMemoryTable(message, fds: &fds)
            return nil
        case .addMemReg:
            try addMemoryRegion(message, fds: &fds)
            return nil
        case .remMemReg:
            try removeMemoryRegion(message)
            return nil
        case .setVringNum:
            let (index, number) = try vringState(message)
            guard number > 0, number <= UInt32(VirtqueueLayout.queueSizeMax), number & (number - 1) == 0 else {
                throw VhostUserError("queue \(index) size \(number) is not a power of two in 1...32768")
            }
            try requireStopped(index)
            queues[index].size = Int(number)
            return nil
        case .setVringBase:
            let (index, number) = try vringState(message)
            guard number <= UInt32(UInt16.max) else { throw VhostUserError("queue \(index) base \(number) exceeds 65535") }
            try requireStopped(index)
            queues[index].nextAvailIndex = UInt16(number)
            return nil
        case .setVringAddr:
            guard message.payload.count == 40 else { throw VhostUserError("SET_VRING_ADDR payload is \(message.payload.count) bytes, not 40") }
            let index = try queueIndex(UInt64(message.field(UInt32.self, at: 0)!))
            try requireStopped(index)
            queues[index].descriptorAddress = message.field(UInt64.self, at: 8)!
            queues[index].usedAddress = message.field(UInt64.self, at: 16)!
            queues[index].availAddress = message.field(UInt64.self, at: 24)!
            return nil
        case .getVringBase:
            let (index, _) = try vringState(message)
            stopQueue(index)
            let base = runners[index].poller.transport.queue?.lastAvailIndex ?? queues[index].nextAvailIndex
            queues[index].nextAvailIndex = base
            // GET_VRING_BASE stops the ring; a later start comes with SET_VRING_BASE and a kick fd.
            closeFD(&queues[index].kickFD)
            queues[index].kickPolled = false
            runners[index].poller.transport.queue = nil
            return VhostUserPayload.vringState(index: UInt32(index), number: UInt32(base))
        case .setVringKick, .setVringCall, .setVringErr:
            let value = try field(UInt64.self, message, at: 0, exact: 8)
            let index = try queueIndex(value & VhostUserWire.vringIndexMask)
            let noFD = value & VhostUserWire.vringNoFDFlag != 0
            guard value & ~(VhostUserWire.vringIndexMask | VhostUserWire.vringNoFDFlag) == 0 else {
                throw VhostUserError("\(request) has unknown bits set: \(value)")
            }
            guard noFD ? fds.isEmpty : fds.count == 1 else {
                throw VhostUserError("\(request) for queue \(index) carries \(fds.count) descriptors")
            }
            let fd = noFD ? Int32(-1) : fds.removeFirst()
            switch request {
            case .setVringKick:
                stopQueue(index)
                closeFD(&queues[index].kickFD)
                queues[index].kickFD = fd
                queues[index].kickPolled = noFD
                // Without protocol features a ring starts enabled (vhost-user.rst, "Ring states").
                if ackedFeatures & VirtioFeatures.protocolFeatures == 0 { queues[index].enabled = true }
                try startIfReady(index)
            case .setVringCall:
                // The poller writes the call fd: swap it only while the poller is stopped.
                let wasRunning = runners[index].thread != nil
                stopQueue(index)
                closeFD(&queues[index].callFD)
                queues[index].callFD = fd
                runners[index].poller.transport.callFD = fd
                if wasRunning { try startIfReady(index) }
            default:
                closeFD(&queues[index].errorFD)
                queues[index].errorFD = fd
            }
            return nil
        case .setVringEnable:
            let (index, number) = try vringState(message)
            guard number <= 1 else { throw VhostUserError("SET_VRING_ENABLE \(number) for queue \(index)") }
            queues[index].enabled = number == 1
            if number == 1 { try startIfReady(index) } else { stopQueue(index) }
            return nil
        case .setLogBase, .setLogFD, .sendRARP, .netSetMTU, .setBackendReqFD, .iotlbMessage, .setVringEndian,
             .getConfig, .setConfig, .setStatus, .getStatus:
            throw VhostUserError("\(request) is not supported by this back-end (its feature was not offered)")
        }
    }

    // MARK: - Memory

    func setMemoryTable(_ message: VhostUserMessage, fds: inout [Int32]) throws(VhostUserError) {
        guard let count = message.field(UInt32.self, at: 0) else { throw VhostUserError("SET_MEM_TABLE payload too short") }
        guard count >= 1, count <= UInt32(VhostUserWire.memTableRegionsMax) else {
            throw VhostUserError("SET_MEM_TABLE with \(count) regions (1...\(VhostUserWire.memTableRegionsMax) allowed)")
        }
        guard message.payload.count == 8 + Int(count) * VhostUserWire.memoryRegionBytes else {
            throw VhostUserError("SET_MEM_TABLE payload is \(message.payload.count) bytes for \(count) regions")
        }
        guard fds.count == Int(count) else {
            throw VhostUserError("SET_MEM_TABLE with \(count) regions but \(fds.count) descriptors")
        }
        var descriptions: [VhostUserMemoryRegion] = []
        for index in 0..<Int(count) {
            descriptions.append(VhostUserMemoryRegion(message, at: 8 + index * VhostUserWire.memoryRegionBytes)!)
        }
        try validateNoOverlap(descriptions)
        // Map the whole new table before touching the old one: a table that cannot be mapped is
        // refused and the memory the queues use stays as it was.
        var mapped: [MappedRegion] = []
        let descriptors = fds
        fds.removeAll()
        for (position, (description, fd)) in zip(descriptions, descriptors).enumerated() {
            do throws(VhostUserError) {
                mapped.append(try map(description, fd: fd))
            } catch {
                for region in mapped { munmap(region.mapping, region.mappingBytes) }
                for unused in descriptors[(position + 1)...] { _ = Glibc.close(unused) }
                throw error
            }
        }
        let running = stopAllQueues()
        unmapAll()
        regions = mapped
        rebuildQueues(restarting: running)
    }

    func addMemoryRegion(_ message: VhostUserMessage, fds: inout [Int32]) throws(VhostUserError) {
        guard message.payload.count == 8 + VhostUserWire.memoryRegionBytes else {
            throw VhostUserError("ADD_MEM_REG payload is \(message.payload.count) bytes, not 40")
        }
        guard fds.count == 1 else { throw VhostUserError("ADD_MEM_REG carries \(fds.count) descriptors, not 1") }
        guard regions.count < GuestMemory.regionsMax else { throw VhostUserError("more than \(GuestMemory.regionsMax) memory regions") }
        let description = VhostUserMemoryRegion(message, at: 8)!
        try validateNoOverlap(regions.map(\.description) + [description])
        let mapped = try map(description, fd: fds.removeFirst())
        let running = stopAllQueues()
        regions.append(mapped)
        rebuildQueues(restarting: running)
    }

    func removeMemoryRegion(_ message: VhostUserMessage) throws(VhostUserError) {
        guard message.payload.count == 8 + VhostUserWire.memoryRegionBytes else {
            throw VhostUserError("REM_MEM_REG payload is \(message.payload.count) bytes, not 40")
        }
        let description = VhostUserMemoryRegion(message, at: 8)!
        guard let position = regions.firstIndex(where: {
            $0.description.guestPhysicalAddress == description.guestPhysicalAddress
                && $0.description.sizeBytes == description.sizeBytes
                && $0.description.frontendVirtualAddress == description.frontendVirtualAddress
        }) else { throw VhostUserError("REM_MEM_REG of a region that was never added") }
        let running = stopAllQueues()
        let removed = regions.remove(at: position)
        munmap(removed.mapping, removed.mappingBytes)
        rebuildQueues(restarting: running)
    }

    func validateNoOverlap(_ descriptions: [VhostUserMemoryRegion]) throws(VhostUserError) {
        for (position, region) in descriptions.enumerated() {
            guard region.sizeBytes > 0,
                  region.guestPhysicalAddress.addingReportingOverflow(region.sizeBytes).overflow == false,
                  region.frontendVirtualAddress.addingReportingOverflow(region.sizeBytes).overflow == false,
                  region.mmapOffset.addingReportingOverflow(region.sizeBytes).overflow == false,
                  region.mmapOffset + region.sizeBytes <= UInt64(Int.max)
            else { throw VhostUserError("memory region \(position) has an empty or overflowing range") }
            for other in descriptions[..<position] {
                let overlaps = region.guestPhysicalAddress < other.guestPhysicalAddress + other.sizeBytes
                    && other.guestPhysicalAddress < region.guestPhysicalAddress + region.sizeBytes
                guard !overlaps else { throw VhostUserError("memory regions overlap in guest-physical space") }
            }
        }
    }

    /// Maps `mmap_offset + size` bytes from offset 0 and uses the region from `mmap_offset` on, as
    /// DPDK does: this works whatever the offset's alignment. Takes ownership of `fd`.
    func map(_ description: VhostUserMemoryRegion, fd: Int32) throws(VhostUserError) -> MappedRegion {
        defer { _ = Glibc.close(fd) }
        let length = Int(description.mmapOffset + description.sizeBytes)
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw VhostUserError("memory region fd is not a file: \(String(cString: strerror(errno)))") }
        guard Int(status.st_size) >= length else {
            throw VhostUserError("memory region needs \(length) bytes but its file has \(status.st_size)")
        }
        let pointer = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0)
        guard pointer != MAP_FAILED, let pointer else {
            throw VhostUserError("mmap of a \(length)-byte memory region failed: \(String(cString: strerror(errno)))")
        }
        return MappedRegion(description: description, mapping: pointer, mappingBytes: length)
    }

    func unmapAll() {
        for region in regions { munmap(region.mapping, region.mappingBytes) }
        regions.removeAll()
    }

    var guestMemory: GuestMemory {
        var memory = GuestMemory(storage: regionStorage)
        for region in regions {
            let added = memory.add(GuestMemoryRegion(
                guestPhysicalAddress: region.description.guestPhysicalAddress, sizeBytes: region.description.sizeBytes,
                frontendVirtualAddress: region.description.frontendVirtualAddress, local: region.local))
            precondition(added, "regions were validated when they were added")
        }
        return memory
    }

    // MARK: - Queues

    func queueIndex(_ value: UInt64) throws(VhostUserError) -> Int {
        guard value < UInt64(configuration.queueCount) else {
            throw VhostUserError("queue \(value) does not exist (the device has \(configuration.queueCount))")
        }
        return Int(value)
    }

    func vringState(_ message: VhostUserMessage) throws(VhostUserError) -> (Int, UInt32) {
        guard message.payload.count == 8 else { throw VhostUserError("vring state payload is \(message.payload.count) bytes, not 8") }
        return (try queueIndex(UInt64(message.field(UInt32.self, at: 0)!)), message.field(UInt32.self, at: 4)!)
    }

    func field<T: FixedWidthInteger>(_ type: T.Type, _ message: VhostUserMessage, at offset: Int, exact: Int) throws(VhostUserError) -> T {
        guard message.payload.count == exact, let value = message.field(T.self, at: offset) else {
            throw VhostUserError("payload is \(message.payload.count) bytes, not \(exact)")
        }
        return value
    }

    /// A SET_*FEATURES payload: exactly one u64, with no bit that was never offered.
    func acknowledged(_ message: VhostUserMessage, offered: UInt64, what: String) throws(VhostUserError) -> UInt64 {
        let features = try field(UInt64.self, message, at: 0, exact: 8)
        guard features & ~offered == 0 else {
            throw VhostUserError("\(what) 0x\(String(features, radix: 16)) include bits never offered")
        }
        return features
    }

    func requireStopped(_ index: Int) throws(VhostUserError) {
        guard runners[index].thread == nil else { throw VhostUserError("queue \(index) is running; stop it first (GET_VRING_BASE)") }
    }

    /// Builds the split queue from what the front-end sent, checking every ring lies in guest memory.
    func makeSplitQueue(_ index: Int) throws(VhostUserError) -> SplitQueue {
        let setup = queues[index]
        guard setup.size > 0 else { throw VhostUserError("queue \(index) has no size") }
        guard let descriptorAddress = setup.descriptorAddress, let availAddress = setup.availAddress,
              let usedAddress = setup.usedAddress else { throw VhostUserError("queue \(index) has no ring addresses") }
        let memory = guestMemory
        guard let descriptors = memory.translate(frontendVirtual: descriptorAddress, length: UInt64(VirtqueueLayout.descriptorTableBytes(size: setup.size))),
              let avail = memory.translate(frontendVirtual: availAddress, length: UInt64(VirtqueueLayout.availRingBytes(size: setup.size))),
              let used = memory.translate(frontendVirtual: usedAddress, length: UInt64(VirtqueueLayout.usedRingBytes(size: setup.size)))
        else { throw VhostUserError("queue \(index) rings lie outside guest memory") }
        guard Int(bitPattern: descriptors) % 16 == 0, Int(bitPattern: avail) % 2 == 0, Int(bitPattern: used) % 4 == 0 else {
            throw VhostUserError("queue \(index) rings are misaligned")
        }
        return SplitQueue(size: setup.size, addresses: SplitQueueAddresses(descriptors: descriptors, avail: avail, used: used),
                          memory: memory, eventIndex: ackedFeatures & VirtioFeatures.eventIndex != 0,
                          indirectDescriptors: ackedFeatures & VirtioFeatures.indirectDescriptors != 0,
                          nextAvailIndex: setup.nextAvailIndex)
    }

    /// Starts queue `index` if the front-end has given everything a running ring needs.
    func startIfReady(_ index: Int) throws(VhostUserError) {
        let setup = queues[index]
        guard runners[index].thread == nil, setup.enabled, setup.kickFD >= 0 || setup.kickPolled,
              !regions.isEmpty, setup.size > 0, setup.descriptorAddress != nil else { return }
        let queue = try makeSplitQueue(index)
        let runner = runners[index]
        runner.poller.transport = VhostUserQueue(queue: queue, callFD: setup.callFD)
        runner.stop.store(false, ordering: .releasing)
        runner.failed.store(false, ordering: .releasing)
        let cpu = configuration.cpus.isEmpty ? nil : configuration.cpus[index % configuration.cpus.count]
        let kickFD = setup.kickFD
        let budget = busyPollCycles
        do {
            runner.thread = try PinnedThread(cpu: cpu) { Self.run(runner, kickFD: kickFD, busyPollCycles: budget) }
        } catch {
            throw VhostUserError("cannot start the thread of queue \(index): \(error)")
        }
        logger.debug("queue \(index) started: size \(setup.size), base \(setup.nextAvailIndex)")
    }

    /// Stops queue `index`'s thread (after it finished its in-flight requests) and waits for it.
    func stopQueue(_ index: Int) {
        let runner = runners[index]
        guard let thread = runner.thread else { return }
        runner.stop.store(true, ordering: .releasing)
        thread.join()
        runner.thread = nil
        if let queue = runner.poller.transport.queue {
            queues[index].nextAvailIndex = queue.lastAvailIndex
        }
        if runner.failed.load(ordering: .acquiring) { logFailure(index) }
        logger.debug("queue \(index) stopped")
    }

    /// Stops every running queue; returns which were running.
    func stopAllQueues() -> [Int] {
        var running: [Int] = []
        for index in 0..<runners.count where runners[index].thread != nil {
            running.append(index)
            stopQueue(index)
        }
        return running
    }

    /// After a memory change: forget the old translations and restart the queues that ran.
    func rebuildQueues(restarting running: [Int]) {
        for index in 0..<runners.count { runners[index].poller.transport.queue = nil }
        for index in running {
            do throws(VhostUserError) { try startIfReady(index) } catch { logger.warning("queue \(index) not restarted: \(error.message)") }
        }
    }

    /// Back to the state of a fresh connection: rings stopped, memory unmapped, descriptors closed,
    /// the FUSE session over (the guest will INIT again).
    public func reset() {
        _ = stopAllQueues()
        for index in queues.indices {
            closeFD(&queues[index].kickFD)
            closeFD(&queues[index].callFD)
            closeFD(&queues[index].errorFD)
            queues[index] = QueueSetup()
            runners[index].poller.transport = VhostUserQueue()
        }
        unmapAll()
        session.end()
        ackedFeatures = 0
        protocolFeatures = 0
        failureLogged = []
    }

    func closeFD(_ fd: inout Int32) {
        if fd >= 0 { _ = Glibc.close(fd) }
        fd = -1
    }

    func logFailure(_ index: Int) {
        guard failureLogged.insert(index).inserted else { return }
        let reason = runners[index].poller.transport.queue?.failure.description ?? "unknown"
        logger.error("device \(configuration.name) queue \(index) failed (device needs reset): \(reason)")
        if queues[index].errorFD >= 0 {
            var one: UInt64 = 1
            _ = Glibc.write(queues[index].errorFD, &one, 8)
        }
    }

    /// Polls for failed queues (a poller marks its queue; the control plane logs it once).
    public func checkFailures() {
        for index in runners.indices where runners[index].failed.load(ordering: .acquiring) && !failureLogged.contains(index) {
            logFailure(index)
        }
    }

    /// Requests served so far on each queue (control plane view; racy reads of plain counters are
    /// only for reports).
    public func metrics(queue index: Int) -> PollerMetrics {
        runners[index].poller.metrics.pointee
    }

    // MARK: - The poller thread

    /// A queue's thread: step while there is work; after `busyPollCycles` without any, arm the kick
    /// eventfd and sleep on it, so an idle engine uses no CPU.
    static func run(_ runner: QueueRunner<B>, kickFD: Int32, busyPollCycles: UInt64) {
        var lastWork = cycleCounter()
        while !runner.stop.load(ordering: .relaxed) {
            let work = runner.poller.step()
            if work > 0 {
                lastWork = cycleCounter()
                continue
            }
            if runner.poller.transport.queue?.isFailed ?? false {
                runner.failed.store(true, ordering: .releasing)
                sleepOnKick(kickFD: -1, milliseconds: 100)
                continue
            }
            if cycleCounter() &- lastWork < busyPollCycles {
                spinHint()
                continue
            }
            // Ask for a kick, then look once more: a request may have arrived in between.
            runner.poller.transport.queue?.setKicksWanted(true)
            if (runner.poller.transport.queue?.availableCount() ?? 0) == 0 {
                sleepOnKick(kickFD: kickFD, milliseconds: 100)
            }
            runner.poller.transport.queue?.setKicksWanted(false)
            lastWork = cycleCounter()
        }
        // Finish what was fetched before the queue stops (bounded: a backend that never completes
        // cannot hold the control plane for more than a second).
        let deadline = monotonicNanoseconds() + 1_000_000_000
        while runner.poller.slotsInUse > 0 && monotonicNanoseconds() < deadline {
            _ = runner.poller.step()
        }
    }

    static func sleepOnKick(kickFD: Int32, milliseconds: Int32) {
        var descriptor = pollfd(fd: kickFD, events: Int16(POLLIN), revents: 0)
        let ready = poll(&descriptor, kickFD >= 0 ? 1 : 0, milliseconds)
        if ready > 0 && descriptor.revents & Int16(POLLIN) != 0 {
            var counter: UInt64 = 0
            _ = read(kickFD, &counter, 8)
        }
    }
}
