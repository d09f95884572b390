import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import NFSv4Wire

// POSIX locks over NFSv4.1 (Specs/nfs-semantics.md, "NFSv4.1 locks"). A (node, lock owner) pair's
// first lock OPENs the file for that owner and LOCKs as a new lock-owner from the open; later
// locks and unlocks name the lock stateid; GETLK is a LOCKT, which needs no state; FLUSH (the
// owner closed a descriptor of the file, which drops its POSIX locks there) undoes the pair's
// state: LOCKU of everything, FREE_STATEID, CLOSE. The device's NFSv4LockTable holds the
// stateids; a stage `.lockBegin` asks it what to send, and it may make the request wait (another
// request of the same pair is making or ending its state) or answer it at once. A refused SETLKW
// asks the server again every 200 ms until it is granted or the guest interrupts it.

extension NFSQueue {
    /// The lock-owner and open-owner bytes of a FUSE lock owner: "dpfslock", then its 8 bytes.
    /// (Owners of two engines never meet: each engine is its own NFSv4 client.)
    static func lockOwnerBytes(_ owner: UInt64) -> (UInt64, UInt64) { (0x6B63_6F6C_7366_7064, owner.bigEndian) }

    /// NFSv4.0: a pair's own open-owner and lock-owner, named by its serial (and the lock-owner's
    /// generation); a GETLK by an owner with no pair on the file names "dp4t" and the owner.
    static func openOwner40(serial: UInt32) -> (UInt32, UInt32, UInt32, UInt32) { (0x6470_346F, serial.bigEndian, 0, 0) }
    static func lockOwner40(serial: UInt32, generation: UInt32) -> (UInt32, UInt32, UInt32, UInt32) {
        (0x6470_346C, serial.bigEndian, generation.bigEndian, 0)
    }
    static func testOwner40(_ owner: UInt64) -> (UInt64, UInt64) { (0x7434_7064, owner.bigEndian) }

    /// FUSE's inclusive [start, end] (end OFFSET_MAX: to the end of the file) as NFSv4's offset and length.
    static func lockRange(_ request: NFSRequestArguments) -> (offset: UInt64, length: UInt64) {
        let length = request.lockEnd >= UInt64(Int64.max) ? UInt64.max : request.lockEnd - request.offset + 1
        return (request.offset, length)
    }

    static func lockType4(_ request: NFSRequestArguments) -> NFSv4LockType {
        let write = request.lockType == UInt32(F_WRLCK)
        if request.lockWaits { return write ? .writeWait : .readWait }
        return write ? .write : .read
    }

    /// The server no longer knows the stateid named: the pair's locks are gone there.
    static func stateGone(_ status: NFSv4Status) -> Bool {
        status == .badStateid || status == .staleStateid || status == .expired || status.rawValue == 10047   // ADMIN_REVOKED
    }

    static func lockErrno(_ status: NFSv4Status) -> FUSEErrno {
        switch status {
        case .denied: return .tryAgain
        case NFSv4Status(rawValue: 10038): return FUSEErrno(EBADF)   // OPENMODE: a write lock on a read-only open
        default: return NFSStatus.errno(v4: status.rawValue)
        }
    }

    /// What a SETLK, SETLKW or FLUSH sends, as the lock table decides: true when the slot's stage
    /// is set and goes now; false when the request waits or was answered.
    func decideLock4(_ slot: Int) -> Bool {
        let locks = device.v4!.locks
        let request = records[slot].request
        let node = records[slot].primaryNode
        if request.opcodeRaw == FUSEOpcode.flush.rawValue {
            switch locks.teardown(node: node, owner: request.lockOwner) {
            case .nothing: return afterTeardown4(slot)
            case .wait: return waitForLockState4(slot)
            case .undo(let teardown):
                records[slot].request.lockEntry = teardown.entry
                records[slot].plan.call = .unlockAll
                return true
            }
        }
        let unlocking = request.lockType == UInt32(F_UNLCK)
        if request.lockWaits && records[slot].deadline == .max && (stopping || device.v4!.takeInterrupt(request.unique)) {
            finish(slot, stopping ? .io : FUSEErrno(EINTR))
            return false
        }
        switch locks.begin(node: node, owner: request.lockOwner) {
        case .wait: return waitForLockState4(slot)
        case .lost:
            finish(slot, .io)
            return false
        case .full:
            // No room means no state of this pair: nothing of it to unlock.
            if unlocking { succeed(slot) } else { finish(slot, FUSEErrno(ENOLCK)) }
            return false
        case .openThenLock(let entry):
            // NFSv4.0 opens by name: a node never found under one (nor by READDIRPLUS) has none.
            if !unlocking, let names = device.names, names.location(node) == nil {
                records[slot].request.lockEntry = entry
                finish(slot, FUSEErrno(ENOLCK))
                return false
            }
            return lockStage4(slot, entry: entry, unlocking: unlocking, call: .lockOpen)
        case .lockFromOpen(let entry, _):
            // NFSv4.0: an open whose OPEN_CONFIRM did not come back is confirmed first.
            let unconfirmed = v4!.minorVersion == 0 && locks.owners40(entry)?.unconfirmed == true
            return lockStage4(slot, entry: entry, unlocking: unlocking, call: unconfirmed ? .lockOpen : .lock)
        case .lockKnown(let entry, _):
            records[slot].request.lockEntry = entry
            records[slot].plan.call = unlocking ? .unlock : .lock
            return true
        }
    }

    /// A pair that holds no lock yet: an unlock has nothing to undo; a lock goes with `call`.
    func lockStage4(_ slot: Int, entry: Int, unlocking: Bool, call: NFSCall) -> Bool {
        records[slot].request.lockEntry = entry
        guard !unlocking else {
            succeed(slot)
            return false
        }
        records[slot].plan.call = call
        return true
    }

    /// The slot's hold on its lock-table entry ends (its answer, a timeout, a lost connection, a
    /// malformed reply: every way a request ends comes through `complete`, which calls this). FLUSH's
    /// teardown ends the pair; anything else leaves it for the next request.
    func releaseLockEntry4(_ slot: Int) {
        let entry = records[slot].request.lockEntry
        guard entry >= 0, let state = device.v4 else { return }
        records[slot].request.lockEntry = -1
        if records[slot].request.opcodeRaw == FUSEOpcode.flush.rawValue { state.locks.ended(entry) } else { state.locks.finished(entry) }
    }

    /// Another request of the pair is at work: this one asks again shortly (within its deadline).
    func waitForLockState4(_ slot: Int) -> Bool {
        if !delay4(slot, now: monotonicNanoseconds()) { finish(slot, .io) }
        return false
    }

    /// FLUSH after its locks are gone: the COMMIT it makes anyway, or its answer (true: COMMIT goes).
    func afterTeardown4(_ slot: Int) -> Bool {
        let files = device.files
        let index = records[slot].openFile
        if files.hasLostData(index) && !repairable(index) {
            finish(slot, .io)
            return false
        }
        guard files.isDirty(index) else {
            succeed(slot)
            return false
        }
        records[slot].plan.call = .commit
        return true
    }

    func sendLock4(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer, _ primary: UnsafeRawBufferPointer,
                   _ request: NFSRequestArguments) -> Int32 {
        if v4!.minorVersion == 0 { return sendLock40(slot, rpc, tag, primary, request) }
        let locks = device.v4!.locks
        let clientID = device.v4!.clientID
        let owner = Self.lockOwnerBytes(request.lockOwner)
        let range = Self.lockRange(request)
        let entry = request.lockEntry
        let call = records[slot].plan.call
        let ids = entry >= 0 ? locks.stateids(entry) : (open: NFSv4Stateid(), lock: NFSv4Stateid())
        let known = entry >= 0 && locks.isLocked(entry)
        let access = lockOpenAccess4(slot)
        return withUnsafeBytes(of: owner) { ownerBytes in
            compound4(slot, rpc, tag, cacheThis: call != .lockTest) { writer in
                writer.putfh(primary)
                switch call {
                case .lockOpen:
                    writer.open(clientID: clientID, owner: ownerBytes, access: access | NFSv4ShareAccess.wantNoDelegation,
                                create: .none, claim: .handle)
                case .lock:
                    let locker: NFSv4Locker = known
                        ? .knownOwner(lockStateid: ids.lock, lockSeqid: 0)
                        : .newOwner(openStateid: ids.open, openSeqid: 0, clientID: clientID, owner: ownerBytes, lockSeqid: 0)
                    writer.lock(Self.lockType4(request), offset: range.offset, length: range.length, locker)
                case .unlock:
                    writer.locku(.write, lockStateid: ids.lock, offset: range.offset, length: range.length)
                case .lockTest:
                    writer.lockt(Self.lockType4(request), offset: range.offset, length: range.length, clientID: clientID, owner: ownerBytes)
                default:
                    // FLUSH: every lock of the owner on the file goes, then its lock state and its open.
                    if known {
                        writer.locku(.write, lockStateid: ids.lock, offset: 0, length: .max)
                        writer.freeStateid(ids.lock)
                    }
                    writer.close(ids.open)
                }
            }
        }
    }

    /// The share access the pair's OPEN asks: read and write, or what the lock's type needs.
    func lockOpenAccess4(_ slot: Int) -> UInt32 {
        let lockAccess = records[slot].request.lockType == UInt32(F_WRLCK) ? NFSv4ShareAccess.write : NFSv4ShareAccess.read
        return records[slot].plan.progress.contains(.lockTypeAccessOnly) ? lockAccess : NFSv4ShareAccess.both
    }

    // MARK: - Answers

    func answeredLock4(_ slot: Int, _ reader: inout CompoundReader) throws(XDRError) {
        let locks = device.v4!.locks
        let entry = records[slot].request.lockEntry
        let version40 = v4!.minorVersion == 0
        var status = try putfh4(&reader)
        switch records[slot].plan.call {
        case .lockOpen:
            if version40 { return try answeredLockOpenOrConfirm40(slot, status, &reader) }
            if status == .ok { status = try reader.next(.open) }
            try answeredLockOpen4(slot, status, &reader)
        case .lock:
            let known = locks.isLocked(entry)
            var result: (granted: NFSv4Stateid?, denied: NFSv4LockDenied?) = (nil, nil)
            if status == .ok {
                status = try reader.next(.lock)
                result = try reader.lockResult(status)
            }
            // A known owner's LOCK moves its lock stateid on (kept exact over 4.0; over 4.1 the
            // table keeps sequence 0, "the latest", whatever comes back).
            if let granted = result.granted, known { locks.lockStateidChanged(entry, granted) }
            answeredLockTaken4(slot, status, granted: result.granted)
        case .unlock:
            if status == .ok {
                status = try reader.next(.locku)
                if status == .ok { locks.lockStateidChanged(entry, try reader.lockuResult()) }
            }
            if Self.stateGone(status) { locks.lose(entry) }
            guard status == .ok else { return finish(slot, Self.lockErrno(status)) }
            let request = records[slot].request
            locks.released(entry, start: request.offset, end: request.lockEnd)
            succeed(slot)
        case .lockTest:
            var holder: NFSv4LockDenied? = nil
            if status == .ok {
                status = try reader.next(.lockt)
                holder = try reader.locktResult(status)
            }
            answeredLockTest4(slot, status, holder)
        default:
            if version40 { return try answeredUnlockAll40(slot, status, &reader) }
            try answeredUnlockAll4(slot, status, &reader)
        }
    }

    /// The pair's OPEN was refused. Read and write access refused (a read-only file or export, a
    /// write-only file): it goes again asking only the access the lock's type needs.
    func lockOpenRefused4(_ slot: Int, _ status: NFSv4Status) {
        let refused = status == .access || status == .perm || status == .rofs
        if refused && !records[slot].plan.progress.contains(.lockTypeAccessOnly) {
            records[slot].plan.progress.insert(.lockTypeAccessOnly)
            return issue(slot)
        }
        finish(slot, Self.lockErrno(status))
    }

    /// The pair's OPEN: its stateid kept, then the LOCK. A caller who may not write the file
    /// opens it for reading (enough for a read lock).
    func answeredLockOpen4(_ slot: Int, _ status: NFSv4Status, _ reader: inout CompoundReader) throws(XDRError) {
        let locks = device.v4!.locks
        let entry = records[slot].request.lockEntry
        guard status == .ok else { return lockOpenRefused4(slot, status) }
        let opened = try reader.openResult()
        // 4.1 needs no OPEN_CONFIRM; a server asking for one is not speaking 4.1.
        guard !opened.needsConfirm else { return perform(slot, .malformed) }
        locks.opened(entry, opened.stateid, access: lockOpenAccess4(slot))
        records[slot].plan.call = .lock
        issue(slot)
    }

    /// LOCK: granted (the pair's first lock keeps its lock stateid), refused (SETLK: EAGAIN;
    /// SETLKW: asked again in 200 ms, with no deadline but the guest's interrupt), or failed.
    func answeredLockTaken4(_ slot: Int, _ status: NFSv4Status, granted: NFSv4Stateid?) {
        let locks = device.v4!.locks
        let entry = records[slot].request.lockEntry
        if let granted {
            if !locks.isLocked(entry) { locks.locked(entry, granted) }
            let request = records[slot].request
            locks.granted(entry, start: request.offset, end: request.lockEnd, write: request.lockType == UInt32(F_WRLCK))
            return succeed(slot)
        }
        if Self.stateGone(status) { locks.lose(entry) }
        guard status == .denied, records[slot].request.lockWaits else { return finish(slot, Self.lockErrno(status)) }
        waitForLock4(slot)
    }

    /// A refused SETLKW: the pair is free for others meanwhile, and the LOCK goes again in 200 ms
    /// unless the guest interrupted it (on any queue of the device).
    func waitForLock4(_ slot: Int) {
        releaseLockEntry4(slot)
        // The device stops: EIO (EINTR, with no signal pending, would reach the caller as ERESTARTSYS).
        if stopping { return finish(slot, .io) }
        if device.v4!.takeInterrupt(records[slot].request.unique) { return finish(slot, FUSEErrno(EINTR)) }
        lockRetries += 1
        records[slot].deadline = .max
        records[slot].plan.call = .lockBegin
        if !delay4(slot, now: monotonicNanoseconds()) { finish(slot, .io) }
    }

    /// LOCKT: free (F_UNLCK) or the conflicting lock, whose holder may be another client (pid 0).
    func answeredLockTest4(_ slot: Int, _ status: NFSv4Status, _ holder: NFSv4LockDenied?) {
        let reply = records[slot].reply
        if status == .ok {
            reply.lock(start: 0, end: 0, type: UInt32(F_UNLCK), pid: 0)
            return complete(slot)
        }
        guard let holder else { return finish(slot, Self.lockErrno(status)) }
        // Another client's lock may lie past OFFSET_MAX, which no guest can name: clamp both ends.
        let offsetMax = UInt64(Int64.max)
        let start = min(holder.offset, offsetMax)
        let (sum, overflow) = holder.offset.addingReportingOverflow(holder.length == 0 ? 0 : holder.length - 1)
        let last = overflow || sum > offsetMax ? offsetMax : sum
        reply.lock(start: start, end: max(last, start), type: UInt32(holder.type.isWrite ? F_WRLCK : F_RDLCK), pid: 0)
        complete(slot)
    }

    /// FLUSH's LOCKU, FREE_STATEID and CLOSE: whatever the server says, the pair's state is over
    /// here (a lease that ends frees what the server kept); then the COMMIT FLUSH makes anyway.
    func answeredUnlockAll4(_ slot: Int, _ putfh: NFSv4Status, _ reader: inout CompoundReader) throws(XDRError) {
        var status = putfh
        // What was sent: LOCKU and FREE_STATEID when there were five operations (SEQUENCE, PUTFH,
        // LOCKU, FREE_STATEID, CLOSE), CLOSE alone when three.
        if status == .ok && v4!.operationsSent[slot] == 5 && reader.resultsRead < reader.results {
            status = try reader.next(.locku)
            if status == .ok { _ = try reader.lockuResult() }
            if status == .ok { status = try reader.next(.freeStateid) }
        }
        if status == .ok, reader.resultsRead < reader.results, try reader.next(.close) == .ok { _ = try reader.stateidResult() }
        releaseLockEntry4(slot)
        if afterTeardown4(slot) { issue(slot) }
    }

    /// INTERRUPT of a SETLKW waiting for its lock: it ends EINTR (the guest's process got a
    /// signal). The INTERRUPT may come on any queue (FUSE-over-io_uring reads it from whichever
    /// wakes first), and the SETLKW may have its LOCK in flight: the device remembers it, and the
    /// SETLKW's queue looks before each wait. This queue's own waiting SETLKW ends at once.
    func interruptLock4(unique: UInt64) {
        guard let session = v4 else { return }
        device.v4!.noteInterrupt(unique)
        for slot in 0..<slotCount where records[slot].state == .waiting && records[slot].plan.call == .lockBegin
            && records[slot].request.unique == unique && records[slot].request.lockWaits {
            if session.retryAtNanoseconds[slot] != 0 {
                session.retryAtNanoseconds[slot] = 0
                session.delayedCount -= 1
            }
            records[slot].state = .free
            waiting -= 1
            _ = device.v4!.takeInterrupt(unique)
            finish(slot, FUSEErrno(EINTR))
            return
        }
    }

    /// The device stops or resets: a SETLKW waiting for its lock ends EIO (nothing else of this
    /// backend waits without a deadline).
    func cancelLockWaits4() {
        guard let session = v4 else { return }
        // One whose LOCK is in flight now ends when its answer comes (`waitForLock4`).
        stopping = true
        // (And an NFSv4.0 lock call parked for its connection with no deadline, NFSQueue+Version40.)
        for slot in 0..<slotCount where records[slot].state == .waiting && records[slot].plan.call.isLock
            && records[slot].deadline == .max {
            if session.retryAtNanoseconds[slot] != 0 {
                session.retryAtNanoseconds[slot] = 0
                session.delayedCount -= 1
            }
            records[slot].state = .free
            waiting -= 1
            finish(slot, .io)
        }
    }
}
