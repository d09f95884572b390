import CDPFS
import DPFSTestSupport
import FUSEWire
import Testing

// Reply encoding: the byte layouts against the kernel's C structs, then every reply kind written
// into writable space cut every possible way. Field values are read back at the C offsets, not at
// the Swift layout constants under test.

// MARK: - Shared helpers (also used by InitNegotiationTests)

/// The writable part of a request (cut into segments as a guest's descriptors may be), the slot's
/// staging area and its reply-length word. Writable bytes start as `fill` so untouched bytes
/// show; staging starts as `stagingFill`, playing the stale bytes of an earlier request.
final class CodecReplySpace {
    let writable: SegmentedBuffer
    let staging: UnsafeMutableRawPointer
    let replyLength: UnsafeMutablePointer<UInt32>
    let unique: UInt64
    let fill: UInt8

    init(bytes: Int, cuts: [Int] = [], fill: UInt8 = 0xA5, stagingFill: UInt8 = 0xCC,
         unique: UInt64 = 0x0A0B_0C0D_0E0F_1011) {
        writable = SegmentedBuffer([UInt8](repeating: fill, count: bytes), cuts: cuts)
        staging = .allocate(byteCount: FUSELimits.replyStagingBytes, alignment: 64)
        staging.initializeMemory(as: UInt8.self, repeating: stagingFill, count: FUSELimits.replyStagingBytes)
        replyLength = .allocate(capacity: 1)
        replyLength.initialize(to: 0xDEAD_BEEF)  // any stale value must be overwritten
        self.unique = unique
        self.fill = fill
    }

    /// Writable space cut into pieces of `chunk` bytes.
    convenience init(bytes: Int, chunk: Int, stagingFill: UInt8 = 0xCC) {
        self.init(bytes: bytes, cuts: Array(stride(from: chunk, to: bytes, by: chunk)), stagingFill: stagingFill)
    }

    var reply: FUSEReply {
        FUSEReply(writable: UnsafePointer(writable.segments), writableCount: writable.count,
                  writableBytes: writable.totalBytes, staging: staging, unique: unique, replyLength: replyLength)
    }

    /// Everything in the writable segments, reassembled.
    var bytes: [UInt8] { writable.bytes }
    var length: Int { Int(replyLength.pointee) }
    /// The bytes the reply length covers.
    var sent: [UInt8] { Array(bytes.prefix(min(length, writable.totalBytes))) }

    deinit {
        staging.deallocate()
        replyLength.deallocate()
    }
}

/// Reads fuse_out_header from the front of a reply.
struct CodecOutHeader: Equatable {
    var len: UInt32
    var error: Int32
    var unique: UInt64

    init(_ bytes: [UInt8]) {
        len = bytes.loadLE(UInt32.self, at: MemoryLayout<fuse_out_header>.offset(of: \fuse_out_header.len)!)
        error = bytes.loadLE(Int32.self, at: MemoryLayout<fuse_out_header>.offset(of: \fuse_out_header.error)!)
        unique = bytes.loadLE(UInt64.self, at: MemoryLayout<fuse_out_header>.offset(of: \fuse_out_header.unique)!)
    }

    init(len: UInt32, error: Int32, unique: UInt64) {
        self.len = len
        self.error = error
        self.unique = unique
    }
}

/// Offset of a C struct field.
func cOffset<T>(_ key: PartialKeyPath<T>) -> Int {
    MemoryLayout<T>.offset(of: key)!
}

/// Sequential offsets of a packed field list (every field here is naturally aligned, so no padding):
/// the hand computation for structs newer than the 7.38 header.
private func sequentialOffsets(_ fields: [(String, Int)]) -> [String: Int] {
    var offsets: [String: Int] = [:]
    var next = 0
    for (name, size) in fields {
        precondition(next % min(size, 8) == 0, "field \(name) would be misaligned")
        offsets[name] = next
        next += size
    }
    offsets["<size>"] = next
    return offsets
}

/// fuse_statx_out (7.39): u64 attr_valid, u32 attr_valid_nsec, u32 flags, u64 spare[2], fuse_statx stat.
private let statxOutOffsets = sequentialOffsets([
    ("attr_valid", 8), ("attr_valid_nsec", 4), ("flags", 4), ("spare0", 8), ("spare1", 8), ("stat", 256),
])
/// fuse_statx: mask, blksize, attributes, nlink, uid, gid, mode(u16), spare0(u16), ino, size,
/// blocks, attributes_mask, 4 × fuse_sx_time {i64 tv_sec, u32 tv_nsec, i32 spare}, rdev/dev
/// major/minor, u64 spare2[14].
private let statxOffsets = sequentialOffsets([
    ("mask", 4), ("blksize", 4), ("attributes", 8), ("nlink", 4), ("uid", 4), ("gid", 4), ("mode", 2),
    ("spare0", 2), ("ino", 8), ("size", 8), ("blocks", 8), ("attributes_mask", 8),
    ("atime", 16), ("btime", 16), ("ctime", 16), ("mtime", 16),
    ("rdev_major", 4), ("rdev_minor", 4), ("dev_major", 4), ("dev_minor", 4), ("spare2", 14 * 8),
])

/// Sample values: every field distinct and wider than a byte, so a misplaced or truncated field shows.
enum CodecSamples {
    static let attributes = FileAttributes(
        inode: 0x0101_0202_0303_0404, sizeBytes: 0x1111_2222_3333_4444, blocks: 0x0000_5555_6666_7777,
        accessTime: FUSETime(seconds: 0x0000_00A0_A0B0_B0C0, nanoseconds: 111_111_111),
        modificationTime: FUSETime(seconds: 0x0000_00A1_A1B1_B1C1, nanoseconds: 222_222_222),
        changeTime: FUSETime(seconds: 0x0000_00A2_A2B2_B2C2, nanoseconds: 333_333_333),
        mode: 0o100644, linkCount: 0x0303, uid: 0x0001_0001, gid: 0x0002_0002, rdev: 0x0803, blockSizeBytes: 4096)
    static let entryValid = CacheValidity(seconds: 0x0102_0304_0506_0708, nanoseconds: 123_456_789)
    static let attrValid = CacheValidity(seconds: 0x1112_1314_1516_1718, nanoseconds: 987_654_321)
    static let statistics = FileSystemStatistics(
        blocks: 0x1000_0000_0001, blocksFree: 0x2000_0000_0002, blocksAvailable: 0x3000_0000_0003,
        files: 0x4000_0000_0004, filesFree: 0x5000_0000_0005, blockSizeBytes: 0x1000, nameBytesMax: 255,
        fragmentSizeBytes: 0x0200)
}

/// Checks an 88-byte fuse_attr at `base` in `bytes` against `a`.
func expectAttr(_ bytes: [UInt8], at base: Int, _ a: FileAttributes, sourceLocation: SourceLocation = #_sourceLocation) {
    func u64(_ key: PartialKeyPath<fuse_attr>) -> UInt64 { bytes.loadLE(UInt64.self, at: base + cOffset(key)) }
    func u32(_ key: PartialKeyPath<fuse_attr>) -> UInt32 { bytes.loadLE(UInt32.self, at: base + cOffset(key)) }
    #expect(u64(\fuse_attr.ino) == a.inode, sourceLocation: sourceLocation)
    #expect(u64(\fuse_attr.size) == a.sizeBytes, sourceLocation: sourceLocation)
    #expect(u64(\fuse_attr.blocks) == a.blocks, sourceLocation: sourceLocation)
    #expect(u64(\fuse_attr.atime) == a.accessTime.seconds, sourceLocation: sourceLocation)
    #expect(u64(\fuse_attr.mtime) == a.modificationTime.seconds, sourceLocation: sourceLocation)
    #expect(u64(\fuse_attr.ctime) == a.changeTime.seconds, sourceLocation: sourceLocation)
    #expect(u32(\fuse_attr.atimensec) == a.accessTime.nanoseconds, sourceLocation: sourceLocation)
    #expect(u32(\fuse_attr.mtimensec) == a.modificationTime.nanoseconds, sourceLocation: sourceLocation)
    #expect(u32(\fuse_attr.ctimensec) == a.changeTime.nanoseconds, sourceLocation: sourceLocation)
    #expect(u32(\fuse_attr.mode) == a.mode, sourceLocation: sourceLocation)
    #expect(u32(\fuse_attr.nlink) == a.linkCount, sourceLocation: sourceLocation)
    #expect(u32(\fuse_attr.uid) == a.uid, sourceLocation: sourceLocation)
    #expect(u32(\fuse_attr.gid) == a.gid, sourceLocation: sourceLocation)
    #expect(u32(\fuse_attr.rdev) == a.rdev, sourceLocation: sourceLocation)
    #expect(u32(\fuse_attr.blksize) == a.blockSizeBytes, sourceLocation: sourceLocation)
    #expect(u32(\fuse_attr.flags) == 0, sourceLocation: sourceLocation)
}

/// Checks a 128-byte fuse_entry_out at `base`.
func expectEntry(_ bytes: [UInt8], at base: Int, nodeID: UInt64, generation: UInt64,
                 sourceLocation: SourceLocation = #_sourceLocation) {
    func u64(_ key: PartialKeyPath<fuse_entry_out>) -> UInt64 { bytes.loadLE(UInt64.self, at: base + cOffset(key)) }
    func u32(_ key: PartialKeyPath<fuse_entry_out>) -> UInt32 { bytes.loadLE(UInt32.self, at: base + cOffset(key)) }
    #expect(u64(\fuse_entry_out.nodeid) == nodeID, sourceLocation: sourceLocation)
    #expect(u64(\fuse_entry_out.generation) == generation, sourceLocation: sourceLocation)
    #expect(u64(\fuse_entry_out.entry_valid) == CodecSamples.entryValid.seconds, sourceLocation: sourceLocation)
    #expect(u64(\fuse_entry_out.attr_valid) == CodecSamples.attrValid.seconds, sourceLocation: sourceLocation)
    #expect(u32(\fuse_entry_out.entry_valid_nsec) == CodecSamples.entryValid.nanoseconds, sourceLocation: sourceLocation)
    #expect(u32(\fuse_entry_out.attr_valid_nsec) == CodecSamples.attrValid.nanoseconds, sourceLocation: sourceLocation)
    expectAttr(bytes, at: base + cOffset(\fuse_entry_out.attr), CodecSamples.attributes, sourceLocation: sourceLocation)
}

/// Linux's new_encode_dev (include/linux/kdev_t.h): how fuse_attr.rdev carries a device number.
private func newEncodeDev(major: UInt32, minor: UInt32) -> UInt32 {
    (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
}

// MARK: - 1. Layout constants vs the kernel header

struct LayoutCheck: Sendable, CustomTestStringConvertible {
    let name: String
    let ours: Int
    let kernel: Int
    var testDescription: String { name }
}

private let layoutChecks: [LayoutCheck] = {
    var checks: [LayoutCheck] = []
    func add(_ name: String, _ ours: Int, _ kernel: Int) { checks.append(LayoutCheck(name: name, ours: ours, kernel: kernel)) }

    add("fuse_in_header size", InHeaderLayout.size, MemoryLayout<fuse_in_header>.size)
    add("fuse_in_header.len", InHeaderLayout.len, cOffset(\fuse_in_header.len))
    add("fuse_in_header.opcode", InHeaderLayout.opcode, cOffset(\fuse_in_header.opcode))
    add("fuse_in_header.unique", InHeaderLayout.unique, cOffset(\fuse_in_header.unique))
    add("fuse_in_header.nodeid", InHeaderLayout.nodeID, cOffset(\fuse_in_header.nodeid))
    add("fuse_in_header.uid", InHeaderLayout.uid, cOffset(\fuse_in_header.uid))
    add("fuse_in_header.gid", InHeaderLayout.gid, cOffset(\fuse_in_header.gid))
    add("fuse_in_header.pid", InHeaderLayout.pid, cOffset(\fuse_in_header.pid))
    add("fuse_in_header.total_extlen", InHeaderLayout.totalExtLen, cOffset(\fuse_in_header.total_extlen))

    add("fuse_out_header size", OutHeaderLayout.size, MemoryLayout<fuse_out_header>.size)
    add("fuse_out_header.len", OutHeaderLayout.len, cOffset(\fuse_out_header.len))
    add("fuse_out_header.error", OutHeaderLayout.error, cOffset(\fuse_out_header.error))
    add("fuse_out_header.unique", OutHeaderLayout.unique, cOffset(\fuse_out_header.unique))

    add("fuse_attr size", AttrLayout.size, MemoryLayout<fuse_attr>.size)
    add("fuse_attr.ino", AttrLayout.ino, cOffset(\fuse_attr.ino))
    add("fuse_attr.size", AttrLayout.fileSize, cOffset(\fuse_attr.size))
    add("fuse_attr.blocks", AttrLayout.blocks, cOffset(\fuse_attr.blocks))
    add("fuse_attr.atime", AttrLayout.atime, cOffset(\fuse_attr.atime))
    add("fuse_attr.mtime", AttrLayout.mtime, cOffset(\fuse_attr.mtime))
    add("fuse_attr.ctime", AttrLayout.ctime, cOffset(\fuse_attr.ctime))
    add("fuse_attr.atimensec", AttrLayout.atimeNanos, cOffset(\fuse_attr.atimensec))
    add("fuse_attr.mtimensec", AttrLayout.mtimeNanos, cOffset(\fuse_attr.mtimensec))
    add("fuse_attr.ctimensec", AttrLayout.ctimeNanos, cOffset(\fuse_attr.ctimensec))
    add("fuse_attr.mode", AttrLayout.mode, cOffset(\fuse_attr.mode))
    add("fuse_attr.nlink", AttrLayout.nlink, cOffset(\fuse_attr.nlink))
    add("fuse_attr.uid", AttrLayout.uid, cOffset(\fuse_attr.uid))
    add("fuse_attr.gid", AttrLayout.gid, cOffset(\fuse_attr.gid))
    add("fuse_attr.rdev", AttrLayout.rdev, cOffset(\fuse_attr.rdev))
    add("fuse_attr.blksize", AttrLayout.blockSize, cOffset(\fuse_attr.blksize))
    add("fuse_attr.flags", AttrLayout.flags, cOffset(\fuse_attr.flags))

    add("fuse_entry_out size", EntryOutLayout.size, MemoryLayout<fuse_entry_out>.size)
    add("fuse_entry_out.nodeid", EntryOutLayout.nodeID, cOffset(\fuse_entry_out.nodeid))
    add("fuse_entry_out.generation", EntryOutLayout.generation, cOffset(\fuse_entry_out.generation))
    add("fuse_entry_out.entry_valid", EntryOutLayout.entryValid, cOffset(\fuse_entry_out.entry_valid))
    add("fuse_entry_out.attr_valid", EntryOutLayout.attrValid, cOffset(\fuse_entry_out.attr_valid))
    add("fuse_entry_out.entry_valid_nsec", EntryOutLayout.entryValidNanos, cOffset(\fuse_entry_out.entry_valid_nsec))
    add("fuse_entry_out.attr_valid_nsec", EntryOutLayout.attrValidNanos, cOffset(\fuse_entry_out.attr_valid_nsec))
    add("fuse_entry_out.attr", EntryOutLayout.attr, cOffset(\fuse_entry_out.attr))

    add("fuse_attr_out size", AttrOutLayout.size, MemoryLayout<fuse_attr_out>.size)
    add("fuse_attr_out.attr_valid", AttrOutLayout.attrValid, cOffset(\fuse_attr_out.attr_valid))
    add("fuse_attr_out.attr_valid_nsec", AttrOutLayout.attrValidNanos, cOffset(\fuse_attr_out.attr_valid_nsec))
    add("fuse_attr_out.attr", AttrOutLayout.attr, cOffset(\fuse_attr_out.attr))

    add("fuse_open_out size", OpenOutLayout.size, MemoryLayout<fuse_open_out>.size)
    add("fuse_open_out.fh", OpenOutLayout.fileHandle, cOffset(\fuse_open_out.fh))
    add("fuse_open_out.open_flags", OpenOutLayout.openFlags, cOffset(\fuse_open_out.open_flags))
    // 7.40 renamed the padding word to backing_id.
    add("fuse_open_out.padding (backing_id)", OpenOutLayout.backingID, cOffset(\fuse_open_out.padding))

    add("fuse_write_out size", WriteOutLayout.size, MemoryLayout<fuse_write_out>.size)
    add("fuse_write_out.size", WriteOutLayout.bytes, cOffset(\fuse_write_out.size))

    add("fuse_statfs_out size", StatfsOutLayout.size, MemoryLayout<fuse_statfs_out>.size)
    add("fuse_kstatfs size", StatfsOutLayout.size, MemoryLayout<fuse_kstatfs>.size)
    let st = cOffset(\fuse_statfs_out.st)
    add("fuse_kstatfs.blocks", StatfsOutLayout.blocks, st + cOffset(\fuse_kstatfs.blocks))
    add("fuse_kstatfs.bfree", StatfsOutLayout.blocksFree, st + cOffset(\fuse_kstatfs.bfree))
    add("fuse_kstatfs.bavail", StatfsOutLayout.blocksAvailable, st + cOffset(\fuse_kstatfs.bavail))
    add("fuse_kstatfs.files", StatfsOutLayout.files, st + cOffset(\fuse_kstatfs.files))
    add("fuse_kstatfs.ffree", StatfsOutLayout.filesFree, st + cOffset(\fuse_kstatfs.ffree))
    add("fuse_kstatfs.bsize", StatfsOutLayout.blockSize, st + cOffset(\fuse_kstatfs.bsize))
    add("fuse_kstatfs.namelen", StatfsOutLayout.nameLength, st + cOffset(\fuse_kstatfs.namelen))
    add("fuse_kstatfs.frsize", StatfsOutLayout.fragmentSize, st + cOffset(\fuse_kstatfs.frsize))

    add("fuse_getxattr_out size", GetxattrOutLayout.size, MemoryLayout<fuse_getxattr_out>.size)
    add("fuse_getxattr_out.size", GetxattrOutLayout.valueSize, cOffset(\fuse_getxattr_out.size))

    add("fuse_lk_out size", LockOutLayout.size, MemoryLayout<fuse_lk_out>.size)
    add("fuse_file_lock size", LockOutLayout.size, MemoryLayout<fuse_file_lock>.size)
    let lk = cOffset(\fuse_lk_out.lk)
    add("fuse_file_lock.start", LockOutLayout.start, lk + cOffset(\fuse_file_lock.start))
    add("fuse_file_lock.end", LockOutLayout.end, lk + cOffset(\fuse_file_lock.end))
    add("fuse_file_lock.type", LockOutLayout.type, lk + cOffset(\fuse_file_lock.type))
    add("fuse_file_lock.pid", LockOutLayout.pid, lk + cOffset(\fuse_file_lock.pid))

    add("fuse_bmap_out size", U64OutLayout.size, MemoryLayout<fuse_bmap_out>.size)
    add("fuse_lseek_out size", U64OutLayout.size, MemoryLayout<fuse_lseek_out>.size)

    add("fuse_init_in size", InitLayout.inSize, MemoryLayout<fuse_init_in>.size)
    add("fuse_init_in pre-7.36 size (up to flags2)", InitLayout.inSizeMin, cOffset(\fuse_init_in.flags2))
    add("fuse_init_in.major", InitLayout.major, cOffset(\fuse_init_in.major))
    add("fuse_init_in.minor", InitLayout.minor, cOffset(\fuse_init_in.minor))
    add("fuse_init_in.max_readahead", InitLayout.maxReadahead, cOffset(\fuse_init_in.max_readahead))
    add("fuse_init_in.flags", InitLayout.flags, cOffset(\fuse_init_in.flags))
    add("fuse_init_in.flags2", InitLayout.flags2In, cOffset(\fuse_init_in.flags2))
    add("fuse_init_out size", InitLayout.outSize, MemoryLayout<fuse_init_out>.size)
    add("fuse_init_out.major", InitLayout.major, cOffset(\fuse_init_out.major))
    add("fuse_init_out.minor", InitLayout.minor, cOffset(\fuse_init_out.minor))
    add("fuse_init_out.max_readahead", InitLayout.maxReadahead, cOffset(\fuse_init_out.max_readahead))
    add("fuse_init_out.flags", InitLayout.flags, cOffset(\fuse_init_out.flags))
    add("fuse_init_out.max_background", InitLayout.outMaxBackground, cOffset(\fuse_init_out.max_background))
    add("fuse_init_out.congestion_threshold", InitLayout.outCongestionThreshold, cOffset(\fuse_init_out.congestion_threshold))
    add("fuse_init_out.max_write", InitLayout.outMaxWrite, cOffset(\fuse_init_out.max_write))
    add("fuse_init_out.time_gran", InitLayout.outTimeGranularity, cOffset(\fuse_init_out.time_gran))
    add("fuse_init_out.max_pages", InitLayout.outMaxPages, cOffset(\fuse_init_out.max_pages))
    add("fuse_init_out.map_alignment", InitLayout.outMapAlignment, cOffset(\fuse_init_out.map_alignment))
    add("fuse_init_out.flags2", InitLayout.outFlags2, cOffset(\fuse_init_out.flags2))
    // 7.40 took unused[0] for u32 max_stack_depth, 7.43 took unused[1] for u16 request_timeout.
    add("fuse_init_out.unused[0] (max_stack_depth)", InitLayout.outMaxStackDepth, cOffset(\fuse_init_out.unused))
    add("fuse_init_out.unused[1] (request_timeout)", InitLayout.outRequestTimeout, cOffset(\fuse_init_out.unused) + 4)

    add("fuse_dirent header size", DirentLayout.headerSize, MemoryLayout<fuse_dirent>.size)
    add("fuse_dirent.ino", DirentLayout.ino, cOffset(\fuse_dirent.ino))
    add("fuse_dirent.off", DirentLayout.offset, cOffset(\fuse_dirent.off))
    add("fuse_dirent.namelen", DirentLayout.nameLength, cOffset(\fuse_dirent.namelen))
    add("fuse_dirent.type", DirentLayout.type, cOffset(\fuse_dirent.type))

    // Not in the 7.38 header: hand-computed from the 7.39 field lists.
    add("fuse_statx_out size", StatxOutLayout.size, statxOutOffsets["<size>"]!)
    add("fuse_statx_out.attr_valid", StatxOutLayout.attrValid, statxOutOffsets["attr_valid"]!)
    add("fuse_statx_out.attr_valid_nsec", StatxOutLayout.attrValidNanos, statxOutOffsets["attr_valid_nsec"]!)
    add("fuse_statx_out.flags", StatxOutLayout.flags, statxOutOffsets["flags"]!)
    add("fuse_statx_out.stat", StatxOutLayout.statx, statxOutOffsets["stat"]!)
    add("fuse_statx size", 256, statxOffsets["<size>"]!)
    add("fuse_statx.mask", StatxOutLayout.mask, statxOffsets["mask"]!)
    add("fuse_statx.blksize", StatxOutLayout.blockSize, statxOffsets["blksize"]!)
    add("fuse_statx.attributes", StatxOutLayout.attributes, statxOffsets["attributes"]!)
    add("fuse_statx.nlink", StatxOutLayout.nlink, statxOffsets["nlink"]!)
    add("fuse_statx.uid", StatxOutLayout.uid, statxOffsets["uid"]!)
    add("fuse_statx.gid", StatxOutLayout.gid, statxOffsets["gid"]!)
    add("fuse_statx.mode", StatxOutLayout.mode, statxOffsets["mode"]!)
    add("fuse_statx.ino", StatxOutLayout.ino, statxOffsets["ino"]!)
    add("fuse_statx.size", StatxOutLayout.fileSize, statxOffsets["size"]!)
    add("fuse_statx.blocks", StatxOutLayout.blocks, statxOffsets["blocks"]!)
    add("fuse_statx.attributes_mask", StatxOutLayout.attributesMask, statxOffsets["attributes_mask"]!)
    add("fuse_statx.atime", StatxOutLayout.atime, statxOffsets["atime"]!)
    add("fuse_statx.btime", StatxOutLayout.btime, statxOffsets["btime"]!)
    add("fuse_statx.ctime", StatxOutLayout.ctime, statxOffsets["ctime"]!)
    add("fuse_statx.mtime", StatxOutLayout.mtime, statxOffsets["mtime"]!)
    add("fuse_statx.rdev_major", StatxOutLayout.rdevMajor, statxOffsets["rdev_major"]!)
    add("fuse_statx.rdev_minor", StatxOutLayout.rdevMinor, statxOffsets["rdev_minor"]!)
    add("fuse_statx.dev_major", StatxOutLayout.devMajor, statxOffsets["dev_major"]!)
    add("fuse_statx.dev_minor", StatxOutLayout.devMinor, statxOffsets["dev_minor"]!)
    return checks
}()

// MARK: - Reply kinds

/// One of the typed replies, with how to send it and what its body must hold.
enum ReplyKind: CaseIterable, Sendable, CustomTestStringConvertible {
    case entry, attributes, open, created, written, statistics, value, xattrSize, lock, statx

    var testDescription: String { "\(self)" }

    /// Body size from the kernel's structs.
    var kernelBodySize: Int {
        switch self {
        case .entry: return MemoryLayout<fuse_entry_out>.size
        case .attributes: return MemoryLayout<fuse_attr_out>.size
        case .open: return MemoryLayout<fuse_open_out>.size
        case .created: return MemoryLayout<fuse_entry_out>.size + MemoryLayout<fuse_open_out>.size
        case .written: return MemoryLayout<fuse_write_out>.size
        case .statistics: return MemoryLayout<fuse_statfs_out>.size
        case .value: return MemoryLayout<fuse_lseek_out>.size
        case .xattrSize: return MemoryLayout<fuse_getxattr_out>.size
        case .lock: return MemoryLayout<fuse_lk_out>.size
        case .statx: return statxOutOffsets["<size>"]!
        }
    }

    func send(_ reply: FUSEReply) {
        let a = CodecSamples.attributes
        switch self {
        case .entry:
            reply.entry(nodeID: 0x4242_0000_0000_0001, generation: 0x77, entryValid: CodecSamples.entryValid,
                        attrValid: CodecSamples.attrValid, attributes: a)
        case .attributes: reply.attributes(a, valid: CodecSamples.attrValid)
        case .open: reply.open(fileHandle: 0xF11E_0000_0000_00AB, openFlags: 0x0000_0022)
        case .created:
            reply.created(nodeID: 0x4242_0000_0000_0002, generation: 0x78, entryValid: CodecSamples.entryValid,
                          attrValid: CodecSamples.attrValid, attributes: a, fileHandle: 0xF11E_0000_0000_00CD,
                          openFlags: 0x0000_0041)
        case .written: reply.written(bytes: 0x0010_0000)
        case .statistics: reply.statistics(CodecSamples.statistics)
        case .value: reply.value(0x0123_4567_89AB_CDEF)
        case .xattrSize: reply.xattrSize(0x0001_0000)
        case .lock: reply.lock(start: 0x1000, end: 0xFFFF_FFFF_FFFF_FFFF, type: 1, pid: 0x0000_BEEF)
        case .statx: reply.statx(a, valid: CodecSamples.attrValid, mask: 0x0000_07FF)
        }
    }

    /// Reads every field back at the kernel's offsets.
    func expectBody(_ body: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
        let a = CodecSamples.attributes
        switch self {
        case .entry:
            expectEntry(body, at: 0, nodeID: 0x4242_0000_0000_0001, generation: 0x77, sourceLocation: sourceLocation)
        case .attributes:
            #expect(body.loadLE(UInt64.self, at: cOffset(\fuse_attr_out.attr_valid)) == CodecSamples.attrValid.seconds)
            #expect(body.loadLE(UInt32.self, at: cOffset(\fuse_attr_out.attr_valid_nsec)) == CodecSamples.attrValid.nanoseconds)
            #expect(body.loadLE(UInt32.self, at: cOffset(\fuse_attr_out.dummy)) == 0)
            expectAttr(body, at: cOffset(\fuse_attr_out.attr), a, sourceLocation: sourceLocation)
        case .open:
            #expect(body.loadLE(UInt64.self, at: cOffset(\fuse_open_out.fh)) == 0xF11E_0000_0000_00AB)
            #expect(body.loadLE(UInt32.self, at: cOffset(\fuse_open_out.open_flags)) == 0x22)
            #expect(body.loadLE(UInt32.self, at: cOffset(\fuse_open_out.padding)) == 0)
        case .created:
            expectEntry(body, at: 0, nodeID: 0x4242_0000_0000_0002, generation: 0x78, sourceLocation: sourceLocation)
            let open = MemoryLayout<fuse_entry_out>.size
            #expect(body.loadLE(UInt64.self, at: open + cOffset(\fuse_open_out.fh)) == 0xF11E_0000_0000_00CD)
            #expect(body.loadLE(UInt32.self, at: open + cOffset(\fuse_open_out.open_flags)) == 0x41)
            #expect(body.loadLE(UInt32.self, at: open + cOffset(\fuse_open_out.padding)) == 0)
        case .written:
            #expect(body.loadLE(UInt32.self, at: cOffset(\fuse_write_out.size)) == 0x0010_0000)
            #expect(body.loadLE(UInt32.self, at: cOffset(\fuse_write_out.padding)) == 0)
        case .statistics:
            let s = CodecSamples.statistics
            #expect(body.loadLE(UInt64.self, at: cOffset(\fuse_kstatfs.blocks)) == s.blocks)
            #expect(body.loadLE(UInt64.self, at: cOffset(\fuse_kstatfs.bfree)) == s.blocksFree)
            #expect(body.loadLE(UInt64.self, at: cOffset(\fuse_kstatfs.bavail)) == s.blocksAvailable)
            #expect(body.loadLE(UInt64.self, at: cOffset(\fuse_kstatfs.files)) == s.files)
            #expect(body.loadLE(UInt64.self, at: cOffset(\fuse_kstatfs.ffree)) == s.filesFree)
            #expect(body.loadLE(UInt32.self, at: cOffset(\fuse_kstatfs.bsize)) == s.blockSizeBytes)
            #expect(body.loadLE(UInt32.self, at: cOffset(\fuse_kstatfs.namelen)) == s.nameBytesMax)
            #expect(body.loadLE(UInt32.self, at: cOffset(\fuse_kstatfs.frsize)) == s.fragmentSizeBytes)
            let spare = cOffset(\fuse_kstatfs.padding)
            #expect(body[spare...].allSatisfy { $0 == 0 }, "padding and spare[6] are zero")
        case .value:
            #expect(body.loadLE(UInt64.self, at: cOffset(\fuse_lseek_out.offset)) == 0x0123_4567_89AB_CDEF)
        case .xattrSize:
            #expect(body.loadLE(UInt32.self, at: cOffset(\fuse_getxattr_out.size)) == 0x0001_0000)
            #expect(body.loadLE(UInt32.self, at: cOffset(\fuse_getxattr_out.padding)) == 0)
        case .lock:
            let lk = cOffset(\fuse_lk_out.lk)
            #expect(body.loadLE(UInt64.self, at: lk + cOffset(\fuse_file_lock.start)) == 0x1000)
            #expect(body.loadLE(UInt64.self, at: lk + cOffset(\fuse_file_lock.end)) == 0xFFFF_FFFF_FFFF_FFFF)
            #expect(body.loadLE(UInt32.self, at: lk + cOffset(\fuse_file_lock.type)) == 1)
            #expect(body.loadLE(UInt32.self, at: lk + cOffset(\fuse_file_lock.pid)) == 0xBEEF)
        case .statx:
            let o = statxOutOffsets
            #expect(body.loadLE(UInt64.self, at: o["attr_valid"]!) == CodecSamples.attrValid.seconds)
            #expect(body.loadLE(UInt32.self, at: o["attr_valid_nsec"]!) == CodecSamples.attrValid.nanoseconds)
            #expect(body.loadLE(UInt32.self, at: o["flags"]!) == 0)
            let s = o["stat"]!
            func at(_ field: String) -> Int { s + statxOffsets[field]! }
            #expect(body.loadLE(UInt32.self, at: at("mask")) == 0x7FF)
            #expect(body.loadLE(UInt32.self, at: at("blksize")) == a.blockSizeBytes)
            #expect(body.loadLE(UInt32.self, at: at("nlink")) == a.linkCount)
            #expect(body.loadLE(UInt32.self, at: at("uid")) == a.uid)
            #expect(body.loadLE(UInt32.self, at: at("gid")) == a.gid)
            #expect(body.loadLE(UInt16.self, at: at("mode")) == UInt16(a.mode))
            #expect(body.loadLE(UInt64.self, at: at("ino")) == a.inode)
            #expect(body.loadLE(UInt64.self, at: at("size")) == a.sizeBytes)
            #expect(body.loadLE(UInt64.self, at: at("blocks")) == a.blocks)
            #expect(body.loadLE(UInt64.self, at: at("atime")) == a.accessTime.seconds)
            #expect(body.loadLE(UInt32.self, at: at("atime") + 8) == a.accessTime.nanoseconds)
            #expect(body.loadLE(UInt64.self, at: at("mtime")) == a.modificationTime.seconds)
            #expect(body.loadLE(UInt32.self, at: at("mtime") + 8) == a.modificationTime.nanoseconds)
            #expect(body.loadLE(UInt64.self, at: at("ctime")) == a.changeTime.seconds)
            #expect(body.loadLE(UInt32.self, at: at("ctime") + 8) == a.changeTime.nanoseconds)
            // rdev 0x0803 is device 8:3.
            #expect(body.loadLE(UInt32.self, at: at("rdev_major")) == 8)
            #expect(body.loadLE(UInt32.self, at: at("rdev_minor")) == 3)
            #expect(body[at("spare2")..<(s + 256)].allSatisfy { $0 == 0 }, "spare2 is zero")
        }
    }
}

// MARK: - Suite

@Suite("FUSE reply encoding")
struct ReplyEncodingTests {
    // MARK: 1. Layouts

    @Test(arguments: layoutChecks)
    func layoutMatchesKernel(check: LayoutCheck) {
        #expect(check.ours == check.kernel, "\(check.name)")
    }

    /// The compat sizes the INIT reply rule relies on (fs/fuse/inode.c).
    @Test func initCompatSizes() {
        #expect(FUSE_COMPAT_INIT_OUT_SIZE == 8)
        #expect(FUSE_COMPAT_22_INIT_OUT_SIZE == 24)
    }

    // MARK: 2. Error replies

    /// An error reply is exactly fuse_out_header {16, -errno, unique}, however the writable space
    /// is cut: at every single position and every pair of positions inside the 16 bytes.
    @Test(arguments: [FUSEErrno.noEntry, .invalid, .range, .protocolError, .notImplemented, FUSEErrno(511)])
    func failWritesSixteenBytes(errno: FUSEErrno) {
        let expected = le(UInt32(16)) + le(Int32(-errno.rawValue)) + le(UInt64(0x0A0B_0C0D_0E0F_1011))
        var patterns: [[Int]] = [[]]
        for first in 1..<16 {
            patterns.append([first])
            for second in (first + 1)..<16 { patterns.append([first, second]) }
        }
        patterns.append(Array(1..<16))
        for cuts in patterns {
            let space = CodecReplySpace(bytes: 16, cuts: cuts)
            space.reply.fail(errno)
            #expect(space.length == 16, "cuts \(cuts)")
            #expect(space.bytes == expected, "cuts \(cuts)")
        }
        // With more room than needed, only 16 bytes are written and reported.
        let roomy = CodecReplySpace(bytes: 300, chunk: 7)
        roomy.reply.fail(errno)
        #expect(roomy.length == 16)
        #expect(roomy.sent == expected)
        #expect(roomy.bytes[16...].allSatisfy { $0 == roomy.fill })
        #expect(CodecOutHeader(roomy.sent) == CodecOutHeader(len: 16, error: -errno.rawValue, unique: roomy.unique))
    }

    /// With less than a header of writable space there is nothing to answer into: no bytes
    /// written, reply length 0.
    @Test(arguments: [0, 1, 8, 15])
    func failWithoutRoomWritesNothing(writable: Int) {
        let space = CodecReplySpace(bytes: writable, chunk: 3)
        space.reply.fail(.io)
        #expect(space.length == 0)
        #expect(space.bytes.allSatisfy { $0 == space.fill })
    }

    // MARK: 3. Typed replies

    /// Each typed reply: header and every body field at the kernel's offsets, nothing written past
    /// the reply, and every byte of it written by the encoder (the same bytes whatever stale data
    /// the staging area held before).
    @Test(arguments: ReplyKind.allCases)
    func typedReplyLayout(kind: ReplyKind) {
        let size = kind.kernelBodySize
        let space = CodecReplySpace(bytes: 4096)
        kind.send(space.reply)
        #expect(space.length == 16 + size)
        let sent = space.sent
        #expect(CodecOutHeader(sent) == CodecOutHeader(len: UInt32(16 + size), error: 0, unique: space.unique))
        kind.expectBody(Array(sent[16...]))
        #expect(space.bytes[(16 + size)...].allSatisfy { $0 == space.fill }, "nothing written past the reply")

        let zeroStaged = CodecReplySpace(bytes: 16 + size, stagingFill: 0x00)
        let onesStaged = CodecReplySpace(bytes: 16 + size, stagingFill: 0xFF)
        kind.send(zeroStaged.reply)
        kind.send(onesStaged.reply)
        #expect(zeroStaged.sent == sent)
        #expect(onesStaged.sent == sent, "a reply byte was left as stale staging memory")
    }

    /// The same reply bytes whatever the segmentation of the writable area: pieces of every size
    /// from 1 byte to the whole reply, and a single cut at every position.
    @Test(arguments: ReplyKind.allCases)
    func typedReplySegmentation(kind: ReplyKind) {
        let total = 16 + kind.kernelBodySize
        let whole = CodecReplySpace(bytes: total)
        kind.send(whole.reply)
        let expected = whole.bytes
        #expect(whole.length == total)
        var differing: [String] = []
        for chunk in 1...total {
            let space = CodecReplySpace(bytes: total, chunk: chunk)
            kind.send(space.reply)
            if space.bytes != expected || space.length != total { differing.append("chunk \(chunk)") }
        }
        for cut in 1..<total {
            let space = CodecReplySpace(bytes: total, cuts: [cut])
            kind.send(space.reply)
            if space.bytes != expected || space.length != total { differing.append("cut \(cut)") }
        }
        #expect(differing.isEmpty, "\(differing.prefix(10))")
    }

    /// A reply that does not fit the writable space becomes a 16-byte -ERANGE, never a partial
    /// reply; one byte more room and it fits.
    @Test(arguments: ReplyKind.allCases)
    func typedReplyThatDoesNotFit(kind: ReplyKind) {
        let total = 16 + kind.kernelBodySize
        let short = CodecReplySpace(bytes: total - 1, chunk: 5)
        kind.send(short.reply)
        #expect(short.length == 16)
        #expect(CodecOutHeader(short.sent) == CodecOutHeader(len: 16, error: -ERANGE, unique: short.unique))
        #expect(short.bytes[16...].allSatisfy { $0 == short.fill })
        let exact = CodecReplySpace(bytes: total, chunk: 5)
        kind.send(exact.reply)
        #expect(exact.length == total)
    }

    /// statx splits the device number the way the kernel joins it again:
    /// fs/fuse/dir.c does attr->rdev = new_encode_dev(MKDEV(rdev_major, rdev_minor)), and
    /// fuse_attr.rdev (FileAttributes.rdev) is in that new_encode_dev form. Minors ≥ 256 keep
    /// their high bits in rdev bits 20–31 (e.g. NVMe partitions, 259:N, and dynamic majors).
    @Test(arguments: [(8, 3), (8, 300), (259, 65537), (4095, 0xFFFFF)] as [(UInt32, UInt32)])
    func statxDeviceNumbers(major: UInt32, minor: UInt32) {
        var attributes = CodecSamples.attributes
        attributes.rdev = newEncodeDev(major: major, minor: minor)
        let space = CodecReplySpace(bytes: 512)
        space.reply.statx(attributes, valid: CodecSamples.attrValid, mask: 0x7FF)
        let stat = 16 + statxOutOffsets["stat"]!
        let sent = space.sent
        #expect(sent.loadLE(UInt32.self, at: stat + statxOffsets["rdev_major"]!) == major)
        #expect(sent.loadLE(UInt32.self, at: stat + statxOffsets["rdev_minor"]!) == minor)
    }

    /// send(bodyBytes:) against bodyCapacity: the smaller of the staging area and the writable
    /// space, less the header.
    @Test func sendRespectsBodyCapacity() {
        let small = CodecReplySpace(bytes: 16 + 100, chunk: 9)
        #expect(small.reply.bodyCapacity == 100)
        small.reply.send(bodyBytes: 100)
        #expect(small.length == 116)
        #expect(CodecOutHeader(small.sent) == CodecOutHeader(len: 116, error: 0, unique: small.unique))

        let over = CodecReplySpace(bytes: 16 + 100, chunk: 9)
        over.reply.send(bodyBytes: 101)
        #expect(over.length == 16)
        #expect(CodecOutHeader(over.sent) == CodecOutHeader(len: 16, error: -ERANGE, unique: over.unique))
        #expect(over.bytes[16...].allSatisfy { $0 == over.fill })

        // Huge writable space: the staging area is the limit.
        let huge = CodecReplySpace(bytes: 1 << 20, chunk: 4096)
        #expect(huge.reply.bodyCapacity == FUSELimits.replyStagingBytes - 16)
        huge.reply.send(bodyBytes: huge.reply.bodyCapacity + 1)
        #expect(huge.length == 16)
        #expect(CodecOutHeader(huge.sent).error == -ERANGE)

        // A header-only success (e.g. UNLINK, DESTROY).
        let empty = CodecReplySpace(bytes: 16, chunk: 3)
        empty.reply.send(bodyBytes: 0)
        #expect(empty.length == 16)
        #expect(CodecOutHeader(empty.sent) == CodecOutHeader(len: 16, error: 0, unique: empty.unique))

        #expect(CodecReplySpace(bytes: 10).reply.bodyCapacity == 0)
    }

    // MARK: 4. In-place data and no reply

    /// READ-style replies: the backend writes data straight into the segments after the header;
    /// sendInPlace writes only the 16-byte header and reports 16 + n.
    @Test(arguments: [1, 5, 16, 17, 1000])
    func sendInPlaceWritesOnlyTheHeader(chunk: Int) {
        let dataBytes = 200
        let space = CodecReplySpace(bytes: 16 + 300, chunk: chunk)
        let reply = space.reply
        #expect(reply.dataCapacity == 300)
        let data = (0..<dataBytes).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
        var cursor = reply.data
        let written = data.withUnsafeBytes { cursor.write(from: $0.baseAddress!, byteCount: dataBytes) }
        #expect(written == dataBytes)
        reply.sendInPlace(dataBytes: dataBytes)
        #expect(space.length == 16 + dataBytes)
        let bytes = space.bytes
        #expect(CodecOutHeader(bytes) == CodecOutHeader(len: UInt32(16 + dataBytes), error: 0, unique: space.unique))
        #expect(Array(bytes[16..<(16 + dataBytes)]) == data, "the in-place data is not overwritten")
        #expect(bytes[(16 + dataBytes)...].allSatisfy { $0 == space.fill })

        let tooMuch = CodecReplySpace(bytes: 16 + 300, chunk: chunk)
        tooMuch.reply.sendInPlace(dataBytes: 301)
        #expect(tooMuch.length == 16)
        #expect(CodecOutHeader(tooMuch.sent).error == -ERANGE)

        let none = CodecReplySpace(bytes: 16 + 300, chunk: chunk)
        none.reply.sendInPlace(dataBytes: 0)
        #expect(none.length == 16)
        #expect(none.bytes[16...].allSatisfy { $0 == none.fill })
    }

    /// FORGET, BATCH_FORGET, NOTIFY_REPLY: reply length 0 and nothing written.
    @Test func noneSendsNothing() {
        let space = CodecReplySpace(bytes: 64, chunk: 8)
        space.reply.none()
        #expect(space.length == 0)
        #expect(space.bytes.allSatisfy { $0 == space.fill })
    }

    // MARK: 5. Directory entries

    /// Dirents are packed back to back at 8-byte boundaries (FUSE_DIRENT_ALIGN), with zeroed
    /// padding so no stale engine memory reaches the guest.
    @Test func direntLayoutAndPadding() {
        let capacity = 16384
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xAA, count: capacity)
        var writer = DirectoryEntryWriter(destination: buffer, capacity: capacity)
        let lengths = Array(1...20) + [254, 255]
        for (index, length) in lengths.enumerated() {
            let name = (0..<length).map { UInt8(ascii: "a") + UInt8($0 % 26) }
            let ok = name.withUnsafeBytes {
                writer.append(inode: 1000 + UInt64(index), nextOffset: UInt64(index + 1), type: UInt32(index % 16), name: $0)
            }
            #expect(ok)
        }
        let bytes = Array(UnsafeRawBufferPointer(start: buffer, count: capacity))
        let header = MemoryLayout<fuse_dirent>.size
        var offset = 0
        for (index, length) in lengths.enumerated() {
            #expect(offset % 8 == 0)
            #expect(bytes.loadLE(UInt64.self, at: offset + cOffset(\fuse_dirent.ino)) == 1000 + UInt64(index))
            #expect(bytes.loadLE(UInt64.self, at: offset + cOffset(\fuse_dirent.off)) == UInt64(index + 1))
            #expect(bytes.loadLE(UInt32.self, at: offset + cOffset(\fuse_dirent.namelen)) == UInt32(length))
            #expect(bytes.loadLE(UInt32.self, at: offset + cOffset(\fuse_dirent.type)) == UInt32(index % 16))
            #expect(Array(bytes[(offset + header)..<(offset + header + length)])
                    == (0..<length).map { UInt8(ascii: "a") + UInt8($0 % 26) })
            let record = (header + length + 7) / 8 * 8
            #expect(bytes[(offset + header + length)..<(offset + record)].allSatisfy { $0 == 0 }, "padding after name of \(length)")
            #expect(DirentLayout.alignedSize(nameLength: length) == record)
            offset += record
        }
        #expect(writer.bytesWritten == offset)
        #expect(bytes[offset...].allSatisfy { $0 == 0xAA }, "nothing written past the last entry")
    }

    /// An entry that does not fit returns false and leaves memory and count untouched; one that
    /// fits exactly is accepted.
    @Test func direntThatDoesNotFit() {
        let name = Array("abcdefghij".utf8)  // 24 + 10 → 40 bytes
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 128, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xAA, count: 128)
        var writer = DirectoryEntryWriter(destination: buffer, capacity: 79)
        #expect(name.withUnsafeBytes { writer.append(inode: 1, nextOffset: 1, type: 8, name: $0) })
        #expect(writer.bytesWritten == 40)
        let before = Array(UnsafeRawBufferPointer(start: buffer, count: 128))
        #expect(!name.withUnsafeBytes { writer.append(inode: 2, nextOffset: 2, type: 8, name: $0) })
        #expect(writer.bytesWritten == 40)
        #expect(Array(UnsafeRawBufferPointer(start: buffer, count: 128)) == before)

        var exact = DirectoryEntryWriter(destination: buffer, capacity: 80)
        #expect(name.withUnsafeBytes { exact.append(inode: 1, nextOffset: 1, type: 8, name: $0) })
        #expect(name.withUnsafeBytes { exact.append(inode: 2, nextOffset: 2, type: 8, name: $0) })
        #expect(exact.bytesWritten == 80)

        var empty = DirectoryEntryWriter(destination: buffer, capacity: 0)
        #expect(!name.withUnsafeBytes { empty.append(inode: 1, nextOffset: 1, type: 8, name: $0) })
        #expect(empty.bytesWritten == 0)
    }

    /// READDIRPLUS: each fuse_direntplus is a fuse_entry_out followed by the dirent, the pair
    /// padded to 8 bytes (FUSE_DIRENTPLUS_SIZE).
    @Test func direntPlusLayout() {
        let capacity = 1024
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xAA, count: capacity)
        var writer = DirectoryEntryWriter(destination: buffer, capacity: capacity)
        let names = [Array("x".utf8), Array("twelve-bytes".utf8)]
        for (index, name) in names.enumerated() {
            let ok = name.withUnsafeBytes {
                writer.appendPlus(nodeID: 0x4242_0000_0000_0001 + UInt64(index), generation: 0x77 + UInt64(index),
                                  entryValid: CodecSamples.entryValid, attrValid: CodecSamples.attrValid,
                                  attributes: CodecSamples.attributes, nextOffset: 10 + UInt64(index), type: 4, name: $0)
            }
            #expect(ok)
        }
        let bytes = Array(UnsafeRawBufferPointer(start: buffer, count: capacity))
        let entrySize = MemoryLayout<fuse_entry_out>.size
        let header = MemoryLayout<fuse_dirent>.size
        var offset = 0
        for (index, name) in names.enumerated() {
            expectEntry(bytes, at: offset, nodeID: 0x4242_0000_0000_0001 + UInt64(index), generation: 0x77 + UInt64(index))
            let dirent = offset + entrySize
            #expect(bytes.loadLE(UInt64.self, at: dirent + cOffset(\fuse_dirent.ino)) == CodecSamples.attributes.inode)
            #expect(bytes.loadLE(UInt64.self, at: dirent + cOffset(\fuse_dirent.off)) == 10 + UInt64(index))
            #expect(bytes.loadLE(UInt32.self, at: dirent + cOffset(\fuse_dirent.namelen)) == UInt32(name.count))
            #expect(bytes.loadLE(UInt32.self, at: dirent + cOffset(\fuse_dirent.type)) == 4)
            #expect(Array(bytes[(dirent + header)..<(dirent + header + name.count)]) == name)
            let record = (entrySize + header + name.count + 7) / 8 * 8
            #expect(bytes[(dirent + header + name.count)..<(offset + record)].allSatisfy { $0 == 0 })
            offset += record
        }
        #expect(writer.bytesWritten == offset)
        #expect(bytes[offset...].allSatisfy { $0 == 0xAA })

        // Does not fit: false, nothing written.
        var tight = DirectoryEntryWriter(destination: buffer + offset, capacity: entrySize + header)
        let ok = names[0].withUnsafeBytes {
            tight.appendPlus(nodeID: 9, generation: 9, entryValid: CodecSamples.entryValid, attrValid: CodecSamples.attrValid,
                             attributes: CodecSamples.attributes, nextOffset: 1, type: 4, name: $0)
        }
        #expect(!ok)
        #expect(tight.bytesWritten == 0)
        #expect(Array(UnsafeRawBufferPointer(start: buffer, count: capacity))[offset...].allSatisfy { $0 == 0xAA })
    }

    // MARK: 6. Minimum reply space per opcode

    /// The writable space a request must offer before dispatch: the out header plus the reply
    /// struct the opcode always answers with (sizes from the kernel's structs).
    @Test(arguments: [
        (FUSEOpcode.lookup, MemoryLayout<fuse_entry_out>.size),
        (.getattr, MemoryLayout<fuse_attr_out>.size),
        (.setattr, MemoryLayout<fuse_attr_out>.size),
        (.mknod, MemoryLayout<fuse_entry_out>.size),
        (.mkdir, MemoryLayout<fuse_entry_out>.size),
        (.symlink, MemoryLayout<fuse_entry_out>.size),
        (.link, MemoryLayout<fuse_entry_out>.size),
        (.open, MemoryLayout<fuse_open_out>.size),
        (.opendir, MemoryLayout<fuse_open_out>.size),
        (.write, MemoryLayout<fuse_write_out>.size),
        (.statfs, MemoryLayout<fuse_statfs_out>.size),
        (.create, MemoryLayout<fuse_entry_out>.size + MemoryLayout<fuse_open_out>.size),
        (.tmpfile, MemoryLayout<fuse_entry_out>.size + MemoryLayout<fuse_open_out>.size),
        (.statx, 288),
        (.getlk, MemoryLayout<fuse_lk_out>.size),
        (.bmap, MemoryLayout<fuse_bmap_out>.size),
        (.lseek, MemoryLayout<fuse_lseek_out>.size),
        (.copyFileRange, MemoryLayout<fuse_write_out>.size),
        (.copyFileRange64, 8),  // fuse_copy_file_range_out {u64 bytes_copied} (7.45)
        (.poll, MemoryLayout<fuse_poll_out>.size),
    ])
    func replyBytesMinForStructReplies(opcode: FUSEOpcode, body: Int) {
        #expect(OpcodeTable.replyBytesMin(of: opcode.rawValue) == 16 + body, "\(opcode.wireName)")
    }

    /// Header-only replies (and opcodes we do not know) need just the 16-byte header.
    @Test(arguments: [
        FUSEOpcode.unlink.rawValue, FUSEOpcode.rmdir.rawValue, FUSEOpcode.rename.rawValue, FUSEOpcode.rename2.rawValue,
        FUSEOpcode.release.rawValue, FUSEOpcode.releasedir.rawValue, FUSEOpcode.fsync.rawValue,
        FUSEOpcode.fsyncdir.rawValue, FUSEOpcode.flush.rawValue, FUSEOpcode.setxattr.rawValue,
        FUSEOpcode.removexattr.rawValue, FUSEOpcode.access.rawValue, FUSEOpcode.setlk.rawValue,
        FUSEOpcode.setlkw.rawValue, FUSEOpcode.fallocate.rawValue, FUSEOpcode.syncfs.rawValue,
        FUSEOpcode.destroy.rawValue, 0, 7, 19, 54, 4096, UInt32.max,
    ])
    func replyBytesMinForHeaderOnlyReplies(opcodeRaw: UInt32) {
        #expect(OpcodeTable.replyBytesMin(of: opcodeRaw) == 16)
    }
}
