// Value types a backend fills in; the reply writer lays them out on the wire.

/// A timestamp with nanoseconds kept (DPFS truncated them to seconds).
@frozen
public struct FUSETime: Equatable, Sendable {
    public var seconds: UInt64
    public var nanoseconds: UInt32

    @inlinable
    public init(seconds: UInt64, nanoseconds: UInt32 = 0) {
        precondition(nanoseconds < 1_000_000_000)
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
}

/// The attributes of an inode, as `fuse_attr` carries them.
@frozen
public struct FileAttributes: Equatable, Sendable {
    public var inode: UInt64
    public var sizeBytes: UInt64
    public var blocks: UInt64
    public var accessTime: FUSETime
    public var modificationTime: FUSETime
    public var changeTime: FUSETime
    public var mode: UInt32
    public var linkCount: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt32
    public var blockSizeBytes: UInt32

    @inlinable
    public init(inode: UInt64, sizeBytes: UInt64, blocks: UInt64, accessTime: FUSETime, modificationTime: FUSETime,
                changeTime: FUSETime, mode: UInt32, linkCount: UInt32, uid: UInt32, gid: UInt32, rdev: UInt32,
                blockSizeBytes: UInt32) {
        self.inode = inode
        self.sizeBytes = sizeBytes
        self.blocks = blocks
        self.accessTime = accessTime
        self.modificationTime = modificationTime
        self.changeTime = changeTime
        self.mode = mode
        self.linkCount = linkCount
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.blockSizeBytes = blockSizeBytes
    }

    /// Writes a 88-byte `fuse_attr` at `destination`.
    @inlinable
    @_noAllocation @_noLocks
    public func store(to destination: UnsafeMutableRawPointer) {
        let d = destination
        d.storeBytes(of: inode.littleEndian, toByteOffset: AttrLayout.ino, as: UInt64.self)
        d.storeBytes(of: sizeBytes.littleEndian, toByteOffset: AttrLayout.fileSize, as: UInt64.self)
        d.storeBytes(of: blocks.littleEndian, toByteOffset: AttrLayout.blocks, as: UInt64.self)
        d.storeBytes(of: accessTime.seconds.littleEndian, toByteOffset: AttrLayout.atime, as: UInt64.self)
        d.storeBytes(of: modificationTime.seconds.littleEndian, toByteOffset: AttrLayout.mtime, as: UInt64.self)
        d.storeBytes(of: changeTime.seconds.littleEndian, toByteOffset: AttrLayout.ctime, as: UInt64.self)
        d.storeBytes(of: accessTime.nanoseconds.littleEndian, toByteOffset: AttrLayout.atimeNanos, as: UInt32.self)
        d.storeBytes(of: modificationTime.nanoseconds.littleEndian, toByteOffset: AttrLayout.mtimeNanos, as: UInt32.self)
        d.storeBytes(of: changeTime.nanoseconds.littleEndian, toByteOffset: AttrLayout.ctimeNanos, as: UInt32.self)
        d.storeBytes(of: mode.littleEndian, toByteOffset: AttrLayout.mode, as: UInt32.self)
        d.storeBytes(of: linkCount.littleEndian, toByteOffset: AttrLayout.nlink, as: UInt32.self)
        d.storeBytes(of: uid.littleEndian, toByteOffset: AttrLayout.uid, as: UInt32.self)
        d.storeBytes(of: gid.littleEndian, toByteOffset: AttrLayout.gid, as: UInt32.self)
        d.storeBytes(of: rdev.littleEndian, toByteOffset: AttrLayout.rdev, as: UInt32.self)
        d.storeBytes(of: blockSizeBytes.littleEndian, toByteOffset: AttrLayout.blockSize, as: UInt32.self)
        d.storeBytes(of: UInt32(0), toByteOffset: AttrLayout.flags, as: UInt32.self)
    }
}

/// How long the kernel may cache a name or attributes.
@frozen
public struct CacheValidity: Equatable, Sendable {
    public var seconds: UInt64
    public var nanoseconds: UInt32

    @inlinable
    public init(seconds: UInt64, nanoseconds: UInt32 = 0) {
        precondition(nanoseconds < 1_000_000_000)
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
}

/// File-system totals for STATFS.
@frozen
public struct FileSystemStatistics: Equatable, Sendable {
    public var blocks: UInt64
    public var blocksFree: UInt64
    public var blocksAvailable: UInt64
    public var files: UInt64
    public var filesFree: UInt64
    public var blockSizeBytes: UInt32
    public var nameBytesMax: UInt32
    public var fragmentSizeBytes: UInt32

    @inlinable
    public init(blocks: UInt64, blocksFree: UInt64, blocksAvailable: UInt64, files: UInt64, filesFree: UInt64,
                blockSizeBytes: UInt32, nameBytesMax: UInt32, fragmentSizeBytes: UInt32) {
        self.blocks = blocks
        self.blocksFree = blocksFree
        self.blocksAvailable = blocksAvailable
        self.files = files
        self.filesFree = filesFree
        self.blockSizeBytes = blockSizeBytes
        self.nameBytesMax = nameBytesMax
        self.fragmentSizeBytes = fragmentSizeBytes
    }
}

/// st_mode's file-type bits, defined once for every backend (the C macros are visible twice,
/// through Glibc and CDPFS, and are Int32).
public enum FileType {
    public static let mask: UInt32 = 0o170000
    public static let directory: UInt32 = 0o040000
    public static let regular: UInt32 = 0o100000
    public static let symlink: UInt32 = 0o120000
    public static let characterDevice: UInt32 = 0o020000
    public static let blockDevice: UInt32 = 0o060000
    public static let socket: UInt32 = 0o140000
    public static let fifo: UInt32 = 0o010000
}

/// A directory entry's type (d_type, as READDIR entries carry it): st_mode's type bits >> 12.
public enum DirentType {
    public static let directory: UInt32 = 4
    public static let regular: UInt32 = 8
    public static let symlink: UInt32 = 10

    /// The entry type of a file with `mode`.
    @inlinable public static func of(mode: UInt32) -> UInt32 { (mode & FileType.mask) >> 12 }
}

/// What a guest's kernel may cache of a share, and for how long (virtiofsd's --cache modes):
/// defined once, for every backend and the configuration.
public enum CacheMode: String, Sendable, CaseIterable {
    /// Nothing: names and attributes are asked for every time, data goes direct (FOPEN_DIRECT_IO).
    /// Host-side changes are seen at once.
    case never
    /// Names and attributes for 1 s, data direct. Host changes to metadata show within 1 s.
    case metadata
    /// Names and attributes for 1 s; data in the guest's page cache, dropped at every open
    /// (close-to-open consistency, as NFS). The default.
    case auto
    /// Everything for a day, page cache kept across opens (FOPEN_KEEP_CACHE) and writeback caching:
    /// fastest, for a share only this guest changes.
    case always

    public var validity: CacheValidity {
        switch self {
        case .never: return CacheValidity(seconds: 0)
        case .metadata, .auto: return CacheValidity(seconds: 1)
        case .always: return CacheValidity(seconds: 86_400)
        }
    }

    /// FOPEN flags of every open. All modes allow parallel direct writes: without the flag the
    /// kernel (6.2 and later) takes the inode's lock for each O_DIRECT (or direct-I/O) write that
    /// does not extend the file, so a queue-depth-16 writer to one file writes one at a time. Every
    /// backend serves concurrent writes to one file (each WRITE stands alone: pwrite, one NFS WRITE,
    /// one atomic store function), and the kernel still serialises writes that extend it.
    public var openFlags: UInt32 {
        switch self {
        case .never, .metadata: return OpenReplyFlags.directIO | OpenReplyFlags.parallelDirectWrites
        case .auto: return OpenReplyFlags.parallelDirectWrites
        case .always: return OpenReplyFlags.keepCache | OpenReplyFlags.parallelDirectWrites
        }
    }
}
