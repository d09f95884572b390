import FUSEWire

// The engine's configuration: one [[device]] table per tenant (one vhost-user socket or host mount
// and one backend each), read once at start-up, every value checked against its limit with a clear
// message and its line. A device is its transport's settings, its queues' settings and its
// backend's settings; the backend's keys, defaults and ranges come from the backend's own schema
// (BackendSettings.swift), so this file names no backend.

/// How requests reach the engine: a vhost-user socket (a VM's virtio-fs device) or /dev/fuse (a
/// mount on this host).
public enum TransportKind: String, Sendable, CaseIterable {
    case vhostUser = "vhost-user"
    case fuse

    /// Microseconds a queue spins after its last request before sleeping. A vhost-user queue
    /// spins: its guest runs on other CPUs. A host-mount queue sleeps: the application it serves
    /// shares this machine's CPUs, a spinning queue takes the CPU the application needs, and a
    /// sleeping one runs on the application's CPU the moment the application blocks for its reply
    /// (measured: QD1 4 KiB reads 127k/s sleeping, 106k/s spinning 50 µs, io_uring, fio and queue
    /// on one CPU).
    public var defaultBusyPollMicroseconds: Int {
        switch self {
        case .vhostUser: 50
        case .fuse: 0
        }
    }

    /// Requests in flight per queue: a classic host-mount slot holds a 2 MiB buffer.
    public var defaultSlotsPerQueue: Int {
        switch self {
        case .vhostUser: 256
        case .fuse: 16
        }
    }
}

/// /dev/fuse modes (FUSEDevice's FUSETransportChoice).
public enum HostMountMode: String, Sendable, CaseIterable {
    case auto
    case classic
    case uring
}

/// A vhost-user socket a VMM connects to.
public struct VhostUserSettings: Equatable, Sendable {
    public var socketPath: String
    /// The group (name or number) that may connect besides the socket's owner (mode 0660); empty:
    /// the owner only (0600). A VMM running as another user (libvirt's `libvirt-qemu`) needs its
    /// group here.
    public var socketGroup: String = ""
    /// A socket the launcher already listens on and hands over (virtiofsd's `--fd`, as libvirt and
    /// Kata pass it); `socketPath` then only names it in reports. Nil: bind `socketPath`.
    public var listeningDescriptor: Int32? = nil

    public init(socketPath: String, socketGroup: String = "", listeningDescriptor: Int32? = nil) {
        self.socketPath = socketPath
        self.socketGroup = socketGroup
        self.listeningDescriptor = listeningDescriptor
    }
}

/// A mount on this host through /dev/fuse.
public struct HostMountSettings: Equatable, Sendable {
    public var mountPoint: String
    public var mode: HostMountMode = .auto
    /// Offer kernel passthrough (backends that can answer OPEN with a backing file).
    public var kernelPassthrough = false
    /// Let every host user reach the mount (the kernel's `allow_other`, always with
    /// `default_permissions`); off: only the user who mounted it (root).
    public var allowOther = false
    /// Ring entries per FUSE-over-io_uring queue.
    public var ringDepth = 16

    public init(mountPoint: String) { self.mountPoint = mountPoint }
}

/// A device's transport, tagged: settings of one transport cannot be set on another.
public enum TransportSettings: Equatable, Sendable {
    case vhostUser(VhostUserSettings)
    case fuse(HostMountSettings)

    public var kind: TransportKind {
        switch self {
        case .vhostUser: .vhostUser
        case .fuse: .fuse
        }
    }

    /// The socket or the mount point: what no two devices may share.
    public var path: String {
        switch self {
        case .vhostUser(let settings): settings.socketPath
        case .fuse(let settings): settings.mountPoint
        }
    }
}

/// The queues a device serves and how their threads run.
public struct QueueSettings: Equatable, Sendable {
    public var requestQueues = 1
    public var slotsPerQueue: Int
    public var batchMax: Int
    public var busyPollMicroseconds: Int
    public var cpus: [Int] = []

    /// "0, 1, 3" as CPU numbers (TOML's `cpus`, the command line's `--cpus`; `line` 0 for the latter).
    public static func cpuList(_ text: String, line: Int) throws(ConfigurationError) -> [Int] {
        var cpus: [Int] = []
        for part in text.split(separator: ",") {
            guard let cpu = Int(String(part).trimmingWhitespace()), cpu >= 0, cpu < 4096 else {
                throw ConfigurationError(line: line, "cpus must be a comma-separated list of CPU numbers")
            }
            cpus.append(cpu)
        }
        return cpus
    }

    /// The defaults for `transport`.
    public init(for transport: TransportKind) {
        slotsPerQueue = transport.defaultSlotsPerQueue
        batchMax = min(32, slotsPerQueue)
        busyPollMicroseconds = transport.defaultBusyPollMicroseconds
    }
}

public struct DeviceConfiguration: Equatable, Sendable {
    public var name: String
    public var transport: TransportSettings
    public var queues: QueueSettings
    public var backend: BackendSettings

    public init(name: String, transport: TransportSettings, queues: QueueSettings? = nil, backend: BackendSettings) {
        self.name = name
        self.transport = transport
        self.queues = queues ?? QueueSettings(for: transport.kind)
        self.backend = backend
    }

    public var deployment: BackendDeployment {
        guard case .fuse(let mount) = transport else { return BackendDeployment(transport: .vhostUser) }
        return BackendDeployment(transport: .fuse, kernelPassthrough: mount.kernelPassthrough)
    }

    /// Checks the transport and queue values against their limits (the backend's settings were
    /// checked against its schema when they were read).
    public func validate(backends: BackendRegistry) throws(ConfigurationError) {
        guard !name.isEmpty, name.utf8.count <= 64 else { throw ConfigurationError(line: 0, key: "name", "device name must be 1...64 bytes") }
        switch transport {
        case .vhostUser(let socket):
            guard !socket.socketPath.isEmpty, socket.socketPath.utf8.count < 108 else {
                throw ConfigurationError(line: 0, key: "socket", "device \(name): socket path must be 1...107 bytes (sun_path)")
            }
        case .fuse(let mount):
            guard mount.mountPoint.hasPrefix("/"), mount.mountPoint.utf8.count < 4096 else {
                throw ConfigurationError(line: 0, key: "mount", "device \(name): transport fuse needs an absolute mount path (mount, --fuse-mount)")
            }
            guard (1...1024).contains(mount.ringDepth) else { throw ConfigurationError(line: 0, key: "ring_depth", "device \(name): ring_depth must be 1...1024") }
            let offering = backends.schemas.filter(\.offersKernelPassthrough).map(\.name)
            guard !mount.kernelPassthrough || offering.contains(backend.backend) else {
                throw ConfigurationError(line: 0, key: "fuse_passthrough", "device \(name): fuse_passthrough needs the \(offering.joined(separator: " or ")) backend")
            }
        }
        try validateQueues()
    }

    func validateQueues() throws(ConfigurationError) {
        guard (1...64).contains(queues.requestQueues) else { throw ConfigurationError(line: 0, key: "request_queues", "device \(name): request_queues must be 1...64") }
        guard (1...65536).contains(queues.slotsPerQueue), queues.slotsPerQueue & (queues.slotsPerQueue - 1) == 0 else {
            throw ConfigurationError(line: 0, key: "slots", "device \(name): slots must be a power of two in 1...65536")
        }
        guard (1...queues.slotsPerQueue).contains(queues.batchMax) else { throw ConfigurationError(line: 0, key: "batch", "device \(name): batch must be 1...slots") }
        guard (0...1_000_000).contains(queues.busyPollMicroseconds) else {
            throw ConfigurationError(line: 0, key: "busy_poll_us", "device \(name): busy_poll_us must be 0...1000000")
        }
        guard queues.cpus.allSatisfy({ (0..<4096).contains($0) }) else { throw ConfigurationError(line: 0, key: "cpus", "device \(name): cpus must be 0...4095") }
    }
}

public struct EngineConfiguration: Equatable, Sendable {
    public var logLevel: String
    /// Where `/metrics` is served (IPv4 HOST:PORT); nil: nowhere.
    public var metricsAddress: String?
    public var devices: [DeviceConfiguration]

    public init(logLevel: String = "info", metricsAddress: String? = nil, devices: [DeviceConfiguration]) {
        self.logLevel = logLevel
        self.metricsAddress = metricsAddress
        self.devices = devices
    }

    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// Reads a configuration file's text; `backends` says which backends exist and their settings.
    public static func parse(_ text: String, backends: BackendRegistry) throws(ConfigurationError) -> EngineConfiguration {
        let document = try TOMLReader.parse(text)
        for (name, table) in document.tables where name != "engine" {
            throw ConfigurationError(line: table.line, "unknown table [\(name)] (known: [engine], [[device]])")
        }
        for (name, tables) in document.tableArrays where name != "device" {
            throw ConfigurationError(line: tables[0].line, "unknown table array [[\(name)]] (known: [[device]])")
        }
        if let stray = document.rootEntries.first {
            let hint = stray.key == "device" ? " (devices are [[device]] tables)" : ""
            throw ConfigurationError(line: stray.line, "key '\(stray.key)' outside any table\(hint)")
        }
        var engine = EngineConfiguration(devices: [])
        try engine.readEngineTable(document.tables["engine"] ?? ConfigTable())
        for table in document.tableArrays["device"] ?? [] {
            var entries = DeviceEntries(table)
            engine.devices.append(try entries.device(defaultName: "dpfs\(engine.devices.count)", backends: backends))
        }
        guard !engine.devices.isEmpty else { throw ConfigurationError(line: 0, "no [[device]] configured") }
        try checkDistinct(engine.devices)
        return engine
    }

    /// `[engine]`: log_level and metrics_address.
    mutating func readEngineTable(_ table: ConfigTable) throws(ConfigurationError) {
        for entry in table.entries {
            switch entry.key {
            case "log_level":
                logLevel = try DeviceEntries.string(entry)
                guard Self.logLevels.contains(logLevel) else {
                    throw ConfigurationError(line: entry.line, "log_level must be one of \(Self.logLevels.joined(separator: ", "))")
                }
            case "metrics_address":
                metricsAddress = try DeviceEntries.string(entry)
            default:
                throw ConfigurationError(line: entry.line, "unknown key '\(entry.key)' in [engine]")
            }
        }
    }

    /// No two devices share a name, a socket or a mount point, however the paths are spelled (two
    /// listeners on one path would leave one of them orphaned; the engine also refuses a socket
    /// another process still listens on).
    static func checkDistinct(_ devices: [DeviceConfiguration]) throws(ConfigurationError) {
        var seenNames = Set<String>(), seenPaths = Set<String>()
        for device in devices {
            guard seenNames.insert(device.name).inserted else { throw ConfigurationError(line: 0, "two devices are named \(device.name)") }
            let path = normalizedPath(device.transport.path)
            guard seenPaths.insert(path).inserted else {
                throw ConfigurationError(line: 0, device.transport.kind == .fuse ? "two devices mount \(path)" : "two devices share socket \(path)")
            }
        }
    }

    /// A path with repeated slashes, "." components and a trailing slash taken out.
    public static func normalizedPath(_ path: String) -> String {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        let joined = parts.joined(separator: "/")
        return path.hasPrefix("/") ? "/" + joined : joined
    }
}

/// One [[device]] table's entries, taken out as they are read: what is left at the end is either
/// a setting of the device's backend or a mistake, reported with its line.
struct DeviceEntries {
    typealias Entry = ConfigEntry
    var remaining: [Entry]
    let firstLine: Int
    /// Lines of the keys taken so far, for checks made after reading (`ConfigurationError.located`).
    var takenLines: [String: Int] = [:]

    static let vhostUserKeys = ["socket", "socket_group"]
    static let hostMountKeys = ["mount", "fuse_transport", "fuse_passthrough", "fuse_allow_other", "ring_depth"]

    init(_ table: ConfigTable) {
        remaining = table.entries
        firstLine = table.line
    }

    mutating func take(_ key: String) -> Entry? {
        guard let position = remaining.firstIndex(where: { $0.key == key }) else { return nil }
        takenLines[key] = remaining[position].line
        return remaining.remove(at: position)
    }

    mutating func device(defaultName: String, backends: BackendRegistry) throws(ConfigurationError) -> DeviceConfiguration {
        let name = try take("name").map { entry throws(ConfigurationError) in try Self.string(entry) } ?? defaultName
        var kind = TransportKind.vhostUser
        if let entry = take("transport") { kind = try Self.choice(entry, TransportKind.self) }
        var backendName = "null"
        if let entry = take("backend") {
            backendName = try Self.string(entry)
            guard backends.schema(backendName) != nil else {
                throw ConfigurationError(line: entry.line, "unknown backend '\(backendName)' (known: \(backends.names.joined(separator: ", ")))")
            }
        }
        let transport = try transport(kind, device: name)
        let queues = try queues(for: kind)
        let schema = backends.schema(backendName)!
        let given = try backendSettings(schema, backends: backends, transport: kind)
        let deployment = DeviceConfiguration(name: name, transport: transport, backend: schema.defaults).deployment
        do throws(ConfigurationError) {
            let device = DeviceConfiguration(name: name, transport: transport, queues: queues,
                                             backend: try schema.complete(given, device: name, deployment: deployment))
            try device.validate(backends: backends)
            return device
        } catch {
            throw error.located(takenLines)
        }
    }

    mutating func transport(_ kind: TransportKind, device: String) throws(ConfigurationError) -> TransportSettings {
        switch kind {
        case .vhostUser:
            guard let socket = take("socket") else { throw ConfigurationError(line: firstLine, "device \(device) has no socket") }
            var settings = VhostUserSettings(socketPath: try Self.string(socket))
            if let entry = take("socket_group") { settings.socketGroup = try Self.string(entry) }
            return .vhostUser(settings)
        case .fuse:
            var settings = HostMountSettings(mountPoint: "")
            if let entry = take("mount") { settings.mountPoint = try Self.string(entry) }
            if let entry = take("fuse_transport") { settings.mode = try Self.choice(entry, HostMountMode.self) }
            if let entry = take("fuse_passthrough") { settings.kernelPassthrough = try Self.boolean(entry) }
            if let entry = take("fuse_allow_other") { settings.allowOther = try Self.boolean(entry) }
            if let entry = take("ring_depth") { settings.ringDepth = try Self.integer(entry) }
            return .fuse(settings)
        }
    }

    mutating func queues(for kind: TransportKind) throws(ConfigurationError) -> QueueSettings {
        var queues = QueueSettings(for: kind)
        if let entry = take("request_queues") { queues.requestQueues = try Self.integer(entry) }
        if let entry = take("slots") {
            queues.slotsPerQueue = try Self.integer(entry)
            queues.batchMax = min(queues.batchMax, max(1, queues.slotsPerQueue))
        }
        if let entry = take("batch") { queues.batchMax = try Self.integer(entry) }
        if let entry = take("busy_poll_us") { queues.busyPollMicroseconds = try Self.integer(entry) }
        if let entry = take("cpus") { queues.cpus = try Self.cpus(entry) }
        return queues
    }

    /// What is left: settings of the device's backend, each checked with its line; a key of
    /// another backend or transport says whose it is; anything else is unknown.
    mutating func backendSettings(_ schema: BackendSchema, backends: BackendRegistry,
                                  transport: TransportKind) throws(ConfigurationError) -> [String: SettingValue] {
        var given: [String: SettingValue] = [:]
        for entry in remaining {
            takenLines[entry.key] = entry.line
            if let setting = schema.setting(entry.key) {
                given[entry.key] = try setting.check(Self.settingValue(entry), line: entry.line)
                continue
            }
            let owners = backends.schemas.filter { $0.setting(entry.key) != nil }.map(\.name)
            if !owners.isEmpty {
                throw ConfigurationError(line: entry.line, "\(entry.key) is only for the \(BackendRegistry.list(owners))")
            }
            if Self.vhostUserKeys.contains(entry.key) || Self.hostMountKeys.contains(entry.key) {
                let other = transport == .fuse ? TransportKind.vhostUser : .fuse
                throw ConfigurationError(line: entry.line, "\(entry.key) is only for transport = \"\(other.rawValue)\"")
            }
            throw ConfigurationError(line: entry.line, "unknown key '\(entry.key)' in [[device]]")
        }
        remaining = []
        return given
    }

    static func settingValue(_ entry: Entry) throws(ConfigurationError) -> SettingValue {
        switch entry.value {
        case .string(let text): return .string(text)
        case .boolean(let flag): return .boolean(flag)
        case .integer(let number):
            guard let value = Int(exactly: number) else { throw ConfigurationError(line: entry.line, "'\(entry.key)' is out of range") }
            return .integer(value)
        default:
            throw ConfigurationError(line: entry.line, "'\(entry.key)' cannot be \(entry.value.kindName)")
        }
    }

    /// `cpus = [0, 1]`, or the older `cpus = "0,1"`.
    static func cpus(_ entry: Entry) throws(ConfigurationError) -> [Int] {
        guard case .array(let values) = entry.value else {
            return try QueueSettings.cpuList(string(entry), line: entry.line)
        }
        var cpus: [Int] = []
        for value in values {
            guard case .integer(let cpu) = value, (0..<4096).contains(cpu) else {
                throw ConfigurationError(line: entry.line, "cpus must be an array of CPU numbers 0...4095, like [0, 1]")
            }
            cpus.append(Int(cpu))
        }
        return cpus
    }

    static func string(_ entry: Entry) throws(ConfigurationError) -> String {
        guard case .string(let text) = entry.value else {
            throw ConfigurationError(line: entry.line, "'\(entry.key)' must be a string, not \(entry.value.kindName)")
        }
        return text
    }

    /// A string naming one case of `Choice`; anything else is an error that lists the cases.
    static func choice<Choice: RawRepresentable & CaseIterable>(_ entry: Entry, _: Choice.Type) throws(ConfigurationError) -> Choice
    where Choice.RawValue == String {
        let text = try string(entry)
        guard let value = Choice(rawValue: text) else {
            throw ConfigurationError(line: entry.line, "\(entry.key) must be one of \(Choice.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    static func boolean(_ entry: Entry) throws(ConfigurationError) -> Bool {
        guard case .boolean(let value) = entry.value else { throw ConfigurationError(line: entry.line, "'\(entry.key)' must be true or false") }
        return value
    }

    static func integer(_ entry: Entry) throws(ConfigurationError) -> Int {
        guard case .integer(let number) = entry.value else { throw ConfigurationError(line: entry.line, "'\(entry.key)' must be an integer") }
        guard let value = Int(exactly: number) else { throw ConfigurationError(line: entry.line, "'\(entry.key)' is out of range") }
        return value
    }
}
