import BackendKit
import DPFSConfiguration
import DPFSPosix
import FUSEWire

/// The passthrough backend as the engine registers it: its settings, the device built from them
/// (the shared directory's tables), the descriptor limit it needs, and kernel passthrough on a
/// host mount.
public struct PassthroughBackendFactory: BackendFactory {
    public static let schema = BackendSchema(
        name: "passthrough", summary: "a host directory shared with the guest",
        settings: [
            Setting("shared_dir", .string, default: nil, help: "the host directory to share"),
            SharedSettings.cache,
            SharedSettings.nodesMax,
            SharedSettings.openFilesMax,
            Setting("inode_descriptors_max", .integer(16...(1 << 24)), default: .integer(DeviceTableDefaults.nodeDescriptorsMax),
                    help: "inode descriptors kept open; idle ones beyond are closed and re-opened by file handle"),
            Setting("data_path", .choice(PassthroughDataPath.allCases.map(\.rawValue)), default: .string(PassthroughDataPath.inlineFirst.rawValue),
                    help: "how READ/WRITE reach the file: inline-first (on the poller when it cannot block, else io_uring) or uring"),
            Setting("read_only", .boolean, default: .boolean(false),
                    help: "refuse every change (write, create, rename, setattr, xattrs, ...) with EROFS"),
        ],
        offersKernelPassthrough: true,
        check: { settings, deployment throws(ConfigurationError) in
            guard !settings.string("shared_dir").isEmpty else { throw ConfigurationError(line: 0, "shared_dir must not be empty") }
            guard !deployment.kernelPassthrough || settings.choice("cache", CacheMode.self) != .always else {
                throw ConfigurationError(line: 0, "fuse_passthrough and cache = always exclude each other (the kernel has no writeback cache for passthrough files)")
            }
        })

    public let device: PassthroughDevice
    let hostMount: Bool
    let kernelPassthroughWanted: Bool
    let descriptorLimit: Int
    let descriptorsWanted: Int

    public init(settings: BackendSettings, context: BackendStartContext) throws(BackendStartError) {
        var configuration = PassthroughConfiguration(
            sharedDirectory: settings.string("shared_dir"), cacheMode: settings.choice("cache", CacheMode.self),
            inodesMax: settings.integer("inodes_max"), openFilesMax: settings.integer("open_files_max"))
        configuration.inodeDescriptorsMax = settings.integer("inode_descriptors_max")
        configuration.dataPath = settings.choice("data_path", PassthroughDataPath.self)
        configuration.readOnly = settings.boolean("read_only")
        do {
            device = try PassthroughDevice(configuration: configuration)
        } catch {
            throw BackendStartError(error.description)
        }
        hostMount = context.deployment.transport == .fuse
        kernelPassthroughWanted = context.deployment.kernelPassthrough
        descriptorsWanted = configuration.descriptorsMax * context.devicesInProcess
        descriptorLimit = PassthroughDevice.raiseDescriptorLimit(to: descriptorsWanted)
    }

    public var initPolicy: InitPolicy { PassthroughBackend.initPolicy(cacheMode: device.configuration.cacheMode, hostMount: hostMount) }
    public var report: String { "backend \(device.report); descriptor limit \(descriptorLimit)" }

    public var warnings: [String] {
        guard descriptorLimit < descriptorsWanted else { return [] }
        return ["RLIMIT_NOFILE is \(descriptorLimit) and could not be raised to the \(descriptorsWanted) descriptors the tables can hold "
                + "(no CAP_SYS_RESOURCE?): the guest gets ENFILE once the process runs out of descriptors"]
    }

    public func makeBackend(queue: Int) -> PassthroughBackend { PassthroughBackend(device: device) }

    public func hostMounted(sessionFD: Int32) {
        if kernelPassthroughWanted { device.kernelPassthrough = KernelPassthroughFiles(fuseFD: sessionFD) }
    }
}
