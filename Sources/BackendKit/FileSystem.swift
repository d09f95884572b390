import CDPFS
import DPFSCore
import FUSEWire

/// The contract a backend is written against: one method per FUSE operation (or family), each
/// taking typed arguments and a typed reply, each with a default so a backend implements only what
/// it answers. Conforming makes a type a `Backend`: `handle(_:reply:token:)` (FileSystemAdapter.swift)
/// owns the opcode switch, FORGET and BATCH_FORGET decoding, and the opcodes no backend answers.
///
/// Every method returns `.done` once the reply is written (the typed replies return it), or
/// `.pending` when the backend writes the reply later and completes `operation.token` through its
/// `BackendContext`. Methods run on the queue's poller thread and must not block.
///
/// Defaults: ENOSYS (`.notImplemented`) unless said otherwise. On ENOSYS the Linux kernel stops
/// sending some requests and treats them as success from then on (FLUSH, FSYNC, FSYNCDIR, ACCESS,
/// SETXATTR/GETXATTR/LISTXATTR/REMOVEXATTR, INTERRUPT, FALLOCATE, LSEEK, COPY_FILE_RANGE,
/// SYNCFS, STATX); for the rest the caller sees ENOSYS.
public protocol FileSystem: Backend {
    /// A read-only share: every request that would change it is answered EROFS before it reaches
    /// the backend (ReadOnlyShare). Default: false.
    var refusesChanges: Bool { get }
    /// LOOKUP: `name` in directory `nodeID`; counts one lookup of the answered node.
    mutating func lookup(_ operation: Operation<NameArguments>, reply: EntryReply) -> BackendAnswer
    /// FORGET and BATCH_FORGET: the kernel drops `lookups` references to `nodeID`. No reply.
    /// Default: nothing (a backend whose nodes live forever).
    mutating func forget(nodeID: UInt64, lookups: UInt64)
    mutating func getattr(_ operation: Operation<GetattrArguments>, reply: AttributesReply) -> BackendAnswer
    mutating func setattr(_ operation: Operation<SetattrArguments>, reply: AttributesReply) -> BackendAnswer
    mutating func statx(_ operation: Operation<StatxArguments>, reply: StatxReply) -> BackendAnswer
    mutating func readlink(_ operation: Operation<NoArguments>, reply: DataReply) -> BackendAnswer
    mutating func symlink(_ operation: Operation<SymlinkArguments>, reply: EntryReply) -> BackendAnswer
    mutating func mknod(_ operation: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer
    mutating func mkdir(_ operation: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer
    mutating func unlink(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer
    mutating func rmdir(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer
    /// RENAME and RENAME2 (`flags` 0 for RENAME).
    mutating func rename(_ operation: Operation<RenameArguments>, reply: StatusReply) -> BackendAnswer
    mutating func link(_ operation: Operation<LinkArguments>, reply: EntryReply) -> BackendAnswer
    mutating func open(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer
    mutating func create(_ operation: Operation<CreateArguments>, reply: CreatedReply) -> BackendAnswer
    mutating func tmpfile(_ operation: Operation<CreateArguments>, reply: CreatedReply) -> BackendAnswer
    mutating func read(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer
    mutating func write(_ operation: Operation<WriteArguments>, reply: WrittenReply) -> BackendAnswer
    mutating func flush(_ operation: Operation<FlushArguments>, reply: StatusReply) -> BackendAnswer
    /// RELEASE. Default: success (nothing was opened, nothing to close).
    mutating func release(_ operation: Operation<ReleaseArguments>, reply: StatusReply) -> BackendAnswer
    mutating func fsync(_ operation: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer
    mutating func opendir(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer
    mutating func readdir(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer
    mutating func readdirplus(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer
    /// RELEASEDIR. Default: success.
    mutating func releasedir(_ operation: Operation<ReleaseArguments>, reply: StatusReply) -> BackendAnswer
    mutating func fsyncdir(_ operation: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer
    mutating func statfs(_ operation: Operation<NoArguments>, reply: StatisticsReply) -> BackendAnswer
    mutating func setxattr(_ operation: Operation<SetxattrArguments>, reply: StatusReply) -> BackendAnswer
    mutating func getxattr(_ operation: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer
    mutating func listxattr(_ operation: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer
    mutating func removexattr(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer
    mutating func access(_ operation: Operation<AccessArguments>, reply: StatusReply) -> BackendAnswer
    mutating func getlk(_ operation: Operation<LockArguments>, reply: LockReply) -> BackendAnswer
    /// SETLK (`wait` false) and SETLKW (`wait` true: answer when granted or interrupted).
    mutating func setlk(_ operation: Operation<LockArguments>, wait: Bool, reply: StatusReply) -> BackendAnswer
    /// INTERRUPT of request `target`. The kernel ignores the answer unless it is ENOSYS (send no
    /// more) or EAGAIN (send again).
    mutating func interrupt(_ operation: Operation<InterruptArguments>, reply: StatusReply) -> BackendAnswer
    mutating func fallocate(_ operation: Operation<FallocateArguments>, reply: StatusReply) -> BackendAnswer
    mutating func lseek(_ operation: Operation<LseekArguments>, reply: OffsetReply) -> BackendAnswer
    /// COPY_FILE_RANGE and COPY_FILE_RANGE_64 (the reply knows which form to send).
    mutating func copyFileRange(_ operation: Operation<CopyFileRangeArguments>, reply: CopiedReply) -> BackendAnswer
    mutating func syncfs(_ operation: Operation<NoArguments>, reply: StatusReply) -> BackendAnswer
}

/// INTERRUPT: the `unique` of the request to interrupt.
@frozen
public struct InterruptArguments {
    public let target: UInt64

    @inlinable
    init(_ request: FUSERequest) { target = fixedArguments(request, as: fuse_interrupt_in.self).unique }
}

extension FileSystem {
    @inlinable public var refusesChanges: Bool { false }
    @inlinable public mutating func lookup(_ operation: Operation<NameArguments>, reply: EntryReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func forget(nodeID: UInt64, lookups: UInt64) {}
    @inlinable public mutating func getattr(_ operation: Operation<GetattrArguments>, reply: AttributesReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func setattr(_ operation: Operation<SetattrArguments>, reply: AttributesReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func statx(_ operation: Operation<StatxArguments>, reply: StatxReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func readlink(_ operation: Operation<NoArguments>, reply: DataReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func symlink(_ operation: Operation<SymlinkArguments>, reply: EntryReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func mknod(_ operation: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func mkdir(_ operation: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func unlink(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func rmdir(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func rename(_ operation: Operation<RenameArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func link(_ operation: Operation<LinkArguments>, reply: EntryReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func open(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func create(_ operation: Operation<CreateArguments>, reply: CreatedReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func tmpfile(_ operation: Operation<CreateArguments>, reply: CreatedReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func read(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func write(_ operation: Operation<WriteArguments>, reply: WrittenReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func flush(_ operation: Operation<FlushArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func release(_ operation: Operation<ReleaseArguments>, reply: StatusReply) -> BackendAnswer { reply.ok() }
    @inlinable public mutating func fsync(_ operation: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func opendir(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func readdir(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func readdirplus(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func releasedir(_ operation: Operation<ReleaseArguments>, reply: StatusReply) -> BackendAnswer { reply.ok() }
    @inlinable public mutating func fsyncdir(_ operation: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func statfs(_ operation: Operation<NoArguments>, reply: StatisticsReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func setxattr(_ operation: Operation<SetxattrArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func getxattr(_ operation: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func listxattr(_ operation: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func removexattr(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func access(_ operation: Operation<AccessArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func getlk(_ operation: Operation<LockArguments>, reply: LockReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func setlk(_ operation: Operation<LockArguments>, wait: Bool, reply: StatusReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func interrupt(_ operation: Operation<InterruptArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func fallocate(_ operation: Operation<FallocateArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func lseek(_ operation: Operation<LseekArguments>, reply: OffsetReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func copyFileRange(_ operation: Operation<CopyFileRangeArguments>, reply: CopiedReply) -> BackendAnswer { reply.fail(.notImplemented) }
    @inlinable public mutating func syncfs(_ operation: Operation<NoArguments>, reply: StatusReply) -> BackendAnswer { reply.fail(.notImplemented) }
}
