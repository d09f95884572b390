import BackendKit
import CDPFS
import DPFSCore
import FUSEWire
import Glibc

// The key-value backend's side of the file-system contract: each operation checks what the guest
// sent, takes what its command needs into the slot's record and starts it (KVQueue.begin). OPEN,
// OPENDIR, RELEASE, FLUSH and FSYNC need no round trip: opening has nothing to ask the server
// (the kernel looked the file up), and every change the server acknowledged is as durable as its
// appendfsync makes it (Specs/kv-semantics.md).

extension KVBackend {
    /// The slot's record, reset, with what every request carries.
    func record<A>(_ operation: Operation<A>, _ opcode: FUSEOpcode) -> UnsafeMutablePointer<KVRequestState> {
        let record = queue!.records + operation.slotIndex
        let caller = operation.caller
        let now = realtimeNow()
        record.pointee.opcodeRaw = opcode.rawValue
        record.pointee.nodeID = operation.nodeID
        record.pointee.secondNode = 0
        record.pointee.name = UnsafeRawBufferPointer(start: nil, count: 0)
        record.pointee.secondName = UnsafeRawBufferPointer(start: nil, count: 0)
        record.pointee.payload = nil
        record.pointee.offset = 0
        record.pointee.size = 0
        record.pointee.mode = 0
        record.pointee.uid = caller.uid
        record.pointee.gid = caller.gid
        record.pointee.rdev = 0
        record.pointee.flags = 0
        record.pointee.now = now
        return record
    }

    /// Node ids are inode numbers, which stay below 2^53: anything else names nothing.
    @_noAllocation @_noLocks
    static func known(_ nodeID: UInt64) -> Bool { nodeID >= 1 && nodeID < KVQueue.numberMax }

    func start(_ record: UnsafeMutablePointer<KVRequestState>, _ call: KVCall, _ reply: FUSEReply, _ token: CompletionToken) -> BackendAnswer {
        queue!.begin(record - queue!.records, call: call, reply: reply, token: token)
    }

    // MARK: - Names

    public mutating func lookup(_ operation: Operation<NameArguments>, reply: EntryReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { return reply.fail(.noEntry) }
        let r = record(operation, .lookup)
        r.pointee.name = operation.arguments.name.bytes
        return start(r, .lookup, reply.wire, operation.token)
    }

    public mutating func mknod(_ operation: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer {
        let a = operation.arguments
        var mode = a.mode & ~a.umask & 0o7777 | a.mode & FileType.mask
        if mode & FileType.mask == 0 { mode |= FileType.regular }
        return create(operation, .mknod, name: a.name, mode: mode, rdev: a.rdev, reply: reply.wire)
    }

    public mutating func mkdir(_ operation: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer {
        let a = operation.arguments
        return create(operation, .mkdir, name: a.name, mode: FileType.directory | (a.mode & ~a.umask & 0o7777), reply: reply.wire)
    }

    public mutating func symlink(_ operation: Operation<SymlinkArguments>, reply: EntryReply) -> BackendAnswer {
        let a = operation.arguments
        return create(operation, .symlink, name: a.name, mode: FileType.symlink | 0o777, target: a.target.bytes, reply: reply.wire)
    }

    public mutating func create(_ operation: Operation<CreateArguments>, reply: CreatedReply) -> BackendAnswer {
        let a = operation.arguments
        return create(operation, .create, name: a.name, mode: FileType.regular | (a.mode & ~a.umask & 0o7777), flags: a.flags, reply: reply.wire)
    }

    /// Creates a node of `mode` named `name` in `operation.nodeID` (MKNOD, MKDIR, SYMLINK, CREATE).
    func create<A>(_ operation: Operation<A>, _ opcode: FUSEOpcode, name: Name, mode: UInt32, rdev: UInt32 = 0,
                   target: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0), flags: UInt32 = 0,
                   reply: FUSEReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { reply.fail(.noEntry); return .done }
        guard !name.isDotOrDotDot else { reply.fail(.exists); return .done }
        let r = record(operation, opcode)
        r.pointee.name = name.bytes
        r.pointee.mode = mode
        r.pointee.rdev = rdev
        r.pointee.secondName = target
        r.pointee.flags = flags
        return start(r, .create, reply, operation.token)
    }

    public mutating func unlink(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer {
        named(operation, .unlink, call: .unlink, reply: reply.wire)
    }

    public mutating func rmdir(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer {
        named(operation, .rmdir, call: .rmdir, reply: reply.wire)
    }

    func named(_ operation: Operation<NameArguments>, _ opcode: FUSEOpcode, call: KVCall, reply: FUSEReply) -> BackendAnswer {
        guard Self.known(operation.nodeID) else { reply.fail(.noEntry); return .done }
        guard !operation.arguments.name.isDotOrDotDot else { reply.fail(call == .rmdir ? .notEmpty : .notPermitted); return .done }
        let r = record(operation, opcode)
        r.pointee.name = operation.arguments.name.bytes
        return start(r, call, reply, operation.token)
    }

    public mutating func rename(_ operation: Operation<RenameArguments>, reply: StatusReply) -> BackendAnswer {
        let a = operation.arguments
        guard Self.known(operation.nodeID), Self.known(a.newParent) else { return reply.fail(.noEntry) }
        guard !a.name.isDotOrDotDot, !a.newName.isDotOrDotDot else { return reply.fail(.busy) }
        // RENAME_NOREPLACE (1) and RENAME_EXCHANGE (2), as the store numbers them too.
        let flags = a.flags <= 2 ? Int(a.flags) : -1
        guard flags >= 0 else { return reply.fail(.invalid) }
        let r = record(operation, .rename)
        r.pointee.name = a.name.bytes
        r.pointee.secondNode = a.newParent
        r.pointee.secondName = a.newName.bytes
        r.pointee.flags = UInt32(flags)
        return start(r, .rename, reply.wire, operation.token)
    }

    public mutating func link(_ operation: Operation<LinkArguments>, reply: EntryReply) -> BackendAnswer {
        let a = operation.arguments
        guard Self.known(operation.nodeID), Self.known(a.target) else { return reply.fail(.noEntry) }
        guard !a.name.isDotOrDotDot else { return reply.fail(.exists) }
        let r = record(operation, .link)
        r.pointee.name = a.name.bytes
        r.pointee.secondNode = a.target
        return start(r, .link, reply.wire, operation.token)
    }
}
