import ArgumentParser
import CDPFS
import DPFSConfiguration
import DPFSCore
import DPFSPosix
import EngineMetrics
import FUSEDevice
import FUSEWire
import Foundation
import Glibc
import Logging
import BackendKit
import DPFSBackends
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

            Backend settings (command line --flag VALUE, TOML key = value):
            \(RegisteredBackends.registry.help)
            """)

    @Option(help: "TOML configuration file declaring one or more [[device]] tables.")
    var config: String?

    @Option(name: .customLong("vhost-user-socket"), help: "Unix socket the front-end connects to (one device).")
    var socket: String?

    @Option(name: .customLong("fuse-mount"), help: "Mount the backend on this host directory through /dev/fuse (one device; root).")
    var fuseMount: String?

    @Option(name: .customLong("vhost-user-fd"), help: "A listening Unix socket the launcher hands over, by descriptor number (one device; virtiofsd's --fd).")
    var listeningDescriptor: Int32?

    @Option(name: .customLong("socket-group"), help: "Group (name or number) that may connect to the vhost-user socket besides its owner (mode 0660; default: owner only, 0600).")
    var socketGroup: String?

    @Flag(name: .customLong("fuse-allow-other"), help: "Host mount: let every host user use the mount, each with their own permissions (allow_other; default: only the user who mounted it).")
    var fuseAllowOther = false

    @Option(name: .customLong("fuse-transport"), help: "Host mount transport: auto (io_uring when the kernel offers it), classic or uring.")
    var fuseTransport: String?

    @Flag(name: .customLong("fuse-passthrough"), help: "Host mount: let the kernel read and write open regular files itself (passthrough backend, Linux 6.9+).")
    var fusePassthrough = false

    @Option(name: .customLong("ring-depth"), help: "Host mount, io_uring: ring entries (requests in flight) per queue (default 16).")
    var ringDepth: Int?

    @Option(help: "Backend: \(RegisteredBackends.registry.names.joined(separator: ", ")). Its settings follow as --key value (see below).")
    var backend: String = "null"

    @Option(help: "Request queues (the front-end's num-request-queues); queue 0 (hiprio) comes on top.")
    var queues: Int = 1

    @Option(help: "Requests in flight per queue (a power of two; default \(TransportKind.vhostUser.defaultSlotsPerQueue) for vhost-user, \(TransportKind.fuse.defaultSlotsPerQueue) for a host mount, whose classic buffers are 2 MiB each).")
    var slots: Int?

    @Option(name: .customLong("busy-poll-us"), help: "Microseconds a queue spins after its last request before sleeping (default \(TransportKind.vhostUser.defaultBusyPollMicroseconds) for vhost-user, \(TransportKind.fuse.defaultBusyPollMicroseconds) for a host mount).")
    var busyPollMicroseconds: Int?

    @Option(help: "CPUs to pin queue threads to, comma-separated (queue i → the i-th, cyclically); io_uring queues always run on their own CPU.")
    var cpus: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String?

    @Option(help: "After set-up, confine the process: none, or chroot into the passthrough backend's shared directory (one device from the command line; root). virtiofsd's --sandbox.")
    var sandbox: String?

    @Option(name: .customLong("metrics-address"), help: "Serve Prometheus metrics at http://ADDRESS/metrics (IPv4 HOST:PORT, e.g. 127.0.0.1:9464; overrides [engine] metrics_address).")
    var metricsAddress: String?

    /// The backend's own settings (`--shared-dir DIR`, `--nfs-url URL`, ...), checked against its
    /// schema: the backends declare them, so they are not options of this command.
    @Argument(parsing: .allUnrecognized, help: .hidden)
    var backendArguments: [String] = []

    func validate() throws {
        guard [config != nil, socket != nil, listeningDescriptor != nil, fuseMount != nil].filter({ $0 }).count == 1 else {
            throw ValidationError("give one of --config FILE, --vhost-user-socket PATH, --vhost-user-fd N or --fuse-mount DIR")
        }
        if let sandbox {
            guard SandboxMode(rawValue: sandbox) != nil else { throw ValidationError("--sandbox is none or chroot") }
            guard sandbox == "none" || (config == nil && fuseMount == nil && backend == "passthrough") else {
                throw ValidationError("--sandbox chroot confines one vhost-user device of the passthrough backend started from the command line (a --config file is read again on SIGHUP, a host mount needs /dev/fuse)")
            }
        }
    }

    func run() throws {
        let registry = RegisteredBackends.registry
        let engineConfiguration: EngineConfiguration
        do {
            if let config {
                let text = try String(contentsOfFile: config, encoding: .utf8)
                engineConfiguration = try EngineConfiguration.parse(text, backends: registry)
            } else {
                engineConfiguration = EngineConfiguration(devices: [try commandLineDevice(registry)])
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

    /// The one device the command line describes.
    func commandLineDevice(_ registry: BackendRegistry) throws -> DeviceConfiguration {
        let transport = try commandLineTransport()
        var queueSettings = QueueSettings(for: transport.kind)
        queueSettings.requestQueues = queues
        if let slots {
            queueSettings.slotsPerQueue = slots
            queueSettings.batchMax = min(queueSettings.batchMax, max(1, slots))
        }
        if let busyPollMicroseconds { queueSettings.busyPollMicroseconds = busyPollMicroseconds }
        if let cpus { queueSettings.cpus = try QueueSettings.cpuList(cpus, line: 0) }
        let given = try registry.commandLineSettings(backendArguments, backend: backend)
        let schema = registry.schema(backend)!
        let deployment = DeviceConfiguration(name: "dpfs", transport: transport, backend: schema.defaults).deployment
        let device = DeviceConfiguration(name: "dpfs", transport: transport, queues: queueSettings,
                                         backend: try schema.complete(given, device: "dpfs", deployment: deployment))
        try device.validate(backends: registry)
        return device
    }

    /// The socket or the host mount, refusing options of the other transport.
    func commandLineTransport() throws -> TransportSettings {
        guard let fuseMount else {
            let hostMountOptions = [fuseTransport != nil, fusePassthrough, fuseAllowOther, ringDepth != nil]
            guard !hostMountOptions.contains(true) else {
                throw ValidationError("--fuse-transport, --fuse-passthrough, --fuse-allow-other and --ring-depth are only for --fuse-mount")
            }
            if let listeningDescriptor {
                guard socketGroup == nil else { throw ValidationError("--socket-group is for a socket the engine binds, not --vhost-user-fd") }
                return .vhostUser(VhostUserSettings(socketPath: "fd \(listeningDescriptor)", listeningDescriptor: listeningDescriptor))
            }
            return .vhostUser(VhostUserSettings(socketPath: socket ?? "", socketGroup: socketGroup ?? ""))
        }
        guard socketGroup == nil else { throw ValidationError("--socket-group is only for --vhost-user-socket") }
        var mount = HostMountSettings(mountPoint: fuseMount)
        if let fuseTransport {
            guard let mode = HostMountMode(rawValue: fuseTransport) else {
                throw ValidationError("--fuse-transport must be one of \(HostMountMode.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            mount.mode = mode
        }
        mount.kernelPassthrough = fusePassthrough
        mount.allowOther = fuseAllowOther
        if let ringDepth { mount.ringDepth = ringDepth }
        return .fuse(mount)
    }

    func serve(_ configuration: EngineConfiguration, logger: Logger) throws {
        _ = shutdownRequested.load(ordering: .relaxed)   // initialise before any handler can run
        _ = reloadRequested.load(ordering: .relaxed)
        signal(SIGTERM) { _ in shutdownRequested.store(true, ordering: .relaxed) }
        signal(SIGINT) { _ in shutdownRequested.store(true, ordering: .relaxed) }
        signal(SIGHUP) { _ in reloadRequested.store(true, ordering: .relaxed) }
        signal(SIGPIPE, SIG_IGN)

        ThreadPriority.recordNormal()
        let clock = CycleClock.calibrate(milliseconds: 20)
        let table = DeviceTable()
        let supervisor = DeviceSupervisor(engine: self, table: table, clock: clock, logger: logger)
        let metricsServer = try startMetrics(configuration, logger: logger)
        logger.info("dpfs-engine starting: \(configuration.devices.count) device(s), \(PinnedThread.onlineCPUs) CPUs online")
        for device in configuration.devices {
            table.add(try supervisor.start(device, devicesInProcess: configuration.devices.count))
        }
        try confine(configuration, logger: logger)
        var metricsThread: PinnedThread?
        if let metricsServer {
            let cyclesPerSecond = clock.cyclesPerNanosecond * 1e9
            metricsThread = try PinnedThread { metricsServer.run(until: shutdownRequested) { table.render(cyclesPerSecond: cyclesPerSecond) } }
        }
        logger.info("ready")
        var inForce = configuration
        while !shutdownRequested.load(ordering: .relaxed) {
            if table.allEnded {
                logger.info("every device has ended (unmounted from outside): stopping")
                break
            }
            if reloadRequested.exchange(false, ordering: .acquiring) {
                if let config {
                    inForce = supervisor.reload(path: config, running: inForce)
                } else {
                    logger.warning("SIGHUP: no configuration file to read again (started without --config); nothing changed")
                }
            }
            usleep(20_000)
        }
        for device in table.all() {
            for line in device.stopAndJoin() { logger.info("\(line)") }
        }
        metricsThread?.join()
        if let metricsServer { logger.info("metrics: \(metricsServer.scrapesServed) scrape(s) served") }
        logger.info("dpfs-engine stopped")
    }

    /// `--sandbox chroot`: once the device is set up (socket bound, share and /proc/self/fd opened,
    /// threads started), the process's root becomes the share, so no later path reaches past it.
    func confine(_ configuration: EngineConfiguration, logger: Logger) throws {
        guard sandbox == SandboxMode.chroot.rawValue else { return }
        let share = configuration.devices[0].backend.string("shared_dir")
        guard chroot(share) == 0, chdir("/") == 0 else {
            let reason = String(cString: strerror(errno))
            throw StartupError("--sandbox chroot: chroot(\(share)) failed: \(reason) (needs root, CAP_SYS_CHROOT; --sandbox none serves without it)")
        }
        logger.info("sandbox: chroot into \(share)")
    }

    /// Binds the metrics listener when an address is configured, so a taken port fails the start.
    func startMetrics(_ configuration: EngineConfiguration, logger: Logger) throws -> MetricsHTTPServer? {
        guard let text = metricsAddress ?? configuration.metricsAddress else { return nil }
        guard let address = MetricsAddress(text) else {
            throw ValidationError("metrics address '\(text)' is not IPv4 HOST:PORT (e.g. 127.0.0.1:9464)")
        }
        do {
            let server = try MetricsHTTPServer(address: address)
            logger.info("metrics at http://\(address.host):\(server.port)/metrics")
            return server
        } catch {
            throw StartupError("metrics: \(error)")
        }
    }
}

/// A device being served: its server, its backend's stop report and control-plane counters.
struct StartedDevice: @unchecked Sendable {
    let name: String
    let backend: String
    let server: any EngineServer
    let stopReport: () -> String?
    let backendCounters: () -> [BackendCounter]

    /// What a scrape shows of this device (from any thread).
    func scrape(cyclesPerSecond: Double) -> DeviceScrape {
        var scrape = server.scrape(cyclesPerSecond: cyclesPerSecond)
        scrape.name = name
        scrape.backend = backend
        scrape.backendCounters = backendCounters()
        return scrape
    }
}

/// Starts the device whose backend is the visited one: one generic path for every backend,
/// specialised per backend because `RegisteredBackends.visitAll` names each concrete factory.
struct DeviceStarter: BackendVisitor {
    let engine: DPFSEngine
    let device: DeviceConfiguration
    let clock: CycleClock
    let devicesInProcess: Int
    var started: StartedDevice?

    mutating func visit<Factory: BackendFactory>(_: Factory.Type) throws {
        guard Factory.schema.name == device.backend.backend else { return }
        let logger = Logger(label: "dpfs-engine.\(device.name)")
        let context = BackendStartContext(deviceName: device.name, deployment: device.deployment, devicesInProcess: devicesInProcess)
        let factory: Factory
        do {
            factory = try Factory(settings: device.backend, context: context)
        } catch {
            throw StartupError("device \(device.name): \(error)")
        }
        for warning in factory.warnings { logger.warning("\(warning)") }
        let server = try engine.startServer(device, clock: clock, logger: logger, initPolicy: factory.initPolicy,
                                            report: factory.report, hostMounted: { factory.hostMounted(sessionFD: $0) }) {
            factory.makeBackend(queue: $0)
        }
        started = StartedDevice(name: device.name, backend: device.backend.backend, server: server,
                                stopReport: { factory.stopReport() }, backendCounters: { factory.metricsCounters() })
    }
}

/// A device's server, whatever its backend, as the engine's main loop drives it.
protocol EngineServer: Sendable {
    func run(until stop: borrowing Atomic<Bool>)
    /// Resets the device (quiescing its queues) and says what it served.
    func stopAndReport() -> String
    /// Frees what the device bound (its socket file), once its `run` returned.
    func closeListener()
    /// Its queues' counters and its control-plane counts, read while it serves.
    func scrape(cyclesPerSecond: Double) -> DeviceScrape
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

    func scrape(cyclesPerSecond: Double) -> DeviceScrape {
        let queues = (0..<device.configuration.queueCount).map {
            QueueScrape(queue: $0, slots: device.configuration.poller.slotCount, counters: device.counters(queue: $0), cyclesPerSecond: cyclesPerSecond)
        }
        return DeviceScrape(name: device.configuration.name, transport: "vhost-user", backend: "", queues: queues,
                            failures: UInt64(device.failuresTotal), connections: UInt64(connectionsServed))
    }
}

/// A host mount's server: waits while the mount is served, unmounts on stop.
final class FUSEHostServer<B: Backend>: EngineServer, @unchecked Sendable {
    let device: FUSEHostDevice<B>
    init(device: FUSEHostDevice<B>) { self.device = device }
    func run(until stop: borrowing Atomic<Bool>) { device.run(until: stop) }
    func stopAndReport() -> String { device.stop() }
    func closeListener() {}
    func scrape(cyclesPerSecond: Double) -> DeviceScrape {
        let queues = (0..<device.queueCount).map {
            QueueScrape(queue: $0, slots: device.slotsPerQueue, counters: device.pollerCounters(queue: $0), cyclesPerSecond: cyclesPerSecond)
        }
        return DeviceScrape(name: "", transport: "fuse", backend: "", queues: queues)
    }
}

extension DPFSEngine {
    /// Builds the device of one [[device]] table: a vhost-user socket or a host mount.
    /// `hostMounted` runs for a host mount once it is mounted, before its queues start, with the
    /// session's /dev/fuse descriptor.
    func startServer<B: Backend>(_ device: DeviceConfiguration, clock: CycleClock, logger: Logger, initPolicy: InitPolicy,
                                 report: String, hostMounted: (Int32) -> Void, makeBackend: (Int) -> B) throws -> any EngineServer {
        let queues = device.queues
        switch device.transport {
        case .vhostUser(let socket):
            return try startDevice(device, socket: socket, clock: clock, logger: logger, initPolicy: initPolicy, report: report, makeBackend: makeBackend)
        case .fuse(let mount):
            let pollerConfiguration = PollerConfiguration(slotCount: queues.slotsPerQueue, batchMax: queues.batchMax, initPolicy: initPolicy)
            let hostConfiguration = FUSEHostConfiguration(
                name: device.name, mount: FUSEMountOptions(mountPoint: mount.mountPoint, allowOther: mount.allowOther),
                transport: FUSETransportChoice(rawValue: mount.mode.rawValue)!, queues: queues.requestQueues,
                poller: pollerConfiguration, ringDepth: mount.ringDepth, busyPollMicroseconds: queues.busyPollMicroseconds,
                cpus: queues.cpus, kernelPassthrough: mount.kernelPassthrough)
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
    func startDevice<B: Backend>(_ device: DeviceConfiguration, socket: VhostUserSettings, clock: CycleClock, logger: Logger,
                                 initPolicy: InitPolicy, report: String, makeBackend: (Int) -> B) throws -> VhostUserServer<B> {
        let queues = device.queues
        let pollerConfiguration = PollerConfiguration(slotCount: queues.slotsPerQueue, batchMax: queues.batchMax,
                                                      initPolicy: initPolicy)
        let deviceConfiguration = VhostUserDeviceConfiguration(
            name: device.name, requestQueues: queues.requestQueues, poller: pollerConfiguration,
            busyPollMicroseconds: queues.busyPollMicroseconds, cpus: queues.cpus)
        let vhostDevice = try VhostUserDevice(configuration: deviceConfiguration, logger: logger,
                                              cyclesPerNanosecond: clock.cyclesPerNanosecond, makeBackend: makeBackend)
        let server: VhostUserServer<B>
        let access: SocketAccess
        do throws(SocketPathError) {
            access = SocketAccess(groupID: socket.socketGroup.isEmpty ? nil : try UnixSocketListener.groupID(named: socket.socketGroup))
            if let descriptor = socket.listeningDescriptor {
                server = try VhostUserServer(adopting: descriptor, name: socket.socketPath, device: vhostDevice, logger: logger)
            } else {
                server = try VhostUserServer(socketPath: socket.socketPath, access: access, device: vhostDevice, logger: logger)
            }
        } catch {
            throw StartupError("device \(device.name): \(error)")
        }
        let group = access.groupID.map { " group \($0)" } ?? " owner only"
        logger.info("\(vhostDevice.report); \(report); socket \(socket.socketPath) (mode \(String(access.mode, radix: 8))\(group))")
        return server
    }
}

/// A start-up failure that is not a usage mistake: printed as one line, without the usage text.
struct StartupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
