import CDPFS

/// How an opcode's arguments are laid out after `fuse_in_header` (virtio-fs-protocol.md §5.2).
public enum ArgumentShape: UInt8, Sendable {
    /// No arguments at all (READLINK, STATFS, DESTROY).
    case empty = 0
    /// Exactly the fixed struct.
    case fixed = 1
    /// The fixed struct, then one `name\0` filling the rest.
    case name = 2
    /// The fixed struct, then `old\0new\0` (RENAME, RENAME2).
    case twoNames = 3
    /// `name\0target\0` (SYMLINK).
    case nameAndTarget = 4
    /// The fixed struct, then an in-place payload (WRITE, NOTIFY_REPLY, IOCTL).
    case payload = 5
    /// The fixed struct, `name\0`, then an in-place value (SETXATTR).
    case nameAndValue = 6
    /// The fixed struct with a count, then count × 16-byte entries in place (BATCH_FORGET, REMOVEMAPPING).
    case entries = 7
    /// `fuse_init_in`: 16 bytes from old kernels, 64 from 7.36 on.
    case initArgs = 8
    /// Not an opcode we know: answered with ENOSYS.
    case unknown = 0xFF
}

/// Static per-opcode tables, indexed by the opcode number; one load per lookup.
public enum OpcodeTable {
    public static let count = 54

    // Shape per opcode number 0...53 (0, 7 and 19 are unused numbers).
    @usableFromInline
    static let shapes: InlineArray<54, UInt8> = [
        0xFF, 2, 1, 1, 1, 0, 4, 0xFF, 2, 2,   // 0..9: -, LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK, -, MKNOD, MKDIR
        2, 2, 3, 2, 1, 1, 5, 0, 1, 0xFF,      // 10..19: UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE, STATFS, RELEASE, -
        1, 6, 2, 1, 2, 1, 8, 1, 1, 1,         // 20..29: FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR
        1, 1, 1, 1, 1, 2, 1, 1, 0, 5,         // 30..39: FSYNCDIR, GETLK, SETLK, SETLKW, ACCESS, CREATE, INTERRUPT, BMAP, DESTROY, IOCTL
        1, 5, 7, 1, 1, 3, 1, 1, 1, 7,         // 40..49: POLL, NOTIFY_REPLY, BATCH_FORGET, FALLOCATE, READDIRPLUS, RENAME2, LSEEK, COPY_FILE_RANGE, SETUPMAPPING, REMOVEMAPPING
        1, 2, 1, 1,                           // 50..53: SYNCFS, TMPFILE, STATX, COPY_FILE_RANGE_64
    ]

    // Size of the fixed argument struct per opcode number (SETXATTR: the 8-byte compat form).
    @usableFromInline
    static let fixedSizes: InlineArray<54, UInt8> = [
        0, 0, 8, 16, 88, 0, 0, 0, 16, 8,
        0, 0, 8, 8, 8, 40, 40, 0, 24, 0,
        16, 8, 8, 8, 0, 24, 16, 8, 40, 24,
        16, 48, 48, 48, 8, 16, 8, 16, 0, 32,
        24, 40, 8, 32, 40, 16, 24, 56, 40, 4,
        8, 16, 24, 56,
    ]

    @inlinable
    @_noAllocation @_noLocks
    public static func shape(of opcodeRaw: UInt32) -> ArgumentShape {
        guard opcodeRaw < UInt32(count) else { return .unknown }
        // Read-only data at -O; the wrapper only tells the checker a debug build may initialise it lazily.
        let raw = _unsafePerformance { shapes[Int(opcodeRaw)] }
        return ArgumentShape(rawValue: raw) ?? .unknown
    }

    @inlinable
    @_noAllocation @_noLocks
    public static func fixedSize(of opcodeRaw: UInt32) -> Int {
        guard opcodeRaw < UInt32(count) else { return 0 }
        return Int(_unsafePerformance { fixedSizes[Int(opcodeRaw)] })
    }
}

/// Decodes one request from its readable segments. Copies the header, the fixed arguments and the
/// names into engine memory (`request`, `args`), checks every length against the header and the
/// segments, and records where an in-place payload starts.
///
/// - Parameters:
///   - readable: the device-readable segments of the request, in order.
///   - readableBytes: their total length, as the transport counted it.
///   - args: engine memory of at least `FUSELimits.argsBytesMax` bytes.
@inlinable
@_noAllocation @_noLocks
public func decodeRequest(
    readable: UnsafePointer<Segment>, readableCount: Int, readableBytes: Int,
    options: DecoderOptions,
    into request: UnsafeMutablePointer<DecodedRequest>, args: UnsafeMutableRawPointer
) -> DecodeStatus {
    precondition(readableCount >= 0 && readableBytes >= 0)
    var cursor = SegmentCursor(segments: readable, count: readableCount)
    // Each header field is read from the request exactly once, into engine memory. Linux puts the
    // whole header in the first descriptor, so it is read in place; a header split across
    // segments is first gathered through the args buffer (at least 40 bytes).
    let header: UnsafeRawPointer
    if readableCount > 0 && readable[0].length >= UInt32(InHeaderLayout.size) {
        header = UnsafeRawPointer(readable[0].base)
        _ = cursor.skip(byteCount: InHeaderLayout.size)
    } else {
        guard cursor.read(into: args, byteCount: InHeaderLayout.size) == InHeaderLayout.size else {
            return .unanswerable
        }
        header = UnsafeRawPointer(args)
    }
    var decoded = DecodedRequest()
    decoded.length = UInt32(littleEndian: header.loadUnaligned(fromByteOffset: InHeaderLayout.len, as: UInt32.self))
    decoded.opcodeRaw = UInt32(littleEndian: header.loadUnaligned(fromByteOffset: InHeaderLayout.opcode, as: UInt32.self))
    decoded.unique = UInt64(littleEndian: header.loadUnaligned(fromByteOffset: InHeaderLayout.unique, as: UInt64.self))
    decoded.nodeID = UInt64(littleEndian: header.loadUnaligned(fromByteOffset: InHeaderLayout.nodeID, as: UInt64.self))
    decoded.uid = UInt32(littleEndian: header.loadUnaligned(fromByteOffset: InHeaderLayout.uid, as: UInt32.self))
    decoded.gid = UInt32(littleEndian: header.loadUnaligned(fromByteOffset: InHeaderLayout.gid, as: UInt32.self))
    decoded.pid = UInt32(littleEndian: header.loadUnaligned(fromByteOffset: InHeaderLayout.pid, as: UInt32.self))
    let extensionBytes = Int(UInt16(littleEndian: header.loadUnaligned(fromByteOffset: InHeaderLayout.totalExtLen, as: UInt16.self))) * 8
    request.pointee = decoded

    let length = Int(decoded.length)
    // The header's length must describe exactly the bytes the transport delivered: a length that
    // claims more (or less) than the segments hold is a lie, refused before anything else is read.
    guard length >= InHeaderLayout.size, length == readableBytes else { return .invalid(.invalid) }
    guard length <= FUSELimits.requestBytesMax else { return .invalid(.invalid) }
    guard extensionBytes <= length - InHeaderLayout.size else { return .invalid(.invalid) }
    // Extensions (security context, supplementary groups) trail the arguments; we negotiate
    // neither, so they are skipped, never interpreted.
    let argsBytes = length - InHeaderLayout.size - extensionBytes

    let shape = OpcodeTable.shape(of: decoded.opcodeRaw)
    var fixedSize = OpcodeTable.fixedSize(of: decoded.opcodeRaw)
    if decoded.opcodeRaw == FUSEOpcode.setxattr.rawValue && options.setxattrExtended { fixedSize = 16 }

    switch shape {
    case .unknown:
        return .invalid(.notImplemented)
    case .empty:
        guard argsBytes == 0 else { return .invalid(.invalid) }
        request.pointee.argsLength = 0
        return .valid
    case .fixed:
        guard argsBytes == fixedSize else { return .invalid(.invalid) }
        return copyArguments(&cursor, byteCount: fixedSize, request: request, args: args)
    case .initArgs:
        // Old kernels send 16 bytes, 7.36+ send 64; anything in between or beyond is not a kernel.
        guard argsBytes == InitLayout.inSizeMin || argsBytes == InitLayout.inSize else { return .invalid(.invalid) }
        return copyArguments(&cursor, byteCount: argsBytes, request: request, args: args)
    case .name:
        let isXattrName = decoded.opcodeRaw == FUSEOpcode.getxattr.rawValue
            || decoded.opcodeRaw == FUSEOpcode.removexattr.rawValue
        return copyNames(&cursor, fixedSize: fixedSize, argsBytes: argsBytes, names: 1,
                         secondIsTarget: false, slashAllowed: isXattrName, request: request, args: args)
    case .twoNames:
        return copyNames(&cursor, fixedSize: fixedSize, argsBytes: argsBytes, names: 2,
                         secondIsTarget: false, slashAllowed: false, request: request, args: args)
    case .nameAndTarget:
        return copyNames(&cursor, fixedSize: 0, argsBytes: argsBytes, names: 2,
                         secondIsTarget: true, slashAllowed: false, request: request, args: args)
    case .payload:
        guard argsBytes >= fixedSize else { return .invalid(.invalid) }
        let status = copyArguments(&cursor, byteCount: fixedSize, request: request, args: args)
        guard case .valid = status else { return status }
        let payloadBytes = argsBytes - fixedSize
        // The payload's size is declared in the fixed struct and must be exactly what follows:
        // fuse_write_in.size (WRITE, within max_write), fuse_notify_retrieve_in.size
        // (NOTIFY_REPLY), fuse_ioctl_in.in_size (IOCTL).
        let declaredOffset = decoded.opcodeRaw == FUSEOpcode.ioctl.rawValue ? 24 : 16
        let declared = Int(UInt32(littleEndian: args.loadUnaligned(fromByteOffset: declaredOffset, as: UInt32.self)))
        if decoded.opcodeRaw == FUSEOpcode.write.rawValue && declared > Int(options.writeBytesMax) {
            return .invalid(.fileTooLarge)
        }
        guard declared == payloadBytes else { return .invalid(.invalid) }
        request.pointee.payloadPosition = cursor.position
        request.pointee.payloadLength = UInt32(payloadBytes)
        return .valid
    case .nameAndValue:
        // SETXATTR: fuse_setxattr_in.size (offset 0) is the value length after name\0.
        guard argsBytes >= fixedSize + 2 else { return .invalid(.invalid) }
        let status = copyArguments(&cursor, byteCount: fixedSize, request: request, args: args)
        guard case .valid = status else { return status }
        let valueBytes = Int(UInt32(littleEndian: args.loadUnaligned(fromByteOffset: 0, as: UInt32.self)))
        guard valueBytes <= FUSELimits.xattrValueBytesMax else { return .invalid(.range) }
        guard valueBytes <= argsBytes - fixedSize - 2 else { return .invalid(.invalid) }
        let nameRegion = argsBytes - fixedSize - valueBytes
        let nameStatus = copyNames(&cursor, fixedSize: fixedSize, argsBytes: fixedSize + nameRegion, names: 1,
                                   secondIsTarget: false, slashAllowed: true, request: request, args: args,
                                   fixedAlreadyCopied: true)
        guard case .valid = nameStatus else { return nameStatus }
        request.pointee.payloadPosition = cursor.position
        request.pointee.payloadLength = UInt32(valueBytes)
        return .valid
    case .entries:
        guard argsBytes >= fixedSize else { return .invalid(.invalid) }
        let status = copyArguments(&cursor, byteCount: fixedSize, request: request, args: args)
        guard case .valid = status else { return status }
        let count = Int(UInt32(littleEndian: args.loadUnaligned(fromByteOffset: 0, as: UInt32.self)))
        // The count must describe exactly the entries that follow (16 bytes each).
        guard count.multipliedReportingOverflow(by: 16).partialValue == argsBytes - fixedSize,
              count <= (argsBytes - fixedSize) / 16 else { return .invalid(.invalid) }
        request.pointee.payloadPosition = cursor.position
        request.pointee.payloadLength = UInt32(argsBytes - fixedSize)
        return .valid
    }
}

@inlinable
@_noAllocation @_noLocks
func copyArguments(
    _ cursor: inout SegmentCursor, byteCount: Int,
    request: UnsafeMutablePointer<DecodedRequest>, args: UnsafeMutableRawPointer
) -> DecodeStatus {
    precondition(byteCount <= FUSELimits.argsBytesMax)
    // The header's length already matched the segments, so a short read here cannot happen;
    // checking again costs nothing and keeps this function safe on its own.
    guard cursor.read(into: args, byteCount: byteCount) == byteCount else { return .invalid(.invalid) }
    request.pointee.argsLength = UInt32(byteCount)
    return .valid
}

/// Copies the fixed struct (unless already copied) and then one or two NUL-terminated names that
/// must fill the argument region exactly.
@inlinable
@_noAllocation @_noLocks
func copyNames(
    _ cursor: inout SegmentCursor, fixedSize: Int, argsBytes: Int, names: Int,
    secondIsTarget: Bool, slashAllowed: Bool,
    request: UnsafeMutablePointer<DecodedRequest>, args: UnsafeMutableRawPointer,
    fixedAlreadyCopied: Bool = false
) -> DecodeStatus {
    precondition(names == 1 || names == 2)
    let namesBytes = argsBytes - fixedSize
    guard namesBytes >= 2 * names else { return .invalid(.invalid) }
    let namesBytesMax = names == 1
        ? FUSELimits.nameBytesMax + 1
        : (secondIsTarget ? FUSELimits.nameBytesMax + FUSELimits.symlinkTargetBytesMax + 2
                          : 2 * (FUSELimits.nameBytesMax + 1))
    guard namesBytes <= namesBytesMax else { return .invalid(.nameTooLong) }
    let total = fixedSize + namesBytes
    precondition(total <= FUSELimits.argsBytesMax)
    if !fixedAlreadyCopied {
        guard cursor.read(into: args, byteCount: total) == total else { return .invalid(.invalid) }
    } else {
        guard cursor.read(into: args + fixedSize, byteCount: namesBytes) == namesBytes else { return .invalid(.invalid) }
    }
    request.pointee.argsLength = UInt32(total)

    // First name: from fixedSize up to its NUL.
    let bytes = args.assumingMemoryBound(to: UInt8.self)
    var index = fixedSize
    while index < total && bytes[index] != 0 {
        if bytes[index] == UInt8(ascii: "/") && !slashAllowed { return .invalid(.invalid) }
        index += 1
    }
    guard index < total else { return .invalid(.invalid) }
    let firstLength = index - fixedSize
    guard firstLength > 0 else { return .invalid(.invalid) }
    guard firstLength <= FUSELimits.nameBytesMax else { return .invalid(.nameTooLong) }
    request.pointee.name1Offset = UInt16(fixedSize)
    request.pointee.name1Length = UInt16(firstLength)
    index += 1
    if names == 1 {
        // The single name's NUL must be the last argument byte: nothing may trail it.
        return index == total ? .valid : .invalid(.invalid)
    }
    let secondStart = index
    while index < total && bytes[index] != 0 {
        if bytes[index] == UInt8(ascii: "/") && !secondIsTarget { return .invalid(.invalid) }
        index += 1
    }
    guard index == total - 1 else { return .invalid(.invalid) }
    let secondLength = index - secondStart
    guard secondLength > 0 else { return .invalid(.invalid) }
    let secondMax = secondIsTarget ? FUSELimits.symlinkTargetBytesMax : FUSELimits.nameBytesMax
    guard secondLength <= secondMax else { return .invalid(.nameTooLong) }
    request.pointee.name2Offset = UInt16(secondStart)
    request.pointee.name2Length = UInt16(secondLength)
    return .valid
}
