// The kernel's side of the wire: lays out requests as Linux's FUSE client does. The loopback driver,
// the load generator and the tests use it to play the guest; the engine itself never encodes requests.

public enum RequestEncoder {
    /// Writes `fuse_in_header` for a request of `length` bytes in total.
    @inlinable
    public static func header(into buffer: UnsafeMutableRawPointer, length: Int, opcode: FUSEOpcode, unique: UInt64,
                              nodeID: UInt64, uid: UInt32 = 0, gid: UInt32 = 0, pid: UInt32 = 1) {
        precondition(length >= InHeaderLayout.size && length <= Int(UInt32.max))
        buffer.storeBytes(of: UInt32(length).littleEndian, toByteOffset: InHeaderLayout.len, as: UInt32.self)
        buffer.storeBytes(of: opcode.rawValue.littleEndian, toByteOffset: InHeaderLayout.opcode, as: UInt32.self)
        buffer.storeBytes(of: unique.littleEndian, toByteOffset: InHeaderLayout.unique, as: UInt64.self)
        buffer.storeBytes(of: nodeID.littleEndian, toByteOffset: InHeaderLayout.nodeID, as: UInt64.self)
        buffer.storeBytes(of: uid.littleEndian, toByteOffset: InHeaderLayout.uid, as: UInt32.self)
        buffer.storeBytes(of: gid.littleEndian, toByteOffset: InHeaderLayout.gid, as: UInt32.self)
        buffer.storeBytes(of: pid.littleEndian, toByteOffset: InHeaderLayout.pid, as: UInt32.self)
        buffer.storeBytes(of: UInt32(0), toByteOffset: InHeaderLayout.totalExtLen, as: UInt32.self)
    }

    /// Rewrites only `unique`, for a request template sent again.
    @inlinable
    public static func setUnique(_ unique: UInt64, in buffer: UnsafeMutableRawPointer) {
        buffer.storeBytes(of: unique.littleEndian, toByteOffset: InHeaderLayout.unique, as: UInt64.self)
    }

    /// FUSE_INIT as a 7.`minor` kernel sends it (64-byte `fuse_init_in`). Returns the length.
    @inlinable
    public static func initRequest(into buffer: UnsafeMutableRawPointer, unique: UInt64, major: UInt32 = 7,
                                   minor: UInt32 = 38, maxReadahead: UInt32 = 1 << 17, flags: UInt64 = 0x3FFF_FFFF | (1 << 30)) -> Int {
        let length = InHeaderLayout.size + InitLayout.inSize
        header(into: buffer, length: length, opcode: .`init`, unique: unique, nodeID: 0)
        let args = buffer + InHeaderLayout.size
        args.initializeMemory(as: UInt8.self, repeating: 0, count: InitLayout.inSize)
        args.storeBytes(of: major.littleEndian, toByteOffset: InitLayout.major, as: UInt32.self)
        args.storeBytes(of: minor.littleEndian, toByteOffset: InitLayout.minor, as: UInt32.self)
        args.storeBytes(of: maxReadahead.littleEndian, toByteOffset: InitLayout.maxReadahead, as: UInt32.self)
        args.storeBytes(of: UInt32(truncatingIfNeeded: flags).littleEndian, toByteOffset: InitLayout.flags, as: UInt32.self)
        args.storeBytes(of: UInt32(truncatingIfNeeded: flags >> 32).littleEndian, toByteOffset: InitLayout.flags2In, as: UInt32.self)
        return length
    }

    /// FUSE_GETATTR (`fuse_getattr_in` with no file handle). Returns the length.
    @inlinable
    public static func getattr(into buffer: UnsafeMutableRawPointer, unique: UInt64, nodeID: UInt64) -> Int {
        let length = InHeaderLayout.size + 16
        header(into: buffer, length: length, opcode: .getattr, unique: unique, nodeID: nodeID)
        (buffer + InHeaderLayout.size).initializeMemory(as: UInt8.self, repeating: 0, count: 16)
        return length
    }

    /// FUSE_STATFS (no arguments). Returns the length.
    @inlinable
    public static func statfs(into buffer: UnsafeMutableRawPointer, unique: UInt64, nodeID: UInt64 = 1) -> Int {
        header(into: buffer, length: InHeaderLayout.size, opcode: .statfs, unique: unique, nodeID: nodeID)
        return InHeaderLayout.size
    }

    /// FUSE_LOOKUP of `name` in `parent`. Returns the length.
    @inlinable
    public static func lookup(into buffer: UnsafeMutableRawPointer, unique: UInt64, parent: UInt64,
                              name: UnsafeRawBufferPointer) -> Int {
        precondition(name.count > 0)
        let length = InHeaderLayout.size + name.count + 1
        header(into: buffer, length: length, opcode: .lookup, unique: unique, nodeID: parent)
        (buffer + InHeaderLayout.size).copyMemory(from: name.baseAddress!, byteCount: name.count)
        buffer.storeBytes(of: UInt8(0), toByteOffset: InHeaderLayout.size + name.count, as: UInt8.self)
        return length
    }

    /// FUSE_READ / READDIR / READDIRPLUS (`fuse_read_in`). Returns the length.
    @inlinable
    public static func read(into buffer: UnsafeMutableRawPointer, opcode: FUSEOpcode = .read, unique: UInt64,
                            nodeID: UInt64, fileHandle: UInt64, offset: UInt64, size: UInt32) -> Int {
        let length = InHeaderLayout.size + 40
        header(into: buffer, length: length, opcode: opcode, unique: unique, nodeID: nodeID)
        let args = buffer + InHeaderLayout.size
        args.initializeMemory(as: UInt8.self, repeating: 0, count: 40)
        args.storeBytes(of: fileHandle.littleEndian, toByteOffset: 0, as: UInt64.self)
        args.storeBytes(of: offset.littleEndian, toByteOffset: 8, as: UInt64.self)
        args.storeBytes(of: size.littleEndian, toByteOffset: 16, as: UInt32.self)
        return length
    }

    /// FUSE_WRITE header and `fuse_write_in`; the caller places `size` payload bytes at offset 80.
    /// Returns the total length including the payload.
    @inlinable
    public static func write(into buffer: UnsafeMutableRawPointer, unique: UInt64, nodeID: UInt64, fileHandle: UInt64,
                             offset: UInt64, size: UInt32) -> Int {
        let length = InHeaderLayout.size + 40 + Int(size)
        header(into: buffer, length: length, opcode: .write, unique: unique, nodeID: nodeID)
        let args = buffer + InHeaderLayout.size
        args.initializeMemory(as: UInt8.self, repeating: 0, count: 40)
        args.storeBytes(of: fileHandle.littleEndian, toByteOffset: 0, as: UInt64.self)
        args.storeBytes(of: offset.littleEndian, toByteOffset: 8, as: UInt64.self)
        args.storeBytes(of: size.littleEndian, toByteOffset: 16, as: UInt32.self)
        return length
    }

    /// Where a WRITE's payload starts.
    @inlinable public static var writePayloadOffset: Int { InHeaderLayout.size + 40 }
}
