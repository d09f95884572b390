import DPFSConfiguration
import DPFSCore
// Backends name BackendCounter through BackendKit, the one module they are written against.
@_exported import struct EngineMetrics.BackendCounter
import FUSEWire

// How a backend module describes itself to the engine (docs/writing-a-backend.md, "Registering"):
// its settings (schema), how it builds the state a device's queues share from them, what it asks
// of INIT, its start-up report line, and one backend value per queue. The engine has one generic
// serve path over this protocol; a new backend is its module plus one line in the registry
// (Sources/DPFSBackends).

/// Where and how a device's backend is started.
public struct BackendStartContext: Sendable {
    public let deviceName: String
    public let deployment: BackendDeployment
    /// Devices this process serves (a backend sizing a process-wide limit, RLIMIT_NOFILE, counts them).
    public let devicesInProcess: Int

    public init(deviceName: String, deployment: BackendDeployment, devicesInProcess: Int) {
        precondition(devicesInProcess >= 1)
        self.deviceName = deviceName
        self.deployment = deployment
        self.devicesInProcess = devicesInProcess
    }
}

/// A start-up failure of a backend: one line, the reason (a missing directory, an unreachable server).
public struct BackendStartError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One device's backend, built once from its checked settings; the engine asks it for a backend
/// value per queue.
public protocol BackendFactory {
    associatedtype QueueBackend: Backend

    /// The backend's name, settings, defaults, ranges and cross-checks.
    static var schema: BackendSchema { get }

    /// Builds what the device's queues share (tables, connections) from settings its schema
    /// checked and completed.
    init(settings: BackendSettings, context: BackendStartContext) throws(BackendStartError)

    /// What the backend asks of INIT (locks, writeback cache, killpriv, ...), with its reasons.
    var initPolicy: InitPolicy { get }

    /// One line for the start-up log: what is served and with which limits.
    var report: String { get }

    /// Conditions the operator should know about at start-up (logged as warnings).
    var warnings: [String] { get }

    /// The backend value of queue `queue` (each queue's poller owns one).
    func makeBackend(queue: Int) -> QueueBackend

    /// A host mount is mounted, before its queues start: the session's /dev/fuse descriptor.
    func hostMounted(sessionFD: Int32)

    /// One line for the stop log (faults seen, reconnects), or nil.
    func stopReport() -> String?

    /// What the backend counts on its control plane (reconnects, timeouts), for `/metrics`; read
    /// while the device serves, so from shared atomics, never from a queue's own memory.
    func metricsCounters() -> [BackendCounter]
}

extension BackendFactory {
    public var warnings: [String] { [] }
    public func hostMounted(sessionFD: Int32) {}
    public func stopReport() -> String? { nil }
    public func metricsCounters() -> [BackendCounter] { [] }
}

/// Settings several backends share, declared once so their keys, ranges and defaults cannot drift.
public enum SharedSettings {
    public static let cache = Setting(
        "cache", .choice(CacheMode.allCases.map(\.rawValue)), default: .string(CacheMode.auto.rawValue),
        help: "what the guest may cache: never, metadata, auto or always")
    public static let nodesMax = Setting(
        "inodes_max", .integer(16...(1 << 24)), default: .integer(DeviceTableDefaults.nodesMax),
        help: "inodes the guest may know at once")
    public static let openFilesMax = Setting(
        "open_files_max", .integer(16...(1 << 24)), default: .integer(DeviceTableDefaults.openFilesMax),
        help: "files and directories the guest may have open at once")
}

/// Visits every registered backend's factory type with its concrete type, so the engine's generic
/// serve path is specialised for each backend (an existential `any BackendFactory.Type` opened at
/// run time would leave the pollers unspecialised).
public protocol BackendVisitor {
    mutating func visit<Factory: BackendFactory>(_ factory: Factory.Type) throws
}

/// Collects every registered backend's schema.
public struct SchemaCollector: BackendVisitor {
    public private(set) var schemas: [BackendSchema] = []
    public init() {}
    public mutating func visit<Factory: BackendFactory>(_ factory: Factory.Type) { schemas.append(Factory.schema) }
}
