import BackendKit
import CDPFS
import DPFSCore
import FUSEWire
import Glibc

// The NFS backend's side of the file-system contract: each operation takes what its stages need
// from the typed arguments into the slot's record (NFSRequestArguments) and starts its first RPC
// (NFSQueue+Requests.swift); the answers finish it (NFSQueue+Replies.swift). Names with the hidden
// prefix belong to the engine: they do not exist for LOOKUP, and nothing may be created, removed
// or renamed under them.

extension NFSBackend {
    /// Starts a request on its slot with its first call.
    mutating func start(_ request: NFSRequestArguments, _ reply: FUSEReply, _ token: CompletionToken, call: NFSCall,
                        secondaryID: UInt64 = 0, openFile: Int = 0, progress: NFSProgress = []) -> BackendAnswer {
        queue!.begin(request, reply: reply, token: token, call: call, secondaryID: secondaryID, openFile: openFile, progress: progress)
    }

    /// A request whose entry name is `name` (the other arguments set by the caller).
    func named<A>(_ opcode: FUSEOpcode, _ operation: Operation<A>, _ name: Name) -> NFSRequestArguments {
        var request = NFSRequestArguments(opcode, operation)
        request.name = name.bytes
        return request
    }

    public mutating func forget(nodeID: UInt64, lookups: UInt64) {
        device.nodes.forget(nodeID, count: lookups)
    }

    // MARK: - Names

    public mutating func lookup(_ operation: Operation<NameArguments>, reply: EntryReply) -> BackendAnswer {
        let name = operation.arguments.name
        guard !HiddenName.isReserved(name.bytes) else { return reply.fail(.noEntry) }
        return start(named(.lookup, operation, name), reply.wire, operation.token, call: .lookup)
    }

    public mutating func symlink(_ operation: Operation<SymlinkArguments>, reply: EntryReply) -> BackendAnswer {
        let name = operation.arguments.name
        guard !HiddenName.isReserved(name.bytes) else { return reply.fail(.notPermitted) }
        var request = named(.symlink, operation, name)
        request.secondName = operation.arguments.target.bytes
        return start(request, reply.wire, operation.token, call: .symlink)
    }

    /// NFSv3 MKNOD makes devices, sockets and FIFOs; a regular file is a CREATE that must not
    /// replace one that exists (mknod's EEXIST).
    public mutating func mknod(_ operation: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer {
        let name = operation.arguments.name
        guard !HiddenName.isReserved(name.bytes) else { return reply.fail(.notPermitted) }
        var request = named(.mknod, operation, name)
        request.mode = operation.arguments.mode
        request.rdev = operation.arguments.rdev
        let kind = request.mode & FileType.mask
        if kind == FileType.regular || kind == 0 { return start(request, reply.wire, operation.token, call: .create, progress: .guarded) }
        return start(request, reply.wire, operation.token, call: .mknod)
    }

    public mutating func mkdir(_ operation: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer {
        let name = operation.arguments.name
        guard !HiddenName.isReserved(name.bytes) else { return reply.fail(.notPermitted) }
        var request = named(.mkdir, operation, name)
        request.mode = operation.arguments.mode
        return start(request, reply.wire, operation.token, call: .mkdir)
    }

    public mutating func create(_ operation: Operation<CreateArguments>, reply: CreatedReply) -> BackendAnswer {
        let name = operation.arguments.name
        guard !HiddenName.isReserved(name.bytes) else { return reply.fail(.notPermitted) }
        var request = named(.create, operation, name)
        request.mode = operation.arguments.mode
        request.flags = operation.arguments.flags
        let exclusive = Int32(bitPattern: request.flags) & O_EXCL != 0
        return start(request, reply.wire, operation.token, call: .create, progress: exclusive ? [.exclusive, .needsModeSetattr] : [])
    }

    /// A LOOKUP first: a regular file the guest still has open is hidden instead of removed.
    public mutating func unlink(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer {
        let name = operation.arguments.name
        guard !HiddenName.isReserved(name.bytes) else { return reply.fail(.notPermitted) }
        return start(named(.unlink, operation, name), reply.wire, operation.token, call: .lookup, progress: .removeCheck)
    }

    public mutating func rmdir(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer {
        let name = operation.arguments.name
        guard !HiddenName.isReserved(name.bytes) else { return reply.fail(.notPermitted) }
        return start(named(.rmdir, operation, name), reply.wire, operation.token, call: .rmdir)
    }

    /// NFSv3 RENAME always replaces and cannot exchange: EXCHANGE (and whiteouts) are refused as by
    /// Linux's own NFS client; NOREPLACE looks first (not atomic, as there).
    public mutating func rename(_ operation: Operation<RenameArguments>, reply: StatusReply) -> BackendAnswer {
        let arguments = operation.arguments
        guard !HiddenName.isReserved(arguments.name.bytes), !HiddenName.isReserved(arguments.newName.bytes) else {
            return reply.fail(.notPermitted)
        }
        guard arguments.flags & ~UInt32(RENAME_NOREPLACE) == 0 else { return reply.fail(.invalid) }
        var request = named(.rename, operation, arguments.name)
        request.secondName = arguments.newName.bytes
        return start(request, reply.wire, operation.token, call: .lookup, secondaryID: arguments.newParent,
                     progress: arguments.flags == 0 ? .replaceCheck : .noReplaceCheck)
    }

    public mutating func link(_ operation: Operation<LinkArguments>, reply: EntryReply) -> BackendAnswer {
        let name = operation.arguments.name
        guard !HiddenName.isReserved(name.bytes) else { return reply.fail(.notPermitted) }
        return start(named(.link, operation, name), reply.wire, operation.token, call: .link, secondaryID: operation.arguments.target)
    }

    // MARK: - Attributes

    public mutating func getattr(_ operation: Operation<GetattrArguments>, reply: AttributesReply) -> BackendAnswer {
        start(NFSRequestArguments(.getattr, operation), reply.wire, operation.token, call: .getattr)
    }

    /// NFSv3 times are unsigned 32-bit seconds (1970...2106): a time outside is refused rather than
    /// wrapped into a different one.
    public mutating func setattr(_ operation: Operation<SetattrArguments>, reply: AttributesReply) -> BackendAnswer {
        let fields = operation.arguments.fields
        let explicitAtime = fields.valid & UInt32(FATTR_ATIME) != 0 && fields.valid & UInt32(FATTR_ATIME_NOW) == 0
        let explicitMtime = fields.valid & UInt32(FATTR_MTIME) != 0 && fields.valid & UInt32(FATTR_MTIME_NOW) == 0
        if (explicitAtime && fields.atime > UInt64(UInt32.max)) || (explicitMtime && fields.mtime > UInt64(UInt32.max)) {
            return reply.fail(.invalid)
        }
        var request = NFSRequestArguments(.setattr, operation)
        request.setattr = fields
        return start(request, reply.wire, operation.token, call: .setattr)
    }

    public mutating func readlink(_ operation: Operation<NoArguments>, reply: DataReply) -> BackendAnswer {
        start(NFSRequestArguments(.readlink, operation), reply.wire, operation.token, call: .readlink)
    }

    public mutating func statfs(_ operation: Operation<NoArguments>, reply: StatisticsReply) -> BackendAnswer {
        start(NFSRequestArguments(.statfs, operation), reply.wire, operation.token, call: .fsstat)
    }

    /// F_OK needs no call: the node exists, or the kernel would not have its id.
    public mutating func access(_ operation: Operation<AccessArguments>, reply: StatusReply) -> BackendAnswer {
        guard operation.arguments.mask & 7 != 0 else { return reply.ok() }
        var request = NFSRequestArguments(.access, operation)
        request.mask = operation.arguments.mask
        return start(request, reply.wire, operation.token, call: .access)
    }

    // MARK: - Open files

    /// An ACCESS call checks the open's rights; the node counts as open from the start.
    public mutating func open(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer {
        var request = NFSRequestArguments(.open, operation)
        request.flags = operation.arguments.flags
        return start(request, reply.wire, operation.token, call: .access, progress: .countedOpen)
    }

    public mutating func opendir(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer {
        var request = NFSRequestArguments(.opendir, operation)
        request.flags = operation.arguments.flags
        return start(request, reply.wire, operation.token, call: .access, progress: .countedOpen)
    }

    public mutating func read(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer {
        transfer(.read, operation, reply.wire, call: .read)
    }

    public mutating func readdir(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer {
        transfer(.readdir, operation, reply.wire, call: .readdir)
    }

    public mutating func readdirplus(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer {
        transfer(.readdirplus, operation, reply.wire, call: .readdirplus)
    }

    /// READ, READDIR and READDIRPLUS on an open file.
    mutating func transfer(_ opcode: FUSEOpcode, _ operation: Operation<ReadArguments>, _ reply: FUSEReply, call: NFSCall) -> BackendAnswer {
        let fields = operation.arguments.fields
        guard let index = device.files.index(fields.fh) else { reply.fail(.badFileDescriptor); return .done }
        var request = NFSRequestArguments(opcode, operation)
        request.fh = fields.fh
        request.offset = fields.offset
        request.size = fields.size
        return start(request, reply, operation.token, call: call, openFile: index)
    }

    public mutating func write(_ operation: Operation<WriteArguments>, reply: WrittenReply) -> BackendAnswer {
        let arguments = operation.arguments
        guard let index = device.files.index(arguments.handle) else { return reply.fail(.badFileDescriptor) }
        var request = NFSRequestArguments(.write, operation)
        request.fh = arguments.handle
        request.offset = arguments.offset
        request.size = arguments.size
        request.payload = arguments.payload
        return start(request, reply.wire, operation.token, call: .write, openFile: index)
    }

    public mutating func release(_ operation: Operation<ReleaseArguments>, reply: StatusReply) -> BackendAnswer {
        closeOrSync(.release, operation, handle: operation.arguments.handle, reply)
    }

    public mutating func releasedir(_ operation: Operation<ReleaseArguments>, reply: StatusReply) -> BackendAnswer {
        closeOrSync(.releasedir, operation, handle: operation.arguments.handle, reply)
    }

    public mutating func flush(_ operation: Operation<FlushArguments>, reply: StatusReply) -> BackendAnswer {
        guard device.locksOnServer else { return closeOrSync(.flush, operation, handle: operation.arguments.handle, reply) }
        // NFSv4.1: the owner's locks on the file go first (POSIX drops them at any close), then the COMMIT.
        guard let index = device.files.index(operation.arguments.handle) else { return reply.fail(.badFileDescriptor) }
        var request = NFSRequestArguments(.flush, operation)
        request.fh = operation.arguments.handle
        request.lockOwner = operation.arguments.lockOwner
        return start(request, reply.wire, operation.token, call: .lockBegin, openFile: index)
    }

    public mutating func fsync(_ operation: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer {
        closeOrSync(.fsync, operation, handle: operation.arguments.handle, reply)
    }

    public mutating func fsyncdir(_ operation: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer {
        closeOrSync(.fsyncdir, operation, handle: operation.arguments.handle, reply)
    }

    mutating func closeOrSync<A>(_ opcode: FUSEOpcode, _ operation: Operation<A>, handle: UInt64, _ reply: StatusReply) -> BackendAnswer {
        var request = NFSRequestArguments(opcode, operation)
        request.fh = handle
        return queue!.closeOrSync(opcode, request, reply: reply.wire, token: operation.token)
    }

    /// Every WRITE is committed on FSYNC and on the last RELEASE; nothing is held here.
    public mutating func syncfs(_ operation: Operation<NoArguments>, reply: StatusReply) -> BackendAnswer { reply.ok() }

    /// A SETLKW waiting for its lock ends EINTR; nothing else of ours waits for the guest. The
    /// kernel ignores this answer.
    public mutating func interrupt(_ operation: Operation<InterruptArguments>, reply: StatusReply) -> BackendAnswer {
        queue!.interruptLock4(unique: operation.arguments.target)
        return reply.ok()
    }

    // MARK: - What NFSv3 does not have

    // Extended attributes: none in NFSv3 (Specs/nfs-semantics.md), as Linux's own v3 client says.
    public mutating func getxattr(_ operation: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer { reply.fail(.notSupported) }
    public mutating func listxattr(_ operation: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer { reply.fail(.notSupported) }
    public mutating func setxattr(_ operation: Operation<SetxattrArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notSupported) }
    public mutating func removexattr(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notSupported) }

    // Byte-range locks: over NFSv4.1 LOCK, LOCKT and LOCKU (NFSQueue+Locks4.swift). Over v3 they
    // need the NLM side protocol, which this backend does not speak; over 4.0 they need opens by
    // (directory, name) and per-owner seqids, not built yet. The session offers no POSIX locks
    // then, and the guest's kernel keeps them locally.
    public mutating func getlk(_ operation: Operation<LockArguments>, reply: LockReply) -> BackendAnswer {
        guard device.locksOnServer else { return reply.fail(.notSupported) }
        guard let (request, index) = lockRequest(.getlk, operation, wait: false) else { return reply.fail(.invalid) }
        guard index != nil else { return reply.fail(.badFileDescriptor) }
        return start(request, reply.wire, operation.token, call: .lockTest, openFile: index!)
    }

    public mutating func setlk(_ operation: Operation<LockArguments>, wait: Bool, reply: StatusReply) -> BackendAnswer {
        guard device.locksOnServer else { return reply.fail(.notSupported) }
        guard let (request, index) = lockRequest(wait ? .setlkw : .setlk, operation, wait: wait) else { return reply.fail(.invalid) }
        guard index != nil else { return reply.fail(.badFileDescriptor) }
        return start(request, reply.wire, operation.token, call: .lockBegin, openFile: index!)
    }

    /// A lock's request and its open (nil: not open), or nil for a lock the kernel would not make
    /// (flock, an unknown type, an end before the start).
    func lockRequest(_ opcode: FUSEOpcode, _ operation: Operation<LockArguments>, wait: Bool) -> (NFSRequestArguments, Int?)? {
        let arguments = operation.arguments
        let type = arguments.type
        guard !arguments.isFlock, type == UInt32(F_RDLCK) || type == UInt32(F_WRLCK) || type == UInt32(F_UNLCK), arguments.end >= arguments.start,
              arguments.start <= UInt64(Int64.max) else { return nil }
        var request = NFSRequestArguments(opcode, operation)
        request.fh = arguments.handle
        request.offset = arguments.start
        request.lockEnd = min(arguments.end, UInt64(Int64.max))
        request.lockType = arguments.type
        request.lockOwner = arguments.owner
        request.lockWaits = wait
        return (request, device.files.index(arguments.handle))
    }

    // FALLOCATE, LSEEK, COPY_FILE_RANGE, TMPFILE and STATX: the contract's default, ENOSYS.
}
