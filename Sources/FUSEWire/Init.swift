// FUSE_INIT negotiation, following the kernel's rules (include/uapi/linux/fuse.h header comment and
// fs/fuse/inode.c `process_init_reply`): same major → the smaller minor wins; a newer kernel major →
// answer with ours and let the kernel retry; reply size depends on the kernel's minor.

/// INIT flag bits (`FUSE_*` in fuse.h); flags2 bits are numbered 32...63 here.
public enum InitFlags {
    public static let asyncRead: UInt64 = 1 << 0
    public static let posixLocks: UInt64 = 1 << 1
    public static let atomicOpenTruncate: UInt64 = 1 << 3
    public static let exportSupport: UInt64 = 1 << 4
    public static let bigWrites: UInt64 = 1 << 5
    public static let dontMask: UInt64 = 1 << 6
    public static let flockLocks: UInt64 = 1 << 10
    public static let ioctlDirectory: UInt64 = 1 << 11
    public static let autoInvalidateData: UInt64 = 1 << 12
    public static let doReaddirplus: UInt64 = 1 << 13
    public static let readdirplusAuto: UInt64 = 1 << 14
    public static let asyncDirectIO: UInt64 = 1 << 15
    public static let writebackCache: UInt64 = 1 << 16
    public static let parallelDirectoryOps: UInt64 = 1 << 18
    public static let handleKillpriv: UInt64 = 1 << 19
    public static let maxPages: UInt64 = 1 << 22
    public static let cacheSymlinks: UInt64 = 1 << 23
    public static let setxattrExtended: UInt64 = 1 << 29
    public static let initExtended: UInt64 = 1 << 30
    public static let handleKillprivV2: UInt64 = 1 << 28
    public static let createSupplementaryGroup: UInt64 = 1 << 34
    /// Kernel passthrough (7.40): OPEN replies may name a backing file the kernel reads and writes.
    public static let passthrough: UInt64 = 1 << 37
    /// FUSE-over-io_uring (7.42): requests through ring entries instead of read(2)/write(2).
    public static let overIOURing: UInt64 = 1 << 41

    /// Names of the bits an INIT report shows (the start-up report says what was agreed).
    public static let reportNames: [(UInt64, String)] = [
        (asyncRead, "async_read"), (posixLocks, "posix_locks"), (atomicOpenTruncate, "atomic_o_trunc"),
        (bigWrites, "big_writes"), (doReaddirplus, "readdirplus"), (readdirplusAuto, "readdirplus_auto"),
        (asyncDirectIO, "async_dio"), (writebackCache, "writeback_cache"), (parallelDirectoryOps, "parallel_dirops"),
        (handleKillprivV2, "handle_killpriv_v2"), (maxPages, "max_pages"), (cacheSymlinks, "cache_symlinks"),
        (passthrough, "passthrough"), (overIOURing, "io_uring"),
    ]

    /// The agreed flags as names, for logs.
    public static func describe(_ flags: UInt64) -> String {
        reportNames.filter { flags & $0.0 != 0 }.map(\.1).joined(separator: ",")
    }
}

/// FOPEN_* bits of an OPEN/CREATE reply.
public enum OpenReplyFlags {
    public static let directIO: UInt32 = 1 << 0
    public static let keepCache: UInt32 = 1 << 1
    public static let cacheDirectory: UInt32 = 1 << 3
    public static let parallelDirectWrites: UInt32 = 1 << 6
    /// Reads and writes go to the backing file named by `backing_id` inside the kernel.
    public static let passthrough: UInt32 = 1 << 7
}

/// What the engine wants from INIT. Defaults follow DPFS/virtiofsd: 1 MiB writes, parallel
/// directory operations, READDIRPLUS, no AUTO_INVAL_DATA (a GETATTR before every READ), no POSIX
/// locks (the guest then locks locally).
@frozen
public struct InitPolicy: Sendable {
    public var flagsWanted: UInt64
    public var writeBytesMax: UInt32
    public var readaheadBytesMax: UInt32
    public var backgroundMax: UInt16
    public var congestionThreshold: UInt16
    public var timeGranularityNanos: UInt32
    /// Kernel passthrough: how deep file systems may stack on the backing files (1: the backing
    /// files are on a plain file system). Sent only when passthrough is agreed.
    public var maxStackDepth: UInt32 = 1

    public static let minorSupportedMin: UInt32 = 27
    public static let major: UInt32 = 7
    public static let minorSupported: UInt32 = 45

    @inlinable
    public init(
        flagsWanted: UInt64 = InitFlags.asyncRead | InitFlags.atomicOpenTruncate | InitFlags.bigWrites
            | InitFlags.ioctlDirectory | InitFlags.doReaddirplus | InitFlags.readdirplusAuto
            | InitFlags.asyncDirectIO | InitFlags.parallelDirectoryOps | InitFlags.maxPages
            | InitFlags.cacheSymlinks | InitFlags.initExtended,
        writeBytesMax: UInt32 = UInt32(FUSELimits.writeBytesMax),
        readaheadBytesMax: UInt32 = 1 << 20,
        backgroundMax: UInt16 = 4096,
        congestionThreshold: UInt16 = 3072,
        timeGranularityNanos: UInt32 = 1
    ) {
        precondition(writeBytesMax >= 4096 && writeBytesMax <= UInt32(FUSELimits.writeBytesMax))
        precondition(congestionThreshold <= backgroundMax)
        self.flagsWanted = flagsWanted
        self.writeBytesMax = writeBytesMax
        self.readaheadBytesMax = readaheadBytesMax
        self.backgroundMax = backgroundMax
        self.congestionThreshold = congestionThreshold
        self.timeGranularityNanos = timeGranularityNanos
    }
}

/// The result of a successful negotiation: what both sides now use.
@frozen
public struct NegotiatedSession: Equatable, Sendable {
    public var major: UInt32
    public var minor: UInt32
    public var flags: UInt64
    public var writeBytesMax: UInt32
    public var readaheadBytesMax: UInt32

    @inlinable
    public init(major: UInt32, minor: UInt32, flags: UInt64, writeBytesMax: UInt32, readaheadBytesMax: UInt32) {
        self.major = major
        self.minor = minor
        self.flags = flags
        self.writeBytesMax = writeBytesMax
        self.readaheadBytesMax = readaheadBytesMax
    }

    @inlinable
    public var decoderOptions: DecoderOptions {
        DecoderOptions(writeBytesMax: writeBytesMax, setxattrExtended: flags & InitFlags.setxattrExtended != 0)
    }
}

/// How an INIT request was answered.
@frozen
public enum InitOutcome: Equatable, Sendable {
    /// The session is established.
    case established(NegotiatedSession)
    /// The kernel's major is newer: we answered with ours and it will send INIT again.
    case majorMismatchAnswered
    /// Refused with this errno (too old a protocol).
    case refused(FUSEErrno)
}

/// Answers a decoded INIT request in `reply` and says what was agreed.
@inlinable
public func negotiateInit(_ request: FUSERequest, policy: InitPolicy, reply: FUSEReply) -> InitOutcome {
    let major: UInt32 = request.argument(at: InitLayout.major)
    let minor: UInt32 = request.argument(at: InitLayout.minor)
    let readahead: UInt32 = request.argument(at: InitLayout.maxReadahead)
    let flagsLow: UInt32 = request.argument(at: InitLayout.flags)
    var offered = UInt64(flagsLow)
    if offered & InitFlags.initExtended != 0 && request.header.pointee.argsLength >= UInt32(InitLayout.inSize) {
        let flagsHigh: UInt32 = request.argument(at: InitLayout.flags2In)
        offered |= UInt64(flagsHigh) << 32
    }

    let body = reply.body
    if major > InitPolicy.major {
        guard reply.bodyCapacity >= 8 else {
            reply.fail(.range)
            return .refused(.range)
        }
        // Only major and minor are read by the kernel in this case; it retries with our major.
        body.initializeMemory(as: UInt8.self, repeating: 0, count: 8)
        body.storeBytes(of: InitPolicy.major.littleEndian, toByteOffset: InitLayout.major, as: UInt32.self)
        body.storeBytes(of: InitPolicy.minorSupported.littleEndian, toByteOffset: InitLayout.minor, as: UInt32.self)
        reply.send(bodyBytes: 8)
        return .majorMismatchAnswered
    }
    guard major == InitPolicy.major, minor >= InitPolicy.minorSupportedMin else {
        reply.fail(.protocolError)
        return .refused(.protocolError)
    }
    let agreedMinor = min(minor, InitPolicy.minorSupported)
    var agreedFlags = offered & policy.flagsWanted
    // flags2 bits exist only within an INIT_EXT exchange.
    if agreedFlags & InitFlags.initExtended == 0 { agreedFlags &= 0xFFFF_FFFF }
    // Kernels before 7.5 read 8 bytes, before 7.23 read 24; we refuse those minors anyway, but the
    // size rule stays explicit.
    let replyBytes = agreedMinor < 5 ? 8 : (agreedMinor < 23 ? 24 : InitLayout.outSize)
    guard reply.bodyCapacity >= replyBytes else {
        // No room for the answer (ERANGE, as for any reply that does not fit): the session cannot be
        // established on a reply the kernel never sees.
        reply.fail(.range)
        return .refused(.range)
    }
    let agreedReadahead = min(readahead, policy.readaheadBytesMax)

    body.initializeMemory(as: UInt8.self, repeating: 0, count: InitLayout.outSize)
    body.storeBytes(of: InitPolicy.major.littleEndian, toByteOffset: InitLayout.major, as: UInt32.self)
    body.storeBytes(of: agreedMinor.littleEndian, toByteOffset: InitLayout.minor, as: UInt32.self)
    body.storeBytes(of: agreedReadahead.littleEndian, toByteOffset: InitLayout.maxReadahead, as: UInt32.self)
    body.storeBytes(of: UInt32(truncatingIfNeeded: agreedFlags).littleEndian, toByteOffset: InitLayout.flags, as: UInt32.self)
    body.storeBytes(of: policy.backgroundMax.littleEndian, toByteOffset: InitLayout.outMaxBackground, as: UInt16.self)
    body.storeBytes(of: policy.congestionThreshold.littleEndian, toByteOffset: InitLayout.outCongestionThreshold, as: UInt16.self)
    body.storeBytes(of: policy.writeBytesMax.littleEndian, toByteOffset: InitLayout.outMaxWrite, as: UInt32.self)
    body.storeBytes(of: policy.timeGranularityNanos.littleEndian, toByteOffset: InitLayout.outTimeGranularity, as: UInt32.self)
    if agreedFlags & InitFlags.maxPages != 0 {
        let pages = UInt16((policy.writeBytesMax + 4095) / 4096)
        body.storeBytes(of: pages.littleEndian, toByteOffset: InitLayout.outMaxPages, as: UInt16.self)
    }
    if agreedFlags & InitFlags.initExtended != 0 {
        body.storeBytes(of: UInt32(truncatingIfNeeded: agreedFlags >> 32).littleEndian, toByteOffset: InitLayout.outFlags2, as: UInt32.self)
    }
    if agreedFlags & InitFlags.passthrough != 0 {
        // The kernel turns passthrough on only with a stack depth of 1...2 (FILESYSTEM_MAX_STACK_DEPTH).
        body.storeBytes(of: policy.maxStackDepth.littleEndian, toByteOffset: InitLayout.outMaxStackDepth, as: UInt32.self)
    }
    reply.send(bodyBytes: replyBytes)
    return .established(NegotiatedSession(
        major: InitPolicy.major, minor: agreedMinor, flags: agreedFlags,
        writeBytesMax: policy.writeBytesMax, readaheadBytesMax: agreedReadahead))
}
