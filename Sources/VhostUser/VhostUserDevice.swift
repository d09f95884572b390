import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import Logging
import Synchronization
import Virtio
// The device's API speaks the protocol's types (messages, errors): whoever imports the device gets them.
@_exported import VhostUserProtocol

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

/// Control-plane events a scrape reads from another thread. A class of its own: an `Atomic` stored
/// directly in a class with a throwing initialiser crashes the Swift 6.3 optimiser's ownership
/// verifier once specialised (seen with VhostUserServer<KVBackend>).
public final class DeviceControlCounts: Sendable {
    /// Front-end connections accepted.
    public let connections = Atomic<Int>(0)
    /// Queue failures (each logged once per connection).
    public let failures = Atomic<Int>(0)
    public init() {}
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
    /// The poller's counters, kept apart so a scrape reads them without touching the poller.
    let counters: PollerCounters

    /// (The eventfd is made by the caller: a throwing initialiser here crashed the Swift 6.3
    /// optimiser's ownership verifier when specialised for the passthrough backend.)
    init(poller: Poller<VhostUserQueue, B>, wake: WakeEventFD) {
        self.poller = poller
        self.wake = wake
        counters = poller.counters
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
    /// What the front-end told us, and the protocol's rules (VhostUserProtocol's control plane):
    /// this class performs the effects it decides.
    var plane: VhostUserControlPlane
    let busyPollCycles: UInt64
    /// Queues whose failure was already logged, so a broken guest cannot flood the log.
    var failureLogged: Set<Int> = []
    /// What the control plane counts, for `/metrics` (read from the scrape's thread).
    public let controlCounts = DeviceControlCounts()

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
        plane = VhostUserControlPlane(limits: VhostUserLimits(queueCount: configuration.queueCount, queueSizeMax: VirtqueueLayout.queueSizeMax),
                                      memoryRegionsMax: GuestMemory.regionsMax)
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
        let ackWanted = message.needsReply && plane.replyAck
        do {
            let command = try VhostUserCommand.decode(message, descriptors: &unused, limits: plane.limits)
            logger.trace("\(message.request.map { "\($0)" } ?? "?") (\(message.payload.count) bytes, \(message.fds.count) fds)")
            let step = try plane.apply(command)
            try perform(step.actions)
            switch step.reply {
            case .none: return ackWanted ? VhostUserPayload.u64(0) : nil
            case .payload(let payload): return payload
            case .ringBase(let index):
                return VhostUserPayload.vringState(index: UInt32(index), number: UInt32(plane.queues[index].nextAvailIndex))
            }
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

    /// Performs what the control plane decided, in order.
    func perform(_ actions: [VhostUserControlAction]) throws(VhostUserError) {
        for action in actions {
            switch action {
            case .stopQueue(let index): stopQueue(index)
            case .startIfReady(let index): try startIfReady(index)
            case .forgetRing(let index):
                if let queue = runners[index].poller.transport.queue { plane.queueStopped(index, lastAvailIndex: queue.lastAvailIndex) }
                runners[index].poller.transport.queue = nil
            case .closeDescriptor(let fd): _ = Glibc.close(fd)
            case .installCall(let index, let fd): runners[index].poller.transport.callFD = fd
            case .replaceMemory(let regions, let descriptors): try replaceMemory(regions, descriptors: descriptors)
            case .addMemoryRegion(let region, let descriptor): try addMemoryRegion(region, descriptor: descriptor)
            case .removeMemoryRegion(let region): try removeMemoryRegion(region)
            case .resetDevice: reset()
            }
        }
    }
}
