import BackendKit
import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import Synchronization

// Metadata requests: each one or two *at() calls beneath a pinned inode, run as the caller. Every
// errno is the host file system's own, passed through unchanged.

extension PassthroughBackend {
    /// The prologue of an operation on a node: act as the caller, pin the node (nil: it is not
    /// in the table), and hold the node's group where only a member could have got here.
    mutating func pinAsCaller(_ nodeID: UInt64, _ caller: Caller) -> PinnedNode? {
        become(caller)
        guard let node = pinNode(nodeID) else { return nil }
        shareGroup(of: node)
        return node
    }

    // MARK: - Names

    public mutating func lookup(_ operation: Operation<NameArguments>, reply: EntryReply) -> BackendAnswer {
        guard let node = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(node) }
        return lookup(operation.arguments.name, in: node, nodeID: operation.nodeID, reply: reply)
    }

    public mutating func mkdir(_ operation: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer {
        guard let parent = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(parent) }
        let arguments = operation.arguments
        guard !arguments.name.isDotOrDotDot else { return reply.fail(.exists) }
        let result = mkdirat(parent.fd, arguments.name.cString, mode_t(arguments.mode & ~arguments.umask & 0o7777))
        return finishEntry(result, parent: parent, name: arguments.name, reply: reply)
    }

    public mutating func mknod(_ operation: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer {
        guard let parent = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(parent) }
        let arguments = operation.arguments
        guard !arguments.name.isDotOrDotDot else { return reply.fail(.exists) }
        let result = mknodat(parent.fd, arguments.name.cString, mode_t(arguments.mode & ~arguments.umask), dev_t(arguments.rdev))
        return finishEntry(result, parent: parent, name: arguments.name, reply: reply)
    }

    /// The target is stored as given and never followed on the host.
    public mutating func symlink(_ operation: Operation<SymlinkArguments>, reply: EntryReply) -> BackendAnswer {
        guard let parent = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(parent) }
        let arguments = operation.arguments
        guard !arguments.name.isDotOrDotDot else { return reply.fail(.exists) }
        let result = symlinkat(arguments.target.cString, parent.fd, arguments.name.cString)
        return finishEntry(result, parent: parent, name: arguments.name, reply: reply)
    }

    public mutating func link(_ operation: Operation<LinkArguments>, reply: EntryReply) -> BackendAnswer {
        guard let parent = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(parent) }
        return link(operation.arguments, newParent: parent, reply: reply)
    }

    public mutating func unlink(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer {
        remove(operation, flags: 0, reply: reply)
    }

    public mutating func rmdir(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer {
        remove(operation, flags: AT_REMOVEDIR, reply: reply)
    }

    mutating func remove(_ operation: Operation<NameArguments>, flags: Int32, reply: StatusReply) -> BackendAnswer {
        guard let node = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(node) }
        guard !operation.arguments.name.isDotOrDotDot else { return reply.fail(.invalid) }
        return unlinkat(node.fd, operation.arguments.name.cString, flags) == 0 ? reply.ok() : reply.fail(Self.lastErrno)
    }

    public mutating func rename(_ operation: Operation<RenameArguments>, reply: StatusReply) -> BackendAnswer {
        guard let node = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(node) }
        return rename(operation.arguments, oldParent: node, reply: reply)
    }

    public mutating func create(_ operation: Operation<CreateArguments>, reply: CreatedReply) -> BackendAnswer {
        guard let parent = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(parent) }
        return create(operation.arguments, parent: parent, reply: reply, temporary: false)
    }

    public mutating func tmpfile(_ operation: Operation<CreateArguments>, reply: CreatedReply) -> BackendAnswer {
        guard let parent = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(parent) }
        return create(operation.arguments, parent: parent, reply: reply, temporary: true)
    }

    // MARK: - Attributes

    public mutating func getattr(_ operation: Operation<GetattrArguments>, reply: AttributesReply) -> BackendAnswer {
        guard let node = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(node) }
        return replyAttributes(node.fd, reply: reply)
    }

    public mutating func statx(_ operation: Operation<StatxArguments>, reply: StatxReply) -> BackendAnswer {
        guard let node = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(node) }
        let arguments = operation.arguments
        var s = CDPFS.statx()
        let syncFlags = Int32(bitPattern: arguments.statxFlags) & (AT_STATX_FORCE_SYNC | AT_STATX_DONT_SYNC)
        let failure = CDPFS_statx(node.fd, Self.emptyPath, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | syncFlags,
                                  arguments.mask | UInt32(STATX_BASIC_STATS), &s)
        guard failure == 0 else { return reply.fail(Self.errno(failure)) }
        return reply.statx(Self.attributes(s), valid: validity, mask: s.stx_mask & UInt32(STATX_BASIC_STATS))
    }

    public mutating func setattr(_ operation: Operation<SetattrArguments>, reply: AttributesReply) -> BackendAnswer {
        guard let node = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(node) }
        return setAttributes(operation.arguments, node: node, reply: reply)
    }

    public mutating func readlink(_ operation: Operation<NoArguments>, reply: DataReply) -> BackendAnswer {
        guard let node = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(node) }
        guard node.kind == FileType.symlink else { return reply.fail(.invalid) }
        let length = readlinkat(node.fd, Self.emptyPath, reply.body.assumingMemoryBound(to: CChar.self), reply.bodyCapacity)
        return length < 0 ? reply.fail(Self.lastErrno) : reply.send(bodyBytes: length)
    }

    public mutating func statfs(_ operation: Operation<NoArguments>, reply: StatisticsReply) -> BackendAnswer {
        guard let node = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(node) }
        var s = CDPFS.statfs()
        guard fstatfs(node.fd, &s) == 0 else { return reply.fail(Self.lastErrno) }
        return reply.statistics(FileSystemStatistics(
            blocks: UInt64(s.f_blocks), blocksFree: UInt64(s.f_bfree), blocksAvailable: UInt64(s.f_bavail),
            files: UInt64(s.f_files), filesFree: UInt64(s.f_ffree), blockSizeBytes: UInt32(s.f_bsize),
            nameBytesMax: UInt32(s.f_namelen), fragmentSizeBytes: UInt32(s.f_frsize)))
    }

    public mutating func access(_ operation: Operation<AccessArguments>, reply: StatusReply) -> BackendAnswer {
        guard let node = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(node) }
        guard node.kind != FileType.symlink else { return reply.ok() }
        let mask = Int32(bitPattern: operation.arguments.mask)
        return faccessat(device.procFD, procName(node.fd), mask, AT_EACCESS) == 0 ? reply.ok() : reply.fail(Self.lastErrno)
    }

    // MARK: - Open files

    public mutating func open(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer {
        become(operation.caller)
        return open(operation, reply: reply, directory: false)
    }

    public mutating func opendir(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer {
        become(operation.caller)
        return open(operation, reply: reply, directory: true)
    }

    public mutating func release(_ operation: Operation<ReleaseArguments>, reply: StatusReply) -> BackendAnswer {
        become(operation.caller)
        return release(operation.arguments, nodeID: operation.nodeID, reply: reply)
    }

    public mutating func releasedir(_ operation: Operation<ReleaseArguments>, reply: StatusReply) -> BackendAnswer {
        become(operation.caller)
        return release(operation.arguments, nodeID: operation.nodeID, reply: reply)
    }

    /// The handle's descriptor closes when its last in-flight user is done.
    mutating func release(_ arguments: ReleaseArguments, nodeID: UInt64, reply: StatusReply) -> BackendAnswer {
        if arguments.flushesLocks { device.lockOwners.release(inodeID: nodeID, owner: arguments.lockOwner) }
        if kernelPassthroughAgreed, let pinned = device.handles.pin(arguments.handle) {
            device.releaseBacking(handleIndex: pinned.index)
            device.handles.unpin(pinned.index)
        }
        return device.handles.remove(arguments.handle) ? reply.ok() : reply.fail(.badFileDescriptor)
    }

    /// A close(2) in the guest: the closing owner's POSIX locks on the file go, as locally.
    public mutating func flush(_ operation: Operation<FlushArguments>, reply: StatusReply) -> BackendAnswer {
        become(operation.caller)
        device.lockOwners.release(inodeID: operation.nodeID, owner: operation.arguments.lockOwner)
        return reply.ok()
    }

    public mutating func readdir(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer {
        become(operation.caller)
        return readDirectory(operation.arguments, reply: reply, plus: false)
    }

    public mutating func readdirplus(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer {
        become(operation.caller)
        return readDirectory(operation.arguments, reply: reply, plus: true)
    }

    public mutating func lseek(_ operation: Operation<LseekArguments>, reply: OffsetReply) -> BackendAnswer {
        become(operation.caller)
        let arguments = operation.arguments
        guard let handle = device.handles.pin(arguments.handle) else { return reply.fail(.badFileDescriptor) }
        defer { device.handles.unpin(handle.index) }
        let result = Glibc.lseek(handle.fd, off_t(Int64(bitPattern: arguments.offset)), Int32(arguments.whence))
        return result < 0 ? reply.fail(Self.lastErrno) : reply.offset(UInt64(result))
    }

    public mutating func fallocate(_ operation: Operation<FallocateArguments>, reply: StatusReply) -> BackendAnswer {
        become(operation.caller)
        let arguments = operation.arguments
        guard let handle = device.handles.pin(arguments.handle) else { return reply.fail(.badFileDescriptor) }
        defer { device.handles.unpin(handle.index) }
        let result = CDPFS.fallocate(handle.fd, Int32(bitPattern: arguments.mode),
                                     off_t(Int64(bitPattern: arguments.offset)), off_t(Int64(bitPattern: arguments.length)))
        return result < 0 ? reply.fail(Self.lastErrno) : reply.ok()
    }

    public mutating func copyFileRange(_ operation: Operation<CopyFileRangeArguments>, reply: CopiedReply) -> BackendAnswer {
        become(operation.caller)
        return copyFileRange(operation.arguments, reply: reply, wide: reply.isSixtyFourBit)
    }

    public mutating func syncfs(_ operation: Operation<NoArguments>, reply: StatusReply) -> BackendAnswer {
        become(operation.caller)
        return CDPFS.syncfs(device.rootDirectoryFD) == 0 ? reply.ok() : reply.fail(Self.lastErrno)
    }

    // MARK: - Extended attributes

    public mutating func getxattr(_ operation: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer {
        queryAttributes(operation, reply: reply)
    }

    public mutating func listxattr(_ operation: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer {
        queryAttributes(operation, reply: reply)
    }

    public mutating func setxattr(_ operation: Operation<SetxattrArguments>, reply: StatusReply) -> BackendAnswer {
        guard let node = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(node) }
        let fd = xattrDescriptor(node)
        guard fd >= 0 else { return reply.fail(fd == Self.noUserAttributes ? .notPermitted : Self.lastErrno) }
        defer { _ = close(fd) }
        let scratch = queue!.scratch
        var value = operation.arguments.value
        let length = Int(operation.arguments.size)
        guard length <= PassthroughQueueState.scratchBytes, value.read(into: scratch, byteCount: length) == length else {
            return reply.fail(.invalid)
        }
        let flags = Int32(bitPattern: operation.arguments.flags)
        return fsetxattr(fd, operation.arguments.name.cString, scratch, length, flags) == 0 ? reply.ok() : reply.fail(Self.lastErrno)
    }

    public mutating func removexattr(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer {
        guard let node = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(node) }
        let fd = xattrDescriptor(node)
        guard fd >= 0 else { return reply.fail(fd == Self.noUserAttributes ? .noData : Self.lastErrno) }
        defer { _ = close(fd) }
        return fremovexattr(fd, operation.arguments.name.cString) == 0 ? reply.ok() : reply.fail(Self.lastErrno)
    }

    func withHandle(_ fh: UInt64, reply: FUSEReply, _ body: (PinnedNode) -> Void) {
        guard let handle = device.handles.pin(fh) else { return reply.fail(.badFileDescriptor) }
        body(handle)
        device.handles.unpin(handle.index)
    }

    // MARK: Names

    mutating func lookup(_ name: Name, in node: PinnedNode, nodeID: UInt64, reply: EntryReply) -> BackendAnswer {
        guard node.kind == FileType.directory else { return reply.fail(.notDirectory) }
        if name.isDotOrDotDot {
            // "." is the directory itself; ".." at the root stays at the root. The kernel sends
            // neither without export support, which is not negotiated; a ".." below the root would
            // need a path the engine does not keep, so it is refused.
            if name.count == 1 || nodeID == Self.rootNodeID {
                let fd = openat(node.fd, Self.dotPath, O_PATH | O_NOFOLLOW | O_CLOEXEC)
                guard fd >= 0 else { return reply.fail(Self.lastErrno) }
                if nodeID == Self.rootNodeID {
                    _ = close(fd)
                    var s = CDPFS.statx()
                    guard Self.status(device.rootFD, &s) == 0 else { return reply.fail(.io) }
                    return reply.entry(nodeID: Self.rootNodeID, generation: 0, entryValid: validity, attrValid: validity,
                                       attributes: Self.attributes(s))
                }
                enter(fd: fd, reply: reply.wire, handle: nil)
                return .done
            }
            return reply.fail(.noEntry)
        }
        lookupEntry(parent: node, name: name.cString, reply: reply.wire)
        return .done
    }

    /// After a MKDIR, MKNOD, SYMLINK or LINK: the new entry, looked up, or the call's errno.
    mutating func finishEntry(_ result: Int32, parent: PinnedNode, name: Name, reply: EntryReply) -> BackendAnswer {
        guard result == 0 else { return reply.fail(Self.lastErrno) }
        lookupEntry(parent: parent, name: name.cString, reply: reply.wire)
        return .done
    }

    mutating func create(_ arguments: CreateArguments, parent: PinnedNode, reply typed: CreatedReply, temporary: Bool) -> BackendAnswer {
        let reply = typed.wire
        if !temporary && arguments.name.isDotOrDotDot { return typed.fail(.isDirectory) }
        var flags = Int32(bitPattern: arguments.flags) & ~(O_NOCTTY | O_CLOEXEC | O_DIRECT)
        flags |= O_CLOEXEC | O_NOFOLLOW
        if device.configuration.cacheMode == .always { flags = adjustForWritebackCache(flags) }
        let mode = UInt64(arguments.mode & ~arguments.umask & 0o7777)
        let fd: Int32
        if temporary {
            flags = (flags & ~(O_CREAT | O_EXCL | O_NOFOLLOW)) | O_TMPFILE
            fd = CDPFS_openat2(parent.fd, Self.dotPath, UInt64(UInt32(bitPattern: flags)), mode, device.resolveFlags)
        } else {
            fd = CDPFS_openat2(parent.fd, arguments.name.cString, UInt64(UInt32(bitPattern: flags | O_CREAT)), mode, device.resolveFlags)
        }
        guard fd >= 0 else { return typed.fail(Self.lastErrno) }
        // The inode's O_PATH descriptor comes from the open file itself, so a rename racing with
        // this CREATE cannot make the entry name another file.
        let pathFD = openat(device.procFD, procName(fd), O_PATH | O_CLOEXEC)
        guard pathFD >= 0 else {
            let failure = Self.lastErrno
            _ = close(fd)
            return typed.fail(failure)
        }
        guard let handleIndex = device.handles.insert(fd: fd, kind: UInt32(bitPattern: flags)) else {
            _ = close(fd)
            _ = close(pathFD)
            logTableFull("open-file", limit: device.configuration.openFilesMax)
            return typed.fail(FUSEErrno(ENFILE))
        }
        let handle = device.handles.id(of: handleIndex)
        enter(fd: pathFD, reply: reply, handle: handle)
        // When the entry could not be made (inode table full), the open file is of no use.
        if reply.replyLength.pointee == UInt32(OutHeaderLayout.size) { _ = device.handles.remove(handle) }
        return .done
    }

    /// With writeback caching the kernel reads pages of files opened write-only and appends by
    /// itself: the host descriptor must be readable and must not append.
    func adjustForWritebackCache(_ flags: Int32) -> Int32 {
        var adjusted = flags & ~O_APPEND
        if adjusted & O_ACCMODE == O_WRONLY { adjusted = (adjusted & ~O_ACCMODE) | O_RDWR }
        return adjusted
    }

    mutating func link(_ arguments: LinkArguments, newParent: PinnedNode, reply: EntryReply) -> BackendAnswer {
        guard let old = pinNode(arguments.target) else { return reply.fail(.noEntry) }
        defer { unpinNode(old) }
        guard !arguments.name.isDotOrDotDot else { return reply.fail(.exists) }
        guard old.kind != FileType.directory else { return reply.fail(.notPermitted) }
        let name = arguments.name.cString
        // linkat through /proc/self/fd follows the engine's own descriptor, not a guest path.
        let result: Int32
        if old.kind == FileType.symlink {
            result = linkat(old.fd, Self.emptyPath, newParent.fd, name, AT_EMPTY_PATH)
        } else {
            result = linkat(device.procFD, procName(old.fd), newParent.fd, name, AT_SYMLINK_FOLLOW)
        }
        return finishEntry(result, parent: newParent, name: arguments.name, reply: reply)
    }

    mutating func rename(_ arguments: RenameArguments, oldParent: PinnedNode, reply: StatusReply) -> BackendAnswer {
        guard !arguments.name.isDotOrDotDot, !arguments.newName.isDotOrDotDot else { return reply.fail(.invalid) }
        guard arguments.flags & ~UInt32(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT) == 0 else { return reply.fail(.invalid) }
        guard let newParent = pinNode(arguments.newParent) else { return reply.fail(.noEntry) }
        defer { unpinNode(newParent) }
        let result = renameat2(oldParent.fd, arguments.name.cString, newParent.fd, arguments.newName.cString, arguments.flags)
        return result == 0 ? reply.ok() : reply.fail(Self.lastErrno)
    }

    // MARK: Open files

    mutating func open(_ operation: Operation<OpenArguments>, reply: OpenedReply, directory: Bool) -> BackendAnswer {
        guard let node = pinNode(operation.nodeID) else { return reply.fail(.noEntry) }
        defer { unpinNode(node) }
        shareGroup(of: node)
        var flags = Int32(bitPattern: operation.arguments.flags)
        // O_NOFOLLOW too: the kernel resolved the path already (it never opens a symlink node),
        // and on the engine's re-open through /proc/self/fd it would refuse the magic link (ELOOP).
        flags &= ~(O_CREAT | O_EXCL | O_NOCTTY | O_CLOEXEC | O_DIRECT | O_PATH | O_NOFOLLOW)
        if directory {
            guard node.kind == FileType.directory else { return reply.fail(.notDirectory) }
            flags = O_RDONLY | O_DIRECTORY
        } else {
            if node.kind == FileType.directory && flags & O_ACCMODE != O_RDONLY { return reply.fail(.isDirectory) }
            if device.configuration.cacheMode == .always { flags = adjustForWritebackCache(flags) }
        }
        let fd = reopen(node, flags: flags)
        guard fd >= 0 else { return reply.fail(Self.lastErrno) }
        guard let index = device.handles.insert(fd: fd, kind: UInt32(bitPattern: flags)) else {
            _ = close(fd)
            logTableFull("open-file", limit: device.configuration.openFilesMax)
            return reply.fail(FUSEErrno(ENFILE))
        }
        let handle = device.handles.id(of: index)
        if directory { return reply.open(fileHandle: handle, openFlags: 0) }
        let (replyFlags, backingID) = passthroughOpen(handle: handle, inodeIndex: node.index, kind: node.kind)
        return reply.open(fileHandle: handle, openFlags: replyFlags, backingID: backingID)
    }

    /// The open flags of a regular file's OPEN or CREATE reply, with kernel passthrough where the
    /// session has it: the inode's backing file (registered with the first open), and the kernel
    /// does the file's reads and writes itself. A file that cannot be registered is served uncached
    /// (FOPEN_DIRECT_IO), the one mode the kernel allows beside passthrough opens of the same inode.
    func passthroughOpen(handle: UInt64, inodeIndex: UInt32, kind: UInt32) -> (flags: UInt32, backingID: Int32) {
        guard kernelPassthroughAgreed, kind == FileType.regular, let pinned = device.handles.pin(handle) else { return (openFlags, 0) }
        defer { device.handles.unpin(pinned.index) }
        let id = device.acquireBacking(fd: pinned.fd, inodeIndex: inodeIndex, handleIndex: pinned.index)
        guard id > 0 else { return (UInt32(FOPEN_DIRECT_IO), 0) }
        return (OpenReplyFlags.passthrough, id)
    }

    func copyFileRange(_ arguments: CopyFileRangeArguments, reply: CopiedReply, wide: Bool) -> BackendAnswer {
        guard let input = device.handles.pin(arguments.handleIn) else { return reply.fail(.badFileDescriptor) }
        defer { device.handles.unpin(input.index) }
        guard let output = device.handles.pin(arguments.handleOut) else { return reply.fail(.badFileDescriptor) }
        defer { device.handles.unpin(output.index) }
        var inputOffset = off_t(Int64(bitPattern: arguments.offsetIn))
        var outputOffset = off_t(Int64(bitPattern: arguments.offsetOut))
        let length = wide ? Int(min(arguments.length, UInt64(Int.max))) : Int(min(arguments.length, UInt64(UInt32.max)))
        let copied = copy_file_range(input.fd, &inputOffset, output.fd, &outputOffset, length, UInt32(arguments.flags))
        return copied < 0 ? reply.fail(Self.lastErrno) : reply.copied(bytes: UInt64(copied))
    }

    // MARK: Attributes

    /// Whether `mode` only takes set-ID bits away from the node's mode (SetIDBits.onlyDrops): what
    /// a kernel sends to drop privileges after a write, which the writer may ask for whoever owns
    /// the file (anything else stays the host's owner-only chmod).
    static func onlyDropsSetID(_ fd: Int32, to mode: mode_t) -> Bool {
        var status = stat()
        guard fstat(fd, &status) == 0 else { return false }
        return SetIDBits.onlyDrops(from: UInt32(status.st_mode), to: UInt32(mode))
    }

    /// chown(2) as the caller. A group the caller holds only as a supplementary group is not in the
    /// request (FUSE sends one uid and one gid) but the kernel that sent it checked it
    /// (default_permissions): with that group as the fs gid for this one call, the host file system
    /// sees the membership and still checks that the caller owns the file.
    mutating func changeOwner(_ node: PinnedNode, uid: UInt32, gid: UInt32) -> Int32 {
        let borrows = switchesCredentials && currentUID != 0 && gid != UInt32.max && gid != currentGID
        if borrows { _ = setfsgid(gid) }
        let result = fchownat(node.fd, Self.emptyPath, uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)
        let failure = Glibc.errno
        if borrows { _ = setfsgid(currentGID) }
        Glibc.errno = failure
        return result
    }

    /// FUSE carries no supplementary groups, and the engine acts with none; the kernel that sent
    /// the request checked the caller's (default_permissions). Where the node's group grants more
    /// than its "other" bits and nothing less, the caller may only have got here as a member: the
    /// thread then holds that group for the request, so the host file system agrees with the
    /// kernel (a lookup or a create in a group-writable directory, an open of a group-readable
    /// file, a setgid directory's bit kept). Never for the owner or the caller's own group, and
    /// never where membership would take a right away ("other" granting what the group does not).
    mutating func shareGroup(of node: PinnedNode) {
        guard switchesCredentials, currentUID != 0 else { return }
        var status = stat()
        var wanted = UInt32.max
        if fstat(node.fd, &status) == 0, status.st_uid != currentUID, status.st_gid != currentGID {
            let groupBits = (status.st_mode >> 3) & 0o7, otherBits = status.st_mode & 0o7
            if groupBits & ~otherBits != 0 && otherBits & ~groupBits == 0 { wanted = status.st_gid }
        }
        guard wanted != sharedGroup else { return }
        let result = wanted == UInt32.max ? CDPFS_thread_drop_supplementary_groups() : CDPFS_thread_set_one_supplementary_group(wanted)
        sharedGroup = result == 0 ? wanted : UInt32.max
    }

    mutating func setAttributes(_ arguments: SetattrArguments, node: PinnedNode, reply: AttributesReply) -> BackendAnswer {
        let a = arguments.fields
        let valid = a.valid
        var handle: PinnedNode? = nil
        if valid & UInt32(FATTR_FH) != 0 {
            guard let pinned = device.handles.pin(a.fh) else { return reply.fail(.badFileDescriptor) }
            handle = pinned
        }
        defer { if let handle { device.handles.unpin(handle.index) } }
        if valid & UInt32(FATTR_MODE) != 0 {
            guard node.kind != FileType.symlink else { return reply.fail(.notSupported) }
            let mode = mode_t(a.mode & 0o7777)
            let result = handle.map { fchmod($0.fd, mode) } ?? fchmodat(device.procFD, procName(node.fd), mode, 0)
            guard result == 0 else {
                let failure = Glibc.errno
                // Without handle_killpriv_v2 (virtio-fs guests) the kernel drops set-ID bits after a
                // write by sending the mode without them, as the writer, who need not own the file.
                if failure == EPERM && Self.onlyDropsSetID(node.fd, to: mode) && killSetIDAsEngine(node.fd) {
                    return replyAttributes(node.fd, reply: reply)
                }
                return reply.fail(Self.errno(failure))
            }
        }
        // A SETATTR that changes nothing is a chown(-1, -1), or the kernel dropping set-ID bits
        // (file_remove_privs): it strips ATTR_KILL_SUID/SGID and leaves the killing to the server
        // (always with handle_killpriv_v2). Replayed as chown(-1, -1), the host file system applies
        // exactly its own rules (set-user-ID goes, set-group-ID with group execute, ctime moves).
        let changes = UInt32(FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE | FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW)
        if valid & UInt32(FATTR_UID | FATTR_GID) != 0 || valid & changes == 0 {
            let uid = valid & UInt32(FATTR_UID) != 0 ? a.uid : UInt32.max
            let gid = valid & UInt32(FATTR_GID) != 0 ? a.gid : UInt32.max
            guard changeOwner(node, uid: uid, gid: gid) == 0 else {
                let failure = Glibc.errno
                // An empty SETATTR that the host refuses a caller who does not own the file is the
                // kernel dropping set-ID bits after that caller's write (file_remove_privs): the
                // kernel checked it may, so the engine drops them as a local write would.
                if valid & changes == 0 && failure == EPERM && killSetIDAsEngine(node.fd) { return replyAttributes(node.fd, reply: reply) }
                return reply.fail(Self.errno(failure))
            }
        }
        if let size = arguments.newSizeBytes {
            let failure = truncate(node, handle: handle, to: off_t(Int64(bitPattern: size)))
            guard failure == nil else { return reply.fail(failure!) }
        }
        if valid & UInt32(FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW) != 0 {
            guard setTimes(a, node: node, handle: handle) == 0 else { return reply.fail(Self.lastErrno) }
        }
        return replyAttributes(node.fd, reply: reply)
    }

    /// SETATTR's size: through the open file when the kernel names one, else through a write-only
    /// re-open of the inode (regular files only). Nil on success, else the errno.
    mutating func truncate(_ node: PinnedNode, handle: PinnedNode?, to size: off_t) -> FUSEErrno? {
        if let handle { return ftruncate(handle.fd, size) == 0 ? nil : Self.lastErrno }
        guard node.kind == FileType.regular else { return node.kind == FileType.directory ? .isDirectory : .invalid }
        let fd = reopen(node, flags: O_WRONLY)
        guard fd >= 0 else { return Self.lastErrno }
        let result = ftruncate(fd, size)
        let failure = Self.lastErrno
        _ = close(fd)
        return result == 0 ? nil : failure
    }

    /// SETATTR's times: each given, "now", or left alone (UTIME_OMIT), with nanoseconds. A symlink's
    /// own times are set without following it. Returns the call's result (errno set on -1).
    func setTimes(_ a: fuse_setattr_in, node: PinnedNode, handle: PinnedNode?) -> Int32 {
        let valid = a.valid
        var times = (timespec(tv_sec: 0, tv_nsec: Self.timeOmit), timespec(tv_sec: 0, tv_nsec: Self.timeOmit))
        if valid & UInt32(FATTR_ATIME_NOW) != 0 { times.0.tv_nsec = Self.timeNow }
        else if valid & UInt32(FATTR_ATIME) != 0 { times.0 = timespec(tv_sec: Int(Int64(bitPattern: a.atime)), tv_nsec: Int(a.atimensec)) }
        if valid & UInt32(FATTR_MTIME_NOW) != 0 { times.1.tv_nsec = Self.timeNow }
        else if valid & UInt32(FATTR_MTIME) != 0 { times.1 = timespec(tv_sec: Int(Int64(bitPattern: a.mtime)), tv_nsec: Int(a.mtimensec)) }
        return withUnsafePointer(to: &times) { pair in
            pair.withMemoryRebound(to: timespec.self, capacity: 2) { pointer -> Int32 in
                if let handle { return futimens(handle.fd, pointer) }
                if node.kind == FileType.symlink { return utimensat(node.fd, Self.emptyPath, pointer, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) }
                return utimensat(device.procFD, procName(node.fd), pointer, 0)
            }
        }
    }

    // MARK: Directories

    mutating func readDirectory(_ arguments: ReadArguments, reply: DataReply, plus: Bool) -> BackendAnswer {
        guard let handle = device.handles.pin(arguments.handle) else { return reply.fail(.badFileDescriptor) }
        defer { device.handles.unpin(handle.index) }
        guard handle.kind & UInt32(O_DIRECTORY) != 0 else { return reply.fail(.notDirectory) }
        // The guest's offset is the host's d_off of the previous entry: seek there every time, so a
        // listing read across many calls continues exactly where the guest stopped.
        guard Glibc.lseek(handle.fd, off_t(Int64(bitPattern: arguments.offset)), SEEK_SET) >= 0 else { return reply.fail(Self.lastErrno) }
        var writer = DirectoryEntryWriter(destination: reply.body, capacity: min(Int(arguments.size), reply.bodyCapacity))
        let scratch = queue!.scratch
        // Host entries are about the size of FUSE's; READDIRPLUS entries are ~6 times larger.
        let readBytes = min(plus ? writer.capacity / 4 + 512 : writer.capacity + 512, PassthroughQueueState.scratchBytes)
        var full = false
        while !full {
            let count = getdents64(handle.fd, scratch, readBytes)
            if count < 0 {
                if writer.bytesWritten == 0 { return reply.fail(Self.lastErrno) }
                break
            }
            if count == 0 { break }
            var position = 0
            while position < count {
                let entry = scratch + position
                let recordLength = Int(entry.load(fromByteOffset: 16, as: UInt16.self))
                let inode = entry.load(fromByteOffset: 0, as: UInt64.self)
                let nextOffset = entry.load(fromByteOffset: 8, as: UInt64.self)
                let type = UInt32(entry.load(fromByteOffset: 18, as: UInt8.self))
                let namePointer = (entry + 19).assumingMemoryBound(to: CChar.self)
                let nameLength = strnlen(namePointer, recordLength - 19)
                let name = UnsafeRawBufferPointer(start: entry + 19, count: nameLength)
                position += recordLength
                guard nameLength > 0 && nameLength <= FUSELimits.nameBytesMax else { continue }
                let fits: Bool
                if plus {
                    let needed = EntryOutLayout.size + DirentLayout.alignedSize(nameLength: nameLength)
                    guard writer.bytesWritten + needed <= writer.capacity else { full = true; break }
                    fits = appendPlus(&writer, directory: handle.fd, name: name, inode: inode, nextOffset: nextOffset, type: type)
                } else {
                    fits = writer.append(inode: inode, nextOffset: nextOffset, type: type, name: name)
                }
                if !fits { full = true; break }
            }
        }
        return reply.send(bodyBytes: writer.bytesWritten)
    }

    /// One READDIRPLUS entry: "." and ".." carry no entry (node 0, which the kernel skips); every
    /// other name is looked up, counting one lookup the kernel will FORGET.
    mutating func appendPlus(_ writer: inout DirectoryEntryWriter, directory: Int32, name: UnsafeRawBufferPointer,
                             inode: UInt64, nextOffset: UInt64, type: UInt32) -> Bool {
        let zero = FUSETime(seconds: 0)
        let none = FileAttributes(inode: inode, sizeBytes: 0, blocks: 0, accessTime: zero, modificationTime: zero,
                                  changeTime: zero, mode: type << 12, linkCount: 0, uid: 0, gid: 0, rdev: 0, blockSizeBytes: 0)
        if Self.isDotOrDotDot(name) {
            return writer.appendPlus(nodeID: 0, generation: 0, entryValid: CacheValidity(seconds: 0), attrValid: CacheValidity(seconds: 0),
                                     attributes: none, nextOffset: nextOffset, type: type, name: name)
        }
        let fd = CDPFS_openat2(directory, Self.cString(name), UInt64(O_PATH | O_NOFOLLOW | O_CLOEXEC), 0, device.resolveFlags)
        var s = CDPFS.statx()
        guard fd >= 0, Self.status(fd, &s) == 0 else {
            if fd >= 0 { _ = close(fd) }
            // Gone since the listing was read (or not reachable): list it without an entry.
            return writer.appendPlus(nodeID: 0, generation: 0, entryValid: CacheValidity(seconds: 0), attrValid: CacheValidity(seconds: 0),
                                     attributes: none, nextOffset: nextOffset, type: type, name: name)
        }
        guard let index = register(fd: fd, status: &s) else {
            return writer.appendPlus(nodeID: 0, generation: 0, entryValid: CacheValidity(seconds: 0), attrValid: CacheValidity(seconds: 0),
                                     attributes: none, nextOffset: nextOffset, type: type, name: name)
        }
        let id = device.inodes.id(of: index)
        let appended = writer.appendPlus(nodeID: id, generation: id >> 32, entryValid: validity, attrValid: validity,
                                         attributes: Self.attributes(s), nextOffset: nextOffset, type: type, name: name)
        if !appended { device.inodes.forget(id, count: 1) }
        return appended
    }

    // MARK: Extended attributes

    /// Marks a node that has no user extended attributes (`xattrDescriptor`).
    static let noUserAttributes: Int32 = -2

    /// A read-only descriptor of `node` for the f*xattr calls: -1 with errno on failure, or
    /// `noUserAttributes` for symlinks and special files (Linux gives them no user xattrs, and the
    /// engine never opens one).
    mutating func xattrDescriptor(_ node: PinnedNode) -> Int32 {
        guard node.kind == FileType.regular || node.kind == FileType.directory else { return Self.noUserAttributes }
        return reopen(node, flags: O_RDONLY | O_NONBLOCK)
    }

    /// GETXATTR (a name) and LISTXATTR (none): `size` 0 asks only for the length.
    mutating func queryAttributes(_ operation: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer {
        guard let node = pinAsCaller(operation.nodeID, operation.caller) else { return reply.fail(.noEntry) }
        defer { unpinNode(node) }
        let name = operation.arguments.name
        let fd = xattrDescriptor(node)
        guard fd >= 0 else { return reply.fail(fd == Self.noUserAttributes ? (name == nil ? .notSupported : .noData) : Self.lastErrno) }
        defer { _ = close(fd) }
        let scratch = queue!.scratch
        let size = Int(operation.arguments.size)
        let room = size == 0 ? 0 : min(size, FUSELimits.xattrValueBytesMax)
        let length = if let name {
            fgetxattr(fd, name.cString, room == 0 ? nil : scratch, room)
        } else {
            flistxattr(fd, room == 0 ? nil : scratch.assumingMemoryBound(to: CChar.self), room)
        }
        guard length >= 0 else { return reply.fail(Self.lastErrno) }
        if size == 0 { return reply.xattrSize(UInt32(length)) }
        guard length <= reply.dataCapacity else { return reply.fail(.range) }
        var cursor = reply.data
        _ = cursor.write(from: scratch, byteCount: length)
        return reply.sendInPlace(dataBytes: length)
    }
}
