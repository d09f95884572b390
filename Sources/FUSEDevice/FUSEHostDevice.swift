import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import Logging
import Synchronization

// A mount on the host served by the engine: the same poller, decoder and backends as a virtio-fs
// device, with /dev/fuse (classic or FUSE-over-io_uring) as the transport. Start-up: clear a stale
// mount, choose the transport, mount, clone one descriptor per queue, carve every buffer out of
// one arena, start one pinned thread per queue. Stop: unmount (the kernel ends the connection, the
// queues read ENODEV), stop and join the threads (each quiesces its backend), close.

/// How the engine reaches the host kernel's FUSE.
public enum FUSETransportChoice: String, Sendable, CaseIterable {
    /// io_uring when the kernel offers it (turning the module parameter on when root), else classic.
    case auto
    case classic
    case uring
}

public struct FUSEHostConfiguration: Sendable {
    public var name: String
    public var mount: FUSEMountOptions
    public var transport: FUSETransportChoice
    /// Classic queues (threads, each on a cloned descriptor). io_uring needs one queue per possible
    /// CPU and uses that many whatever this says.
    public var queues: Int
    /// Per-queue poller memory and INIT policy (the device adds io_uring and passthrough bits).
    public var poller: PollerConfiguration
    /// Ring entries per io_uring queue: requests one queue can have in flight.
    public var ringDepth: Int
    public var busyPollMicroseconds: Int
    /// CPUs for classic queue threads (queue i → cpus[i % count]); io_uring queue i runs on CPU i.
    public var cpus: [Int]
    /// Offer kernel passthrough (OPEN answered with a backing file the kernel reads and writes).
    public var kernelPassthrough: Bool

    public init(name: String = "dpfs", mount: FUSEMountOptions, transport: FUSETransportChoice = .auto, queues: Int = 1,
                poller: PollerConfiguration = PollerConfiguration(slotCount: 16, batchMax: 16), ringDepth: Int = 16,
                busyPollMicroseconds: Int = 50, cpus: [Int] = [], kernelPassthrough: Bool = false) {
        precondition(queues >= 1 && queues <= 64)
        precondition(ringDepth >= 1 && ringDepth <= 1024)
        self.name = name
        self.mount = mount
        self.transport = transport
        self.queues = queues
        self.poller = poller
        self.ringDepth = ringDepth
        self.busyPollMicroseconds = busyPollMicroseconds
        self.cpus = cpus
        self.kernelPassthrough = kernelPassthrough
    }
}

/// A poller and its thread, as for a vhost-user queue.
final class FUSEQueueRunner<B: Backend>: @unchecked Sendable {
    var poller: Poller<FUSEQueue, B>
    let stop = Atomic<Bool>(false)
    var thread: PinnedThread? = nil
    let wake: WakeEventFD
    /// The poller's counters, kept apart so a scrape reads them without touching the poller.
    let pollerCounters: PollerCounters

    init(poller: Poller<FUSEQueue, B>, wake: WakeEventFD) {
        self.poller = poller
        self.wake = wake
        pollerCounters = poller.counters
        wake.attach(to: poller.wake)
    }
}

public final class FUSEHostDevice<B: Backend>: @unchecked Sendable {
    public let configuration: FUSEHostConfiguration
    public let mode: FUSEQueueMode
    public let connection = FUSEConnectionState()
    /// The session descriptor (queue 0's) and the clones of the other queues.
    public let descriptors: [Int32]
    let rings: [IOURing]
    let arena: HugepageArena
    let runners: [FUSEQueueRunner<B>]
    let session: SharedSession
    let logger: Logger
    /// What start-up did that an operator should know (stale mount, module parameter).
    public private(set) var startupNotes: [String] = []
    var mounted = true
    let cyclesPerNanosecond: Double

    /// Mounts and builds every queue; `makeBackend` runs once per queue. `prepareBackends` runs
    /// after the mount, before any queue starts, with the session descriptor (kernel passthrough
    /// registers backing files on it).
    public init(configuration: FUSEHostConfiguration, logger: Logger, cyclesPerNanosecond: Double,
                makeBackend: (Int) -> B) throws(FUSEDeviceError) {
        self.configuration = configuration
        self.logger = logger
        var notes: [String] = []
        let mode = try Self.chooseMode(configuration.transport, notes: &notes)
        self.mode = mode
        if try FUSEMount.clearStale(at: configuration.mount.mountPoint) == .detachedStale {
            notes.append("detached a dead FUSE mount at \(configuration.mount.mountPoint) (left by an engine that was killed)")
        }
        let queueCount = mode == .uring ? Self.possibleCPUs() : configuration.queues
        if mode == .uring && queueCount != configuration.queues {
            notes.append("io_uring needs one queue per possible CPU: \(queueCount) queues")
        }
        let sessionFD = try FUSEMount.mount(configuration.mount)
        var descriptors = [sessionFD]
        do {
            for _ in 1..<max(1, queueCount) { descriptors.append(try FUSEMount.clone(session: sessionFD)) }
        } catch {
            _ = FUSEMount.unmount(configuration.mount.mountPoint)
            for fd in descriptors { _ = close(fd) }
            throw error
        }
        self.descriptors = descriptors

        let classicBuffers = mode == .classic ? configuration.poller.slotCount : 2
        let ringDepth = mode == .uring ? configuration.ringDepth : 0
        let policy = configuration.poller.initPolicy
        let geometry = FUSEQueueGeometry(writeBytesMax: Int(policy.writeBytesMax), readBytesMax: configuration.mount.readBytesMax,
                                         ringDepth: ringDepth, classicBuffers: classicBuffers)
        var pollerConfiguration = configuration.poller
        if mode == .uring {
            var slots = 1
            while slots < geometry.handlesMax { slots <<= 1 }
            pollerConfiguration = PollerConfiguration(slotCount: slots, segmentsPerSlot: configuration.poller.segmentsPerSlot,
                                                      batchMax: min(slots, max(configuration.poller.batchMax, ringDepth)),
                                                      initPolicy: policy)
            pollerConfiguration.initPolicy.flagsWanted |= InitFlags.overIOURing
        }
        if configuration.kernelPassthrough { pollerConfiguration.initPolicy.flagsWanted |= InitFlags.passthrough }

        var rings: [IOURing] = []
        do {
            arena = try HugepageArena(bytes: queueCount * (pollerConfiguration.arenaBytes(for: B.self) + geometry.memoryBytes) + 4096)
            if mode == .uring {
                var entries = 1
                while entries < 2 * geometry.handlesMax { entries <<= 1 }
                for _ in 0..<queueCount { rings.append(try IOURing(entries: entries, commands128: true, asyncOnly: false)) }
            }
        } catch {
            _ = FUSEMount.unmount(configuration.mount.mountPoint)
            for fd in descriptors { _ = close(fd) }
            throw FUSEDeviceError("queue memory: \(error)")
        }
        self.rings = rings
        var allocator = arena.allocator()
        session = SharedSession(arena: &allocator)
        var runners: [FUSEQueueRunner<B>] = []
        for index in 0..<queueCount {
            let transport = FUSEQueue(mode: mode, fd: descriptors[index], queueID: UInt16(index), geometry: geometry,
                                      connection: connection, ring: mode == .uring ? rings[index] : nil, arena: &allocator)
            let poller = Poller(configuration: pollerConfiguration, transport: transport, backend: makeBackend(index),
                                session: session, queueIndex: index, arena: &allocator)
            let wake: WakeEventFD
            do { wake = try WakeEventFD() } catch { throw FUSEDeviceError("\(error)") }
            runners.append(FUSEQueueRunner(poller: poller, wake: wake))
        }
        self.runners = runners
        startupNotes = notes
        self.cyclesPerNanosecond = cyclesPerNanosecond
    }

    deinit {
        if mounted { _ = FUSEMount.unmount(configuration.mount.mountPoint) }
        for fd in descriptors { _ = close(fd) }
    }

    /// The transport the kernel offers and the caller asked for. `auto` and `uring` turn the fuse
    /// module's enable_uring on when it is off and we may write it (root).
    static func chooseMode(_ choice: FUSETransportChoice, notes: inout [String]) throws(FUSEDeviceError) -> FUSEQueueMode {
        if choice == .classic { return .classic }
        let parameter = "/sys/module/fuse/parameters/enable_uring"
        guard let value = readSmallFile(parameter) else {
            if choice == .uring { throw FUSEDeviceError("this kernel has no FUSE-over-io_uring (\(parameter) is missing; Linux 6.14+ with CONFIG_FUSE_IO_URING)") }
            notes.append("FUSE-over-io_uring not in this kernel: classic /dev/fuse")
            return .classic
        }
        if value.hasPrefix("Y") || value.hasPrefix("1") { return .uring }
        if writeSmallFile(parameter, "Y") {
            notes.append("turned FUSE-over-io_uring on (\(parameter) = Y)")
            return .uring
        }
        if choice == .uring { throw FUSEDeviceError("\(parameter) is N and could not be set (not root?)") }
        notes.append("FUSE-over-io_uring is off (\(parameter) = N, not writable): classic /dev/fuse")
        return .classic
    }

    /// The kernel's nr_cpu_ids: FUSE-over-io_uring has exactly that many queues.
    public static func possibleCPUs() -> Int {
        guard let text = readSmallFile("/sys/devices/system/cpu/possible") else { return PinnedThread.onlineCPUs }
        var highest = 0
        for range in text.split(separator: ",") {
            let ends = range.split(separator: "-")
            if let last = ends.last, let value = Int(last.trimmingCharacters()) { highest = max(highest, value) }
        }
        return highest + 1
    }

    public var queueCount: Int { runners.count }

    // MARK: - Running

    /// Starts every queue's thread.
    public func start() throws(FUSEDeviceError) {
        let budget = PollerLoopConfiguration.busyPollCycles(microseconds: configuration.busyPollMicroseconds,
                                                            cyclesPerNanosecond: cyclesPerNanosecond)
        for (index, runner) in runners.enumerated() {
            let cpu: Int? = mode == .uring ? index
                : (configuration.cpus.isEmpty ? nil : configuration.cpus[index % configuration.cpus.count])
            let logger = logger
            let kickFD = runner.poller.transport.kickFD
            let kickIsCounter = runner.poller.transport.kickIsCounter
            do {
                runner.thread = try PinnedThread(cpu: cpu) {
                    PollerLoop.run(&runner.poller, stop: runner.stop, kickFD: kickFD, kickIsCounter: kickIsCounter,
                                   configuration: PollerLoopConfiguration(busyPollCycles: budget),
                                   onFailed: {},
                                   onQuiesceWait: { inFlight in
                                       logger.warning("queue \(index) is stopping: still waiting for \(inFlight) request(s)")
                                   })
                }
            } catch {
                throw FUSEDeviceError("cannot start the thread of queue \(index): \(error)")
            }
        }
    }

    /// Waits until `stop` is set or the connection ends (unmounted from outside, aborted); logs what
    /// INIT agreed once it did.
    public func run(until stop: borrowing Atomic<Bool>) {
        var reported = false
        while !stop.load(ordering: .relaxed) && !connection.isEnded {
            if !reported, let negotiated = session.negotiated {
                reported = true
                logger.info("\(configuration.name): INIT agreed: \(initReport(negotiated))")
            }
            var pause = timespec(tv_sec: 0, tv_nsec: 20_000_000)
            nanosleep(&pause, nil)
        }
        if connection.isEnded && !stop.load(ordering: .relaxed) {
            logger.warning("\(configuration.name): the kernel ended the connection (unmounted or aborted from outside)")
        }
    }

    func initReport(_ negotiated: NegotiatedSession) -> String {
        var text = "protocol 7.\(negotiated.minor), flags \(InitFlags.describe(negotiated.flags)), max_write \(negotiated.writeBytesMax)"
        if mode == .uring {
            text += negotiated.flags & InitFlags.overIOURing != 0 ? ", requests through io_uring (\(runners.count) queues × \(configuration.ringDepth) entries)"
                : ", io_uring NOT agreed: /dev/fuse reads through io_uring"
        }
        if configuration.kernelPassthrough {
            text += negotiated.flags & InitFlags.passthrough != 0 ? ", kernel passthrough on" : ", kernel passthrough NOT agreed"
        }
        return text
    }

    /// Unmounts, stops every queue (each quiesces its backend) and closes the rings. Returns a line
    /// for the stop report.
    public func stop() -> String {
        let unmount = mounted ? FUSEMount.unmount(configuration.mount.mountPoint) : "not mounted"
        mounted = false
        for runner in runners {
            runner.stop.store(true, ordering: .releasing)
            runner.poller.wake.signalUnconditionally()
        }
        var requests: UInt64 = 0, ringRequests: UInt64 = 0, unclaimed: UInt64 = 0, refused: UInt64 = 0
        var reads: UInt64 = 0, writes: UInt64 = 0
        for runner in runners {
            runner.thread?.join()
            runner.thread = nil
            reads &+= runner.poller.requestsDispatched(.read)
            writes &+= runner.poller.requestsDispatched(.write)
            let counters = runner.poller.transport.counters.pointee
            requests &+= counters.requestsRead
            ringRequests &+= counters.ringRequests
            unclaimed &+= counters.repliesUnclaimed
            refused &+= counters.repliesRefused
        }
        let ring = mode == .uring ? ", \(ringRequests) through io_uring entries" : ""
        // READ and WRITE served by the engine itself: with kernel passthrough, an open file's reads
        // and writes never come here (tools/host/test-kernel-passthrough.sh checks that it is 0).
        return "\(configuration.name): \(unmount); \(requests) requests read from /dev/fuse\(ring), \(unclaimed) replies no longer awaited, \(refused) refused; engine served \(reads) READ, \(writes) WRITE"
    }

    /// The start-up report.
    public var report: String {
        let transport = mode == .uring ? "FUSE-over-io_uring, \(runners.count) queues × \(configuration.ringDepth) entries"
            : "classic /dev/fuse, \(runners.count) queue(s) × \(runners[0].poller.configuration.slotCount) buffers"
        var text = "mount \(configuration.mount.mountPoint) (\(FUSEMountOptions.fileSystemType)): \(transport)"
        text += configuration.mount.defaultPermissions ? ", default_permissions" : ""
        text += configuration.mount.allowOther ? ", allow_other" : ""
        text += configuration.kernelPassthrough ? ", kernel passthrough offered" : ""
        for note in startupNotes { text += "; " + note }
        return text
    }

    /// Counters of one queue (racy plain reads: for reports).
    public func counters(queue index: Int) -> FUSEQueueCounters { runners[index].poller.transport.counters.pointee }
    public func metrics(queue index: Int) -> PollerMetrics { runners[index].poller.metrics.pointee }
    /// Queue `index`'s poller counters, readable while it runs (`PollerCounters.load`).
    public func pollerCounters(queue index: Int) -> PollerCounters { runners[index].pollerCounters }
    /// Request slots per queue.
    public var slotsPerQueue: Int { configuration.poller.slotCount }
    public var negotiated: NegotiatedSession? { session.negotiated }
}

func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { _ = close(fd) }
    var buffer = [UInt8](repeating: 0, count: 256)
    let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, 255) }
    guard count >= 0 else { return nil }
    return String(decoding: buffer[0..<count], as: UTF8.self)
}

func writeSmallFile(_ path: String, _ text: String) -> Bool {
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { _ = close(fd) }
    return text.utf8CString.withUnsafeBytes { write(fd, $0.baseAddress, $0.count - 1) } == text.utf8.count
}

extension Substring {
    func trimmingCharacters() -> Substring {
        var result = self
        while let first = result.first, first.isWhitespace { result = result.dropFirst() }
        while let last = result.last, last.isWhitespace { result = result.dropLast() }
        return result
    }
}
