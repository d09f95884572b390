// Byte layouts of the FUSE kernel ABI (include/uapi/linux/fuse.h, protocol 7.45). Swift struct
// layout is not an ABI, so every shared structure is read and written at explicit offsets; tests
// check these numbers against the C structs the kernel headers declare.

/// `fuse_in_header`: 40 bytes at the start of every request.
public enum InHeaderLayout {
    @inlinable public static var size: Int { 40 }
    @inlinable public static var len: Int { 0 }  // u32: whole request, header + args + extensions + payload
    @inlinable public static var opcode: Int { 4 }  // u32
    @inlinable public static var unique: Int { 8 }  // u64
    @inlinable public static var nodeID: Int { 16 }  // u64
    @inlinable public static var uid: Int { 24 }  // u32
    @inlinable public static var gid: Int { 28 }  // u32
    @inlinable public static var pid: Int { 32 }  // u32
    @inlinable public static var totalExtLen: Int { 36 }  // u16, in 8-byte units (7.38+)
}

/// `fuse_out_header`: 16 bytes at the start of every reply; an error reply is exactly this.
public enum OutHeaderLayout {
    @inlinable public static var size: Int { 16 }
    @inlinable public static var len: Int { 0 }  // u32
    @inlinable public static var error: Int { 4 }  // i32: 0 or -errno
    @inlinable public static var unique: Int { 8 }  // u64
}

/// `fuse_attr`: 88 bytes, embedded in entry and attr replies.
public enum AttrLayout {
    @inlinable public static var size: Int { 88 }
    @inlinable public static var ino: Int { 0 }
    @inlinable public static var fileSize: Int { 8 }
    @inlinable public static var blocks: Int { 16 }
    @inlinable public static var atime: Int { 24 }
    @inlinable public static var mtime: Int { 32 }
    @inlinable public static var ctime: Int { 40 }
    @inlinable public static var atimeNanos: Int { 48 }
    @inlinable public static var mtimeNanos: Int { 52 }
    @inlinable public static var ctimeNanos: Int { 56 }
    @inlinable public static var mode: Int { 60 }
    @inlinable public static var nlink: Int { 64 }
    @inlinable public static var uid: Int { 68 }
    @inlinable public static var gid: Int { 72 }
    @inlinable public static var rdev: Int { 76 }
    @inlinable public static var blockSize: Int { 80 }
    @inlinable public static var flags: Int { 84 }
}

/// `fuse_entry_out`: 128 bytes (LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE, READDIRPLUS).
public enum EntryOutLayout {
    @inlinable public static var size: Int { 128 }
    @inlinable public static var nodeID: Int { 0 }
    @inlinable public static var generation: Int { 8 }
    @inlinable public static var entryValid: Int { 16 }
    @inlinable public static var attrValid: Int { 24 }
    @inlinable public static var entryValidNanos: Int { 32 }
    @inlinable public static var attrValidNanos: Int { 36 }
    @inlinable public static var attr: Int { 40 }
}

/// `fuse_attr_out`: 104 bytes (GETATTR, SETATTR).
public enum AttrOutLayout {
    @inlinable public static var size: Int { 104 }
    @inlinable public static var attrValid: Int { 0 }
    @inlinable public static var attrValidNanos: Int { 8 }
    @inlinable public static var attr: Int { 16 }
}

/// `fuse_open_out`: 16 bytes (OPEN, OPENDIR, and after the entry in CREATE/TMPFILE).
public enum OpenOutLayout {
    @inlinable public static var size: Int { 16 }
    @inlinable public static var fileHandle: Int { 0 }
    @inlinable public static var openFlags: Int { 8 }
    @inlinable public static var backingID: Int { 12 }
}

/// `fuse_write_out`: 8 bytes (WRITE, COPY_FILE_RANGE).
public enum WriteOutLayout {
    @inlinable public static var size: Int { 8 }
    @inlinable public static var bytes: Int { 0 }
}

/// `fuse_statfs_out` (a `fuse_kstatfs`): 80 bytes.
public enum StatfsOutLayout {
    @inlinable public static var size: Int { 80 }
    @inlinable public static var blocks: Int { 0 }
    @inlinable public static var blocksFree: Int { 8 }
    @inlinable public static var blocksAvailable: Int { 16 }
    @inlinable public static var files: Int { 24 }
    @inlinable public static var filesFree: Int { 32 }
    @inlinable public static var blockSize: Int { 40 }
    @inlinable public static var nameLength: Int { 44 }
    @inlinable public static var fragmentSize: Int { 48 }
}

/// `fuse_getxattr_out`: 8 bytes, the answer to a size probe (size 0) of GETXATTR/LISTXATTR.
public enum GetxattrOutLayout {
    @inlinable public static var size: Int { 8 }
    @inlinable public static var valueSize: Int { 0 }
}

/// `fuse_lk_out`: 24 bytes, a `fuse_file_lock {u64 start, u64 end, u32 type, u32 pid}`.
public enum LockOutLayout {
    @inlinable public static var size: Int { 24 }
    @inlinable public static var start: Int { 0 }
    @inlinable public static var end: Int { 8 }
    @inlinable public static var type: Int { 16 }
    @inlinable public static var pid: Int { 20 }
}

/// `fuse_bmap_out`, `fuse_lseek_out`, `fuse_copy_file_range_out`: one u64.
public enum U64OutLayout {
    @inlinable public static var size: Int { 8 }
}

/// `fuse_statx_out`: 288 bytes: validity, flags, spare, then a 256-byte `fuse_statx`.
public enum StatxOutLayout {
    @inlinable public static var size: Int { 288 }
    @inlinable public static var attrValid: Int { 0 }
    @inlinable public static var attrValidNanos: Int { 8 }
    @inlinable public static var flags: Int { 12 }
    @inlinable public static var statx: Int { 32 }
    // Offsets inside the embedded `fuse_statx`.
    @inlinable public static var mask: Int { 0 }
    @inlinable public static var blockSize: Int { 4 }
    @inlinable public static var attributes: Int { 8 }
    @inlinable public static var nlink: Int { 16 }
    @inlinable public static var uid: Int { 20 }
    @inlinable public static var gid: Int { 24 }
    @inlinable public static var mode: Int { 28 }
    @inlinable public static var ino: Int { 32 }
    @inlinable public static var fileSize: Int { 40 }
    @inlinable public static var blocks: Int { 48 }
    @inlinable public static var attributesMask: Int { 56 }
    @inlinable public static var atime: Int { 64 }
    @inlinable public static var btime: Int { 80 }
    @inlinable public static var ctime: Int { 96 }
    @inlinable public static var mtime: Int { 112 }  // fuse_sx_time {i64 sec, u32 nsec, i32 pad}
    @inlinable public static var rdevMajor: Int { 128 }
    @inlinable public static var rdevMinor: Int { 132 }
    @inlinable public static var devMajor: Int { 136 }
    @inlinable public static var devMinor: Int { 140 }
}

/// `fuse_init_in` and `fuse_init_out`.
public enum InitLayout {
    @inlinable public static var inSizeMin: Int { 16 }  // major, minor, max_readahead, flags (pre-7.36 kernels)
    @inlinable public static var inSize: Int { 64 }  // + flags2, unused[11]
    @inlinable public static var major: Int { 0 }
    @inlinable public static var minor: Int { 4 }
    @inlinable public static var maxReadahead: Int { 8 }
    @inlinable public static var flags: Int { 12 }
    @inlinable public static var flags2In: Int { 16 }

    @inlinable public static var outSize: Int { 64 }
    @inlinable public static var outMaxBackground: Int { 16 }
    @inlinable public static var outCongestionThreshold: Int { 18 }
    @inlinable public static var outMaxWrite: Int { 20 }
    @inlinable public static var outTimeGranularity: Int { 24 }
    @inlinable public static var outMaxPages: Int { 28 }
    @inlinable public static var outMapAlignment: Int { 30 }
    @inlinable public static var outFlags2: Int { 32 }
    @inlinable public static var outMaxStackDepth: Int { 36 }
    @inlinable public static var outRequestTimeout: Int { 40 }
}

/// `fuse_dirent`: 24-byte header + name, padded to 8 bytes; READDIRPLUS prefixes an entry_out.
public enum DirentLayout {
    @inlinable public static var headerSize: Int { 24 }
    @inlinable public static var ino: Int { 0 }
    @inlinable public static var offset: Int { 8 }
    @inlinable public static var nameLength: Int { 16 }
    @inlinable public static var type: Int { 20 }

    /// Size of one packed dirent with its name, rounded up to 8 bytes as the kernel requires.
    @inlinable
    public static func alignedSize(nameLength: Int) -> Int {
        (headerSize + nameLength + 7) & ~7
    }
}
