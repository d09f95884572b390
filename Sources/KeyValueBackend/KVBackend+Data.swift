import BackendKit
import CDPFS
import DPFSCore
import FUSEWire
import Glibc

// Attributes, opens, data, listings, xattrs and the file system's totals.

extension KVBackend {
    /// fallocate(2)'s FALLOC_FL_KEEP_SIZE and FALLOC_FL_PUNCH_HOLE (linux/falloc.h).
    static let keepSize: UInt32 = 0x01
    static let punchHole: UInt32 = 0x02
    /// The largest xattr value Linux passes (XATTR_SIZE_MAX).
    static let xattrValueBytesMax = 65536

    func inode<A>(_ operation: Operation<A>, _ opcode: FUSEOpcode, _ call: KVCall, reply: FUSEReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { reply.fail(.noEntry); return .done }
        return start(record(operation, opcode), call, reply, operation.token)
    }

    public mutating func getattr(_ operation: Operation<GetattrArguments>, reply: AttributesReply) -> BackendAnswer {
        inode(operation, .getattr, .getattr, reply: reply.wire)
    }

    public mutating func setattr(_ operation: Operation<SetattrArguments>, reply: AttributesReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { return reply.fail(.noEntry) }
        let a = operation.arguments
        let r = record(operation, .setattr)
        var what: UInt32 = 0
        if let mode = a.newMode { what |= 1; r.pointee.mode = mode }
        if let uid = a.newUID { what |= 2; r.pointee.uid = uid }
        if let gid = a.newGID { what |= 4; r.pointee.gid = gid }
        if let size = a.newSizeBytes {
            guard size <= UInt64(device.configuration.fileBytesMax) else { return reply.fail(.fileTooLarge) }
            what |= 8
            r.pointee.setSize = size
        }
        if a.changes(FATTR_ATIME) || a.changes(FATTR_ATIME_NOW) {
            what |= 16
            r.pointee.accessTime = a.changes(FATTR_ATIME_NOW) ? r.pointee.now : Self.time(a.fields.atime, a.fields.atimensec)
        }
        if a.changes(FATTR_MTIME) || a.changes(FATTR_MTIME_NOW) {
            what |= 32
            r.pointee.modificationTime = a.changes(FATTR_MTIME_NOW) ? r.pointee.now : Self.time(a.fields.mtime, a.fields.mtimensec)
        }
        r.pointee.flags = what
        return start(r, .setattr, reply.wire, operation.token)
    }

    /// A time the guest sent (seconds are signed: before 1970 is negative), kept in range:
    /// nanoseconds below a second, seconds within ±2^53 (what the store's numbers hold).
    static func time(_ seconds: UInt64, _ nanoseconds: UInt32) -> FUSETime {
        let limit = Int64(KVQueue.numberMax - 1)
        let clamped = min(max(Int64(bitPattern: seconds), -limit), limit)
        return FUSETime(seconds: UInt64(bitPattern: clamped), nanoseconds: min(nanoseconds, 999_999_999))
    }

    public mutating func fallocate(_ operation: Operation<FallocateArguments>, reply: StatusReply) -> BackendAnswer {
        let a = operation.arguments
        guard Self.known(operation.nodeID) else { return reply.fail(.noEntry) }
        let (end, overflow) = a.offset.addingReportingOverflow(a.length)
        guard !overflow, end <= UInt64(device.configuration.fileBytesMax) else { return reply.fail(.fileTooLarge) }
        let r = record(operation, .fallocate)
        switch a.mode {
        case 0:
            // Allocate: the size grows to the range's end; the new bytes read as zeros.
            r.pointee.flags = 64
            r.pointee.setSize = end
            return start(r, .setattr, reply.wire, operation.token)
        case Self.keepSize:
            // Nothing is reserved ahead in a key-value store: allocating within the size is a no-op.
            return reply.ok()
        case Self.keepSize | Self.punchHole:
            r.pointee.offset = a.offset
            r.pointee.setSize = a.length
            return start(r, .punch, reply.wire, operation.token)
        default:
            // Zeroing, collapsing and inserting ranges do not map.
            return reply.fail(.notSupported)
        }
    }

    public mutating func access(_ operation: Operation<AccessArguments>, reply: StatusReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { return reply.fail(.noEntry) }
        let r = record(operation, .access)
        r.pointee.flags = operation.arguments.mask
        return start(r, .access, reply.wire, operation.token)
    }

    public mutating func readlink(_ operation: Operation<NoArguments>, reply: DataReply) -> BackendAnswer {
        inode(operation, .readlink, .readlink, reply: reply.wire)
    }

    public mutating func statfs(_ operation: Operation<NoArguments>, reply: StatisticsReply) -> BackendAnswer {
        start(record(operation, .statfs), .statfs, reply.wire, operation.token)
    }

    // MARK: - Opens: no round trip

    public mutating func open(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { return reply.fail(.noEntry) }
        guard device.opens.open(operation.nodeID) else { return reply.fail(FUSEErrno(ENFILE)) }
        return reply.open(fileHandle: operation.nodeID, openFlags: device.configuration.openFlags)
    }

    public mutating func release(_ operation: Operation<ReleaseArguments>, reply: StatusReply) -> BackendAnswer {
        // The handle is the inode number OPEN or CREATE gave.
        let inode = operation.arguments.handle
        if device.opens.release(inode) { queue!.reclaim(inode) }
        return reply.ok()
    }

    /// An orphan goes when the kernel has forgotten it too (KVOpenTable says why).
    public mutating func forget(nodeID: UInt64, lookups: UInt64) {
        if device.opens.forget(nodeID) { queue?.reclaim(nodeID) }
    }

    public mutating func opendir(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { return reply.fail(.noEntry) }
        return reply.open(fileHandle: operation.nodeID, openFlags: 0)
    }

    public mutating func flush(_ operation: Operation<FlushArguments>, reply: StatusReply) -> BackendAnswer { reply.ok() }
    public mutating func fsync(_ operation: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer { reply.ok() }
    public mutating func fsyncdir(_ operation: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer { reply.ok() }

    // MARK: - Data

    public mutating func read(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { return reply.fail(.noEntry) }
        let a = operation.arguments
        // No more than one reply bulk may carry (the RESP reader's limit is a WRITE's size).
        let size = min(Int(a.size), reply.dataCapacity, FUSELimits.writeBytesMax)
        // Past the largest file there is nothing to read.
        guard a.offset < UInt64(device.configuration.fileBytesMax), size > 0 else { return reply.sendInPlace(dataBytes: 0) }
        let r = record(operation, .read)
        r.pointee.offset = a.offset
        r.pointee.size = UInt32(size)
        return start(r, .read, reply.wire, operation.token)
    }

    public mutating func write(_ operation: Operation<WriteArguments>, reply: WrittenReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { return reply.fail(.noEntry) }
        let a = operation.arguments
        let limit = UInt64(device.configuration.fileBytesMax)
        guard a.size > 0 else { return reply.written(bytes: 0) }
        // As a local file system: a write that starts at the largest size fails, one that crosses
        // it is cut short there.
        guard a.offset < limit else { return reply.fail(.fileTooLarge) }
        let r = record(operation, .write)
        r.pointee.offset = a.offset
        r.pointee.size = UInt32(min(UInt64(a.size), limit - a.offset))
        r.pointee.payload = a.payload
        r.pointee.flags = a.writeFlags
        return start(r, .write, reply.wire, operation.token)
    }

    public mutating func readdir(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer {
        list(operation, .readdir, .readdir, reply: reply.wire)
    }

    public mutating func readdirplus(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer {
        list(operation, .readdirplus, .readdirplus, reply: reply.wire)
    }

    func list(_ operation: Operation<ReadArguments>, _ opcode: FUSEOpcode, _ call: KVCall, reply: FUSEReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { reply.fail(.noEntry); return .done }
        let a = operation.arguments
        // Offsets are the store's listing scores (below 2^53); a larger one is past the end.
        guard a.offset < KVQueue.numberMax else { reply.send(bodyBytes: 0); return .done }
        let r = record(operation, opcode)
        r.pointee.offset = a.offset
        r.pointee.size = a.size
        return start(r, call, reply, operation.token)
    }

    // MARK: - Extended attributes (a hash per inode)

    public mutating func setxattr(_ operation: Operation<SetxattrArguments>, reply: StatusReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { return reply.fail(.noEntry) }
        let a = operation.arguments
        guard Int(a.size) <= Self.xattrValueBytesMax else { return reply.fail(FUSEErrno(E2BIG)) }
        // XATTR_CREATE (1) and XATTR_REPLACE (2), as the store numbers them.
        guard a.flags <= 2 else { return reply.fail(.invalid) }
        let r = record(operation, .setxattr)
        r.pointee.name = a.name.bytes
        r.pointee.size = a.size
        r.pointee.payload = a.value
        r.pointee.flags = a.flags
        return start(r, .setxattr, reply.wire, operation.token)
    }

    public mutating func getxattr(_ operation: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer {
        guard Self.known(operation.nodeID), let name = operation.arguments.name else { return reply.fail(.noEntry) }
        let r = record(operation, .getxattr)
        r.pointee.name = name.bytes
        r.pointee.size = min(operation.arguments.size, UInt32(Self.xattrValueBytesMax))
        return start(r, .getxattr, reply.wire, operation.token)
    }

    public mutating func listxattr(_ operation: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { return reply.fail(.noEntry) }
        let r = record(operation, .listxattr)
        r.pointee.size = min(operation.arguments.size, UInt32(Self.xattrValueBytesMax))
        return start(r, .listxattr, reply.wire, operation.token)
    }

    public mutating func removexattr(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { return reply.fail(.noEntry) }
        let r = record(operation, .removexattr)
        r.pointee.name = operation.arguments.name.bytes
        return start(r, .removexattr, reply.wire, operation.token)
    }
}
