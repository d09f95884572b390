import CDPFS
import DPFSTestSupport
import FUSEWire
import Testing

// FUSE_INIT negotiation, played from the kernel's side: an INIT request is decoded the way the
// poller decodes it, answered by `negotiateInit`, and the reply read back at the offsets of the
// kernel's `struct fuse_init_out`. The rules are fs/fuse/inode.c `process_init_reply`.

/// One INIT exchange: the decoded request (engine memory, as the poller keeps it) and the reply.
private final class InitExchange {
    let request: SegmentedBuffer
    let header: UnsafeMutablePointer<DecodedRequest>
    let args: UnsafeMutableRawPointer
    let space: CodecReplySpace
    let status: DecodeStatus

    /// Decodes `request`, cut into 7-byte segments so the view over segments is exercised too.
    init(_ testRequest: TestRequest, writableBytes: Int = 4096) {
        let bytes = testRequest.bytes
        request = SegmentedBuffer(bytes, cuts: Array(stride(from: 7, to: bytes.count, by: 7)))
        header = .allocate(capacity: 1)
        header.initialize(to: DecodedRequest())
        args = .allocate(byteCount: FUSELimits.argsBytesMax, alignment: 64)
        args.initializeMemory(as: UInt8.self, repeating: 0xEE, count: FUSELimits.argsBytesMax)
        status = decodeRequest(readable: UnsafePointer(request.segments), readableCount: request.count,
                               readableBytes: bytes.count, options: DecoderOptions(), into: header, args: args)
        space = CodecReplySpace(bytes: writableBytes, cuts: Array(stride(from: 5, to: writableBytes, by: 5)),
                                unique: testRequest.unique)
    }

    func negotiate(_ policy: InitPolicy = InitPolicy()) -> InitOutcome {
        precondition(status == .valid, "INIT request did not decode: \(status)")
        let view = FUSERequest(header: UnsafePointer(header), args: UnsafeRawPointer(args),
                               readable: UnsafePointer(request.segments), readableCount: request.count)
        return negotiateInit(view, policy: policy, reply: space.reply)
    }

    var replyHeader: CodecOutHeader { CodecOutHeader(space.sent) }
    var replyBody: [UInt8] { Array(space.sent.dropFirst(16)) }

    /// A fuse_init_out field of the reply body.
    func out<T: FixedWidthInteger>(_ key: PartialKeyPath<fuse_init_out>, as: T.Type) -> T {
        replyBody.loadLE(T.self, at: cOffset(key))
    }

    deinit {
        header.deallocate()
        args.deallocate()
    }
}

/// An INIT as a 7.`minor` kernel sends it: a 64-byte fuse_init_in (7.36+) or the 16-byte form.
private func initRequest(major: UInt32 = 7, minor: UInt32 = 38, readahead: UInt32 = 128 << 10,
                         flags: UInt64, sizeBytes: Int = 64) -> TestRequest {
    var args = le(major) + le(minor) + le(readahead) + le(UInt32(truncatingIfNeeded: flags))
    if sizeBytes == 64 {
        args += le(UInt32(truncatingIfNeeded: flags >> 32)) + [UInt8](repeating: 0, count: 44)
    }
    var request = TestRequest(.`init`, nodeID: 0, args: args)
    request.unique = 0x1_0000_0002
    return request
}

/// Every flag a 7.38 kernel can offer: FUSE_ASYNC_READ … FUSE_INIT_EXT in flags (bit 31 is
/// FUSE_INIT_RESERVED), and SECURITY_CTX, HAS_INODE_DAX, HAS_EXPIRE_ONLY in flags2.
private let kernel738Flags: UInt64 = 0x7FFF_FFFF | UInt64(FUSE_SECURITY_CTX) | UInt64(FUSE_HAS_INODE_DAX)
    | UInt64(FUSE_HAS_EXPIRE_ONLY)

@Suite("FUSE_INIT negotiation")
struct InitNegotiationTests {
    /// The flag constants are the kernel's bits.
    @Test func flagBitsMatchKernel() {
        #expect(InitFlags.asyncRead == UInt64(FUSE_ASYNC_READ))
        #expect(InitFlags.posixLocks == UInt64(FUSE_POSIX_LOCKS))
        #expect(InitFlags.atomicOpenTruncate == UInt64(FUSE_ATOMIC_O_TRUNC))
        #expect(InitFlags.exportSupport == UInt64(FUSE_EXPORT_SUPPORT))
        #expect(InitFlags.bigWrites == UInt64(FUSE_BIG_WRITES))
        #expect(InitFlags.dontMask == UInt64(FUSE_DONT_MASK))
        #expect(InitFlags.flockLocks == UInt64(FUSE_FLOCK_LOCKS))
        #expect(InitFlags.ioctlDirectory == UInt64(FUSE_HAS_IOCTL_DIR))
        #expect(InitFlags.autoInvalidateData == UInt64(FUSE_AUTO_INVAL_DATA))
        #expect(InitFlags.doReaddirplus == UInt64(FUSE_DO_READDIRPLUS))
        #expect(InitFlags.readdirplusAuto == UInt64(FUSE_READDIRPLUS_AUTO))
        #expect(InitFlags.asyncDirectIO == UInt64(FUSE_ASYNC_DIO))
        #expect(InitFlags.writebackCache == UInt64(FUSE_WRITEBACK_CACHE))
        #expect(InitFlags.parallelDirectoryOps == UInt64(FUSE_PARALLEL_DIROPS))
        #expect(InitFlags.handleKillpriv == UInt64(FUSE_HANDLE_KILLPRIV))
        #expect(InitFlags.maxPages == UInt64(FUSE_MAX_PAGES))
        #expect(InitFlags.cacheSymlinks == UInt64(FUSE_CACHE_SYMLINKS))
        #expect(InitFlags.setxattrExtended == UInt64(FUSE_SETXATTR_EXT))
        #expect(InitFlags.initExtended == UInt64(FUSE_INIT_EXT))
        #expect(InitPolicy.major == UInt32(FUSE_KERNEL_VERSION))
    }

    // MARK: 1. A 7.38 kernel offering everything

    @Test func kernel738OfferingAllFlags() throws {
        let policy = InitPolicy()
        let exchange = InitExchange(initRequest(minor: 38, readahead: 128 << 10, flags: kernel738Flags))
        let outcome = exchange.negotiate(policy)
        let agreed = kernel738Flags & policy.flagsWanted
        #expect(outcome == .established(NegotiatedSession(
            major: 7, minor: 38, flags: agreed, writeBytesMax: 1 << 20, readaheadBytesMax: 128 << 10)))
        // The reply: out header + the full 64-byte fuse_init_out (minor ≥ 23).
        #expect(exchange.space.length == 16 + MemoryLayout<fuse_init_out>.size)
        #expect(exchange.replyHeader == CodecOutHeader(len: 80, error: 0, unique: 0x1_0000_0002))
        #expect(exchange.out(\.major, as: UInt32.self) == 7)
        #expect(exchange.out(\.minor, as: UInt32.self) == 38)
        #expect(exchange.out(\.max_readahead, as: UInt32.self) == 128 << 10)
        #expect(exchange.out(\.flags, as: UInt32.self) == UInt32(truncatingIfNeeded: agreed))
        #expect(exchange.out(\.max_background, as: UInt16.self) == policy.backgroundMax)
        #expect(exchange.out(\.congestion_threshold, as: UInt16.self) == policy.congestionThreshold)
        #expect(exchange.out(\.max_write, as: UInt32.self) == 1 << 20)
        #expect(exchange.out(\.time_gran, as: UInt32.self) == 1)
        #expect(exchange.out(\.max_pages, as: UInt16.self) == 256)
        #expect(exchange.out(\.map_alignment, as: UInt16.self) == 0)
        // INIT_EXT was agreed, so flags2 carries the high half (none wanted by default).
        #expect(exchange.out(\.flags2, as: UInt32.self) == UInt32(truncatingIfNeeded: agreed >> 32))
        #expect(exchange.replyBody[cOffset(\fuse_init_out.unused)...].allSatisfy { $0 == 0 }, "reserved words are zero")
        // What the default policy asks for, the kernel offered: all of it was agreed.
        #expect(agreed == policy.flagsWanted)
    }

    /// max_readahead is the smaller of the kernel's and ours.
    @Test(arguments: [(0, 0), (4096, 4096), (1 << 20, 1 << 20), (4 << 20, 1 << 20), (UInt32.max, 1 << 20)] as [(UInt32, UInt32)])
    func readaheadIsTheSmaller(kernel: UInt32, agreed: UInt32) throws {
        let exchange = InitExchange(initRequest(readahead: kernel, flags: kernel738Flags))
        guard case .established(let session) = exchange.negotiate() else {
            Issue.record("not established")
            return
        }
        #expect(session.readaheadBytesMax == agreed)
        #expect(exchange.out(\.max_readahead, as: UInt32.self) == agreed)
    }

    /// max_pages is only meaningful (and only written) when FUSE_MAX_PAGES is agreed; otherwise the
    /// kernel would ignore it, and we leave it 0.
    @Test func maxPagesOnlyWithMaxPagesFlag() {
        let notOffered = InitExchange(initRequest(flags: kernel738Flags & ~InitFlags.maxPages))
        #expect(notOffered.negotiate() != .refused(.protocolError))
        #expect(notOffered.out(\.max_pages, as: UInt16.self) == 0)
        #expect(notOffered.out(\.flags, as: UInt32.self) & UInt32(FUSE_MAX_PAGES) == 0)

        var policy = InitPolicy()
        policy.flagsWanted &= ~InitFlags.maxPages
        let notWanted = InitExchange(initRequest(flags: kernel738Flags))
        _ = notWanted.negotiate(policy)
        #expect(notWanted.out(\.max_pages, as: UInt16.self) == 0)

        // With a smaller max_write, max_pages follows it (rounded up to whole pages).
        let smaller = InitPolicy(writeBytesMax: 128 << 10)
        let exchange = InitExchange(initRequest(flags: kernel738Flags))
        _ = exchange.negotiate(smaller)
        #expect(exchange.out(\.max_pages, as: UInt16.self) == 32)
        #expect(exchange.out(\.max_write, as: UInt32.self) == 128 << 10)
    }

    /// flags2 (bits 32–63) exists only with FUSE_INIT_EXT: read from the request only when the
    /// kernel set INIT_EXT, written to the reply only when INIT_EXT is agreed.
    @Test func flags2OnlyWithInitExt() {
        var policy = InitPolicy()
        policy.flagsWanted |= UInt64(FUSE_HAS_INODE_DAX)  // bit 33 → flags2 bit 1

        let withExt = InitExchange(initRequest(flags: kernel738Flags))
        guard case .established(let session) = withExt.negotiate(policy) else {
            Issue.record("not established")
            return
        }
        #expect(session.flags & UInt64(FUSE_HAS_INODE_DAX) != 0)
        #expect(withExt.out(\.flags2, as: UInt32.self) == 2)
        #expect(withExt.out(\.flags, as: UInt32.self) & UInt32(FUSE_INIT_EXT) != 0)

        // Kernel without INIT_EXT: its flags2 word means nothing and must not be read.
        let noExt = InitExchange(initRequest(flags: kernel738Flags & ~InitFlags.initExtended))
        guard case .established(let plain) = noExt.negotiate(policy) else {
            Issue.record("not established")
            return
        }
        #expect(plain.flags >> 32 == 0)
        #expect(plain.flags & InitFlags.initExtended == 0)
        #expect(noExt.out(\.flags2, as: UInt32.self) == 0)
    }

    /// If our reply does not carry INIT_EXT, the kernel never reads flags2 (process_init_reply:
    /// `if (flags & FUSE_INIT_EXT) flags |= flags2 << 32`), so no flags2 bit can be agreed, even
    /// one the policy wants and the kernel offered. The session must say what the kernel believes.
    @Test func flags2NotAgreedWhenWeDoNotWantInitExt() {
        var policy = InitPolicy()
        policy.flagsWanted &= ~InitFlags.initExtended
        policy.flagsWanted |= UInt64(FUSE_HAS_INODE_DAX)
        let exchange = InitExchange(initRequest(flags: kernel738Flags))
        guard case .established(let session) = exchange.negotiate(policy) else {
            Issue.record("not established")
            return
        }
        #expect(exchange.out(\.flags, as: UInt32.self) & UInt32(FUSE_INIT_EXT) == 0)
        #expect(exchange.out(\.flags2, as: UInt32.self) == 0)
        #expect(session.flags >> 32 == 0, "session claims flags2 bits the kernel never saw: \(String(session.flags, radix: 16))")
    }

    // MARK: 2. Minor versions

    /// The smaller minor wins: a newer kernel talks our 7.45, an older one its own.
    @Test(arguments: [(27, 27), (36, 36), (38, 38), (45, 45), (46, 45), (50, 45), (UInt32.max, 45)] as [(UInt32, UInt32)])
    func minorIsTheSmaller(kernelMinor: UInt32, agreed: UInt32) {
        let exchange = InitExchange(initRequest(minor: kernelMinor, flags: kernel738Flags))
        guard case .established(let session) = exchange.negotiate() else {
            Issue.record("7.\(kernelMinor) not established")
            return
        }
        #expect(session.major == 7)
        #expect(session.minor == agreed)
        #expect(exchange.out(\.major, as: UInt32.self) == 7)
        #expect(exchange.out(\.minor, as: UInt32.self) == agreed)
        #expect(exchange.space.length == 80)
    }

    // MARK: 3. Too old

    /// Below 7.27 (or an older major) we refuse with EPROTO, in a 16-byte error reply.
    @Test(arguments: [(7, 26), (7, 0), (6, 38), (0, 0)] as [(UInt32, UInt32)])
    func tooOldIsRefused(major: UInt32, minor: UInt32) {
        let exchange = InitExchange(initRequest(major: major, minor: minor, flags: kernel738Flags))
        #expect(exchange.negotiate() == .refused(.protocolError))
        #expect(exchange.space.length == 16)
        #expect(exchange.replyHeader == CodecOutHeader(len: 16, error: -EPROTO, unique: 0x1_0000_0002))
    }

    // MARK: 4. Newer major

    /// A newer major: answer with just major/minor (8 bytes, the kernel reads only those) and let
    /// the kernel retry with ours.
    @Test(arguments: [UInt32(8), 9, UInt32.max])
    func newerMajorIsAnsweredWithOurs(major: UInt32) {
        let exchange = InitExchange(initRequest(major: major, minor: 0, flags: kernel738Flags))
        #expect(exchange.negotiate() == .majorMismatchAnswered)
        #expect(exchange.space.length == 16 + Int(FUSE_COMPAT_INIT_OUT_SIZE))
        #expect(exchange.replyHeader == CodecOutHeader(len: 24, error: 0, unique: 0x1_0000_0002))
        #expect(exchange.out(\.major, as: UInt32.self) == 7)
        #expect(exchange.out(\.minor, as: UInt32.self) == InitPolicy.minorSupported)
    }

    // MARK: 5. Pre-7.36 kernels

    /// A 16-byte fuse_init_in has no flags2: even if the INIT_EXT bit is set, nothing beyond the
    /// 16 bytes may be read (the args buffer holds stale bytes there).
    @Test func oldInitInIgnoresFlags2() {
        var policy = InitPolicy()
        policy.flagsWanted |= UInt64(FUSE_HAS_INODE_DAX)
        let request = initRequest(minor: 35, flags: 0x7FFF_FFFF, sizeBytes: 16)
        #expect(request.args.count == InitLayout.inSizeMin)
        let exchange = InitExchange(request)
        // Stale engine memory where flags2 would be: all ones.
        (exchange.args + 16).initializeMemory(as: UInt8.self, repeating: 0xFF, count: 48)
        guard case .established(let session) = exchange.negotiate(policy) else {
            Issue.record("not established")
            return
        }
        #expect(session.minor == 35)
        #expect(session.flags >> 32 == 0)
        #expect(session.flags == UInt64(0x7FFF_FFFF) & policy.flagsWanted)
        #expect(exchange.out(\.flags2, as: UInt32.self) == 0)
    }

    // MARK: 6. Negative space

    /// What we do not want is not agreed even when offered: POSIX locks (the guest then locks
    /// locally), and by default FLOCK locks, writeback cache, AUTO_INVAL_DATA, SETXATTR_EXT.
    @Test func unwantedFlagsAreNotAgreed() {
        let exchange = InitExchange(initRequest(flags: kernel738Flags))
        guard case .established(let session) = exchange.negotiate() else {
            Issue.record("not established")
            return
        }
        let replyFlags = UInt64(exchange.out(\.flags, as: UInt32.self))
        for flag in [InitFlags.posixLocks, InitFlags.flockLocks, InitFlags.writebackCache,
                     InitFlags.autoInvalidateData, InitFlags.setxattrExtended] {
            #expect(session.flags & flag == 0, "flag \(String(flag, radix: 16)) agreed")
            #expect(replyFlags & flag == 0, "flag \(String(flag, radix: 16)) in reply")
        }
        #expect(session.decoderOptions.setxattrExtended == false)
        #expect(session.decoderOptions.writeBytesMax == 1 << 20)
    }

    /// And what the kernel does not offer is not agreed even when wanted.
    @Test func unofferedFlagsAreNotAgreed() {
        let policy = InitPolicy(flagsWanted: InitFlags.posixLocks | InitFlags.setxattrExtended | InitFlags.maxPages)
        let exchange = InitExchange(initRequest(flags: InitFlags.asyncRead | InitFlags.setxattrExtended))
        guard case .established(let session) = exchange.negotiate(policy) else {
            Issue.record("not established")
            return
        }
        #expect(session.flags == InitFlags.setxattrExtended)
        #expect(UInt64(exchange.out(\.flags, as: UInt32.self)) == InitFlags.setxattrExtended)
        #expect(exchange.out(\.max_pages, as: UInt16.self) == 0)
        // SETXATTR_EXT agreed: the decoder must now expect the 16-byte fuse_setxattr_in.
        #expect(session.decoderOptions.setxattrExtended)
    }

    /// If the INIT reply cannot be delivered (the writable space is smaller than the reply), the
    /// kernel receives -ERANGE and fails the mount: the engine must not consider the session
    /// established. (OpcodeTable.replyBytesMin lets INIT through with only 16 writable bytes.)
    @Test func unsendableReplyIsNotEstablished() {
        let exchange = InitExchange(initRequest(flags: kernel738Flags), writableBytes: 16 + 63)
        let outcome = exchange.negotiate()
        #expect(exchange.space.length == 16)
        #expect(exchange.replyHeader.error == -ERANGE)
        if case .established = outcome {
            Issue.record("INIT answered with -ERANGE, yet the outcome is .established")
        }
    }
}
