// A decoded request: the validated header and argument bytes, copied out of guest-shared memory
// into engine-private memory, so a guest rewriting its buffers mid-request cannot change what was
// checked (no double fetch). Bulk payloads (WRITE data, xattr values) stay in place, as positions in
// the segment list.

/// The validated fields of one request. Lives in the request's slot.
@frozen
public struct DecodedRequest: Sendable {
    public var length: UInt32 = 0
    public var opcodeRaw: UInt32 = 0
    public var unique: UInt64 = 0
    public var nodeID: UInt64 = 0
    public var uid: UInt32 = 0
    public var gid: UInt32 = 0
    public var pid: UInt32 = 0
    /// Bytes of fixed struct + names in the args buffer.
    public var argsLength: UInt32 = 0
    /// First name (entry name, old name, xattr name) in the args buffer; length without NUL.
    public var name1Offset: UInt16 = 0
    public var name1Length: UInt16 = 0
    /// Second name (new name, symlink target); length without NUL.
    public var name2Offset: UInt16 = 0
    public var name2Length: UInt16 = 0
    /// Where the in-place payload starts in the readable segments, and its length.
    public var payloadPosition: SegmentPosition = .init(index: 0, offset: 0)
    public var payloadLength: UInt32 = 0

    @inlinable
    public init() {}

    @inlinable
    public var opcode: FUSEOpcode? { FUSEOpcode(rawValue: opcodeRaw) }
}

/// What decoding concluded.
@frozen
public enum DecodeStatus: Equatable, Sendable {
    /// Every field is valid; the request can be dispatched.
    case valid
    /// The header is readable (so `unique` is known) but the request is not acceptable:
    /// answer with this errno (or drop it, for the one-way opcodes).
    case invalid(FUSEErrno)
    /// Not even a whole header: there is no `unique` to answer to.
    case unanswerable
}

/// A read-only view of a decoded request and its argument bytes, handed to backends.
@frozen
public struct FUSERequest {
    public let header: UnsafePointer<DecodedRequest>
    public let args: UnsafeRawPointer
    public let readable: UnsafePointer<Segment>
    public let readableCount: Int

    @inlinable
    public init(header: UnsafePointer<DecodedRequest>, args: UnsafeRawPointer,
                readable: UnsafePointer<Segment>, readableCount: Int) {
        self.header = header
        self.args = args
        self.readable = readable
        self.readableCount = readableCount
    }

    @inlinable public var opcodeRaw: UInt32 { header.pointee.opcodeRaw }
    @inlinable public var unique: UInt64 { header.pointee.unique }
    @inlinable public var nodeID: UInt64 { header.pointee.nodeID }
    @inlinable public var uid: UInt32 { header.pointee.uid }
    @inlinable public var gid: UInt32 { header.pointee.gid }
    @inlinable public var pid: UInt32 { header.pointee.pid }

    /// A little-endian field of the fixed argument struct. The decoder has checked the struct is
    /// there in full, so an offset inside the opcode's struct is always in bounds.
    @inlinable
    public func argument<T: FixedWidthInteger>(at offset: Int, as: T.Type = T.self) -> T {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= Int(header.pointee.argsLength))
        return T(littleEndian: args.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// The fixed argument struct as the kernel's own C type from `linux/fuse.h` (`fuse_setattr_in`,
    /// `fuse_copy_file_range_in`, …): fields by name, never by offset. The decoder checked that the
    /// opcode's struct is there in full; the size check keeps a wrong type from reading past it.
    /// (The wire is little-endian and so are the hosts this engine runs on.)
    @inlinable
    public func arguments<T: BitwiseCopyable>(as type: T.Type) -> T {
        precondition(MemoryLayout<T>.size <= Int(header.pointee.argsLength), "argument struct larger than the request's")
        return args.loadUnaligned(as: T.self)
    }

    /// The first name (entry name, old name, xattr name): valid UTF-8 is not guaranteed, only
    /// 1...255 bytes with no NUL (and no '/' for entry names).
    @inlinable
    public var name: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: args + Int(header.pointee.name1Offset), count: Int(header.pointee.name1Length))
    }

    /// The second name (new name of a rename, target of a symlink).
    @inlinable
    public var secondName: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: args + Int(header.pointee.name2Offset), count: Int(header.pointee.name2Length))
    }

    /// A cursor over the in-place payload (WRITE data, xattr value, BATCH_FORGET entries).
    @inlinable
    public var payload: SegmentCursor {
        SegmentCursor(segments: readable, count: readableCount, position: header.pointee.payloadPosition)
    }

    @inlinable public var payloadLength: Int { Int(header.pointee.payloadLength) }
}
