import BackendKit
import DPFSConfiguration
import FUSEWire

/// The NFS backend as the engine registers it: its settings (the URL is parsed when the
/// configuration is read, so a mistyped one is refused before any server is asked), the device
/// built from them (the mount, the tables) and its fault report at stop.
public struct NFSBackendFactory: BackendFactory {
    public static let schema = BackendSchema(
        name: "nfs", summary: "an NFS export (NFSv3, or NFSv4.1 with a session per queue), over connections driven from each queue's poller",
        settings: [
            Setting("nfs_url", .string, default: nil, help: "the export: nfs://HOST/EXPORT?version=3[&nfsport=N][&mountport=N], or nfs://HOST/PSEUDO-PATH?version=4.1[&nfsport=N]"),
            SharedSettings.cache,
            SharedSettings.nodesMax,
            SharedSettings.openFilesMax,
            Setting("nfs_timeout_ms", .integer(NFSConfiguration.requestTimeoutMillisecondsRange),
                    default: .integer(NFSConfiguration.requestTimeoutMillisecondsDefault),
                    help: "a request not answered in this many milliseconds fails EIO"),
            Setting("nfs_connections", .integer(1...NFSConfiguration.connectionsPerQueueMax), default: .integer(1),
                    help: "TCP connections to the server per request queue"),
            Setting("nfs_journal_mb", .integer(0...NFSConfiguration.journalMegabytesMax), default: .integer(NFSConfiguration.journalMegabytesDefault),
                    help: "MiB per queue kept of data written but not yet committed, resent when the server restarts (0: none)"),
        ],
        check: { settings, _ throws(ConfigurationError) in
            do throws(NFSURL.ParseError) {
                let url = try NFSURL.parse(settings.string("nfs_url"))
                guard url.version == 3 || settings.integer("nfs_connections") == 1 else {
                    throw NFSURL.ParseError(description: "NFSv4 takes one connection per queue (a 4.1 session binds it): nfs_connections must be 1")
                }
            } catch {
                throw ConfigurationError(line: 0, "nfs_url: \(error.description)")
            }
        })

    public let device: NFSDevice

    public init(settings: BackendSettings, context: BackendStartContext) throws(BackendStartError) {
        do {
            let url = try NFSURL.parse(settings.string("nfs_url"))
            // The same cache modes as the passthrough backend: what the guest may keep, and for how long.
            let mode = settings.choice("cache", CacheMode.self)
            let configuration = NFSConfiguration(
                url: url, validity: mode.validity, openFlags: mode.openFlags,
                nodesMax: settings.integer("inodes_max"), openFilesMax: settings.integer("open_files_max"),
                requestTimeoutMilliseconds: settings.integer("nfs_timeout_ms"),
                connectionsPerQueue: settings.integer("nfs_connections"),
                journalBytesPerQueue: settings.integer("nfs_journal_mb") << 20)
            device = try NFSDevice(configuration: configuration)
        } catch {
            throw BackendStartError("\(error)")
        }
    }

    public var initPolicy: InitPolicy { NFSBackend.initPolicy(device) }
    public var report: String { "backend \(device.report)" }
    public func makeBackend(queue: Int) -> NFSBackend { NFSBackend(device: device) }
    public func stopReport() -> String? { [device.faultReport, device.stopV4()].compactMap { $0 }.joined(separator: "; ") }
    public func metricsCounters() -> [BackendCounter] { device.metricsCounters }
}
