import BackendKit
import DPFSConfiguration
import CDPFS
import DPFSCore
import FUSEWire

// The null backend (docs/architecture.md §7): a root directory holding one fixed-size file. Reads and writes
// succeed without touching data; every metadata operation answers the way a small read-only-shaped
// file system would, so a real kernel can mount it, list it, stat it and dd through the file.

public struct NullBackendConfiguration: Sendable {
    /// Name of the one file in the root directory.
    public var fileName: String
    public var fileSizeBytes: UInt64
    /// How long the kernel may cache names and attributes.
    public var cacheValidity: CacheValidity

    public init(fileName: String = "null", fileSizeBytes: UInt64 = 1 << 30,
                cacheValidity: CacheValidity = CacheValidity(seconds: 1)) {
        precondition(!fileName.isEmpty && fileName.utf8.count <= FUSELimits.nameBytesMax)
        precondition(!fileName.utf8.contains(UInt8(ascii: "/")) && fileName != "." && fileName != "..")
        self.fileName = fileName
        self.fileSizeBytes = fileSizeBytes
        self.cacheValidity = cacheValidity
    }
}

public struct NullBackend: FileSystem {
    public static let rootNodeID: UInt64 = 1
    public static let fileNodeID: UInt64 = 2

    public let configuration: NullBackendConfiguration
    /// The file name as bytes, kept in an inline buffer so comparisons allocate nothing.
    @usableFromInline let fileName: InlineArray<256, UInt8>
    @usableFromInline let fileNameLength: Int
    @usableFromInline let rootAttributes: FileAttributes
    @usableFromInline let fileAttributes: FileAttributes
    public private(set) var session: NegotiatedSession?

    @usableFromInline static let lockTypeUnlocked: UInt32 = 2        // F_UNLCK
    @usableFromInline static let statxBasicStats: UInt32 = 0x7FF     // STATX_BASIC_STATS
    @usableFromInline static let openExclusive: UInt32 = 0o200       // O_EXCL

    /// What this backend asks of INIT: the engine's defaults (nothing is shared, nothing to lock).
    public static var initPolicy: InitPolicy { InitPolicy() }

    public init(configuration: NullBackendConfiguration = NullBackendConfiguration(), startTime: FUSETime = FUSETime(seconds: 1_700_000_000)) {
        self.configuration = configuration
        var name = InlineArray<256, UInt8>(repeating: 0)
        var length = 0
        for byte in configuration.fileName.utf8 {
            name[length] = byte
            length += 1
        }
        fileName = name
        fileNameLength = length
        rootAttributes = FileAttributes(
            inode: Self.rootNodeID, sizeBytes: 4096, blocks: 8, accessTime: startTime, modificationTime: startTime,
            changeTime: startTime, mode: FileType.directory | 0o755, linkCount: 2, uid: 0, gid: 0, rdev: 0,
            blockSizeBytes: 4096)
        fileAttributes = FileAttributes(
            inode: Self.fileNodeID, sizeBytes: configuration.fileSizeBytes,
            blocks: (configuration.fileSizeBytes + 511) / 512, accessTime: startTime, modificationTime: startTime,
            changeTime: startTime, mode: FileType.regular | 0o666, linkCount: 1, uid: 0, gid: 0, rdev: 0,
            blockSizeBytes: 4096)
    }

    public mutating func sessionStarted(_ session: NegotiatedSession) { self.session = session }
    public mutating func sessionEnded() { session = nil }

    @inlinable
    func attributes(of nodeID: UInt64) -> FileAttributes? {
        switch nodeID {
        case Self.rootNodeID: return rootAttributes
        case Self.fileNodeID: return fileAttributes
        default: return nil
        }
    }

    @inlinable
    func isFileName(_ name: UnsafeRawBufferPointer) -> Bool {
        guard name.count == fileNameLength else { return false }
        for index in 0..<fileNameLength where name[index] != fileName[index] { return false }
        return true
    }

    // MARK: - Names and attributes

    @inlinable @inline(__always)
    public mutating func lookup(_ operation: Operation<NameArguments>, reply: EntryReply) -> BackendAnswer {
        guard operation.nodeID == Self.rootNodeID else { return reply.fail(operation.nodeID == Self.fileNodeID ? .notDirectory : .noEntry) }
        guard isFileName(operation.arguments.name.bytes) else { return reply.fail(.noEntry) }
        let validity = configuration.cacheValidity
        return reply.entry(nodeID: Self.fileNodeID, generation: 0, entryValid: validity, attrValid: validity, attributes: fileAttributes)
    }

    // FORGET: two inodes that live forever need no lookup counts (the default does nothing).

    @inlinable @inline(__always)
    public mutating func getattr(_ operation: Operation<GetattrArguments>, reply: AttributesReply) -> BackendAnswer {
        guard let attributes = attributes(of: operation.nodeID) else { return reply.fail(.noEntry) }
        return reply.attributes(attributes, valid: configuration.cacheValidity)
    }

    /// Accepted and changes nothing: sizes, modes and times of a null device are fixed.
    public mutating func setattr(_ operation: Operation<SetattrArguments>, reply: AttributesReply) -> BackendAnswer {
        guard let attributes = attributes(of: operation.nodeID) else { return reply.fail(.noEntry) }
        return reply.attributes(attributes, valid: configuration.cacheValidity)
    }

    public mutating func statx(_ operation: Operation<StatxArguments>, reply: StatxReply) -> BackendAnswer {
        guard let attributes = attributes(of: operation.nodeID) else { return reply.fail(.noEntry) }
        return reply.statx(attributes, valid: configuration.cacheValidity, mask: Self.statxBasicStats)
    }

    public mutating func readlink(_ operation: Operation<NoArguments>, reply: DataReply) -> BackendAnswer { reply.fail(.invalid) }

    public mutating func statfs(_ operation: Operation<NoArguments>, reply: StatisticsReply) -> BackendAnswer {
        reply.statistics(FileSystemStatistics(
            blocks: (configuration.fileSizeBytes + 4095) / 4096, blocksFree: 0, blocksAvailable: 0, files: 2, filesFree: 0,
            blockSizeBytes: 4096, nameBytesMax: UInt32(FUSELimits.nameBytesMax), fragmentSizeBytes: 4096))
    }

    public mutating func access(_ operation: Operation<AccessArguments>, reply: StatusReply) -> BackendAnswer { exists(operation.nodeID, reply) }

    // MARK: - The fixed namespace

    /// The namespace is fixed: only the existing file can be "created", as O_CREAT opens it.
    public mutating func create(_ operation: Operation<CreateArguments>, reply: CreatedReply) -> BackendAnswer {
        guard operation.nodeID == Self.rootNodeID else { return reply.fail(.notDirectory) }
        guard isFileName(operation.arguments.name.bytes) else { return reply.fail(.notPermitted) }
        guard operation.arguments.flags & Self.openExclusive == 0 else { return reply.fail(.exists) }
        let validity = configuration.cacheValidity
        return reply.created(nodeID: Self.fileNodeID, generation: 0, entryValid: validity, attrValid: validity,
                             attributes: fileAttributes, fileHandle: Self.fileNodeID, openFlags: 0)
    }

    public mutating func tmpfile(_ operation: Operation<CreateArguments>, reply: CreatedReply) -> BackendAnswer {
        reply.fail(operation.nodeID == Self.rootNodeID ? .notPermitted : .notDirectory)
    }

    public mutating func mknod(_ operation: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer { reply.fail(.notPermitted) }
    public mutating func mkdir(_ operation: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer { reply.fail(.notPermitted) }
    public mutating func symlink(_ operation: Operation<SymlinkArguments>, reply: EntryReply) -> BackendAnswer { reply.fail(.notPermitted) }
    public mutating func link(_ operation: Operation<LinkArguments>, reply: EntryReply) -> BackendAnswer { reply.fail(.notPermitted) }
    public mutating func unlink(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notPermitted) }
    public mutating func rmdir(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notPermitted) }
    public mutating func rename(_ operation: Operation<RenameArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notPermitted) }

    // MARK: - Files and directories

    public mutating func open(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer {
        guard operation.nodeID == Self.fileNodeID else { return reply.fail(operation.nodeID == Self.rootNodeID ? .isDirectory : .noEntry) }
        return reply.open(fileHandle: Self.fileNodeID, openFlags: 0)
    }

    public mutating func opendir(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer {
        guard operation.nodeID == Self.rootNodeID else { return reply.fail(operation.nodeID == Self.fileNodeID ? .notDirectory : .noEntry) }
        return reply.open(fileHandle: Self.rootNodeID, openFlags: 0)
    }

    @inlinable @inline(__always)
    public mutating func read(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer {
        guard operation.nodeID == Self.fileNodeID else { return reply.fail(operation.nodeID == Self.rootNodeID ? .isDirectory : .noEntry) }
        let offset = operation.arguments.offset
        let remaining = offset < configuration.fileSizeBytes ? configuration.fileSizeBytes - offset : 0
        let bytes = min(UInt64(operation.arguments.size), remaining, UInt64(reply.dataCapacity))
        // Null: the data is whatever the guest's buffer held; nothing is copied.
        return reply.sendInPlace(dataBytes: Int(bytes))
    }

    @inlinable @inline(__always)
    public mutating func write(_ operation: Operation<WriteArguments>, reply: WrittenReply) -> BackendAnswer {
        guard operation.nodeID == Self.fileNodeID else { return reply.fail(operation.nodeID == Self.rootNodeID ? .isDirectory : .noEntry) }
        return reply.written(bytes: operation.arguments.size)
    }

    public mutating func readdir(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer {
        readDirectory(operation, reply: reply, plus: false)
    }

    public mutating func readdirplus(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer {
        readDirectory(operation, reply: reply, plus: true)
    }

    public mutating func release(_ operation: Operation<ReleaseArguments>, reply: StatusReply) -> BackendAnswer { exists(operation.nodeID, reply) }
    public mutating func releasedir(_ operation: Operation<ReleaseArguments>, reply: StatusReply) -> BackendAnswer { exists(operation.nodeID, reply) }
    public mutating func flush(_ operation: Operation<FlushArguments>, reply: StatusReply) -> BackendAnswer { exists(operation.nodeID, reply) }
    public mutating func fsync(_ operation: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer { exists(operation.nodeID, reply) }
    public mutating func fsyncdir(_ operation: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer { exists(operation.nodeID, reply) }
    public mutating func syncfs(_ operation: Operation<NoArguments>, reply: StatusReply) -> BackendAnswer { exists(operation.nodeID, reply) }
    public mutating func fallocate(_ operation: Operation<FallocateArguments>, reply: StatusReply) -> BackendAnswer { exists(operation.nodeID, reply) }

    public mutating func lseek(_ operation: Operation<LseekArguments>, reply: OffsetReply) -> BackendAnswer {
        let offset = operation.arguments.offset
        let size = configuration.fileSizeBytes
        switch operation.arguments.whence {
        case 3: return offset < size ? reply.offset(offset) : reply.fail(.noDeviceOrAddress)   // SEEK_DATA
        case 4: return offset < size ? reply.offset(size) : reply.fail(.noDeviceOrAddress)     // SEEK_HOLE
        default: return reply.fail(.invalid)   // SET/CUR/END are resolved by the kernel itself
        }
    }

    public mutating func copyFileRange(_ operation: Operation<CopyFileRangeArguments>, reply: CopiedReply) -> BackendAnswer {
        guard operation.nodeID == Self.fileNodeID, operation.arguments.nodeOut == Self.fileNodeID else { return reply.fail(.invalid) }
        return reply.copied(bytes: operation.arguments.length)
    }

    // MARK: - Locks and extended attributes

    public mutating func setlk(_ operation: Operation<LockArguments>, wait: Bool, reply: StatusReply) -> BackendAnswer { exists(operation.nodeID, reply) }

    /// Nobody holds locks on a null device.
    public mutating func getlk(_ operation: Operation<LockArguments>, reply: LockReply) -> BackendAnswer {
        reply.lock(start: 0, end: 0, type: Self.lockTypeUnlocked, pid: 0)
    }

    public mutating func getxattr(_ operation: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer { reply.fail(.noData) }
    public mutating func removexattr(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.noData) }
    public mutating func setxattr(_ operation: Operation<SetxattrArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notSupported) }

    /// No names: an empty list, or its length 0.
    public mutating func listxattr(_ operation: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer {
        operation.arguments.size == 0 ? reply.xattrSize(0) : reply.send(bodyBytes: 0)
    }

    /// Success for the two nodes that exist.
    @inlinable
    func exists(_ nodeID: UInt64, _ reply: StatusReply) -> BackendAnswer {
        attributes(of: nodeID) == nil ? reply.fail(.noEntry) : reply.ok()
    }

    func readDirectory(_ operation: Operation<ReadArguments>, reply: DataReply, plus: Bool) -> BackendAnswer {
        guard operation.nodeID == Self.rootNodeID else { return reply.fail(operation.nodeID == Self.fileNodeID ? .notDirectory : .noEntry) }
        let offset = operation.arguments.offset
        let size = operation.arguments.size
        let validity = configuration.cacheValidity
        var writer = DirectoryEntryWriter(destination: reply.body, capacity: min(Int(size), reply.bodyCapacity))
        var dots: (UInt8, UInt8) = (UInt8(ascii: "."), UInt8(ascii: "."))
        var position = offset
        while position < 3 {
            let fits: Bool
            switch position {
            case 0, 1:
                // "." and ".." carry no entry (nodeid 0): the kernel skips them when linking.
                let nameLength = position == 0 ? 1 : 2
                fits = withUnsafeBytes(of: &dots) { both in
                    let name = position == 0 ? UnsafeRawBufferPointer(rebasing: both[0..<1]) : UnsafeRawBufferPointer(rebasing: both[0..<nameLength])
                    if plus {
                        let none = FileAttributes(inode: Self.rootNodeID, sizeBytes: 0, blocks: 0, accessTime: FUSETime(seconds: 0),
                                                  modificationTime: FUSETime(seconds: 0), changeTime: FUSETime(seconds: 0),
                                                  mode: FileType.directory, linkCount: 0, uid: 0, gid: 0, rdev: 0, blockSizeBytes: 0)
                        return writer.appendPlus(nodeID: 0, generation: 0, entryValid: CacheValidity(seconds: 0),
                                                 attrValid: CacheValidity(seconds: 0), attributes: none,
                                                 nextOffset: position + 1, type: DirentType.directory, name: name)
                    }
                    return writer.append(inode: Self.rootNodeID, nextOffset: position + 1, type: DirentType.directory, name: name)
                }
            default:
                fits = withUnsafeBytes(of: fileName) { all in
                    let name = UnsafeRawBufferPointer(rebasing: all[0..<fileNameLength])
                    if plus {
                        return writer.appendPlus(nodeID: Self.fileNodeID, generation: 0, entryValid: validity, attrValid: validity,
                                                 attributes: fileAttributes, nextOffset: 3, type: DirentType.regular, name: name)
                    }
                    return writer.append(inode: Self.fileNodeID, nextOffset: 3, type: DirentType.regular, name: name)
                }
            }
            if !fits { break }
            position += 1
        }
        return reply.send(bodyBytes: writer.bytesWritten)
    }
}

/// The null backend as the engine registers it: one setting, the file's size.
public struct NullBackendFactory: BackendFactory {
    public static let schema = BackendSchema(
        name: "null", summary: "a root holding one fixed-size file; reads and writes touch nothing (the cost floor)",
        settings: [
            Setting("null_file_size", .integer(0...(1 << 50)), default: .integer(1 << 30),
                    help: "size of the one file, in bytes"),
        ])

    public let configuration: NullBackendConfiguration

    public init(settings: BackendSettings, context: BackendStartContext) {
        configuration = NullBackendConfiguration(fileSizeBytes: UInt64(settings.integer("null_file_size")))
    }

    public var initPolicy: InitPolicy { NullBackend.initPolicy }
    public var report: String { "backend null (file \(configuration.fileName), \(configuration.fileSizeBytes) bytes)" }
    public func makeBackend(queue: Int) -> NullBackend { NullBackend(configuration: configuration) }
}
