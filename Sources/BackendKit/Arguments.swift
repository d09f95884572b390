import CDPFS
import FUSEWire

// Typed argument views, one per argument layout. Only the adapter (FileSystemBackend) builds them,
// each under the opcodes it belongs to, and every view checks that its C struct is exactly the
// size the decoder's opcode table copied for that opcode: a struct cannot be read under the wrong
// opcode (FALLOCATE through `fuse_lseek_in`), and a test walks every opcode through the adapter.

/// Loads the fixed argument struct of `request` as `T`, which must be the opcode's own layout.
@inlinable
func fixedArguments<T: BitwiseCopyable>(_ request: FUSERequest, as type: T.Type) -> T {
    assert(MemoryLayout<T>.size == OpcodeTable.fixedSize(of: request.opcodeRaw),
           "argument layout does not belong to opcode \(request.opcodeRaw)")
    return request.arguments(as: T.self)
}

/// No arguments (READLINK, STATFS, SYNCFS).
@frozen
public struct NoArguments {
    @inlinable
    init(_ request: FUSERequest) {
        // SYNCFS carries 8 bytes of padding; the others nothing.
        assert(OpcodeTable.fixedSize(of: request.opcodeRaw) == (request.opcodeRaw == FUSEOpcode.syncfs.rawValue ? 8 : 0))
    }
}

/// A name in a directory (LOOKUP, UNLINK, RMDIR, REMOVEXATTR).
@frozen
public struct NameArguments {
    public let name: Name

    @inlinable
    init(_ request: FUSERequest) {
        assert(OpcodeTable.fixedSize(of: request.opcodeRaw) == 0)
        name = Name(request.name)
    }
}

/// GETATTR: which handle, when the kernel names one (fstat on an open file).
@frozen
public struct GetattrArguments {
    @usableFromInline let raw: UnsafeRawPointer

    @inlinable
    init(_ request: FUSERequest) {
        assert(MemoryLayout<fuse_getattr_in>.size == OpcodeTable.fixedSize(of: request.opcodeRaw),
               "argument layout does not belong to opcode \(request.opcodeRaw)")
        raw = request.args
    }

    @inlinable public var flags: UInt32 { raw.loadUnaligned(as: fuse_getattr_in.self).getattr_flags }

    /// The open file the attributes are asked through, if any (FUSE_GETATTR_FH).
    @inlinable
    public var handle: UInt64? {
        let fields = raw.loadUnaligned(as: fuse_getattr_in.self)
        return fields.getattr_flags & UInt32(FUSE_GETATTR_FH) != 0 ? fields.fh : nil
    }
}

/// SETATTR: `valid` says which fields to change (FATTR_*).
@frozen
public struct SetattrArguments {
    /// The kernel's struct, for the fields below and the times' nanoseconds.
    public let fields: fuse_setattr_in

    @inlinable
    init(_ request: FUSERequest) { fields = fixedArguments(request, as: fuse_setattr_in.self) }

    @inlinable public var valid: UInt32 { fields.valid }
    @inlinable public func changes(_ bit: Int32) -> Bool { fields.valid & UInt32(bit) != 0 }
    @inlinable public var handle: UInt64? { changes(FATTR_FH) ? fields.fh : nil }
    @inlinable public var sizeBytes: UInt64 { fields.size }
    @inlinable public var mode: UInt32 { fields.mode }
    @inlinable public var uid: UInt32 { fields.uid }
    @inlinable public var gid: UInt32 { fields.gid }
    @inlinable public var lockOwner: UInt64 { fields.lock_owner }

    /// The new size, when the request changes it (truncate).
    @inlinable public var newSizeBytes: UInt64? { changes(FATTR_SIZE) ? fields.size : nil }
    /// The new permission bits (chmod), when the request changes them.
    @inlinable public var newMode: UInt32? { changes(FATTR_MODE) ? fields.mode & 0o7777 : nil }
    /// The new owner and group (chown), each when the request changes it.
    @inlinable public var newUID: UInt32? { changes(FATTR_UID) ? fields.uid : nil }
    @inlinable public var newGID: UInt32? { changes(FATTR_GID) ? fields.gid : nil }
}

/// SYMLINK: the new entry's name and the link's target.
@frozen
public struct SymlinkArguments {
    public let name: Name
    public let target: Name

    @inlinable
    init(_ request: FUSERequest) {
        assert(OpcodeTable.fixedSize(of: request.opcodeRaw) == 0)
        name = Name(request.name)
        target = Name(request.secondName)
    }
}

/// MKNOD and MKDIR: a new entry with a mode (MKDIR's carries no file type), the caller's umask
/// (already applied by the kernel unless the backend asked otherwise), and MKNOD's device number.
@frozen
public struct MakeNodeArguments {
    public let name: Name
    public let mode: UInt32
    public let umask: UInt32
    public let rdev: UInt32

    @inlinable
    init(_ request: FUSERequest) {
        name = Name(request.name)
        if request.opcodeRaw == FUSEOpcode.mkdir.rawValue {
            let raw = fixedArguments(request, as: fuse_mkdir_in.self)
            mode = raw.mode
            umask = raw.umask
            rdev = 0
        } else {
            let raw = fixedArguments(request, as: fuse_mknod_in.self)
            mode = raw.mode
            umask = raw.umask
            rdev = raw.rdev
        }
    }
}

/// RENAME and RENAME2: the entry `name` in the operation's node moves to `newName` in `newParent`.
/// `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT) is 0 for RENAME.
@frozen
public struct RenameArguments {
    public let name: Name
    public let newParent: UInt64
    public let newName: Name
    public let flags: UInt32

    @inlinable
    init(_ request: FUSERequest) {
        name = Name(request.name)
        newName = Name(request.secondName)
        if request.opcodeRaw == FUSEOpcode.rename2.rawValue {
            let raw = fixedArguments(request, as: fuse_rename2_in.self)
            newParent = raw.newdir
            flags = raw.flags
        } else {
            newParent = fixedArguments(request, as: fuse_rename_in.self).newdir
            flags = 0
        }
    }
}

/// LINK: a new name in the operation's node (the directory) for the existing node `target`.
@frozen
public struct LinkArguments {
    public let target: UInt64
    public let name: Name

    @inlinable
    init(_ request: FUSERequest) {
        target = fixedArguments(request, as: fuse_link_in.self).oldnodeid
        name = Name(request.name)
    }
}

/// OPEN and OPENDIR: open(2) flags and the kernel's FUSE_OPEN_* flags.
@frozen
public struct OpenArguments {
    public let flags: UInt32
    public let openFlags: UInt32

    @inlinable
    init(_ request: FUSERequest) {
        let raw = fixedArguments(request, as: fuse_open_in.self)
        flags = raw.flags
        openFlags = raw.open_flags
    }
}

/// CREATE and TMPFILE: a new file opened at once.
@frozen
public struct CreateArguments {
    public let name: Name
    public let flags: UInt32
    public let mode: UInt32
    public let umask: UInt32
    public let openFlags: UInt32

    @inlinable
    init(_ request: FUSERequest) {
        let raw = fixedArguments(request, as: fuse_create_in.self)
        name = Name(request.name)
        flags = raw.flags
        mode = raw.mode
        umask = raw.umask
        openFlags = raw.open_flags
    }
}

/// READ, READDIR and READDIRPLUS: `size` bytes at `offset` (a directory cookie for READDIR*).
/// Fields are read from the decoded arguments (engine memory) when asked for: the data path's
/// views cost a pointer, whatever a backend uses of them.
@frozen
public struct ReadArguments {
    @usableFromInline let raw: UnsafeRawPointer

    @inlinable
    init(_ request: FUSERequest) {
        assert(MemoryLayout<fuse_read_in>.size == OpcodeTable.fixedSize(of: request.opcodeRaw),
               "argument layout does not belong to opcode \(request.opcodeRaw)")
        raw = request.args
    }

    @inlinable public var fields: fuse_read_in { raw.loadUnaligned(as: fuse_read_in.self) }
    @inlinable public var handle: UInt64 { fields.fh }
    @inlinable public var offset: UInt64 { fields.offset }
    @inlinable public var size: UInt32 { fields.size }
    @inlinable public var readFlags: UInt32 { fields.read_flags }
    @inlinable public var lockOwner: UInt64 { fields.lock_owner }
    @inlinable public var flags: UInt32 { fields.flags }
}

/// WRITE: `payload` holds `size` bytes (checked by the decoder) to write at `offset`.
@frozen
public struct WriteArguments {
    @usableFromInline let request: FUSERequest

    @inlinable
    init(_ request: FUSERequest) {
        assert(MemoryLayout<fuse_write_in>.size == OpcodeTable.fixedSize(of: request.opcodeRaw),
               "argument layout does not belong to opcode \(request.opcodeRaw)")
        self.request = request
    }

    @inlinable public var fields: fuse_write_in { request.args.loadUnaligned(as: fuse_write_in.self) }
    @inlinable public var handle: UInt64 { fields.fh }
    @inlinable public var offset: UInt64 { fields.offset }
    @inlinable public var size: UInt32 { fields.size }
    @inlinable public var writeFlags: UInt32 { fields.write_flags }
    @inlinable public var lockOwner: UInt64 { fields.lock_owner }
    @inlinable public var flags: UInt32 { fields.flags }
    /// The data, in place in the guest's buffers.
    @inlinable public var payload: SegmentCursor { request.payload }
}

/// RELEASE and RELEASEDIR.
@frozen
public struct ReleaseArguments {
    public let handle: UInt64
    public let flags: UInt32
    public let releaseFlags: UInt32
    public let lockOwner: UInt64

    @inlinable
    init(_ request: FUSERequest) {
        let raw = fixedArguments(request, as: fuse_release_in.self)
        handle = raw.fh
        flags = raw.flags
        releaseFlags = raw.release_flags
        lockOwner = raw.lock_owner
    }

    /// The guest's last close also drops the owner's locks (FUSE_RELEASE_FLUSH).
    @inlinable public var flushesLocks: Bool { releaseFlags & UInt32(FUSE_RELEASE_FLUSH) != 0 }
}

/// FLUSH: a close(2) in the guest, by `lockOwner`.
@frozen
public struct FlushArguments {
    public let handle: UInt64
    public let lockOwner: UInt64

    @inlinable
    init(_ request: FUSERequest) {
        let raw = fixedArguments(request, as: fuse_flush_in.self)
        handle = raw.fh
        lockOwner = raw.lock_owner
    }
}

/// FSYNC and FSYNCDIR.
@frozen
public struct FsyncArguments {
    public let handle: UInt64
    public let fsyncFlags: UInt32

    @inlinable
    init(_ request: FUSERequest) {
        let raw = fixedArguments(request, as: fuse_fsync_in.self)
        handle = raw.fh
        fsyncFlags = raw.fsync_flags
    }

    /// fdatasync(2): data only (FUSE_FSYNC_FDATASYNC).
    @inlinable public var dataOnly: Bool { fsyncFlags & 1 != 0 }
}

/// SETXATTR: `name` = `value` (`size` bytes in place in `value`).
@frozen
public struct SetxattrArguments {
    public let name: Name
    public let size: UInt32
    public let flags: UInt32
    /// FUSE_SETXATTR_ACL_KILL_SGID and friends: only with the extended struct, else 0.
    public let setxattrFlags: UInt32
    public let value: SegmentCursor

    @inlinable
    init(_ request: FUSERequest) {
        // The struct is 8 bytes (compat) or 16 (FUSE_SETXATTR_EXT): where the name starts says which.
        let extended = request.header.pointee.name1Offset == 16
        assert(request.opcodeRaw == FUSEOpcode.setxattr.rawValue)
        size = request.argument(at: 0)
        flags = request.argument(at: 4)
        setxattrFlags = extended ? request.argument(at: 8) : 0
        name = Name(request.name)
        value = request.payload
    }
}

/// GETXATTR (with a name) and LISTXATTR (without): `size` 0 asks only for the length.
@frozen
public struct XattrQueryArguments {
    public let size: UInt32
    /// GETXATTR's attribute name; nil for LISTXATTR.
    public let name: Name?

    @inlinable
    init(_ request: FUSERequest) {
        size = fixedArguments(request, as: fuse_getxattr_in.self).size
        name = request.opcodeRaw == FUSEOpcode.getxattr.rawValue ? Name(request.name) : nil
    }
}

/// GETLK, SETLK and SETLKW: a POSIX (or, with FUSE_LK_FLOCK, BSD) lock on `handle` by `owner`.
@frozen
public struct LockArguments {
    public let handle: UInt64
    public let owner: UInt64
    public let start: UInt64
    public let end: UInt64
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    public let type: UInt32
    public let pid: UInt32
    public let lockFlags: UInt32

    @inlinable
    init(_ request: FUSERequest) {
        let raw = fixedArguments(request, as: fuse_lk_in.self)
        handle = raw.fh
        owner = raw.owner
        start = raw.lk.start
        end = raw.lk.end
        type = raw.lk.type
        pid = raw.lk.pid
        lockFlags = raw.lk_flags
    }

    /// A flock(2) lock rather than a POSIX record lock.
    @inlinable public var isFlock: Bool { lockFlags & UInt32(FUSE_LK_FLOCK) != 0 }
}

/// ACCESS: the access(2) mask (R_OK, W_OK, X_OK; F_OK is 0).
@frozen
public struct AccessArguments {
    public let mask: UInt32

    @inlinable
    init(_ request: FUSERequest) { mask = fixedArguments(request, as: fuse_access_in.self).mask }
}

/// FALLOCATE.
@frozen
public struct FallocateArguments {
    public let handle: UInt64
    public let offset: UInt64
    public let length: UInt64
    /// fallocate(2) mode bits (FALLOC_FL_KEEP_SIZE, PUNCH_HOLE, ...).
    public let mode: UInt32

    @inlinable
    init(_ request: FUSERequest) {
        let raw = fixedArguments(request, as: fuse_fallocate_in.self)
        handle = raw.fh
        offset = raw.offset
        length = raw.length
        mode = raw.mode
    }
}

/// LSEEK: SEEK_DATA or SEEK_HOLE from `offset` (the kernel resolves SET/CUR/END itself).
@frozen
public struct LseekArguments {
    public let handle: UInt64
    public let offset: UInt64
    public let whence: UInt32

    @inlinable
    init(_ request: FUSERequest) {
        let raw = fixedArguments(request, as: fuse_lseek_in.self)
        handle = raw.fh
        offset = raw.offset
        whence = raw.whence
    }
}

/// COPY_FILE_RANGE and COPY_FILE_RANGE_64: `length` bytes from (operation's node, `handleIn`,
/// `offsetIn`) to (`nodeOut`, `handleOut`, `offsetOut`).
@frozen
public struct CopyFileRangeArguments {
    public let handleIn: UInt64
    public let offsetIn: UInt64
    public let nodeOut: UInt64
    public let handleOut: UInt64
    public let offsetOut: UInt64
    public let length: UInt64
    public let flags: UInt64

    @inlinable
    init(_ request: FUSERequest) {
        let raw = fixedArguments(request, as: fuse_copy_file_range_in.self)
        handleIn = raw.fh_in
        offsetIn = raw.off_in
        nodeOut = raw.nodeid_out
        handleOut = raw.fh_out
        offsetOut = raw.off_out
        length = raw.len
        flags = raw.flags
    }
}

/// STATX: which fields (`mask`, STATX_*), the AT_STATX_* sync flags, and a handle when the kernel
/// names one.
@frozen
public struct StatxArguments {
    public let flags: UInt32
    public let mask: UInt32
    public let statxFlags: UInt32
    @usableFromInline let fileHandle: UInt64

    @inlinable
    init(_ request: FUSERequest) {
        let raw = fixedArguments(request, as: CDPFS_fuse_statx_in.self)
        flags = raw.getattr_flags
        mask = raw.sx_mask
        statxFlags = raw.sx_flags
        fileHandle = raw.fh
    }

    @inlinable
    public var handle: UInt64? { flags & UInt32(FUSE_GETATTR_FH) != 0 ? fileHandle : nil }
}
