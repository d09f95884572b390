// Byte-range locks (RFC 8881 §18.10 LOCK, §18.11 LOCKT, §18.12 LOCKU, §18.38 FREE_STATEID; RFC
// 7530 §16.37 RELEASE_LOCKOWNER for 4.0): the arguments written, the results read, and the body a
// refused LOCK or LOCKT carries (NFS4ERR_DENIED: who holds what), which a GETLK answers with.

/// `nfs_lock_type4`. The waiting kinds (READW, WRITEW) tell the server the client will poll.
public enum NFSv4LockType: UInt32, Sendable {
    case read = 1, write = 2, readWait = 3, writeWait = 4

    public var isWrite: Bool { self == .write || self == .writeWait }
}

/// Who asks for a lock (`locker4`): a lock-owner new to the server, introduced by the open it
/// locks through, or one the server already knows by its lock stateid.
public enum NFSv4Locker {
    case newOwner(openStateid: NFSv4Stateid, openSeqid: UInt32, clientID: UInt64, owner: UnsafeRawBufferPointer, lockSeqid: UInt32)
    case knownOwner(lockStateid: NFSv4Stateid, lockSeqid: UInt32)
}

/// `LOCK4denied`: the conflicting lock; its owner's bytes stay valid as long as the reply does.
public struct NFSv4LockDenied {
    public var offset: UInt64
    public var length: UInt64
    public var type: NFSv4LockType
    public var clientID: UInt64
    public var owner: UnsafeRawBufferPointer
}

extension CompoundWriter {
    /// `NFS4_OPAQUE_LIMIT`: the longest lock-owner the protocol allows.
    public static let lockOwnerBytesMax = 1024

    /// LOCK of [offset, offset + length) on the current handle (length UInt64.max: to the end).
    public mutating func lock(_ type: NFSv4LockType, reclaim: Bool = false, offset: UInt64, length: UInt64, _ locker: NFSv4Locker) {
        precondition(length > 0, "a lock of no bytes is NFS4ERR_INVAL")
        operation(.lock)
        xdr.u32(type.rawValue)
        xdr.u32(reclaim ? 1 : 0)
        xdr.u64(offset)
        xdr.u64(length)
        switch locker {
        case .newOwner(let openStateid, let openSeqid, let clientID, let owner, let lockSeqid):
            xdr.u32(1)
            xdr.u32(openSeqid)
            stateid(openStateid)
            xdr.u32(lockSeqid)
            lockOwner(clientID: clientID, owner)
        case .knownOwner(let lockStateid, let lockSeqid):
            xdr.u32(0)
            stateid(lockStateid)
            xdr.u32(lockSeqid)
        }
    }

    /// LOCKT: would this owner get the lock? (Nothing is taken.)
    public mutating func lockt(_ type: NFSv4LockType, offset: UInt64, length: UInt64, clientID: UInt64, owner: UnsafeRawBufferPointer) {
        precondition(length > 0, "a lock of no bytes is NFS4ERR_INVAL")
        operation(.lockt)
        xdr.u32(type.rawValue)
        xdr.u64(offset)
        xdr.u64(length)
        lockOwner(clientID: clientID, owner)
    }

    /// LOCKU of [offset, offset + length) held through `lockStateid`.
    public mutating func locku(_ type: NFSv4LockType, seqid: UInt32 = 0, lockStateid: NFSv4Stateid, offset: UInt64, length: UInt64) {
        precondition(length > 0, "a lock of no bytes is NFS4ERR_INVAL")
        operation(.locku)
        xdr.u32(type.rawValue)
        xdr.u32(seqid)
        stateid(lockStateid)
        xdr.u64(offset)
        xdr.u64(length)
    }

    /// FREE_STATEID (4.1): a lock stateid with no locks left is given back.
    public mutating func freeStateid(_ stateid: NFSv4Stateid) {
        operation(.freeStateid)
        self.stateid(stateid)
    }

    /// RELEASE_LOCKOWNER (4.0): the owner holds no locks any more; the server forgets it.
    public mutating func releaseLockOwner(clientID: UInt64, owner: UnsafeRawBufferPointer) {
        operation(.releaseLockowner)
        lockOwner(clientID: clientID, owner)
    }

    /// `lock_owner4`: the client id and the owner's bytes.
    mutating func lockOwner(clientID: UInt64, _ owner: UnsafeRawBufferPointer) {
        precondition(!owner.isEmpty && owner.count <= Self.lockOwnerBytesMax)
        xdr.u64(clientID)
        xdr.opaque(owner)
    }
}

extension CompoundReader {
    /// LOCK's result after `status`: the lock stateid when granted, the conflicting lock when
    /// DENIED; nil for any other status (which carries no body).
    public mutating func lockResult(_ status: NFSv4Status) throws(XDRError) -> (granted: NFSv4Stateid?, denied: NFSv4LockDenied?) {
        if status == .ok { return (try stateidResult(), nil) }
        if status == .denied { return (nil, try lockDenied()) }
        return (nil, nil)
    }

    /// LOCKT's result after `status`: the conflicting lock when DENIED, nil when the lock is free
    /// (OK) or the status carries no body.
    public mutating func locktResult(_ status: NFSv4Status) throws(XDRError) -> NFSv4LockDenied? {
        status == .denied ? try lockDenied() : nil
    }

    /// LOCKU's result after an OK status: the lock stateid, its sequence advanced.
    public mutating func lockuResult() throws(XDRError) -> NFSv4Stateid { try stateidResult() }

    /// `LOCK4denied`, checked: a lock type outside 1-4 or an owner longer than the protocol allows
    /// is a lie.
    mutating func lockDenied() throws(XDRError) -> NFSv4LockDenied {
        let offset = try xdr.u64()
        let length = try xdr.u64()
        let typeAt = xdr.position
        let raw = try xdr.u32()
        guard let type = NFSv4LockType(rawValue: raw) else { throw .invalid(at: typeAt, value: raw) }
        let clientID = try xdr.u64()
        let owner = try xdr.opaque(limit: CompoundWriter.lockOwnerBytesMax)
        return NFSv4LockDenied(offset: offset, length: length, type: type, clientID: clientID, owner: owner)
    }
}
