import ArgumentParser
import CDPFS
import DPFSConfiguration
import DPFSCore
import DPFSPosix
import FUSEDevice
import FUSEWire
import Foundation
import Glibc
import Logging
import NFSBackend
import NullBackend
import PassthroughBackend
import Synchronization
import VhostUser

/// Set by SIGTERM/SIGINT; every server checks it at least every 200 ms.
let shutdownRequested = Atomic<Bool>(false)

@main
struct DPFSEngine: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dpfs-engine",
        abstract: "Serves virtio-fs to vhost-user front-ends (QEMU's vhost-user-fs-pci), or a FUSE mount on this host.",
        discussion: """
            Either one device from the command line (--vhost-user-socket or --fuse-mount, --backend, …) or \
            several from a TOML file (--config), one [[device]] table per tenant. Stops gracefully on \
            SIGTERM/SIGINT (a host mount is unmounted).
            """)

    @Option(help: "TOML configuration file declaring one or more [[device]] tables.")
    var config: String?

    @Option(name: .customLong("vhost-user-socket"), help: "Unix socket the front-end connects to (one device).")
    var socket: String?

    @Option(name: .customLong("fuse-mount"), help: "Mount the backend on this host directory through /dev/fuse (one device; root).")
    var fuseMount: String?

    @Option(name: .customLong("socket-group"), help: "Group (name or number) that may connect to the vhost-user socket besides its owner (mode 0660; default: owner only, 0600).")
    var socketGroup: String?

    @Flag(name: .customLong("fuse-allow-other"), help: "Host mount: let every host user use the mount, each with their own permissions (allow_other; default: only the user who mounted it).")
    var fuseAllowOther = false

    @Option(name: .customLong("fuse-transport"), help: "Host mount transport: auto (io_uring when the kernel offers it), classic or uring.")
    var fuseTransport: String = "auto"

    @Flag(name: .customLong("fuse-passthrough"), help: "Host mount: let the kernel read and write open regular files itself (passthrough backend, Linux 6.9+).")
    var fusePassthrough = false

    @Option(name: .customLong("ring-depth"), help: "Host mount, io_uring: ring entries (requests in flight) per queue.")
    var ringDepth: Int = 16

    @Option(help: "Backend: null, passthrough or nfs.")
    var backend: String = "null"

    @Option(name: .customLong("shared-dir"), help: "The host directory the passthrough backend shares with the guest.")
    var sharedDirectory: String?

    @Option(name: .customLong("nfs-url"), help: "The NFS backend's export: nfs://HOST/EXPORT?version=3[&nfsport=N][&mountport=N].")
    var nfsURL: String?

    @Option(name: .customLong("nfs-timeout-ms"), help: "NFS backend: a request not answered in this many milliseconds fails EIO.")
    var nfsTimeoutMilliseconds: Int = 30_000

    @Option(name: .customLong("nfs-connections"), help: "NFS backend: TCP connections to the server per request queue (1...16).")
    var nfsConnections: Int = 1

    @Option(name: .customLong("nfs-journal-mb"), help: "NFS backend: MiB per request queue kept of data written but not yet committed, resent when the server restarts (0: none; fsync then fails EIO after a restart).")
    var nfsJournalMegabytes: Int = 16

    @Option(help: "What the guest may cache (passthrough): never, metadata, auto or always.")
    var cache: String = "auto"

    @Option(name: .customLong("inodes-max"), help: "Inodes the guest may know at once (passthrough; one O_PATH descriptor each).")
    var inodesMax: Int = DeviceTableDefaults.nodesMax

    @Option(name: .customLong("inode-descriptors-max"), help: "Inode descriptors kept open (passthrough); idle ones beyond are closed and re-opened by file handle.")
    var inodeDescriptorsMax: Int = DeviceTableDefaults.nodeDescriptorsMax

    @Option(name: .customLong("data-path"), help: "How READ/WRITE reach the file (passthrough): inline-first (on the poller when it cannot block, else io_uring) or uring (always io_uring).")
    var dataPath: String = "inline-first"

    @Option(name: .customLong("open-files-max"), help: "Files and directories the guest may have open at once (passthrough).")
    var openFilesMax: Int = DeviceTableDefaults.openFilesMax

    @Option(help: "Request queues (the front-end's num-request-queues); queue 0 (hiprio) comes on top.")
    var queues: Int = 1

    @Option(help: "Requests in flight per queue (a power of two; default 256 for vhost-user, 16 for a classic host mount, whose buffers are 2 MiB each).")
    var slots: Int?

    @Option(name: .customLong("busy-poll-us"), help: "Microseconds a queue spins after its last request before sleeping (default 50 for vhost-user, 0 for a host mount).")
    var busyPollMicroseconds: Int?

    @Option(help: "CPUs to pin queue threads to, comma-separated (queue i → the i-th, cyclically); io_uring queues always run on their own CPU.")
    var cpus: String?

    @Option(name: .customLong("null-file-size"), help: "Size of the null backend's file, in bytes.")
    var nullFileSize: UInt64 = 1 << 30

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String?

    func validate() throws {
        guard [config != nil, socket != nil, fuseMount != nil].filter({ $0 }).count == 1 else {
            throw ValidationError("give one of --config FILE, --vhost-user-socket PATH or --fuse-mount DIR")
        }
    }

    func run() throws {
        let engineConfiguration: EngineConfiguration
        do {
            if let config {
                let text = try String(contentsOfFile: config, encoding: .utf8)
                engineConfiguration = try EngineConfiguration.parse(text)
            } else {
                guard let kind = BackendKind(rawValue: backend) else { throw ValidationError("unknown backend '\(backend)'") }
                guard let cacheMode = CacheMode(rawValue: cache) else { throw ValidationError("unknown cache mode '\(cache)'") }
                let slotCount = slots ?? (fuseMount == nil ? 256 : 16)
                let device = DeviceConfiguration(name: "dpfs", socketPath: socket ?? "", backend: kind, requestQueues: queues,
                                                 slotsPerQueue: slotCount, batchMax: min(32, slotCount),
                                                 busyPollMicroseconds: busyPollMicroseconds ?? Self.defaultBusyPoll(fuseMount: fuseMount),
                                                 nullFileSizeBytes: nullFileSize, cpus: try Self.cpuList(cpus),
                                                 sharedDirectory: sharedDirectory ?? "", cacheMode: cacheMode,
                                                 inodesMax: inodesMax, openFilesMax: openFilesMax,
                                                 inodeDescriptorsMax: inodeDescriptorsMax)
                var withDataPath = device
                withDataPath.dataPath = dataPath
                withDataPath.nfsURL = nfsURL ?? ""
                withDataPath.nfsTimeoutMilliseconds = nfsTimeoutMilliseconds
                withDataPath.nfsConnections = nfsConnections
                withDataPath.nfsJournalMegabytes = nfsJournalMegabytes
                withDataPath.socketGroup = socketGroup ?? ""
                if let fuseMount {
                    withDataPath.transport = .fuse
                    withDataPath.mountPoint = fuseMount
                    withDataPath.fuseTransport = fuseTransport
                    withDataPath.fusePassthrough = fusePassthrough
                    withDataPath.ringDepth = ringDepth
                    withDataPath.fuseAllowOther = fuseAllowOther
                }
                try withDataPath.validate()
                engineConfiguration = EngineConfiguration(devices: [withDataPath])
            }
        } catch let error as ConfigurationError {
            throw ValidationError("configuration: \(error)")
        }
        let level = Logger.Level(rawValue: logLevel ?? engineConfiguration.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "dpfs-engine")
        try serve(engineConfiguration, logger: logger)
    }

    /// A vhost-user queue spins: its guest runs on other CPUs. A host-mount queue sleeps: the
    /// application it serves shares this machine's CPUs, a spinning queue takes the CPU the
    /// application needs, and a sleeping one runs on the application's CPU the moment the
    /// application blocks for its reply (measured: QD1 4 KiB reads 127k/s sleeping, 106k/s
    /// spinning 50 µs, io_uring, fio and queue on one CPU).
    static func defaultBusyPoll(fuseMount: String?) -> Int {
        fuseMount == nil ? 50 : 0
    }

    static func cpuList(_ text: String?) throws -> [Int] {
        guard let text else { return [] }
        return try text.split(separator: ",").map { part in
            guard let cpu = Int(part.trimmingCharacters(in: .whitespaces)), cpu >= 0, cpu < 4096 else {
                throw ValidationError("--cpus must be a comma-separated list of CPU numbers")
            }
            return cpu
        }
    }

    func serve(_ configuration: EngineConfiguration, logger: Logger) throws {
        _ = shutdownRequested.load(ordering: .relaxed)   // initialise before any handler can run
        signal(SIGTERM) { _ in shutdownRequested.store(true, ordering: .relaxed) }
        signal(SIGINT) { _ in shutdownRequested.store(true, ordering: .relaxed) }
        signal(SIGPIPE, SIG_IGN)

        let clock = CycleClock.calibrate(milliseconds: 20)
        var threads: [PinnedThread] = []
        var servers: [any EngineServer] = []
        var nfsDevices: [(name: String, device: NFSDevice)] = []
        logger.info("dpfs-engine starting: \(configuration.devices.count) device(s), \(PinnedThread.onlineCPUs) CPUs online")
        for device in configuration.devices {
            let deviceLogger = Logger(label: "dpfs-engine.\(device.name)")
            switch device.backend {
            case .null:
                let nullConfiguration = NullBackendConfiguration(fileSizeBytes: device.nullFileSizeBytes)
                servers.append(try startServer(device, clock: clock, logger: deviceLogger, initPolicy: NullBackend.initPolicy,
                                               report: "backend null", hostMounted: { _ in }) { _ in NullBackend(configuration: nullConfiguration) })
            case .passthrough:
                let shared: PassthroughDevice
                do {
                    var passthrough = PassthroughConfiguration(
                        sharedDirectory: device.sharedDirectory,
                        cacheMode: device.cacheMode,
                        inodesMax: device.inodesMax, openFilesMax: device.openFilesMax)
                    passthrough.inodeDescriptorsMax = device.inodeDescriptorsMax
                    passthrough.dataPath = PassthroughDataPath(rawValue: device.dataPath)!
                    shared = try PassthroughDevice(configuration: passthrough)
                } catch {
                    throw StartupError("device \(device.name): \(error)")
                }
                let wanted = shared.configuration.descriptorsMax * configuration.devices.count
                let limit = PassthroughDevice.raiseDescriptorLimit(to: wanted)
                if limit < wanted {
                    logger.warning("""
                        RLIMIT_NOFILE is \(limit) and could not be raised to the \(wanted) descriptors the tables can hold \
                        (no CAP_SYS_RESOURCE?): the guest gets ENFILE once the process runs out of descriptors
                        """)
                }
                let policy = PassthroughBackend.initPolicy(cacheMode: device.cacheMode, hostMount: device.transport == .fuse)
                let passthroughWanted = device.fusePassthrough
                servers.append(try startServer(device, clock: clock, logger: deviceLogger, initPolicy: policy,
                                               report: "backend \(shared.report); descriptor limit \(limit)",
                                               hostMounted: { sessionFD in
                                                   if passthroughWanted { shared.kernelPassthrough = KernelPassthroughFiles(fuseFD: sessionFD) }
                                               }) { _ in
                    PassthroughBackend(device: shared)
                })
            case .nfs:
                let shared: NFSDevice
                do {
                    let url = try NFSURL.parse(device.nfsURL)
                    // The same cache modes as the passthrough backend: what the guest may keep, and for how long.
                    let mode = device.cacheMode
                    let nfs = NFSConfiguration(url: url, validity: mode.validity, openFlags: mode.openFlags,
                                               nodesMax: device.inodesMax, openFilesMax: device.openFilesMax,
                                               requestTimeoutMilliseconds: device.nfsTimeoutMilliseconds,
                                               connectionsPerQueue: device.nfsConnections,
                                               journalBytesPerQueue: device.nfsJournalMegabytes << 20)
                    shared = try NFSDevice(configuration: nfs)
                    nfsDevices.append((device.name, shared))
                } catch {
                    throw StartupError("device \(device.name): \(error)")
                }
                servers.append(try startServer(device, clock: clock, logger: deviceLogger, initPolicy: NFSBackend.initPolicy(shared),
                                               report: "backend \(shared.report)", hostMounted: { _ in }) { _ in
                    NFSBackend(device: shared)
                })
            }
        }
        for server in servers {
            threads.append(try PinnedThread { server.run(until: shutdownRequested) })
        }
        logger.info("ready")
        for thread in threads { thread.join() }
        for server in servers { logger.info("\(server.stopAndReport())") }
        for (name, device) in nfsDevices { logger.info("\(name): \(device.faultReport)") }
        logger.info("dpfs-engine stopped")
    }
}

/// A device's server, whatever its backend, as the engine's main loop drives it.
protocol EngineServer: Sendable {
    func run(until stop: borrowing Atomic<Bool>)
    /// Resets the device (quiescing its queues) and says what it served.
    func stopAndReport() -> String
}

extension VhostUserServer: EngineServer {
    func stopAndReport() -> String {
        device.reset()
        var replies: UInt64 = 0, reads: UInt64 = 0, writes: UInt64 = 0
        for queue in 0..<device.configuration.queueCount {
            replies += device.metrics(queue: queue).repliesSent
            reads += device.requestsDispatched(.read, queue: queue)
            writes += device.requestsDispatched(.write, queue: queue)
        }
        return "device \(device.configuration.name): \(connectionsServed) connection(s), \(replies) replies sent; engine served \(reads) READ, \(writes) WRITE"
    }
}

/// A host mount's server: waits while the mount is served, unmounts on stop.
final class FUSEHostServer<B: Backend>: EngineServer, @unchecked Sendable {
    let device: FUSEHostDevice<B>
    init(device: FUSEHostDevice<B>) { self.device = device }
    func run(until stop: borrowing Atomic<Bool>) { device.run(until: stop) }
    func stopAndReport() -> String { device.stop() }
}

extension DPFSEngine {
    /// Builds the device of one [[device]] table: a vhost-user socket or a host mount.
    /// `hostMounted` runs for a host mount once it is mounted, before its queues start, with the
    /// session's /dev/fuse descriptor.
    func startServer<B: Backend>(_ device: DeviceConfiguration, clock: CycleClock, logger: Logger, initPolicy: InitPolicy,
                                 report: String, hostMounted: (Int32) -> Void, makeBackend: (Int) -> B) throws -> any EngineServer {
        switch device.transport {
        case .vhostUser:
            return try startDevice(device, clock: clock, logger: logger, initPolicy: initPolicy, report: report, makeBackend: makeBackend)
        case .fuse:
            let pollerConfiguration = PollerConfiguration(slotCount: device.slotsPerQueue, batchMax: device.batchMax, initPolicy: initPolicy)
            let hostConfiguration = FUSEHostConfiguration(
                name: device.name, mount: FUSEMountOptions(mountPoint: device.mountPoint, allowOther: device.fuseAllowOther),
                transport: FUSETransportChoice(rawValue: device.fuseTransport)!, queues: device.requestQueues,
                poller: pollerConfiguration, ringDepth: device.ringDepth, busyPollMicroseconds: device.busyPollMicroseconds,
                cpus: device.cpus, kernelPassthrough: device.fusePassthrough)
            let hostDevice: FUSEHostDevice<B>
            do {
                hostDevice = try FUSEHostDevice(configuration: hostConfiguration, logger: logger,
                                                cyclesPerNanosecond: clock.cyclesPerNanosecond, makeBackend: makeBackend)
                hostMounted(hostDevice.descriptors[0])
                try hostDevice.start()
            } catch {
                throw StartupError("device \(device.name): \(error)")
            }
            logger.info("\(hostDevice.report); \(report)")
            return FUSEHostServer(device: hostDevice)
        }
    }

    /// Builds one vhost-user device with `makeBackend` for each of its queues and binds its socket.
    func startDevice<B: Backend>(_ device: DeviceConfiguration, clock: CycleClock, logger: Logger, initPolicy: InitPolicy,
                                 report: String, makeBackend: (Int) -> B) throws -> VhostUserServer<B> {
        let pollerConfiguration = PollerConfiguration(slotCount: device.slotsPerQueue, batchMax: device.batchMax,
                                                      initPolicy: initPolicy)
        let deviceConfiguration = VhostUserDeviceConfiguration(
            name: device.name, requestQueues: device.requestQueues, poller: pollerConfiguration,
            busyPollMicroseconds: device.busyPollMicroseconds, cpus: device.cpus)
        let vhostDevice = try VhostUserDevice(configuration: deviceConfiguration, logger: logger,
                                              cyclesPerNanosecond: clock.cyclesPerNanosecond, makeBackend: makeBackend)
        let server: VhostUserServer<B>
        let access: SocketAccess
        do throws(SocketPathError) {
            access = SocketAccess(groupID: device.socketGroup.isEmpty ? nil : try UnixSocketListener.groupID(named: device.socketGroup))
            server = try VhostUserServer(socketPath: device.socketPath, access: access, device: vhostDevice, logger: logger)
        } catch {
            throw StartupError("device \(device.name): \(error)")
        }
        let group = access.groupID.map { " group \($0)" } ?? " owner only"
        logger.info("\(vhostDevice.report); \(report); socket \(device.socketPath) (mode \(String(access.mode, radix: 8))\(group))")
        return server
    }
}

/// A start-up failure that is not a usage mistake: printed as one line, without the usage text.
struct StartupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
