import DPFSCore
import FUSEWire

// Typed reply writers: a `Reply<Kind>` offers `fail` and only the answers its operation can give
// (a LOOKUP cannot be answered with an OPEN reply). Every answer returns `.done`, so a
// synchronous method reads `return reply.entry(...)`. A backend that answers later keeps the
// reply (or its `wire` form, in a table shared by several kinds) and writes it before completing
// the token.

/// The kinds of reply, as types: they only select which answers `Reply` offers.
public enum ReplyKind {
    /// LOOKUP, MKNOD, MKDIR, SYMLINK, LINK: an entry.
    public enum Entry {}
    /// GETATTR, SETATTR: attributes.
    public enum Attributes {}
    /// STATX.
    public enum Statx {}
    /// CREATE, TMPFILE: an entry and an open file.
    public enum Created {}
    /// OPEN, OPENDIR.
    public enum Opened {}
    /// READ, READLINK, READDIR, READDIRPLUS, GETXATTR, LISTXATTR: bytes.
    public enum Data {}
    /// WRITE.
    public enum Written {}
    /// STATFS.
    public enum Statistics {}
    /// GETLK.
    public enum Lock {}
    /// LSEEK: an offset.
    public enum Offset {}
    /// Everything answered with success or an errno alone (UNLINK, RELEASE, FSYNC, ...).
    public enum Status {}
}

public typealias EntryReply = Reply<ReplyKind.Entry>
public typealias AttributesReply = Reply<ReplyKind.Attributes>
public typealias StatxReply = Reply<ReplyKind.Statx>
public typealias CreatedReply = Reply<ReplyKind.Created>
public typealias OpenedReply = Reply<ReplyKind.Opened>
public typealias DataReply = Reply<ReplyKind.Data>
public typealias WrittenReply = Reply<ReplyKind.Written>
public typealias StatisticsReply = Reply<ReplyKind.Statistics>
public typealias LockReply = Reply<ReplyKind.Lock>
public typealias OffsetReply = Reply<ReplyKind.Offset>
public typealias StatusReply = Reply<ReplyKind.Status>

@frozen
public struct Reply<Kind>: @unchecked Sendable {
    /// The untyped writer underneath: for a backend that parks replies of several kinds in one
    /// per-request table and finishes them later.
    public let wire: FUSEReply

    @inlinable
    init(_ wire: FUSEReply) { self.wire = wire }

    /// Answers with an errno (a 16-byte reply).
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func fail(_ errno: FUSEErrno) -> BackendAnswer {
        wire.fail(errno)
        return .done
    }
}

extension Reply where Kind == ReplyKind.Entry {
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func entry(nodeID: UInt64, generation: UInt64, entryValid: CacheValidity, attrValid: CacheValidity,
                      attributes: FileAttributes) -> BackendAnswer {
        wire.entry(nodeID: nodeID, generation: generation, entryValid: entryValid, attrValid: attrValid, attributes: attributes)
        return .done
    }
}

extension Reply where Kind == ReplyKind.Attributes {
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func attributes(_ attributes: FileAttributes, valid: CacheValidity) -> BackendAnswer {
        wire.attributes(attributes, valid: valid)
        return .done
    }
}

extension Reply where Kind == ReplyKind.Statx {
    /// `mask`: the STATX_* fields that are valid in `attributes`.
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func statx(_ attributes: FileAttributes, valid: CacheValidity, mask: UInt32) -> BackendAnswer {
        wire.statx(attributes, valid: valid, mask: mask)
        return .done
    }
}

extension Reply where Kind == ReplyKind.Created {
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func created(nodeID: UInt64, generation: UInt64, entryValid: CacheValidity, attrValid: CacheValidity,
                        attributes: FileAttributes, fileHandle: UInt64, openFlags: UInt32, backingID: Int32 = 0) -> BackendAnswer {
        wire.created(nodeID: nodeID, generation: generation, entryValid: entryValid, attrValid: attrValid,
                     attributes: attributes, fileHandle: fileHandle, openFlags: openFlags, backingID: backingID)
        return .done
    }
}

extension Reply where Kind == ReplyKind.Opened {
    /// `openFlags`: FOPEN_* (direct I/O, keep cache, passthrough); `backingID` for kernel passthrough.
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func open(fileHandle: UInt64, openFlags: UInt32, backingID: Int32 = 0) -> BackendAnswer {
        wire.open(fileHandle: fileHandle, openFlags: openFlags, backingID: backingID)
        return .done
    }
}

extension Reply where Kind == ReplyKind.Data {
    /// Engine memory to stage a small answer in (READLINK, READDIR, xattrs): `bodyCapacity` bytes.
    @inlinable public var body: UnsafeMutableRawPointer { wire.body }
    @inlinable public var bodyCapacity: Int { wire.bodyCapacity }
    /// The guest's own buffers, for bulk data written in place (READ): `dataCapacity` bytes.
    @inlinable public var data: SegmentCursor { wire.data }
    @inlinable public var dataCapacity: Int { wire.dataCapacity }

    /// Sends `bodyBytes` staged at `body`.
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func send(bodyBytes: Int) -> BackendAnswer {
        wire.send(bodyBytes: bodyBytes)
        return .done
    }

    /// Sends `dataBytes` already written in place through `data`.
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func sendInPlace(dataBytes: Int) -> BackendAnswer {
        wire.sendInPlace(dataBytes: dataBytes)
        return .done
    }

    /// GETXATTR/LISTXATTR with size 0: only the length the value would need.
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func xattrSize(_ size: UInt32) -> BackendAnswer {
        wire.xattrSize(size)
        return .done
    }
}

extension Reply where Kind == ReplyKind.Written {
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func written(bytes: UInt32) -> BackendAnswer {
        wire.written(bytes: bytes)
        return .done
    }
}

extension Reply where Kind == ReplyKind.Statistics {
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func statistics(_ statistics: FileSystemStatistics) -> BackendAnswer {
        wire.statistics(statistics)
        return .done
    }
}

extension Reply where Kind == ReplyKind.Lock {
    /// The conflicting lock, or `type` F_UNLCK when none would conflict.
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func lock(start: UInt64, end: UInt64, type: UInt32, pid: UInt32) -> BackendAnswer {
        wire.lock(start: start, end: end, type: type, pid: pid)
        return .done
    }
}

extension Reply where Kind == ReplyKind.Offset {
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func offset(_ offset: UInt64) -> BackendAnswer {
        wire.value(offset)
        return .done
    }
}

/// COPY_FILE_RANGE (answered with a 32-bit count, fuse_write_out) and COPY_FILE_RANGE_64 (64 bits,
/// fuse_copy_file_range_out): one reply type that knows which form to send. A type of its own
/// rather than a `Reply` kind, so the other replies stay as small as the wire writer.
@frozen
public struct CopiedReply: @unchecked Sendable {
    public let wire: FUSEReply
    /// COPY_FILE_RANGE_64: the count may exceed 32 bits, so the backend may copy more at once.
    public let isSixtyFourBit: Bool

    @inlinable
    init(_ wire: FUSEReply, sixtyFourBit: Bool) {
        self.wire = wire
        isSixtyFourBit = sixtyFourBit
    }

    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func fail(_ errno: FUSEErrno) -> BackendAnswer {
        wire.fail(errno)
        return .done
    }

    /// Bytes copied; the 32-bit form is capped at UInt32.max (the kernel asks for no more).
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func copied(bytes: UInt64) -> BackendAnswer {
        if isSixtyFourBit { wire.value(bytes) } else { wire.written(bytes: UInt32(min(bytes, UInt64(UInt32.max)))) }
        return .done
    }
}

extension Reply where Kind == ReplyKind.Status {
    /// Success with no body.
    @inlinable
    @_noAllocation @_noLocks
    @discardableResult
    public func ok() -> BackendAnswer {
        wire.send(bodyBytes: 0)
        return .done
    }
}
