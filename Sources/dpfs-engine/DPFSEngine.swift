import ArgumentParser
import CDPFS
import DPFSConfiguration
import DPFSCore
import DPFSPosix
import FUSEWire
import Foundation
import Glibc
import Logging
import NullBackend
import Synchronization
import VhostUser

/// Set by SIGTERM/SIGINT; every server checks it at least every 200 ms.
let shutdownRequested = Atomic<Bool>(false)

@main
struct DPFSEngine: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dpfs-engine",
        abstract: "Serves virtio-fs to vhost-user front-ends (QEMU's vhost-user-fs-pci).",
        discussion: """
            Either one device from the command line (--vhost-user-socket, --backend, …) or several from a \
            TOML file (--config), one [[device]] table per tenant. Stops gracefully on SIGTERM/SIGINT.
            """)

    @Option(help: "TOML configuration file declaring one or more [[device]] tables.")
    var config: String?

    @Option(name: .customLong("vhost-user-socket"), help: "Unix socket the front-end connects to (one device).")
    var socket: String?

    @Option(help: "Backend: null.")
    var backend: String = "null"

    @Option(help: "Request queues (the front-end's num-request-queues); queue 0 (hiprio) comes on top.")
    var queues: Int = 1

    @Option(help: "Requests in flight per queue (a power of two).")
    var slots: Int = 256

    @Option(name: .customLong("busy-poll-us"), help: "Microseconds a queue spins after its last request before sleeping on its kick eventfd.")
    var busyPollMicroseconds: Int = 50

    @Option(name: .customLong("null-file-size"), help: "Size of the null backend's file, in bytes.")
    var nullFileSize: UInt64 = 1 << 30

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String?

    func validate() throws {
        guard (config == nil) != (socket == nil) else {
            throw ValidationError("give either --config FILE or --vhost-user-socket PATH")
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
                let device = DeviceConfiguration(name: "dpfs", socketPath: socket!, backend: kind, requestQueues: queues,
                                                 slotsPerQueue: slots, batchMax: min(32, slots),
                                                 busyPollMicroseconds: busyPollMicroseconds, nullFileSizeBytes: nullFileSize)
                try device.validate()
                engineConfiguration = EngineConfiguration(devices: [device])
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

    func serve(_ configuration: EngineConfiguration, logger: Logger) throws {
        _ = shutdownRequested.load(ordering: .relaxed)   // initialise before any handler can run
        signal(SIGTERM) { _ in shutdownRequested.store(true, ordering: .relaxed) }
        signal(SIGINT) { _ in shutdownRequested.store(true, ordering: .relaxed) }
        signal(SIGPIPE, SIG_IGN)

        let clock = CycleClock.calibrate(milliseconds: 20)
        var threads: [PinnedThread] = []
        var servers: [VhostUserServer<NullBackend>] = []
        logger.info("dpfs-engine starting: \(configuration.devices.count) device(s), \(PinnedThread.onlineCPUs) CPUs online")
        for device in configuration.devices {
            let pollerConfiguration = PollerConfiguration(slotCount: device.slotsPerQueue, batchMax: device.batchMax)
            let deviceConfiguration = VhostUserDeviceConfiguration(
                name: device.name, requestQueues: device.requestQueues, poller: pollerConfiguration,
                busyPollMicroseconds: device.busyPollMicroseconds, cpus: device.cpus)
            let deviceLogger = Logger(label: "dpfs-engine.\(device.name)")
            let nullConfiguration = NullBackendConfiguration(fileSizeBytes: device.nullFileSizeBytes)
            let vhostDevice = try VhostUserDevice(configuration: deviceConfiguration, logger: deviceLogger,
                                                  cyclesPerNanosecond: clock.cyclesPerNanosecond) { _ in
                NullBackend(configuration: nullConfiguration)
            }
            let server = try VhostUserServer(socketPath: device.socketPath, device: vhostDevice, logger: deviceLogger)
            logger.info("\(vhostDevice.report); backend \(device.backend.rawValue); socket \(device.socketPath)")
            servers.append(server)
        }
        for server in servers {
            threads.append(try PinnedThread { server.run(until: shutdownRequested) })
        }
        logger.info("ready")
        for thread in threads { thread.join() }
        for server in servers {
            server.device.reset()
            var replies: UInt64 = 0
            for queue in 0..<server.device.configuration.queueCount { replies += server.device.metrics(queue: queue).repliesSent }
            logger.info("device \(server.device.configuration.name): \(server.connectionsServed) connection(s), \(replies) replies sent")
        }
        logger.info("dpfs-engine stopped")
    }
}
