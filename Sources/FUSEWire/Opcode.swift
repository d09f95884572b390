// FUSE opcodes the Linux kernel can send (protocol 7.45). Numbers are the wire values of
// `enum fuse_opcode` in include/uapi/linux/fuse.h; names are Swift-style.

/// A FUSE request opcode, as carried in `fuse_in_header.opcode`.
public enum FUSEOpcode: UInt32, CaseIterable, Sendable {
    case lookup = 1
    case forget = 2
    case getattr = 3
    case setattr = 4
    case readlink = 5
    case symlink = 6
    case mknod = 8
    case mkdir = 9
    case unlink = 10
    case rmdir = 11
    case rename = 12
    case link = 13
    case open = 14
    case read = 15
    case write = 16
    case statfs = 17
    case release = 18
    case fsync = 20
    case setxattr = 21
    case getxattr = 22
    case listxattr = 23
    case removexattr = 24
    case flush = 25
    case `init` = 26
    case opendir = 27
    case readdir = 28
    case releasedir = 29
    case fsyncdir = 30
    case getlk = 31
    case setlk = 32
    case setlkw = 33
    case access = 34
    case create = 35
    case interrupt = 36
    case bmap = 37
    case destroy = 38
    case ioctl = 39
    case poll = 40
    case notifyReply = 41
    case batchForget = 42
    case fallocate = 43
    case readdirplus = 44
    case rename2 = 45
    case lseek = 46
    case copyFileRange = 47
    case setupMapping = 48
    case removeMapping = 49
    case syncfs = 50
    case tmpfile = 51
    case statx = 52
    case copyFileRange64 = 53

    /// The largest opcode number we know; table sizes derive from it.
    public static let rawValueMax: UInt32 = 53

    /// FORGET, BATCH_FORGET and NOTIFY_REPLY are one-way: the kernel expects no reply, and the
    /// device returns the chain with used length 0.
    @inlinable
    public var expectsReply: Bool {
        switch self {
        case .forget, .batchForget, .notifyReply: return false
        default: return true
        }
    }

    /// `expectsReply` for a raw opcode, unknown ones included (they get an ENOSYS reply), without
    /// building the enum first.
    @inlinable
    @_noAllocation @_noLocks
    public static func expectsReply(raw: UInt32) -> Bool {
        raw != FUSEOpcode.forget.rawValue && raw != FUSEOpcode.batchForget.rawValue && raw != FUSEOpcode.notifyReply.rawValue
    }

    /// The kernel's spelling, for logs and reports (never on the data path).
    public var wireName: String {
        switch self {
        case .lookup: return "LOOKUP"
        case .forget: return "FORGET"
        case .getattr: return "GETATTR"
        case .setattr: return "SETATTR"
        case .readlink: return "READLINK"
        case .symlink: return "SYMLINK"
        case .mknod: return "MKNOD"
        case .mkdir: return "MKDIR"
        case .unlink: return "UNLINK"
        case .rmdir: return "RMDIR"
        case .rename: return "RENAME"
        case .link: return "LINK"
        case .open: return "OPEN"
        case .read: return "READ"
        case .write: return "WRITE"
        case .statfs: return "STATFS"
        case .release: return "RELEASE"
        case .fsync: return "FSYNC"
        case .setxattr: return "SETXATTR"
        case .getxattr: return "GETXATTR"
        case .listxattr: return "LISTXATTR"
        case .removexattr: return "REMOVEXATTR"
        case .flush: return "FLUSH"
        case .`init`: return "INIT"
        case .opendir: return "OPENDIR"
        case .readdir: return "READDIR"
        case .releasedir: return "RELEASEDIR"
        case .fsyncdir: return "FSYNCDIR"
        case .getlk: return "GETLK"
        case .setlk: return "SETLK"
        case .setlkw: return "SETLKW"
        case .access: return "ACCESS"
        case .create: return "CREATE"
        case .interrupt: return "INTERRUPT"
        case .bmap: return "BMAP"
        case .destroy: return "DESTROY"
        case .ioctl: return "IOCTL"
        case .poll: return "POLL"
        case .notifyReply: return "NOTIFY_REPLY"
        case .batchForget: return "BATCH_FORGET"
        case .fallocate: return "FALLOCATE"
        case .readdirplus: return "READDIRPLUS"
        case .rename2: return "RENAME2"
        case .lseek: return "LSEEK"
        case .copyFileRange: return "COPY_FILE_RANGE"
        case .setupMapping: return "SETUPMAPPING"
        case .removeMapping: return "REMOVEMAPPING"
        case .syncfs: return "SYNCFS"
        case .tmpfile: return "TMPFILE"
        case .statx: return "STATX"
        case .copyFileRange64: return "COPY_FILE_RANGE_64"
        }
    }
}
