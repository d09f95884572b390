import BackendKit
import DPFSConfiguration
import FUSEWire

/// The key-value backend as the engine registers it: its settings (the URL and the prefix are
/// checked when the configuration is read), the device built from them (the functions loaded, the
/// store formatted or its orphans reclaimed) and its fault report at stop.
public struct KVBackendFactory: BackendFactory {
    public static let schema = BackendSchema(
        name: "kv", summary: "files and directories in a Redis server, one connection per queue driven from its poller",
        settings: [
            Setting("kv_url", .string, default: nil, help: "the server: redis://IPv4:PORT[/0] or unix:///PATH"),
            Setting("kv_prefix", .string, default: .string("dpfs"),
                    help: "every key of this file system starts with it (letters, digits, - _ .), so file systems share a server"),
            SharedSettings.cache,
            SharedSettings.openFilesMax,
            Setting("kv_chunk_kb", .integer(4...1024), default: .integer(64),
                    help: "KiB of file data per key, a power of two (fixed when the store is formatted)"),
            Setting("kv_capacity_mb", .integer(1...(1 << 30)), default: .integer(16384),
                    help: "MiB of file data the store may hold: ENOSPC past it, and what statfs reports"),
            Setting("kv_file_mb", .integer(1...(KVConfiguration.fileBytesLimit >> 20)), default: .integer(KVConfiguration.fileBytesLimit >> 20),
                    help: "MiB one file may grow to (EFBIG past it)"),
            Setting("kv_inodes_max", .integer(16...(1 << 32)), default: .integer(1 << 20),
                    help: "files, directories and links the store may hold (ENOSPC past it)"),
            Setting("kv_timeout_ms", .integer(10...600_000), default: .integer(10_000),
                    help: "a request not answered in this many milliseconds fails EIO"),
        ],
        check: { settings, _ throws(ConfigurationError) in
            do throws(KVEndpoint.ParseError) {
                _ = try KVEndpoint.parse(settings.string("kv_url"))
            } catch {
                throw ConfigurationError(line: 0, "kv_url: \(error.description)")
            }
            if let problem = KVConfiguration.prefixProblem(settings.string("kv_prefix")) { throw ConfigurationError(line: 0, problem) }
            let chunk = settings.integer("kv_chunk_kb")
            guard chunk & (chunk - 1) == 0 else { throw ConfigurationError(line: 0, "kv_chunk_kb must be a power of two (got \(chunk))") }
        })

    public let device: KVDevice

    public init(settings: BackendSettings, context: BackendStartContext) throws(BackendStartError) {
        do {
            let mode = settings.choice("cache", CacheMode.self)
            let configuration = KVConfiguration(
                endpoint: try KVEndpoint.parse(settings.string("kv_url")), prefix: settings.string("kv_prefix"),
                chunkBytes: settings.integer("kv_chunk_kb") << 10, capacityBytes: settings.integer("kv_capacity_mb") << 20,
                fileBytesMax: settings.integer("kv_file_mb") << 20, validity: mode.validity, openFlags: mode.openFlags,
                openFilesMax: settings.integer("open_files_max"), requestTimeoutMilliseconds: settings.integer("kv_timeout_ms"),
                inodesMax: settings.integer("kv_inodes_max"))
            device = try KVDevice(configuration: configuration)
        } catch {
            throw BackendStartError("\(error)")
        }
    }

    public var initPolicy: InitPolicy { KVBackend.initPolicy(device) }
    public var report: String { "backend \(device.report)" }
    public func makeBackend(queue: Int) -> KVBackend { KVBackend(device: device) }
    public func stopReport() -> String? { device.faultReport }
    public func metricsCounters() -> [BackendCounter] { device.metricsCounters }
}
