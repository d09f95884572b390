import CDPFS
import DPFSCore
import FUSEWire
import Glibc
import NFSv4Wire

// POSIX locks over NFSv4.0: the stages of NFSQueue+Locks4.swift, with what 4.0 asks instead.
// - The pair's OPEN goes by (directory, name), where the node was last found (NFSv40NodeNames),
//   after a LOOKUP and VERIFY of its fileid in the same COMPOUND: a name that no longer names the
//   node fails the lock ENOLCK instead of opening another file.
// - Each pair has its own open-owner and lock-owner (NFSv4LockTable's serial), and one request
//   per pair at a time, so one seqid-bearing call at most is in flight per owner. Each owner's
//   seqid moves on with every answer but the non-advancing errors (RFC 7530 §9.1.7), counted
//   before anything else reads the answer (a GRACE that goes again carries the next seqid). A
//   lost connection leaves the seqids as they were: the call goes again with the same seqid,
//   which the server answers from its replay cache if it had run it.
// - A new open-owner's first OPEN is confirmed (OPEN_CONFIRM) before its LOCK; stateids keep
//   their sequence (4.0 has no "latest"); FLUSH's undoing is LOCKU, then CLOSE, which ends the
//   open's lock state. No RELEASE_LOCKOWNER: nfs-ganesha 4.3 corrupts its heap on it once a restart
//   has come between ("malloc(): unaligned tcache chunk detected", and the server aborts).

extension NFSQueue {
    func sendLock40(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer, _ primary: UnsafeRawBufferPointer,
                    _ request: NFSRequestArguments) -> Int32 {
        let locks = device.v4!.locks
        let clientID = device.v4!.clientID
        let entry = request.lockEntry
        let call = records[slot].plan.call
        let range = Self.lockRange(request)
        if call == .lockTest {
            let pair = locks.pairSerial(node: records[slot].primaryNode, owner: request.lockOwner)
            let tester = pair.map { Self.lockOwner40(serial: $0.serial, generation: $0.generation) }
            let other = Self.testOwner40(request.lockOwner)
            return compound4(slot, rpc, tag) { writer in
                writer.putfh(primary)
                if let tester {
                    withUnsafeBytes(of: tester) { writer.lockt(Self.lockType4(request), offset: range.offset, length: range.length, clientID: clientID, owner: $0) }
                } else {
                    withUnsafeBytes(of: other) { writer.lockt(Self.lockType4(request), offset: range.offset, length: range.length, clientID: clientID, owner: $0) }
                }
            }
        }
        guard entry >= 0, let owners = locks.owners40(entry) else { return -1 }
        let ids = locks.stateids(entry)
        let known = locks.isLocked(entry)
        let lockOwner = Self.lockOwner40(serial: owners.serial, generation: owners.lockGeneration)
        switch call {
        case .lockOpen:
            if owners.unconfirmed {
                return compound4(slot, rpc, tag) { writer in
                    writer.putfh(primary)
                    writer.openConfirm(ids.open, seqid: owners.openSeqid)
                }
            }
            guard let location = device.names?.location(records[slot].primaryNode) else { return -1 }
            let parent = device.nodes.handle(location.parent)
            let openOwner = Self.openOwner40(serial: owners.serial)
            let access = lockOpenAccess4(slot)
            // The name is read once, into the stack: another queue may record the node under
            // another name meanwhile, and LOOKUP, VERIFY and OPEN must all name the same one.
            return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: NFSv40NodeNames.nameBytesMax) { copy in
                let count = min(location.name.count, copy.count)
                UnsafeMutableRawPointer(copy.baseAddress!).copyMemory(from: location.name.baseAddress!, byteCount: count)
                let name = UnsafeRawBufferPointer(start: copy.baseAddress, count: count)
                return compound4(slot, rpc, tag) { writer in
                    writer.putfh(parent)
                    writer.lookup(name)
                    writer.verifyFileid(location.fileid)
                    writer.putfh(parent)
                    withUnsafeBytes(of: openOwner) {
                        writer.open(clientID: clientID, owner: $0, access: access, create: .none, claim: .name(name), seqid: owners.openSeqid)
                    }
                    writer.getfh()
                }
            }
        case .lock:
            return compound4(slot, rpc, tag) { writer in
                writer.putfh(primary)
                withUnsafeBytes(of: lockOwner) { ownerBytes in
                    let locker: NFSv4Locker = known
                        ? .knownOwner(lockStateid: ids.lock, lockSeqid: owners.lockSeqid)
                        : .newOwner(openStateid: ids.open, openSeqid: owners.openSeqid, clientID: clientID, owner: ownerBytes, lockSeqid: 0)
                    writer.lock(Self.lockType4(request), offset: range.offset, length: range.length, locker)
                }
            }
        case .unlock:
            return compound4(slot, rpc, tag) { writer in
                writer.putfh(primary)
                writer.locku(.write, seqid: owners.lockSeqid, lockStateid: ids.lock, offset: range.offset, length: range.length)
            }
        default:
            // FLUSH: every lock of the pair goes, then its open (two owners: each call carries its
            // own owner's seqid).
            return compound4(slot, rpc, tag) { writer in
                writer.putfh(primary)
                if known { writer.locku(.write, seqid: owners.lockSeqid, lockStateid: ids.lock, offset: 0, length: .max) }
                writer.close(ids.open, seqid: owners.openSeqid)
            }
        }
    }

    /// Moves the pair's owners' seqids on by the seqid-bearing results the answer holds: which
    /// position bears which owner's seqid follows from what was sent, and the pair (busy) has not
    /// changed since.
    func countLockSeqids40(_ slot: Int, _ reader: CompoundReader) {
        let locks = device.v4!.locks
        let entry = records[slot].request.lockEntry
        guard entry >= 0, let owners = locks.owners40(entry) else { return }
        let known = locks.isLocked(entry)
        var openAt = 0, lockAt = 0, introducedAt = 0
        switch records[slot].plan.call {
        case .lockOpen: openAt = owners.unconfirmed ? 2 : 5
        case .lock:
            if known { lockAt = 2 } else { (openAt, introducedAt) = (2, 2) }
        case .unlock: lockAt = 2
        case .unlockAll: if known { (lockAt, openAt) = (2, 3) } else { openAt = 2 }
        default: return
        }
        func status(_ at: Int) -> NFSv4Status? { at > 0 && at <= reader.results ? (at < reader.results ? .ok : reader.status) : nil }
        // Each owner in turn (no array literal: it would allocate per request).
        func count(_ at: Int, lockOwner: Bool) {
            guard let result = status(at) else { return }
            if result == .badSeqid { device.seqidRefusedCount.add(1, ordering: .relaxed) }
            if Self.seqidAdvances40(result) { locks.advanceSeqid(entry, lockOwner: lockOwner) }
        }
        count(openAt, lockOwner: false)
        count(lockAt, lockOwner: true)
        if introducedAt > 0, let result = status(introducedAt) { locks.lockOwnerIntroduced(entry, made: result == .ok) }
    }

    /// The pair's OPEN_CONFIRM (its open awaits it) or its OPEN by name.
    func answeredLockOpenOrConfirm40(_ slot: Int, _ putfh: NFSv4Status, _ reader: inout CompoundReader) throws(XDRError) {
        let locks = device.v4!.locks
        let entry = records[slot].request.lockEntry
        guard locks.owners40(entry)?.unconfirmed == true else { return try answeredLockOpen40(slot, putfh, &reader) }
        var status = putfh
        if status == .ok { status = try reader.next(.openConfirm) }
        guard status == .ok else { return finish(slot, Self.lockErrno(status)) }
        locks.confirmed(entry, try reader.openConfirmResult())
        records[slot].plan.call = .lock
        issue(slot)
    }

    /// FLUSH's LOCKU and CLOSE: whatever the server says, the pair's state is over here; then the
    /// COMMIT FLUSH makes anyway.
    func answeredUnlockAll40(_ slot: Int, _ putfh: NFSv4Status, _ reader: inout CompoundReader) throws(XDRError) {
        var status = putfh
        if status == .ok, device.v4!.locks.isLocked(records[slot].request.lockEntry), reader.resultsRead < reader.results {
            status = try reader.next(.locku)
            if status == .ok { _ = try reader.lockuResult() }
        }
        if status == .ok, reader.resultsRead < reader.results, try reader.next(.close) == .ok { _ = try reader.stateidResult() }
        releaseLockEntry4(slot)
        if afterTeardown4(slot) { issue(slot) }
    }

    /// The pair's OPEN by name, after the LOOKUP and VERIFY that the name is still the node's.
    func answeredLockOpen40(_ slot: Int, _ putfh: NFSv4Status, _ reader: inout CompoundReader) throws(XDRError) {
        var status = putfh
        if status == .ok { status = try reader.next(.lookup) }
        if status == .ok { status = try reader.next(.verify) }
        if status == .ok { status = try reader.next(.putfh) }
        // The name the engine remembers no longer names the node (renamed, removed, reused).
        if status == .notSame || status == .noent { return finish(slot, FUSEErrno(ENOLCK)) }
        if status == .ok { status = try reader.next(.open) }
        guard status == .ok else { return lockOpenRefused4(slot, status) }
        let opened = try reader.openResult()
        device.v4!.locks.opened(records[slot].request.lockEntry, opened.stateid, access: lockOpenAccess4(slot), needsConfirm: opened.needsConfirm)
        records[slot].plan.call = opened.needsConfirm ? .lockOpen : .lock
        issue(slot)
    }
}
