// Replies are encoded in place: the out header and fixed reply structs are staged in engine memory
// and copied once into the request's device-writable segments; bulk data (READ) is written straight
// into those segments. The reply length is exact, error replies are exactly 16 bytes, and the
// one-way opcodes get no reply at all (virtio-fs-protocol.md §4.2).

extension OpcodeTable {
    // Smallest reply body each opcode's reply needs; requests whose writable part cannot hold it
    // are refused before dispatch (0 = header only or variable).
    @usableFromInline
    static let replyBodyBytesMin: InlineArray<54, UInt16> = [
        0, 128, 0, 104, 104, 0, 128, 0, 128, 128,
        0, 0, 0, 128, 16, 0, 8, 80, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 16, 0, 0,
        0, 24, 0, 0, 0, 144, 0, 8, 0, 0,
        8, 0, 0, 0, 0, 0, 8, 8, 0, 0,
        0, 144, 288, 8,
    ]

    /// The smallest writable space (out header included) a request of this opcode must provide.
    @inlinable
    @_noAllocation @_noLocks
    public static func replyBytesMin(of opcodeRaw: UInt32) -> Int {
        guard opcodeRaw < UInt32(count) else { return OutHeaderLayout.size }
        return OutHeaderLayout.size + Int(_unsafePerformance { replyBodyBytesMin[Int(opcodeRaw)] })
    }
}

/// The reply to one request, written into its device-writable segments.
@frozen
public struct FUSEReply: @unchecked Sendable {
    public let writable: UnsafePointer<Segment>
    public let writableCount: Int
    public let writableBytes: Int
    /// Engine memory of `FUSELimits.replyStagingBytes` for the header and fixed structs.
    public let staging: UnsafeMutableRawPointer
    public let unique: UInt64
    /// Where the final reply length goes (the slot's record); 0 means "no reply".
    public let replyLength: UnsafeMutablePointer<UInt32>

    @inlinable
    public init(writable: UnsafePointer<Segment>, writableCount: Int, writableBytes: Int,
                staging: UnsafeMutableRawPointer, unique: UInt64, replyLength: UnsafeMutablePointer<UInt32>) {
        precondition(writableBytes >= 0 && writableCount >= 0)
        self.writable = writable
        self.writableCount = writableCount
        self.writableBytes = writableBytes
        self.staging = staging
        self.unique = unique
        self.replyLength = replyLength
    }

    /// Where a backend stages a reply body (after the 16-byte header).
    @inlinable
    public var body: UnsafeMutableRawPointer { staging + OutHeaderLayout.size }

    /// How many body bytes fit both the staging area and the request's writable space.
    @inlinable
    public var bodyCapacity: Int {
        max(0, min(FUSELimits.replyStagingBytes, writableBytes) - OutHeaderLayout.size)
    }

    /// Bytes of in-place data a READ-style reply can carry.
    @inlinable
    public var dataCapacity: Int { max(0, writableBytes - OutHeaderLayout.size) }

    /// A cursor over the writable segments just past the out header, for in-place data.
    @inlinable
    public var data: SegmentCursor {
        var cursor = SegmentCursor(segments: writable, count: writableCount)
        _ = cursor.skip(byteCount: OutHeaderLayout.size)
        return cursor
    }

    @inlinable
    @_noAllocation @_noLocks
    func stageHeader(length: Int, error: Int32) {
        staging.storeBytes(of: UInt32(length).littleEndian, toByteOffset: OutHeaderLayout.len, as: UInt32.self)
        staging.storeBytes(of: error.littleEndian, toByteOffset: OutHeaderLayout.error, as: Int32.self)
        staging.storeBytes(of: unique.littleEndian, toByteOffset: OutHeaderLayout.unique, as: UInt64.self)
    }

    /// Sends a 16-byte error reply.
    @inlinable
    @_noAllocation @_noLocks
    public func fail(_ errno: FUSEErrno) {
        guard writableBytes >= OutHeaderLayout.size else { replyLength.pointee = 0; return }
        stageHeader(length: OutHeaderLayout.size, error: -errno.rawValue)
        var cursor = SegmentCursor(segments: writable, count: writableCount)
        let written = cursor.write(from: staging, byteCount: OutHeaderLayout.size)
        precondition(written == OutHeaderLayout.size)
        replyLength.pointee = UInt32(OutHeaderLayout.size)
    }

    /// Sends the header plus `bodyBytes` staged at `body`.
    @inlinable
    @_noAllocation @_noLocks
    public func send(bodyBytes: Int) {
        precondition(bodyBytes >= 0)
        guard bodyBytes <= bodyCapacity else { return fail(.range) }
        let total = OutHeaderLayout.size + bodyBytes
        stageHeader(length: total, error: 0)
        var cursor = SegmentCursor(segments: writable, count: writableCount)
        let written = cursor.write(from: staging, byteCount: total)
        precondition(written == total)
        replyLength.pointee = UInt32(total)
    }

    /// Sends the header for `dataBytes` of data the backend already wrote in place via `data`.
    @inlinable
    @_noAllocation @_noLocks
    public func sendInPlace(dataBytes: Int) {
        precondition(dataBytes >= 0)
        guard dataBytes <= dataCapacity else { return fail(.range) }
        let total = OutHeaderLayout.size + dataBytes
        stageHeader(length: total, error: 0)
        var cursor = SegmentCursor(segments: writable, count: writableCount)
        let written = cursor.write(from: staging, byteCount: OutHeaderLayout.size)
        precondition(written == OutHeaderLayout.size)
        replyLength.pointee = UInt32(total)
    }

    /// FORGET, BATCH_FORGET, NOTIFY_REPLY: the chain goes back with used length 0.
    @inlinable
    @_noAllocation @_noLocks
    public func none() {
        replyLength.pointee = 0
    }

    // MARK: - Typed replies

    @inlinable
    @_noAllocation @_noLocks
    public func entry(nodeID: UInt64, generation: UInt64, entryValid: CacheValidity, attrValid: CacheValidity,
                      attributes: FileAttributes) {
        storeEntry(at: body, nodeID: nodeID, generation: generation, entryValid: entryValid,
                   attrValid: attrValid, attributes: attributes)
        send(bodyBytes: EntryOutLayout.size)
    }

    @inlinable
    @_noAllocation @_noLocks
    public func attributes(_ attributes: FileAttributes, valid: CacheValidity) {
        let b = body
        b.storeBytes(of: valid.seconds.littleEndian, toByteOffset: AttrOutLayout.attrValid, as: UInt64.self)
        b.storeBytes(of: valid.nanoseconds.littleEndian, toByteOffset: AttrOutLayout.attrValidNanos, as: UInt32.self)
        b.storeBytes(of: UInt32(0), toByteOffset: AttrOutLayout.attrValidNanos + 4, as: UInt32.self)
        attributes.store(to: b + AttrOutLayout.attr)
        send(bodyBytes: AttrOutLayout.size)
    }

    @inlinable
    @_noAllocation @_noLocks
    public func open(fileHandle: UInt64, openFlags: UInt32, backingID: Int32 = 0) {
        storeOpen(at: body, fileHandle: fileHandle, openFlags: openFlags, backingID: backingID)
        send(bodyBytes: OpenOutLayout.size)
    }

    @inlinable
    @_noAllocation @_noLocks
    public func created(nodeID: UInt64, generation: UInt64, entryValid: CacheValidity, attrValid: CacheValidity,
                        attributes: FileAttributes, fileHandle: UInt64, openFlags: UInt32, backingID: Int32 = 0) {
        storeEntry(at: body, nodeID: nodeID, generation: generation, entryValid: entryValid,
                   attrValid: attrValid, attributes: attributes)
        storeOpen(at: body + EntryOutLayout.size, fileHandle: fileHandle, openFlags: openFlags, backingID: backingID)
        send(bodyBytes: EntryOutLayout.size + OpenOutLayout.size)
    }

    @inlinable
    @_noAllocation @_noLocks
    public func written(bytes: UInt32) {
        body.storeBytes(of: bytes.littleEndian, toByteOffset: WriteOutLayout.bytes, as: UInt32.self)
        body.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
        send(bodyBytes: WriteOutLayout.size)
    }

    @inlinable
    @_noAllocation @_noLocks
    public func statistics(_ s: FileSystemStatistics) {
        let b = body
        b.initializeMemory(as: UInt8.self, repeating: 0, count: StatfsOutLayout.size)
        b.storeBytes(of: s.blocks.littleEndian, toByteOffset: StatfsOutLayout.blocks, as: UInt64.self)
        b.storeBytes(of: s.blocksFree.littleEndian, toByteOffset: StatfsOutLayout.blocksFree, as: UInt64.self)
        b.storeBytes(of: s.blocksAvailable.littleEndian, toByteOffset: StatfsOutLayout.blocksAvailable, as: UInt64.self)
        b.storeBytes(of: s.files.littleEndian, toByteOffset: StatfsOutLayout.files, as: UInt64.self)
        b.storeBytes(of: s.filesFree.littleEndian, toByteOffset: StatfsOutLayout.filesFree, as: UInt64.self)
        b.storeBytes(of: s.blockSizeBytes.littleEndian, toByteOffset: StatfsOutLayout.blockSize, as: UInt32.self)
        b.storeBytes(of: s.nameBytesMax.littleEndian, toByteOffset: StatfsOutLayout.nameLength, as: UInt32.self)
        b.storeBytes(of: s.fragmentSizeBytes.littleEndian, toByteOffset: StatfsOutLayout.fragmentSize, as: UInt32.self)
        send(bodyBytes: StatfsOutLayout.size)
    }

    /// One u64 (BMAP block, LSEEK offset, COPY_FILE_RANGE_64 bytes) or a getxattr size probe.
    @inlinable
    @_noAllocation @_noLocks
    public func value(_ value: UInt64) {
        body.storeBytes(of: value.littleEndian, as: UInt64.self)
        send(bodyBytes: U64OutLayout.size)
    }

    /// `fuse_getxattr_out`: the size a GETXATTR/LISTXATTR value needs.
    @inlinable
    @_noAllocation @_noLocks
    public func xattrSize(_ size: UInt32) {
        body.storeBytes(of: size.littleEndian, toByteOffset: GetxattrOutLayout.valueSize, as: UInt32.self)
        body.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
        send(bodyBytes: GetxattrOutLayout.size)
    }

    @inlinable
    @_noAllocation @_noLocks
    public func lock(start: UInt64, end: UInt64, type: UInt32, pid: UInt32) {
        let b = body
        b.storeBytes(of: start.littleEndian, toByteOffset: LockOutLayout.start, as: UInt64.self)
        b.storeBytes(of: end.littleEndian, toByteOffset: LockOutLayout.end, as: UInt64.self)
        b.storeBytes(of: type.littleEndian, toByteOffset: LockOutLayout.type, as: UInt32.self)
        b.storeBytes(of: pid.littleEndian, toByteOffset: LockOutLayout.pid, as: UInt32.self)
        send(bodyBytes: LockOutLayout.size)
    }

    @inlinable
    @_noAllocation @_noLocks
    public func statx(_ a: FileAttributes, valid: CacheValidity, mask: UInt32) {
        let b = body
        b.initializeMemory(as: UInt8.self, repeating: 0, count: StatxOutLayout.size)
        b.storeBytes(of: valid.seconds.littleEndian, toByteOffset: StatxOutLayout.attrValid, as: UInt64.self)
        b.storeBytes(of: valid.nanoseconds.littleEndian, toByteOffset: StatxOutLayout.attrValidNanos, as: UInt32.self)
        let s = b + StatxOutLayout.statx
        s.storeBytes(of: mask.littleEndian, toByteOffset: StatxOutLayout.mask, as: UInt32.self)
        s.storeBytes(of: a.blockSizeBytes.littleEndian, toByteOffset: StatxOutLayout.blockSize, as: UInt32.self)
        s.storeBytes(of: a.linkCount.littleEndian, toByteOffset: StatxOutLayout.nlink, as: UInt32.self)
        s.storeBytes(of: a.uid.littleEndian, toByteOffset: StatxOutLayout.uid, as: UInt32.self)
        s.storeBytes(of: a.gid.littleEndian, toByteOffset: StatxOutLayout.gid, as: UInt32.self)
        s.storeBytes(of: UInt16(truncatingIfNeeded: a.mode).littleEndian, toByteOffset: StatxOutLayout.mode, as: UInt16.self)
        s.storeBytes(of: a.inode.littleEndian, toByteOffset: StatxOutLayout.ino, as: UInt64.self)
        s.storeBytes(of: a.sizeBytes.littleEndian, toByteOffset: StatxOutLayout.fileSize, as: UInt64.self)
        s.storeBytes(of: a.blocks.littleEndian, toByteOffset: StatxOutLayout.blocks, as: UInt64.self)
        storeStatxTime(s + StatxOutLayout.atime, a.accessTime)
        storeStatxTime(s + StatxOutLayout.ctime, a.changeTime)
        storeStatxTime(s + StatxOutLayout.mtime, a.modificationTime)
        // fuse_attr.rdev uses the kernel's new_encode_dev format: 12-bit major in bits 8...19,
        // 20-bit minor split over bits 0...7 and 20...31.
        let rdevMajor = (a.rdev & 0xF_FF00) >> 8
        let rdevMinor = (a.rdev & 0xFF) | ((a.rdev >> 12) & 0xF_FF00)
        s.storeBytes(of: rdevMajor.littleEndian, toByteOffset: StatxOutLayout.rdevMajor, as: UInt32.self)
        s.storeBytes(of: rdevMinor.littleEndian, toByteOffset: StatxOutLayout.rdevMinor, as: UInt32.self)
        send(bodyBytes: StatxOutLayout.size)
    }
}

@inlinable
@_noAllocation @_noLocks
func storeStatxTime(_ destination: UnsafeMutableRawPointer, _ time: FUSETime) {
    destination.storeBytes(of: time.seconds.littleEndian, toByteOffset: 0, as: UInt64.self)
    destination.storeBytes(of: time.nanoseconds.littleEndian, toByteOffset: 8, as: UInt32.self)
    destination.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self)
}

/// Writes a 128-byte `fuse_entry_out` (also used by READDIRPLUS entries).
@inlinable
@_noAllocation @_noLocks
public func storeEntry(at destination: UnsafeMutableRawPointer, nodeID: UInt64, generation: UInt64,
                       entryValid: CacheValidity, attrValid: CacheValidity, attributes: FileAttributes) {
    let d = destination
    d.storeBytes(of: nodeID.littleEndian, toByteOffset: EntryOutLayout.nodeID, as: UInt64.self)
    d.storeBytes(of: generation.littleEndian, toByteOffset: EntryOutLayout.generation, as: UInt64.self)
    d.storeBytes(of: entryValid.seconds.littleEndian, toByteOffset: EntryOutLayout.entryValid, as: UInt64.self)
    d.storeBytes(of: attrValid.seconds.littleEndian, toByteOffset: EntryOutLayout.attrValid, as: UInt64.self)
    d.storeBytes(of: entryValid.nanoseconds.littleEndian, toByteOffset: EntryOutLayout.entryValidNanos, as: UInt32.self)
    d.storeBytes(of: attrValid.nanoseconds.littleEndian, toByteOffset: EntryOutLayout.attrValidNanos, as: UInt32.self)
    attributes.store(to: d + EntryOutLayout.attr)
}

@inlinable
@_noAllocation @_noLocks
func storeOpen(at destination: UnsafeMutableRawPointer, fileHandle: UInt64, openFlags: UInt32, backingID: Int32) {
    destination.storeBytes(of: fileHandle.littleEndian, toByteOffset: OpenOutLayout.fileHandle, as: UInt64.self)
    destination.storeBytes(of: openFlags.littleEndian, toByteOffset: OpenOutLayout.openFlags, as: UInt32.self)
    // Kernel passthrough (7.40): the id FUSE_DEV_IOC_BACKING_OPEN gave, with FOPEN_PASSTHROUGH set.
    destination.storeBytes(of: backingID.littleEndian, toByteOffset: OpenOutLayout.backingID, as: Int32.self)
}

/// Appends directory entries to a READDIR / READDIRPLUS reply body, never past `capacity`.
@frozen
public struct DirectoryEntryWriter {
    public let destination: UnsafeMutableRawPointer
    public let capacity: Int
    public var bytesWritten: Int = 0

    @inlinable
    public init(destination: UnsafeMutableRawPointer, capacity: Int) {
        precondition(capacity >= 0)
        self.destination = destination
        self.capacity = capacity
    }

    /// Appends one `fuse_dirent`. Returns false (and writes nothing) when it does not fit.
    @inlinable
    @_noAllocation @_noLocks
    public mutating func append(inode: UInt64, nextOffset: UInt64, type: UInt32, name: UnsafeRawBufferPointer) -> Bool {
        precondition(name.count > 0 && name.count <= FUSELimits.nameBytesMax)
        let size = DirentLayout.alignedSize(nameLength: name.count)
        guard bytesWritten + size <= capacity else { return false }
        storeDirent(at: destination + bytesWritten, inode: inode, nextOffset: nextOffset, type: type, name: name, size: size)
        bytesWritten += size
        return true
    }

    /// Appends one `fuse_direntplus` (entry_out + dirent).
    @inlinable
    @_noAllocation @_noLocks
    public mutating func appendPlus(nodeID: UInt64, generation: UInt64, entryValid: CacheValidity,
                                    attrValid: CacheValidity, attributes: FileAttributes,
                                    nextOffset: UInt64, type: UInt32, name: UnsafeRawBufferPointer) -> Bool {
        precondition(name.count > 0 && name.count <= FUSELimits.nameBytesMax)
        let size = EntryOutLayout.size + DirentLayout.alignedSize(nameLength: name.count)
        guard bytesWritten + size <= capacity else { return false }
        let d = destination + bytesWritten
        storeEntry(at: d, nodeID: nodeID, generation: generation, entryValid: entryValid, attrValid: attrValid,
                   attributes: attributes)
        storeDirent(at: d + EntryOutLayout.size, inode: attributes.inode, nextOffset: nextOffset, type: type,
                    name: name, size: size - EntryOutLayout.size)
        bytesWritten += size
        return true
    }

    @inlinable
    @_noAllocation @_noLocks
    func storeDirent(at d: UnsafeMutableRawPointer, inode: UInt64, nextOffset: UInt64, type: UInt32,
                     name: UnsafeRawBufferPointer, size: Int) {
        d.storeBytes(of: inode.littleEndian, toByteOffset: DirentLayout.ino, as: UInt64.self)
        d.storeBytes(of: nextOffset.littleEndian, toByteOffset: DirentLayout.offset, as: UInt64.self)
        d.storeBytes(of: UInt32(name.count).littleEndian, toByteOffset: DirentLayout.nameLength, as: UInt32.self)
        d.storeBytes(of: type.littleEndian, toByteOffset: DirentLayout.type, as: UInt32.self)
        let nameStart = d + DirentLayout.headerSize
        nameStart.copyMemory(from: name.baseAddress!, byteCount: name.count)
        // Padding bytes are zeroed so no stale engine memory reaches the guest.
        let padding = size - DirentLayout.headerSize - name.count
        (nameStart + name.count).initializeMemory(as: UInt8.self, repeating: 0, count: padding)
    }
}
