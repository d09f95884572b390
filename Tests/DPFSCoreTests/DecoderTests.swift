import CDPFS
import DPFSTestSupport
import FUSEWire
import Testing

// Decoder tests: every opcode, every way of cutting a request into segments, and the ways a guest
// can lie about lengths and names. Expected values come from the kernel header (<linux/fuse.h>,
// imported through CDPFS) and from the bytes the test built, never from the decoder's own tables.

// MARK: - Expectations from the kernel ABI

/// The size of an opcode's fixed argument struct as Linux declares it (7.38 header; the two
/// structs newer than 7.38 are hand-computed from their field lists).
private func kernelArgumentSize(_ opcode: FUSEOpcode) -> Int {
    switch opcode {
    case .lookup, .unlink, .rmdir, .removexattr, .symlink, .readlink, .statfs, .destroy: return 0
    case .forget: return MemoryLayout<fuse_forget_in>.size
    case .getattr: return MemoryLayout<fuse_getattr_in>.size
    case .setattr: return MemoryLayout<fuse_setattr_in>.size
    case .mknod: return MemoryLayout<fuse_mknod_in>.size
    case .mkdir: return MemoryLayout<fuse_mkdir_in>.size
    case .rename: return MemoryLayout<fuse_rename_in>.size
    case .link: return MemoryLayout<fuse_link_in>.size
    case .open, .opendir: return MemoryLayout<fuse_open_in>.size
    case .read, .readdir, .readdirplus: return MemoryLayout<fuse_read_in>.size
    case .write: return MemoryLayout<fuse_write_in>.size
    case .release, .releasedir: return MemoryLayout<fuse_release_in>.size
    case .fsync, .fsyncdir: return MemoryLayout<fuse_fsync_in>.size
    // SETXATTR without FUSE_SETXATTR_EXT uses the 8-byte compat prefix of fuse_setxattr_in.
    case .setxattr: return Int(FUSE_COMPAT_SETXATTR_IN_SIZE)
    case .getxattr, .listxattr: return MemoryLayout<fuse_getxattr_in>.size
    case .flush: return MemoryLayout<fuse_flush_in>.size
    case .`init`: return MemoryLayout<fuse_init_in>.size
    case .getlk, .setlk, .setlkw: return MemoryLayout<fuse_lk_in>.size
    case .access: return MemoryLayout<fuse_access_in>.size
    case .create, .tmpfile: return MemoryLayout<fuse_create_in>.size
    case .interrupt: return MemoryLayout<fuse_interrupt_in>.size
    case .bmap: return MemoryLayout<fuse_bmap_in>.size
    case .ioctl: return MemoryLayout<fuse_ioctl_in>.size
    case .poll: return MemoryLayout<fuse_poll_in>.size
    case .notifyReply: return MemoryLayout<fuse_notify_retrieve_in>.size
    case .batchForget: return MemoryLayout<fuse_batch_forget_in>.size
    case .fallocate: return MemoryLayout<fuse_fallocate_in>.size
    case .rename2: return MemoryLayout<fuse_rename2_in>.size
    case .lseek: return MemoryLayout<fuse_lseek_in>.size
    case .copyFileRange, .copyFileRange64: return MemoryLayout<fuse_copy_file_range_in>.size
    case .setupMapping: return MemoryLayout<fuse_setupmapping_in>.size
    case .removeMapping: return MemoryLayout<fuse_removemapping_in>.size
    case .syncfs: return MemoryLayout<fuse_syncfs_in>.size
    // fuse_statx_in (7.39): u32 getattr_flags, u32 reserved, u64 fh, u32 sx_flags, u32 sx_mask.
    case .statx: return 4 + 4 + 8 + 4 + 4
    }
}

/// Opcodes whose entry name must be a single path component (no '/').
private let entryNameOpcodes: [FUSEOpcode] = [.lookup, .unlink, .rmdir, .mknod, .mkdir, .link, .create, .tmpfile]
/// Opcodes that carry an xattr name, which may contain '/' (e.g. "trusted.overlay/x" style names).
private let xattrNameOpcodes: [FUSEOpcode] = [.getxattr, .setxattr, .removexattr]

/// What the canonical `TestRequest.valid(opcode)` must decode to.
private struct CanonicalExpectation {
    var argsLength: Int
    var name: [UInt8] = []
    var secondName: [UInt8] = []
    var payload: [UInt8] = []
}

private func expectation(_ opcode: FUSEOpcode) -> CanonicalExpectation {
    let fixed = kernelArgumentSize(opcode)
    func names(_ first: [UInt8], _ second: [UInt8] = []) -> CanonicalExpectation {
        CanonicalExpectation(argsLength: fixed + first.count + 1 + (second.isEmpty ? 0 : second.count + 1),
                             name: first, secondName: second)
    }
    switch opcode {
    case .lookup, .unlink, .rmdir, .mknod, .mkdir, .link, .create, .tmpfile:
        return names(TestRequest.entryName)
    case .getxattr, .removexattr:
        return names(TestRequest.xattrName)
    case .symlink:
        return names(TestRequest.entryName, TestRequest.symlinkTarget)
    case .rename, .rename2:
        return names(TestRequest.entryName, TestRequest.secondName)
    case .setxattr:
        var e = names(TestRequest.xattrName)
        e.payload = TestRequest.xattrValue
        return e
    case .write: return CanonicalExpectation(argsLength: fixed, payload: TestRequest.writePayload)
    case .ioctl: return CanonicalExpectation(argsLength: fixed, payload: [1, 2, 3, 4])
    case .notifyReply: return CanonicalExpectation(argsLength: fixed, payload: [9, 9, 9])
    case .batchForget:
        // Two fuse_forget_one {nodeid, nlookup}.
        return CanonicalExpectation(argsLength: fixed, payload: le(UInt64(5)) + le(UInt64(1)) + le(UInt64(6)) + le(UInt64(2)))
    case .removeMapping:
        return CanonicalExpectation(argsLength: fixed, payload: [UInt8](repeating: 0, count: MemoryLayout<fuse_removemapping_one>.size))
    default:
        return CanonicalExpectation(argsLength: fixed)
    }
}

/// The canonical request, except that IOCTL and NOTIFY_REPLY carry the length of their data in
/// their fixed struct as Linux sets it (fuse_ioctl_in.in_size, fuse_notify_retrieve_in.size;
/// fs/fuse/ioctl.c and fs/fuse/dev.c `fuse_retrieve`). `TestRequest.valid` leaves those fields 0.
private func kernelShaped(_ opcode: FUSEOpcode) -> TestRequest {
    var request = TestRequest.valid(opcode)
    let sizeField: Int
    switch opcode {
    case .ioctl: sizeField = MemoryLayout<fuse_ioctl_in>.offset(of: \fuse_ioctl_in.in_size)!
    case .notifyReply: sizeField = MemoryLayout<fuse_notify_retrieve_in>.offset(of: \fuse_notify_retrieve_in.size)!
    default: return request
    }
    let dataBytes = UInt32(request.args.count - kernelArgumentSize(opcode))
    request.args.replaceSubrange(sizeField..<sizeField + 4, with: le(dataBytes))
    return request
}

private func isInvalid(_ status: DecodeStatus) -> Bool {
    if case .invalid = status { return true }
    return false
}

/// `count` bytes of `byte`, for names of a chosen length.
private func repeated(_ byte: Character, _ count: Int) -> [UInt8] {
    [UInt8](repeating: UInt8(ascii: byte.unicodeScalars.first!), count: count)
}

/// A deterministic generator (SplitMix64), so a failing cut pattern can be replayed from its seed.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Decodes `bytes` over hand-made segments that include zero-length ones (a driver may post empty
/// descriptors); `SegmentedBuffer` never makes empty pieces, so this builds the list itself.
private func decodeOverEmptySegments(_ bytes: [UInt8], chunk: Int)
    -> (status: DecodeStatus, args: [UInt8], name: [UInt8], secondName: [UInt8], payload: [UInt8]) {
    let storage = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 8)
    defer { storage.deallocate() }
    bytes.withUnsafeBytes { storage.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
    var segments: [Segment] = [Segment(base: storage, length: 0)]
    var offset = 0
    while offset < bytes.count {
        let length = min(chunk, bytes.count - offset)
        segments.append(Segment(base: storage + offset, length: UInt32(length)))
        segments.append(Segment(base: storage + offset + length, length: 0))
        offset += length
    }
    let args = UnsafeMutableRawPointer.allocate(byteCount: FUSELimits.argsBytesMax, alignment: 64)
    defer { args.deallocate() }
    let header = UnsafeMutablePointer<DecodedRequest>.allocate(capacity: 1)
    defer { header.deallocate() }
    header.initialize(to: DecodedRequest())
    return segments.withUnsafeBufferPointer { list in
        let status = decodeRequest(readable: list.baseAddress!, readableCount: list.count, readableBytes: bytes.count,
                                   options: DecoderOptions(), into: header, args: args)
        guard case .valid = status else { return (status, [], [], [], []) }
        let view = FUSERequest(header: UnsafePointer(header), args: UnsafeRawPointer(args),
                               readable: list.baseAddress!, readableCount: list.count)
        var payload = [UInt8](repeating: 0, count: view.payloadLength)
        var cursor = view.payload
        let read = payload.withUnsafeMutableBytes { cursor.read(into: $0.baseAddress!, byteCount: $0.count) }
        precondition(read == payload.count)
        return (status, Array(UnsafeRawBufferPointer(start: args, count: Int(header.pointee.argsLength))),
                Array(view.name), Array(view.secondName), payload)
    }
}

// MARK: - Decoder

@Suite("FUSE request decoder")
struct DecoderTests {
    // MARK: 1. Every opcode, canonical request

    /// A well-formed request of every opcode decodes with its header intact (distinct values in
    /// every header field, so a swapped or misplaced field shows) and its arguments, names and
    /// payload where the kernel put them.
    @Test(arguments: FUSEOpcode.allCases)
    func canonicalRequestDecodes(opcode: FUSEOpcode) throws {
        var request = TestRequest.valid(opcode)
        request.unique = 0x0102_0304_0506_0700 | UInt64(opcode.rawValue)
        request.nodeID = 0x1112_1314_1516_1718
        request.uid = 0xA1A2_A3A4
        request.gid = 0xB1B2_B3B4
        request.pid = 0xC1C2_C3C4
        let bytes = request.bytes
        let result = decode(bytes)
        let expected = expectation(opcode)

        try #require(result.status == .valid)
        #expect(result.request.opcodeRaw == opcode.rawValue)
        #expect(result.request.opcode == opcode)
        #expect(result.request.unique == request.unique)
        #expect(result.request.nodeID == request.nodeID)
        #expect(result.request.uid == 0xA1A2_A3A4)
        #expect(result.request.gid == 0xB1B2_B3B4)
        #expect(result.request.pid == 0xC1C2_C3C4)
        #expect(result.request.length == UInt32(bytes.count))
        #expect(Int(result.request.argsLength) == expected.argsLength)
        // The copied argument bytes are exactly the request's, byte for byte.
        #expect(result.args == Array(request.args.prefix(expected.argsLength)))
        #expect(result.name == expected.name)
        #expect(result.secondName == expected.secondName)
        #expect(result.payload == expected.payload)
        #expect(Int(result.request.payloadLength) == expected.payload.count)
    }

    // MARK: 2. Oddly segmented

    /// The decoder treats the segments as one byte stream: no cut, wherever it falls (inside the
    /// header, a field, a name, a NUL, the payload), may change the result.
    @Test(arguments: FUSEOpcode.allCases)
    func everySegmentationDecodesIdentically(opcode: FUSEOpcode) throws {
        let bytes = TestRequest.valid(opcode).bytes
        let whole = decode(bytes)
        try #require(whole.status == .valid)
        let n = bytes.count
        var patterns = 0
        var mismatches: [[Int]] = []
        func check(_ cuts: [Int]) {
            patterns += 1
            if decode(bytes, cuts: cuts) != whole, mismatches.count < 5 { mismatches.append(cuts) }
        }
        // Every single cut.
        for cut in 1..<n { check([cut]) }
        // Every pair of cuts for short requests.
        if n <= 104 {
            for first in 1..<n { for second in (first + 1)..<n { check([first, second]) } }
        }
        // One byte per segment.
        check(Array(1..<n))
        // Seeded multi-cut patterns (always; they are the only multi-cut coverage of long requests).
        let seed: UInt64 = 0x5EED_0000_0000_0000 | UInt64(opcode.rawValue)
        var random = SplitMix64(state: seed)
        for _ in 0..<200 {
            let cutCount = Int.random(in: 2...12, using: &random)
            check((0..<cutCount).map { _ in Int.random(in: 1..<n, using: &random) })
        }
        #expect(mismatches.isEmpty, "\(opcode.wireName): \(mismatches.count) of \(patterns) cut patterns differ, e.g. cuts \(mismatches) (random seed \(String(seed, radix: 16)))")
    }

    /// Zero-length segments between the pieces (a driver may post empty descriptors) are skipped.
    @Test(arguments: FUSEOpcode.allCases)
    func emptySegmentsAreSkipped(opcode: FUSEOpcode) throws {
        let bytes = TestRequest.valid(opcode).bytes
        let whole = decode(bytes)
        try #require(whole.status == .valid)
        for chunk in [1, 5, 40, bytes.count] {
            let result = decodeOverEmptySegments(bytes, chunk: chunk)
            #expect(result.status == whole.status, "chunk \(chunk)")
            #expect(result.args == whole.args, "chunk \(chunk)")
            #expect(result.name == whole.name, "chunk \(chunk)")
            #expect(result.secondName == whole.secondName, "chunk \(chunk)")
            #expect(result.payload == whole.payload, "chunk \(chunk)")
        }
    }

    // MARK: 3. Truncated

    /// (a) The header claims more bytes than were delivered: the guest lied, and nothing past the
    /// header may be trusted. The header itself is still reported, so the error can be answered.
    @Test(arguments: FUSEOpcode.allCases)
    func headerClaimsMoreThanDelivered(opcode: FUSEOpcode) {
        for extra in [1, 8, 4096] {
            var request = TestRequest.valid(opcode)
            request.lengthOverride = UInt32(InHeaderLayout.size + request.args.count + extra)
            let result = decode(request.bytes)
            #expect(result.status == .invalid(.invalid), "claimed \(extra) extra bytes")
            #expect(result.request.unique == request.unique, "an invalid request keeps its unique for the error reply")
        }
        // The same lie told the other way: the true header, but the last byte never arrives.
        let bytes = TestRequest.valid(opcode).bytes
        if bytes.count > InHeaderLayout.size {
            #expect(decode(Array(bytes.dropLast())).status == .invalid(.invalid))
        }
    }

    /// (b) Header and delivered bytes agree, but the arguments stop short. Every shorter length of
    /// the argument area must be refused; the one exception is INIT's 16-byte pre-7.36 form. For
    /// name opcodes the first dropped byte is the final NUL. IOCTL and NOTIFY_REPLY are built as
    /// Linux sends them (data length in in_size / size), so a short data area is detectable.
    @Test(arguments: FUSEOpcode.allCases.filter { !TestRequest.valid($0).args.isEmpty })
    func argumentsCutShort(opcode: FUSEOpcode) {
        let full = kernelShaped(opcode)
        if !expectation(opcode).name.isEmpty && opcode != .setxattr {  // SETXATTR ends in its value
            #expect(full.args.last == 0, "a name-bearing request ends in its NUL")
        }
        var accepted: [Int] = []
        for dropped in 1...full.args.count {
            var request = full
            request.args.removeLast(dropped)
            let status = decode(request.bytes).status
            if opcode == .`init` && request.args.count == InitLayout.inSizeMin {
                #expect(status == .valid, "16-byte fuse_init_in of pre-7.36 kernels")
            } else if !isInvalid(status) {
                accepted.append(request.args.count)
            }
        }
        #expect(accepted.isEmpty, "\(opcode.wireName): truncated argument lengths accepted: \(accepted.prefix(8))")
        // The case the brief names explicitly: one byte short.
        var oneShort = full
        oneShort.args.removeLast()
        #expect(isInvalid(decode(oneShort.bytes).status))
    }

    /// (c) Without a whole 40-byte header there is no `unique` to answer to.
    @Test(arguments: [0, 1, 20, 39])
    func lessThanAHeaderIsUnanswerable(byteCount: Int) {
        let bytes = Array(TestRequest.valid(.getattr).bytes.prefix(byteCount))
        #expect(decode(bytes).status == .unanswerable)
        // Also when those bytes arrive one per segment.
        #expect(decode(bytes, cuts: Array(0..<byteCount)).status == .unanswerable)
    }

    /// A header whose length field is below the header size is a lie, not an empty request.
    @Test(arguments: [0, 1, 39])
    func lengthFieldBelowHeaderSize(length: UInt32) {
        var request = TestRequest.valid(.statfs)
        request.lengthOverride = length
        #expect(decode(request.bytes).status == .invalid(.invalid))
        // Even when the transport's count agrees with the lie.
        #expect(decode(request.bytes, readableBytes: Int(length)).status == .invalid(.invalid))
    }

    // MARK: 4. Oversized

    /// One extra byte after a complete request (length fixed up) belongs to nothing: refused.
    /// Both a NUL and a letter are tried, since a trailing NUL could pass for an empty name.
    @Test(arguments: FUSEOpcode.allCases, [UInt8(0), UInt8(ascii: "A")])
    func trailingByteIsRefused(opcode: FUSEOpcode, trailing: UInt8) {
        var request = kernelShaped(opcode)
        request.args.append(trailing)
        #expect(decode(request.bytes).status == .invalid(.invalid))
    }

    @Test func headerLengthFarBeyondDelivered() {
        var request = TestRequest.valid(.getattr)
        request.lengthOverride = UInt32.max
        #expect(decode(request.bytes).status == .invalid(.invalid))
    }

    /// The largest request accepted at all is FUSELimits.requestBytesMax, even when every byte of
    /// it is really there. NOTIFY_REPLY carries arbitrary data, so it can reach the limit.
    @Test func requestSizeLimit() throws {
        func notifyReply(totalBytes: Int) -> [UInt8] {
            var request = TestRequest.valid(.notifyReply)
            let fixed = kernelArgumentSize(.notifyReply)
            let data = totalBytes - InHeaderLayout.size - fixed
            request.args = Array(request.args.prefix(fixed)) + [UInt8](repeating: 0x5A, count: data)
            let sizeField = MemoryLayout<fuse_notify_retrieve_in>.offset(of: \fuse_notify_retrieve_in.size)!
            request.args.replaceSubrange(sizeField..<sizeField + 4, with: le(UInt32(data)))
            return request.bytes
        }
        let atLimit = decode(notifyReply(totalBytes: FUSELimits.requestBytesMax))
        try #require(atLimit.status == .valid)
        #expect(atLimit.payload.count == FUSELimits.requestBytesMax - 80)
        #expect(decode(notifyReply(totalBytes: FUSELimits.requestBytesMax + 1)).status == .invalid(.invalid))
    }

    /// A WRITE's fuse_write_in.size must be the payload that follows and within the max_write we
    /// announced (DecoderOptions.writeBytesMax).
    @Test func writeSizeChecks() throws {
        func write(size: UInt32, payload: Int) -> [UInt8] {
            var request = TestRequest.valid(.write)
            request.args = le(UInt64(2)) + le(UInt64(0)) + le(size) + [UInt8](repeating: 0, count: 20)
                + [UInt8](repeating: 0xAB, count: payload)
            return request.bytes
        }
        let small = DecoderOptions(writeBytesMax: 4096)
        #expect(decode(write(size: 4096, payload: 4096), options: small).status == .valid)
        #expect(decode(write(size: 4097, payload: 4097), options: small).status == .invalid(.fileTooLarge))
        let mib = FUSELimits.writeBytesMax
        let fullWrite = decode(write(size: UInt32(mib), payload: mib))
        try #require(fullWrite.status == .valid)
        #expect(fullWrite.payload.count == mib)
        #expect(decode(write(size: UInt32(mib + 1), payload: mib + 1)).status == .invalid(.fileTooLarge))
        // Size and payload disagree.
        #expect(decode(write(size: 299, payload: 300)).status == .invalid(.invalid))
        #expect(decode(write(size: 301, payload: 300)).status == .invalid(.invalid))
        #expect(decode(write(size: 300, payload: 0)).status == .invalid(.invalid))
        #expect(isInvalid(decode(write(size: UInt32.max, payload: 300)).status))
        // A zero-length write is legal.
        #expect(decode(write(size: 0, payload: 0)).status == .valid)
    }

    /// NAME_MAX is 255 bytes without the NUL, for every name-bearing opcode and either position.
    @Test(arguments: entryNameOpcodes + xattrNameOpcodes)
    func nameLengthLimit(opcode: FUSEOpcode) throws {
        func request(name: [UInt8]) -> TestRequest {
            var r = TestRequest.valid(opcode)
            let fixed = kernelArgumentSize(opcode)
            let value = opcode == .setxattr ? TestRequest.xattrValue : []
            r.args = Array(r.args.prefix(fixed)) + name + [0] + value
            return r
        }
        let longest = decode(request(name: repeated("n", 255)).bytes)
        try #require(longest.status == .valid)
        #expect(longest.name == repeated("n", 255))
        #expect(decode(request(name: repeated("n", 256)).bytes).status == .invalid(.nameTooLong))
        // Far too long: refused before anything is copied into the 4608-byte args buffer.
        #expect(decode(request(name: repeated("n", 8192)).bytes).status == .invalid(.nameTooLong))
    }

    @Test(arguments: [FUSEOpcode.rename, .rename2])
    func renameNameLimits(opcode: FUSEOpcode) throws {
        func request(_ old: [UInt8], _ new: [UInt8]) -> [UInt8] {
            var r = TestRequest.valid(opcode)
            r.args = Array(r.args.prefix(kernelArgumentSize(opcode))) + old + [0] + new + [0]
            return r.bytes
        }
        let longest = decode(request(repeated("o", 255), repeated("n", 255)))
        try #require(longest.status == .valid)
        #expect(longest.name == repeated("o", 255))
        #expect(longest.secondName == repeated("n", 255))
        #expect(decode(request(repeated("o", 256), Array("b".utf8))).status == .invalid(.nameTooLong))
        #expect(decode(request(Array("a".utf8), repeated("n", 256))).status == .invalid(.nameTooLong))
        #expect(decode(request(repeated("o", 4000), repeated("n", 4000))).status == .invalid(.nameTooLong))
    }

    /// A symlink target may be PATH_MAX − 1 = 4095 bytes; the link name is still NAME_MAX.
    @Test func symlinkLimits() throws {
        func symlink(_ name: [UInt8], _ target: [UInt8]) -> [UInt8] {
            TestRequest(.symlink, args: name + [0] + target + [0]).bytes
        }
        let longest = decode(symlink(repeated("l", 255), repeated("t", 4095)))
        try #require(longest.status == .valid)
        #expect(longest.name == repeated("l", 255))
        #expect(longest.secondName == repeated("t", 4095))
        #expect(decode(symlink(TestRequest.entryName, repeated("t", 4096))).status == .invalid(.nameTooLong))
        #expect(decode(symlink(repeated("l", 256), TestRequest.symlinkTarget)).status == .invalid(.nameTooLong))
        #expect(decode(symlink(TestRequest.entryName, repeated("t", 9000))).status == .invalid(.nameTooLong))
    }

    /// XATTR_SIZE_MAX is 65536; larger values get ERANGE, as the kernel's own xattr code would.
    @Test func setxattrValueLimits() throws {
        func setxattr(declared: UInt32, value: Int) -> [UInt8] {
            TestRequest(.setxattr, args: le(declared) + le(UInt32(0)) + TestRequest.xattrName + [0]
                        + [UInt8](repeating: 0x76, count: value)).bytes
        }
        let largest = decode(setxattr(declared: 65536, value: 65536))
        try #require(largest.status == .valid)
        #expect(largest.payload.count == 65536)
        #expect(largest.name == TestRequest.xattrName)
        #expect(decode(setxattr(declared: 65537, value: 65537)).status == .invalid(.range))
        // An empty value is legal; a value that contains NULs is data, not a name terminator.
        let empty = decode(setxattr(declared: 0, value: 0))
        #expect(empty.status == .valid)
        #expect(empty.payload.isEmpty)
        let withNULs = decode(TestRequest(.setxattr, args: le(UInt32(3)) + le(UInt32(0)) + TestRequest.xattrName + [0] + [0, 0, 0]).bytes)
        #expect(withNULs.status == .valid)
        #expect(withNULs.payload == [0, 0, 0])
        // Declared value longer than what follows the name.
        #expect(isInvalid(decode(setxattr(declared: 100, value: 7)).status))
    }

    /// BATCH_FORGET and REMOVEMAPPING: the count must describe exactly the 16-byte entries that
    /// follow, including counts whose ×16 wraps around in 32 bits (0x1000_0001 × 16 = 16 mod 2³²).
    @Test(arguments: [FUSEOpcode.batchForget, .removeMapping])
    func entryCountMustMatch(opcode: FUSEOpcode) {
        let fixed = kernelArgumentSize(opcode)
        func request(count: UInt32, entries: Int) -> [UInt8] {
            let header = le(count) + [UInt8](repeating: 0, count: fixed - 4)
            return TestRequest(opcode, args: header + [UInt8](repeating: 0x11, count: 16 * entries)).bytes
        }
        let two = decode(request(count: 2, entries: 2))
        #expect(two.status == .valid)
        #expect(two.payload.count == 32)
        #expect(decode(request(count: 3, entries: 2)).status == .invalid(.invalid))
        #expect(decode(request(count: 1, entries: 2)).status == .invalid(.invalid))
        #expect(decode(request(count: 0xFFFF_FFFF, entries: 2)).status == .invalid(.invalid))
        #expect(decode(request(count: 0x1000_0001, entries: 1)).status == .invalid(.invalid))
        #expect(decode(request(count: 0x1000_0002, entries: 2)).status == .invalid(.invalid))
        #expect(decode(request(count: 0x8000_0000, entries: 0)).status == .invalid(.invalid))
        // Entries must be whole.
        var partial = TestRequest(opcode, args: le(UInt32(1)) + [UInt8](repeating: 0, count: fixed - 4 + 15))
        partial.unique = 77
        #expect(decode(partial.bytes).status == .invalid(.invalid))
    }

    /// Extensions (total_extlen, in 8-byte units) trail the arguments and are skipped; a length
    /// larger than what follows the header is refused.
    @Test func extensionLength() throws {
        var tooLong = TestRequest.valid(.getattr)
        tooLong.totalExtLen = 3  // 24 bytes > 16 bytes of arguments
        #expect(decode(tooLong.bytes).status == .invalid(.invalid))
        tooLong.totalExtLen = 0xFFFF
        #expect(decode(tooLong.bytes).status == .invalid(.invalid))
        // Extensions that eat the arguments leave a struct that is too short.
        var eatsArgs = TestRequest.valid(.getattr)
        eatsArgs.totalExtLen = 2
        #expect(decode(eatsArgs.bytes).status == .invalid(.invalid))
        // A real 8-byte extension after CREATE's name: skipped, not mistaken for name bytes.
        var create = TestRequest.valid(.create)
        create.args += [8, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]
        create.totalExtLen = 1
        let result = decode(create.bytes)
        try #require(result.status == .valid)
        #expect(result.name == TestRequest.entryName)
        #expect(Int(result.request.argsLength) == expectation(.create).argsLength)
    }

    // MARK: 5. Hostile names

    /// Entry names are single path components: '/' would let a guest walk out of a directory in a
    /// path-based backend; a NUL inside would make the backend see a different name than we
    /// checked. ".." stays legal: the kernel looks it up for NFS export (fuse_get_parent).
    @Test(arguments: entryNameOpcodes)
    func hostileEntryNames(opcode: FUSEOpcode) {
        func status(_ region: [UInt8]) -> DecodeStatus {
            var request = TestRequest.valid(opcode)
            request.args = Array(request.args.prefix(kernelArgumentSize(opcode))) + region
            return decode(request.bytes).status
        }
        #expect(status(Array("a/b\0".utf8)) == .invalid(.invalid), "slash inside")
        #expect(status(Array("/\0".utf8)) == .invalid(.invalid), "slash alone")
        #expect(status(Array("../../etc/passwd\0".utf8)) == .invalid(.invalid), "path")
        #expect(status([0]) == .invalid(.invalid), "empty name")
        #expect(status(Array("hel\0lo\0".utf8)) == .invalid(.invalid), "NUL inside")
        #expect(status(Array("hello".utf8)) == .invalid(.invalid), "no NUL")
        #expect(status(Array("hello\0\0".utf8)) == .invalid(.invalid), "two NULs")
        #expect(status(Array("..\0".utf8)) == .valid, "dot-dot")
        #expect(status([0xFF, 0xFE, 0x80, 0]) == .valid, "names are bytes, not necessarily UTF-8")
    }

    @Test(arguments: [FUSEOpcode.rename, .rename2])
    func hostileRenameNames(opcode: FUSEOpcode) {
        func status(_ region: String) -> DecodeStatus {
            var request = TestRequest.valid(opcode)
            request.args = Array(request.args.prefix(kernelArgumentSize(opcode))) + Array(region.utf8)
            return decode(request.bytes).status
        }
        #expect(status("old\0new\0") == .valid)
        #expect(status("old\0new") == .invalid(.invalid), "missing second NUL")
        #expect(status("old\0") == .invalid(.invalid), "missing second name")
        #expect(status("old\0\0") == .invalid(.invalid), "empty second name")
        #expect(status("\0new\0") == .invalid(.invalid), "empty first name")
        #expect(status("o/d\0new\0") == .invalid(.invalid), "slash in old name")
        #expect(status("old\0n/w\0") == .invalid(.invalid), "slash in new name")
        #expect(status("old\0new\0x\0") == .invalid(.invalid), "third name")
        #expect(status("old\0ne\0w\0") == .invalid(.invalid), "NUL inside new name")
    }

    /// SYMLINK: the link name is a component, the target is a path and may contain '/'.
    @Test func hostileSymlinkNames() {
        func status(_ region: String) -> DecodeStatus {
            decode(TestRequest(.symlink, args: Array(region.utf8)).bytes).status
        }
        #expect(status("link\0/abs/target\0") == .valid)
        #expect(status("li/nk\0target\0") == .invalid(.invalid), "slash in link name")
        #expect(status("link\0\0") == .invalid(.invalid), "empty target")
        #expect(status("link\0target") == .invalid(.invalid), "unterminated target")
        #expect(status("link\0tar\0get\0") == .invalid(.invalid), "NUL inside target")
    }

    /// Xattr names are not path components: '/' is allowed. Empty or unterminated names are not.
    @Test(arguments: xattrNameOpcodes)
    func xattrNames(opcode: FUSEOpcode) throws {
        func decodeName(_ name: [UInt8]) -> DecodeResult {
            var request = TestRequest.valid(opcode)
            let value = opcode == .setxattr ? TestRequest.xattrValue : []
            request.args = Array(request.args.prefix(kernelArgumentSize(opcode))) + name + value
            return decode(request.bytes)
        }
        let slashed = decodeName(Array("trusted.overlay/x\0".utf8))
        try #require(slashed.status == .valid)
        #expect(slashed.name == Array("trusted.overlay/x".utf8))
        #expect(decodeName([0]).status == .invalid(.invalid), "empty name")
        #expect(decodeName(Array("user.a\0b\0".utf8)).status == .invalid(.invalid), "NUL inside")
        if opcode != .setxattr {  // for SETXATTR the value would end the name region anyway
            #expect(decodeName(Array("user.a".utf8)).status == .invalid(.invalid), "no NUL")
        }
    }

    // MARK: 6. Unknown opcodes and INIT sizes

    /// Unused numbers (0, 7, 19), numbers past our table (54), CUSE_INIT (4096) and the largest
    /// value: answered with ENOSYS, whatever the arguments, as libfuse does.
    @Test(arguments: [UInt32(0), 7, 19, 54, 4096, UInt32.max])
    func unknownOpcodes(raw: UInt32) {
        for args in [[], [UInt8](repeating: 0, count: 16), Array("name\0".utf8)] {
            var request = TestRequest(opcodeRaw: raw, args: args)
            request.unique = 0xDEAD
            let result = decode(request.bytes)
            #expect(result.status == .invalid(.notImplemented), "\(args.count) argument bytes")
            #expect(result.request.unique == 0xDEAD)
            #expect(result.request.opcodeRaw == raw)
        }
    }

    /// fuse_init_in is 16 bytes from kernels before 7.36 and 64 from 7.36 on; nothing else.
    @Test func initArgumentSizes() throws {
        let old = decode(TestRequest(.`init`, args: le(UInt32(7)) + le(UInt32(31)) + le(UInt32(65536)) + le(UInt32(1))).bytes)
        try #require(old.status == .valid)
        #expect(old.request.argsLength == 16)
        #expect(decode(TestRequest.valid(.`init`).bytes).status == .valid)
        for size in [0, 8, 15, 17, 32, 63, 65, 128] {
            let args = Array((le(UInt32(7)) + le(UInt32(38)) + [UInt8](repeating: 0, count: 128)).prefix(size))
            #expect(decode(TestRequest(.`init`, args: args).bytes).status == .invalid(.invalid), "\(size) bytes")
        }
    }

    // MARK: 7. SETXATTR_EXT

    /// With FUSE_SETXATTR_EXT negotiated the kernel sends the full 16-byte fuse_setxattr_in
    /// (size, flags, setxattr_flags, padding) before the name.
    @Test func extendedSetxattr() throws {
        let extendedSize = MemoryLayout<fuse_setxattr_in>.size
        #expect(extendedSize == 16)
        let args = le(UInt32(TestRequest.xattrValue.count)) + le(UInt32(1)) + le(UInt32(1)) + le(UInt32(0))
            + TestRequest.xattrName + [0] + TestRequest.xattrValue
        let bytes = TestRequest(.setxattr, args: args).bytes
        let extended = decode(bytes, options: DecoderOptions(setxattrExtended: true))
        try #require(extended.status == .valid)
        #expect(Int(extended.request.argsLength) == extendedSize + TestRequest.xattrName.count + 1)
        #expect(extended.name == TestRequest.xattrName)
        #expect(extended.payload == TestRequest.xattrValue)
        let setxattrFlags = MemoryLayout<fuse_setxattr_in>.offset(of: \fuse_setxattr_in.setxattr_flags)!
        #expect(extended.args.loadLE(UInt32.self, at: setxattrFlags) == 1)
        // Read with the 8-byte compat struct, setxattr_flags would land in the name: refused.
        #expect(decode(bytes).status == .invalid(.invalid))
        // And it survives segmentation like everything else.
        for cut in 1..<bytes.count {
            #expect(decode(bytes, cuts: [cut], options: DecoderOptions(setxattrExtended: true)) == extended)
        }
    }
}

// MARK: - Opcode numbers

extension DecoderTests {
    @Suite("FUSE opcodes")
    struct Opcodes {
        /// The wire numbers must be the kernel's: a wrong number dispatches one operation as another.
        @Test func wireValuesMatchKernelEnum() {
            let kernel: [FUSEOpcode: UInt32] = [
                .lookup: FUSE_LOOKUP.rawValue, .forget: FUSE_FORGET.rawValue, .getattr: FUSE_GETATTR.rawValue,
                .setattr: FUSE_SETATTR.rawValue, .readlink: FUSE_READLINK.rawValue, .symlink: FUSE_SYMLINK.rawValue,
                .mknod: FUSE_MKNOD.rawValue, .mkdir: FUSE_MKDIR.rawValue, .unlink: FUSE_UNLINK.rawValue,
                .rmdir: FUSE_RMDIR.rawValue, .rename: FUSE_RENAME.rawValue, .link: FUSE_LINK.rawValue,
                .open: FUSE_OPEN.rawValue, .read: FUSE_READ.rawValue, .write: FUSE_WRITE.rawValue,
                .statfs: FUSE_STATFS.rawValue, .release: FUSE_RELEASE.rawValue, .fsync: FUSE_FSYNC.rawValue,
                .setxattr: FUSE_SETXATTR.rawValue, .getxattr: FUSE_GETXATTR.rawValue, .listxattr: FUSE_LISTXATTR.rawValue,
                .removexattr: FUSE_REMOVEXATTR.rawValue, .flush: FUSE_FLUSH.rawValue, .`init`: FUSE_INIT.rawValue,
                .opendir: FUSE_OPENDIR.rawValue, .readdir: FUSE_READDIR.rawValue, .releasedir: FUSE_RELEASEDIR.rawValue,
                .fsyncdir: FUSE_FSYNCDIR.rawValue, .getlk: FUSE_GETLK.rawValue, .setlk: FUSE_SETLK.rawValue,
                .setlkw: FUSE_SETLKW.rawValue, .access: FUSE_ACCESS.rawValue, .create: FUSE_CREATE.rawValue,
                .interrupt: FUSE_INTERRUPT.rawValue, .bmap: FUSE_BMAP.rawValue, .destroy: FUSE_DESTROY.rawValue,
                .ioctl: FUSE_IOCTL.rawValue, .poll: FUSE_POLL.rawValue, .notifyReply: FUSE_NOTIFY_REPLY.rawValue,
                .batchForget: FUSE_BATCH_FORGET.rawValue, .fallocate: FUSE_FALLOCATE.rawValue,
                .readdirplus: FUSE_READDIRPLUS.rawValue, .rename2: FUSE_RENAME2.rawValue, .lseek: FUSE_LSEEK.rawValue,
                .copyFileRange: FUSE_COPY_FILE_RANGE.rawValue, .setupMapping: FUSE_SETUPMAPPING.rawValue,
                .removeMapping: FUSE_REMOVEMAPPING.rawValue, .syncfs: FUSE_SYNCFS.rawValue, .tmpfile: FUSE_TMPFILE.rawValue,
                // Newer than the 7.38 header: FUSE_STATX (7.39) and FUSE_COPY_FILE_RANGE_64 (7.45).
                .statx: 52, .copyFileRange64: 53,
            ]
            #expect(kernel.count == FUSEOpcode.allCases.count)
            for opcode in FUSEOpcode.allCases {
                #expect(opcode.rawValue == kernel[opcode], "\(opcode.wireName)")
            }
            #expect(FUSEOpcode.rawValueMax == FUSEOpcode.allCases.map(\.rawValue).max())
        }

        /// Only the three one-way opcodes go without a reply; answering them would corrupt the queue.
        @Test func oneWayOpcodes() {
            let oneWay = Set(FUSEOpcode.allCases.filter { !$0.expectsReply })
            #expect(oneWay == [.forget, .batchForget, .notifyReply])
        }

        /// The decoder's table of fixed argument sizes against the kernel's structs.
        @Test(arguments: FUSEOpcode.allCases)
        func fixedSizeMatchesKernelStruct(opcode: FUSEOpcode) {
            let expected = opcode == .`init` ? InitLayout.inSizeMin : kernelArgumentSize(opcode)
            #expect(OpcodeTable.fixedSize(of: opcode.rawValue) == expected)
        }
    }
}
