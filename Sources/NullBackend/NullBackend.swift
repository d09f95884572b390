import CDPFS
import DPFSCore
import FUSEWire

// The null backend (ARCHITECTURE §7): a root directory holding one fixed-size file. Reads and writes
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

public struct NullBackend: Backend {
    public static let rootNodeID: UInt64 = 1
    public static let fileNodeID: UInt64 = 2

    public let configuration: NullBackendConfiguration
    /// The file name as bytes, kept in an inline buffer so comparisons allocate nothing.
    @usableFromInline let fileName: InlineArray<256, UInt8>
    @usableFromInline let fileNameLength: Int
    @usableFromInline let rootAttributes: FileAttributes
    @usableFromInline let fileAttributes: FileAttributes
    public private(set) var session: NegotiatedSession?

    // Linux st_mode bits and dirent types.
    @usableFromInline static let modeDirectory: UInt32 = 0o040000
    @usableFromInline static let modeRegular: UInt32 = 0o100000
    @usableFromInline static let direntTypeDirectory: UInt32 = 4
    @usableFromInline static let direntTypeRegular: UInt32 = 8
    @usableFromInline static let lockTypeUnlocked: UInt32 = 2        // F_UNLCK
    @usableFromInline static let statxBasicStats: UInt32 = 0x7FF     // STATX_BASIC_STATS
    @usableFromInline static let openExclusive: UInt32 = 0o200       // O_EXCL

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
            changeTime: startTime, mode: Self.modeDirectory | 0o755, linkCount: 2, uid: 0, gid: 0, rdev: 0,
            blockSizeBytes: 4096)
        fileAttributes = FileAttributes(
            inode: Self.fileNodeID, sizeBytes: configuration.fileSizeBytes,
            blocks: (configuration.fileSizeBytes + 511) / 512, accessTime: startTime, modificationTime: startTime,
            changeTime: startTime, mode: Self.modeRegular | 0o666, linkCount: 1, uid: 0, gid: 0, rdev: 0,
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

    @inlinable
    public mutating func handle(_ request: FUSERequest, reply: FUSEReply, token: CompletionToken) -> BackendAnswer {
        guard let opcode = FUSEOpcode(rawValue: request.opcodeRaw) else {
            reply.fail(.notImplemented)
            return .done
        }
        let validity = configuration.cacheValidity
        switch opcode {
        case .forget, .batchForget, .notifyReply:
            // Two inodes that live forever: lookup counts need no bookkeeping.
            reply.none()
        case .lookup:
            if request.nodeID == Self.fileNodeID { reply.fail(.notDirectory) }
            else if request.nodeID != Self.rootNodeID { reply.fail(.noEntry) }
            else if isFileName(request.name) {
                reply.entry(nodeID: Self.fileNodeID, generation: 0, entryValid: validity, attrValid: validity,
                            attributes: fileAttributes)
            } else { reply.fail(.noEntry) }
        case .getattr, .setattr:
            // SETATTR is accepted and changes nothing: sizes, modes and times of a null device are fixed.
            guard let attributes = attributes(of: request.nodeID) else { reply.fail(.noEntry); break }
            reply.attributes(attributes, valid: validity)
        case .statx:
            guard let attributes = attributes(of: request.nodeID) else { reply.fail(.noEntry); break }
            reply.statx(attributes, valid: validity, mask: Self.statxBasicStats)
        case .open:
            if request.nodeID == Self.rootNodeID { reply.fail(.isDirectory) }
            else if request.nodeID == Self.fileNodeID { reply.open(fileHandle: Self.fileNodeID, openFlags: 0) }
            else { reply.fail(.noEntry) }
        case .opendir:
            if request.nodeID == Self.fileNodeID { reply.fail(.notDirectory) }
            else if request.nodeID == Self.rootNodeID { reply.open(fileHandle: Self.rootNodeID, openFlags: 0) }
            else { reply.fail(.noEntry) }
        case .read:
            guard request.nodeID == Self.fileNodeID else { reply.fail(request.nodeID == Self.rootNodeID ? .isDirectory : .noEntry); break }
            let offset: UInt64 = request.argument(at: 8)
            let size: UInt32 = request.argument(at: 16)
            let remaining = offset < configuration.fileSizeBytes ? configuration.fileSizeBytes - offset : 0
            let bytes = min(UInt64(size), remaining, UInt64(reply.dataCapacity))
            // Null: the data is whatever the guest's buffer held; nothing is copied.
            reply.sendInPlace(dataBytes: Int(bytes))
        case .write:
            guard request.nodeID == Self.fileNodeID else { reply.fail(request.nodeID == Self.rootNodeID ? .isDirectory : .noEntry); break }
            reply.written(bytes: UInt32(request.payloadLength))
        case .readdir, .readdirplus:
            guard request.nodeID == Self.rootNodeID else { reply.fail(request.nodeID == Self.fileNodeID ? .notDirectory : .noEntry); break }
            readDirectory(request, reply: reply, plus: opcode == .readdirplus)
        case .statfs:
            let blocks = (configuration.fileSizeBytes + 4095) / 4096
            reply.statistics(FileSystemStatistics(
                blocks: blocks, blocksFree: 0, blocksAvailable: 0, files: 2, filesFree: 0, blockSizeBytes: 4096,
                nameBytesMax: UInt32(FUSELimits.nameBytesMax), fragmentSizeBytes: 4096))
        case .release, .releasedir, .flush, .fsync, .fsyncdir, .syncfs, .access, .setlk, .setlkw, .fallocate:
            guard attributes(of: request.nodeID) != nil else { reply.fail(.noEntry); break }
            reply.send(bodyBytes: 0)
        case .getlk:
            // Nobody holds locks on a null device.
            reply.lock(start: 0, end: 0, type: Self.lockTypeUnlocked, pid: 0)
        case .getxattr, .removexattr:
            reply.fail(.noData)
        case .listxattr:
            let size: UInt32 = request.argument(at: 0)
            if size == 0 { reply.xattrSize(0) } else { reply.send(bodyBytes: 0) }
        case .setxattr:
            reply.fail(.notSupported)
        case .readlink:
            reply.fail(.invalid)
        case .create, .tmpfile:
            // The namespace is fixed: only the existing file can be "created", as O_CREAT opens it.
            let flags: UInt32 = request.argument(at: 0)
            if request.nodeID != Self.rootNodeID { reply.fail(.notDirectory) }
            else if opcode == .create && isFileName(request.name) {
                if flags & Self.openExclusive != 0 { reply.fail(.exists) }
                else {
                    reply.created(nodeID: Self.fileNodeID, generation: 0, entryValid: validity, attrValid: validity,
                                  attributes: fileAttributes, fileHandle: Self.fileNodeID, openFlags: 0)
                }
            } else { reply.fail(.notPermitted) }
        case .mknod, .mkdir, .symlink, .link, .unlink, .rmdir, .rename, .rename2:
            reply.fail(.notPermitted)
        case .lseek:
            let offset: UInt64 = request.argument(at: 8)
            let whence: UInt32 = request.argument(at: 16)
            let size = configuration.fileSizeBytes
            switch whence {
            case 3: if offset < size { reply.value(offset) } else { reply.fail(.noDeviceOrAddress) }   // SEEK_DATA
            case 4: if offset < size { reply.value(size) } else { reply.fail(.noDeviceOrAddress) }     // SEEK_HOLE
            default: reply.fail(.invalid)   // SET/CUR/END are resolved by the kernel itself
            }
        case .copyFileRange, .copyFileRange64:
            let arguments = request.arguments(as: fuse_copy_file_range_in.self)
            guard request.nodeID == Self.fileNodeID, arguments.nodeid_out == Self.fileNodeID else { reply.fail(.invalid); break }
            let length = arguments.len
            if opcode == .copyFileRange { reply.written(bytes: UInt32(min(length, UInt64(UInt32.max)))) }
            else { reply.value(length) }
        case .interrupt, .bmap, .ioctl, .poll, .setupMapping, .removeMapping:
            // Not meaningful here: no blocking, no block device, no ioctls, no DAX window.
            reply.fail(.notImplemented)
        case .`init`, .destroy:
            preconditionFailure("the engine answers INIT and DESTROY itself")
        }
        return .done
    }

    @inlinable
    func readDirectory(_ request: FUSERequest, reply: FUSEReply, plus: Bool) {
        let offset: UInt64 = request.argument(at: 8)
        let size: UInt32 = request.argument(at: 16)
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
                                                  mode: Self.modeDirectory, linkCount: 0, uid: 0, gid: 0, rdev: 0, blockSizeBytes: 0)
                        return writer.appendPlus(nodeID: 0, generation: 0, entryValid: CacheValidity(seconds: 0),
                                                 attrValid: CacheValidity(seconds: 0), attributes: none,
                                                 nextOffset: position + 1, type: Self.direntTypeDirectory, name: name)
                    }
                    return writer.append(inode: Self.rootNodeID, nextOffset: position + 1, type: Self.direntTypeDirectory, name: name)
                }
            default:
                fits = withUnsafeBytes(of: fileName) { all in
                    let name = UnsafeRawBufferPointer(rebasing: all[0..<fileNameLength])
                    if plus {
                        return writer.appendPlus(nodeID: Self.fileNodeID, generation: 0, entryValid: validity, attrValid: validity,
                                                 attributes: fileAttributes, nextOffset: 3, type: Self.direntTypeRegular, name: name)
                    }
                    return writer.append(inode: Self.fileNodeID, nextOffset: 3, type: Self.direntTypeRegular, name: name)
                }
            }
            if !fits { break }
            position += 1
        }
        reply.send(bodyBytes: writer.bytesWritten)
    }
}
