import CDPFS

/// A positive errno value carried back to the kernel as `-errno` in `fuse_out_header.error`.
/// The kernel rejects `error <= -512 || error > 0`, so every value is kept in 1...511.
public struct FUSEErrno: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32

    @inlinable
    public init(_ rawValue: Int32) {
        precondition(rawValue > 0 && rawValue < 512, "errno out of the range the kernel accepts")
        self.rawValue = rawValue
    }

    @inlinable public static var notPermitted: FUSEErrno { FUSEErrno(unchecked: EPERM) }
    @inlinable public static var noEntry: FUSEErrno { FUSEErrno(unchecked: ENOENT) }
    @inlinable public static var io: FUSEErrno { FUSEErrno(unchecked: EIO) }
    @inlinable public static var noDeviceOrAddress: FUSEErrno { FUSEErrno(unchecked: ENXIO) }
    @inlinable public static var badFileDescriptor: FUSEErrno { FUSEErrno(unchecked: EBADF) }
    @inlinable public static var tryAgain: FUSEErrno { FUSEErrno(unchecked: EAGAIN) }
    @inlinable public static var noMemory: FUSEErrno { FUSEErrno(unchecked: ENOMEM) }
    @inlinable public static var accessDenied: FUSEErrno { FUSEErrno(unchecked: EACCES) }
    @inlinable public static var busy: FUSEErrno { FUSEErrno(unchecked: EBUSY) }
    @inlinable public static var exists: FUSEErrno { FUSEErrno(unchecked: EEXIST) }
    @inlinable public static var notDirectory: FUSEErrno { FUSEErrno(unchecked: ENOTDIR) }
    @inlinable public static var isDirectory: FUSEErrno { FUSEErrno(unchecked: EISDIR) }
    @inlinable public static var invalid: FUSEErrno { FUSEErrno(unchecked: EINVAL) }
    @inlinable public static var fileTooLarge: FUSEErrno { FUSEErrno(unchecked: EFBIG) }
    @inlinable public static var noSpace: FUSEErrno { FUSEErrno(unchecked: ENOSPC) }
    @inlinable public static var readOnlyFileSystem: FUSEErrno { FUSEErrno(unchecked: EROFS) }
    @inlinable public static var range: FUSEErrno { FUSEErrno(unchecked: ERANGE) }
    @inlinable public static var nameTooLong: FUSEErrno { FUSEErrno(unchecked: ENAMETOOLONG) }
    @inlinable public static var notImplemented: FUSEErrno { FUSEErrno(unchecked: ENOSYS) }
    @inlinable public static var notEmpty: FUSEErrno { FUSEErrno(unchecked: ENOTEMPTY) }
    @inlinable public static var noData: FUSEErrno { FUSEErrno(unchecked: ENODATA) }
    @inlinable public static var protocolError: FUSEErrno { FUSEErrno(unchecked: EPROTO) }
    @inlinable public static var notSupported: FUSEErrno { FUSEErrno(unchecked: EOPNOTSUPP) }

    /// For the constants below: their values are known to be in range.
    @inlinable
    init(unchecked rawValue: Int32) {
        self.rawValue = rawValue
    }

    public var description: String { "errno \(rawValue)" }
}
