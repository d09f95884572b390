// Every size the codec accepts has a limit, and each limit says where it comes from.

public enum FUSELimits {
    /// NAME_MAX: the longest directory-entry or xattr name, without its NUL.
    public static let nameBytesMax = 255
    /// PATH_MAX − 1: the longest symlink target, without its NUL.
    public static let symlinkTargetBytesMax = 4095
    /// XATTR_SIZE_MAX: the largest xattr value the kernel will send.
    public static let xattrValueBytesMax = 65536
    /// The engine's max_write (1 MiB, as virtiofsd and DPFS negotiate) and the pages it spans.
    public static let writeBytesMax = 1 << 20
    public static let pagesMax = 256
    /// Largest fixed argument struct (`fuse_setattr_in`) plus the longest name shapes
    /// (SYMLINK: name + target; RENAME2: struct + two names), with NULs, rounded up.
    public static let argsBytesMax = 4608
    /// Largest request accepted at all: header, args, and a full write payload.
    public static let requestBytesMax = writeBytesMax + 8192
    /// Reply staging per request: out header + the largest fixed reply (statx_out, 288 B) or one
    /// page of directory entries (the kernel reads directories a page at a time).
    public static let replyStagingBytes = 4096 + 512
}

/// The defaults of a device's tables, defined once for the configuration, the command line and
/// every backend: how many nodes the guest's kernel may know at once (its lookups, until FORGET),
/// how many files and directories it may hold open, and how many node descriptors the passthrough
/// backend keeps open before it closes idle ones (re-opened by file handle).
public enum DeviceTableDefaults {
    public static let nodesMax = 65_536
    public static let openFilesMax = 16_384
    public static let nodeDescriptorsMax = 4096
}

/// The knobs INIT negotiation changes and the decoder must honour.
@frozen
public struct DecoderOptions: Sendable {
    /// The max_write we announced; a WRITE above it is refused.
    public var writeBytesMax: UInt32
    /// Whether FUSE_SETXATTR_EXT was negotiated (`fuse_setxattr_in` is then 16 bytes, not 8).
    public var setxattrExtended: Bool

    @inlinable
    public init(writeBytesMax: UInt32 = UInt32(FUSELimits.writeBytesMax), setxattrExtended: Bool = false) {
        precondition(writeBytesMax > 0 && writeBytesMax <= UInt32(FUSELimits.writeBytesMax))
        self.writeBytesMax = writeBytesMax
        self.setxattrExtended = setxattrExtended
    }
}
