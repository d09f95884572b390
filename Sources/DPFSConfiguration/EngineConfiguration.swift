import FUSEWire

// The engine's configuration: one [[device]] table per tenant (one vhost-user socket and backend
// each), read once at start-up, every value checked against its limit with a clear message.

public enum BackendKind: String, Sendable, CaseIterable {
    case null
    case passthrough
    case nfs
}

/// How requests reach the engine: a vhost-user socket (a VM's virtio-fs device) or /dev/fuse (a
/// mount on this host).
public enum TransportKind: String, Sendable, CaseIterable {
    case vhostUser = "vhost-user"
    case fuse
}

/// /dev/fuse modes (FUSEDevice's FUSETransportChoice).
public let fuseTransportNames = ["auto", "classic", "uring"]


public struct DeviceConfiguration: Equatable, Sendable {
    public var name: String
    public var socketPath: String
    public var backend: BackendKind
    public var requestQueues: Int
    public var slotsPerQueue: Int
    public var batchMax: Int
    public var busyPollMicroseconds: Int
    public var nullFileSizeBytes: UInt64
    public var cpus: [Int]
    /// The passthrough backend's host directory.
    public var sharedDirectory: String
    public var cacheMode: CacheMode
    /// Inodes the guest may know at once, and files it may have open at once (passthrough).
    public var inodesMax: Int
    public var openFilesMax: Int
    /// Inode descriptors kept open before idle ones are closed (re-opened by file handle).
    public var inodeDescriptorsMax: Int
    /// How READ/WRITE reach the file (passthrough): "inline-first" or "uring".
    public var dataPath: String = "inline-first"
    public var transport: TransportKind = .vhostUser
    /// The host directory a `fuse` transport mounts on.
    public var mountPoint: String = ""
    /// auto, classic or uring (fuse transport).
    public var fuseTransport: String = "auto"
    /// Offer kernel passthrough (fuse transport, passthrough backend).
    public var fusePassthrough: Bool = false
    /// Let every host user reach the host mount (the kernel's `allow_other`, always with
    /// `default_permissions`); off: only the user who mounted it (root).
    public var fuseAllowOther: Bool = false
    /// Ring entries per FUSE-over-io_uring queue.
    public var ringDepth: Int = 16
    /// The NFS backend's export, `nfs://HOST/PATH?version=3[&nfsport=N][&mountport=N]` (checked by
    /// the backend's own parser when the device is built).
    public var nfsURL: String = ""
    /// An NFS request not answered in this time fails EIO.
    public var nfsTimeoutMilliseconds: Int = 30_000
    /// TCP connections to the NFS server per request queue.
    public var nfsConnections: Int = 1
    /// MiB per request queue of uncommitted NFS writes kept for a resend (0 = none).
    public var nfsJournalMegabytes: Int = 16
    /// The group (name or number) that may connect to the vhost-user socket besides its owner
    /// (mode 0660); empty: the owner only (0600). A VMM running as another user (libvirt's
    /// `libvirt-qemu`) needs its group here.
    public var socketGroup: String = ""

    public init(name: String, socketPath: String, backend: BackendKind = .null, requestQueues: Int = 1,
                slotsPerQueue: Int = 256, batchMax: Int = 32, busyPollMicroseconds: Int = 50,
                nullFileSizeBytes: UInt64 = 1 << 30, cpus: [Int] = [], sharedDirectory: String = "",
                cacheMode: CacheMode = .auto, inodesMax: Int = DeviceTableDefaults.nodesMax, openFilesMax: Int = DeviceTableDefaults.openFilesMax,
                inodeDescriptorsMax: Int = DeviceTableDefaults.nodeDescriptorsMax) {
        self.name = name
        self.socketPath = socketPath
        self.backend = backend
        self.requestQueues = requestQueues
        self.slotsPerQueue = slotsPerQueue
        self.batchMax = batchMax
        self.busyPollMicroseconds = busyPollMicroseconds
        self.nullFileSizeBytes = nullFileSizeBytes
        self.cpus = cpus
        self.sharedDirectory = sharedDirectory
        self.cacheMode = cacheMode
        self.inodesMax = inodesMax
        self.openFilesMax = openFilesMax
        self.inodeDescriptorsMax = inodeDescriptorsMax
    }

    /// Checks every value against its limit.
    public func validate() throws(ConfigurationError) {
        guard !name.isEmpty, name.utf8.count <= 64 else { throw ConfigurationError(line: 0, "device name must be 1...64 bytes") }
        switch transport {
        case .vhostUser:
            guard !socketPath.isEmpty, socketPath.utf8.count < 108 else {
                throw ConfigurationError(line: 0, "device \(name): socket path must be 1...107 bytes (sun_path)")
            }
            guard mountPoint.isEmpty else { throw ConfigurationError(line: 0, "device \(name): mount is only for transport = \"fuse\"") }
            guard !fusePassthrough else { throw ConfigurationError(line: 0, "device \(name): fuse_passthrough is only for transport = \"fuse\"") }
            guard !fuseAllowOther else { throw ConfigurationError(line: 0, "device \(name): fuse_allow_other is only for transport = \"fuse\"") }
        case .fuse:
            guard mountPoint.hasPrefix("/"), mountPoint.utf8.count < 4096 else {
                throw ConfigurationError(line: 0, "device \(name): transport fuse needs an absolute mount path (mount, --fuse-mount)")
            }
            guard socketPath.isEmpty else { throw ConfigurationError(line: 0, "device \(name): socket is only for transport = \"vhost-user\"") }
            guard socketGroup.isEmpty else { throw ConfigurationError(line: 0, "device \(name): socket_group is only for transport = \"vhost-user\"") }
            guard fuseTransportNames.contains(fuseTransport) else {
                throw ConfigurationError(line: 0, "device \(name): fuse_transport must be one of \(fuseTransportNames.joined(separator: ", "))")
            }
            guard !fusePassthrough || backend == .passthrough else {
                throw ConfigurationError(line: 0, "device \(name): fuse_passthrough needs the passthrough backend")
            }
            guard !fusePassthrough || cacheMode != .always else {
                throw ConfigurationError(line: 0, "device \(name): fuse_passthrough and cache = always exclude each other (the kernel has no writeback cache for passthrough files)")
            }
            guard (1...1024).contains(ringDepth) else { throw ConfigurationError(line: 0, "device \(name): ring_depth must be 1...1024") }
        }
        guard (1...64).contains(requestQueues) else { throw ConfigurationError(line: 0, "device \(name): request_queues must be 1...64") }
        guard (1...65536).contains(slotsPerQueue), slotsPerQueue & (slotsPerQueue - 1) == 0 else {
            throw ConfigurationError(line: 0, "device \(name): slots must be a power of two in 1...65536")
        }
        guard (1...slotsPerQueue).contains(batchMax) else { throw ConfigurationError(line: 0, "device \(name): batch must be 1...slots") }
        guard (0...1_000_000).contains(busyPollMicroseconds) else {
            throw ConfigurationError(line: 0, "device \(name): busy_poll_us must be 0...1000000")
        }
        guard nullFileSizeBytes <= 1 << 50 else { throw ConfigurationError(line: 0, "device \(name): null_file_size must be ≤ 1 PiB") }
        if backend == .passthrough {
            guard !sharedDirectory.isEmpty else {
                throw ConfigurationError(line: 0, "device \(name): the passthrough backend needs shared_dir (--shared-dir)")
            }
        } else if !sharedDirectory.isEmpty {
            throw ConfigurationError(line: 0, "device \(name): shared_dir is only for the passthrough backend")
        }
        if backend == .nfs {
            guard nfsURL.hasPrefix("nfs://") else {
                throw ConfigurationError(line: 0, "device \(name): the nfs backend needs nfs_url = \"nfs://HOST/EXPORT?version=3\" (--nfs-url)")
            }
        } else if !nfsURL.isEmpty {
            throw ConfigurationError(line: 0, "device \(name): nfs_url is only for the nfs backend")
        }
        guard (100...3_600_000).contains(nfsTimeoutMilliseconds) else {
            throw ConfigurationError(line: 0, "device \(name): nfs_timeout_ms must be 100...3600000")
        }
        guard (1...16).contains(nfsConnections) else {
            throw ConfigurationError(line: 0, "device \(name): nfs_connections must be 1...16")
        }
        guard (0...4096).contains(nfsJournalMegabytes) else {
            throw ConfigurationError(line: 0, "device \(name): nfs_journal_mb must be 0...4096")
        }
        guard (16...(1 << 24)).contains(inodesMax) else { throw ConfigurationError(line: 0, "device \(name): inodes_max must be 16...16777216") }
        guard (16...(1 << 24)).contains(inodeDescriptorsMax) else {
            throw ConfigurationError(line: 0, "device \(name): inode_descriptors_max must be 16...16777216")
        }
        guard dataPath == "inline-first" || dataPath == "uring" else {
            throw ConfigurationError(line: 0, "device \(name): data_path must be inline-first or uring")
        }
        guard (16...(1 << 24)).contains(openFilesMax) else {
            throw ConfigurationError(line: 0, "device \(name): open_files_max must be 16...16777216")
        }
    }
}

public struct EngineConfiguration: Equatable, Sendable {
    public var logLevel: String
    public var devices: [DeviceConfiguration]

    public init(logLevel: String = "info", devices: [DeviceConfiguration]) {
        self.logLevel = logLevel
        self.devices = devices
    }

    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// Reads a configuration file's text.
    public static func parse(_ text: String) throws(ConfigurationError) -> EngineConfiguration {
        let document = try TOMLSubset.parse(text)
        for name in document.tables.keys where name != "" && name != "engine" {
            throw ConfigurationError(line: 0, "unknown table [\(name)] (known: [engine], [[device]])")
        }
        for name in document.tableArrays.keys where name != "device" {
            throw ConfigurationError(line: 0, "unknown table array [[\(name)]] (known: [[device]])")
        }
        if let stray = document.tables[""]!.entries.first {
            throw ConfigurationError(line: stray.line, "key '\(stray.key)' outside any table")
        }
        var logLevel = "info"
        if let engine = document.tables["engine"] {
            for entry in engine.entries {
                switch entry.key {
                case "log_level":
                    logLevel = try string(entry)
                    guard logLevels.contains(logLevel) else {
                        throw ConfigurationError(line: entry.line, "log_level must be one of \(logLevels.joined(separator: ", "))")
                    }
                default: throw ConfigurationError(line: entry.line, "unknown key '\(entry.key)' in [engine]")
                }
            }
        }
        var devices: [DeviceConfiguration] = []
        for table in document.tableArrays["device"] ?? [] {
            var device = DeviceConfiguration(name: "dpfs\(devices.count)", socketPath: "")
            for entry in table.entries {
                switch entry.key {
                case "name": device.name = try string(entry)
                case "socket": device.socketPath = try string(entry)
                case "backend":
                    let text = try string(entry)
                    guard let kind = BackendKind(rawValue: text) else {
                        throw ConfigurationError(line: entry.line, "unknown backend '\(text)' (known: \(BackendKind.allCases.map(\.rawValue).joined(separator: ", ")))")
                    }
                    device.backend = kind
                case "request_queues": device.requestQueues = try integer(entry)
                case "slots": device.slotsPerQueue = try integer(entry)
                case "batch": device.batchMax = try integer(entry)
                case "busy_poll_us": device.busyPollMicroseconds = try integer(entry)
                case "null_file_size": device.nullFileSizeBytes = UInt64(try integer(entry, minimum: 0))
                case "shared_dir": device.sharedDirectory = try string(entry)
                case "cache": device.cacheMode = try choice(entry, CacheMode.self)
                case "inodes_max": device.inodesMax = try integer(entry)
                case "open_files_max": device.openFilesMax = try integer(entry)
                case "inode_descriptors_max": device.inodeDescriptorsMax = try integer(entry)
                case "data_path": device.dataPath = try string(entry)
                case "transport": device.transport = try choice(entry, TransportKind.self)
                case "mount": device.mountPoint = try string(entry)
                case "fuse_transport": device.fuseTransport = try string(entry)
                case "fuse_passthrough": device.fusePassthrough = try boolean(entry)
                case "ring_depth": device.ringDepth = try integer(entry)
                case "nfs_url": device.nfsURL = try string(entry)
                case "nfs_timeout_ms": device.nfsTimeoutMilliseconds = try integer(entry)
                case "nfs_connections": device.nfsConnections = try integer(entry)
                case "nfs_journal_mb": device.nfsJournalMegabytes = try integer(entry, minimum: 0)
                case "socket_group": device.socketGroup = try string(entry)
                case "fuse_allow_other": device.fuseAllowOther = try boolean(entry)
                case "cpus":
                    let text = try string(entry)
                    device.cpus = []
                    for part in text.split(separator: ",") {
                        guard let cpu = Int(String(part).trimmingWhitespace()), cpu >= 0, cpu < 4096 else {
                            throw ConfigurationError(line: entry.line, "cpus must be a comma-separated list of CPU numbers")
                        }
                        device.cpus.append(cpu)
                    }
                default: throw ConfigurationError(line: entry.line, "unknown key '\(entry.key)' in [[device]]")
                }
            }
            guard device.transport == .fuse || !device.socketPath.isEmpty else {
                throw ConfigurationError(line: table.entries.first?.line ?? 0, "device \(device.name) has no socket")
            }
            try device.validate()
            devices.append(device)
        }
        guard !devices.isEmpty else { throw ConfigurationError(line: 0, "no [[device]] configured") }
        try checkDistinct(devices)
        return EngineConfiguration(logLevel: logLevel, devices: devices)
    }

    /// No two devices share a name, a socket or a mount point, however the paths are spelled (two
    /// listeners on one path would leave one of them orphaned; the engine also refuses a socket
    /// another process still listens on).
    static func checkDistinct(_ devices: [DeviceConfiguration]) throws(ConfigurationError) {
        var seenNames = Set<String>(), seenPaths = Set<String>()
        for device in devices {
            guard seenNames.insert(device.name).inserted else { throw ConfigurationError(line: 0, "two devices are named \(device.name)") }
            let path = normalizedPath(device.transport == .fuse ? device.mountPoint : device.socketPath)
            guard seenPaths.insert(path).inserted else {
                throw ConfigurationError(line: 0, device.transport == .fuse ? "two devices mount \(path)" : "two devices share socket \(path)")
            }
        }
    }

    /// A path with repeated slashes, "." components and a trailing slash taken out.
    public static func normalizedPath(_ path: String) -> String {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        let joined = parts.joined(separator: "/")
        return path.hasPrefix("/") ? "/" + joined : joined
    }

    static func string(_ entry: (key: String, value: TOMLValue, line: Int)) throws(ConfigurationError) -> String {
        guard case .string(let text) = entry.value else { throw ConfigurationError(line: entry.line, "'\(entry.key)' must be a string") }
        return text
    }

    /// A string naming one case of `Choice`; anything else is an error that lists the cases.
    static func choice<Choice: RawRepresentable & CaseIterable>(
        _ entry: (key: String, value: TOMLValue, line: Int), _: Choice.Type
    ) throws(ConfigurationError) -> Choice where Choice.RawValue == String {
        let text = try string(entry)
        guard let value = Choice(rawValue: text) else {
            throw ConfigurationError(line: entry.line, "\(entry.key) must be one of \(Choice.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    static func boolean(_ entry: (key: String, value: TOMLValue, line: Int)) throws(ConfigurationError) -> Bool {
        guard case .boolean(let value) = entry.value else { throw ConfigurationError(line: entry.line, "'\(entry.key)' must be true or false") }
        return value
    }

    static func integer(_ entry: (key: String, value: TOMLValue, line: Int), minimum: Int64 = Int64.min) throws(ConfigurationError) -> Int {
        guard case .integer(let number) = entry.value else { throw ConfigurationError(line: entry.line, "'\(entry.key)' must be an integer") }
        guard number >= minimum, number <= Int64(Int.max) else { throw ConfigurationError(line: entry.line, "'\(entry.key)' is out of range") }
        return Int(number)
    }
}
