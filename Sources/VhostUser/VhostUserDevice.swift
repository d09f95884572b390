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
    /// What wakes the sleeping poller when another thread completes one of its requests.
    let wake: WakeEventFD

    /// (The eventfd is made by the caller: a throwing initialiser here crashed the Swift 6.3
    /// optimiser's ownership verifier when specialised for the passthrough backend.)
    init(poller: Poller<VhostUserQueue, B>, wake: WakeEventFD) {
        self.poller = poller
        self.wake = wake
        wake.attach(to: poller.wake)
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
    /// `makeBackend` runs once per queue (hiprio queue 0 included) with the queue's index; state the
    /// queues share (inode tables) is built once by the caller and handed to each.
    public init(configuration: VhostUserDeviceConfiguration, logger: Logger, cyclesPerNanosecond: Double,
                makeBackend: (Int) -> B) throws(SystemCallError) {
        self.configuration = configuration
        self.logger = logger
        let perQueue = configuration.poller.arenaBytes(for: B.self)
        arena = try HugepageArena(bytes: perQueue * configuration.queueCount + 4096)
        var allocator = arena.allocator()
        session = SharedSession(arena: &allocator)
        var runners: [QueueRunner<B>] = []
        for index in 0..<configuration.queueCount {
            let poller = Poller(configuration: configuration.poller, transport: VhostUserQueue(), backend: makeBackend(index),
                                session: session, queueIndex: index, arena: &allocator)
            runners.append(QueueRunner(poller: poller, wake: try WakeEventFD()))
        }
        self.runners = runners
        regionStorage = .allocate(capacity: GuestMemory.regionsMax)
        queues = Array(repeating: QueueSetup(), count: configuration.queueCount)
        busyPollCycles = PollerLoopConfiguration.busyPollCycles(microseconds: configuration.busyPollMicroseconds,
                                                                 cyclesPerNanosecond: cyclesPerNanosecond)
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
}
