import CDPFS
import DPFSPosix
import FUSEWire
import Glibc
import NFSv4Wire
import Synchronization

// An NFSv4.1 device's start-up, on the control plane: one client id for the device (EXCHANGE_ID
// over a control connection kept for the device's life), a control session for RECLAIM_COMPLETE
// and the start-up calls (the export's handle walked from the pseudo root, its transfer limits,
// `.dpfs-hidden`), then one session per queue (CREATE_SESSION over the same control connection,
// one at a time: a client's CREATE_SESSIONs carry one sequence). A queue's own connection joins its
// session with its first SEQUENCE (the client asked for no state protection, so the server binds
// the connection then, RFC 8881 §2.10.5.1).

/// What a v4 device keeps for its life: the client, the control session, what queues were given.
public final class NFSv4DeviceState: @unchecked Sendable {
    let control: NFSv4ControlSession
    let mutex = HostMutex()
    /// Sessions made for queues (destroyed at stop).
    var sessions: [NFSv4SessionID] = []
    /// Times the client was made again (a server restart, an expired lease).
    public private(set) var reestablished = 0
    public var clientID: UInt64 { control.clientID }

    /// The server's lease (a third of it between renewals of an idle queue).
    public let leaseNanoseconds: UInt64
    /// The open and lock stateids of every (node, lock owner) pair holding POSIX locks.
    let locks: NFSv4LockTable
    /// Pairs of (file, process) holding locks at once, across the device (more: ENOLCK).
    static let lockPairsMax = 1024
    /// INTERRUPTs of SETLKWs, by request unique, for whichever queue holds the SETLKW (a ring: an
    /// interrupt for a request already answered is overwritten in time; uniques never repeat).
    let interrupts = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: NFSv4DeviceState.interruptsMax)
    static let interruptsMax = 64
    let interruptNext = Atomic<Int>(0)

    /// A guest session ended: every lock and open its processes held on the server is undone
    /// (LOCKU of everything, FREE_STATEID, CLOSE per pair, on the control session), or other clients
    /// would wait on them until the engine stops. `handle` names a pair's file (the node table still
    /// holds it). Returns the pairs released, and the failures (left to the lease).
    func releaseLocks(_ handle: (UInt32) -> [UInt8]) -> (released: Int, failed: Int) {
        let held = locks.drain()
        guard !held.isEmpty else { return (0, 0) }
        var released = 0
        mutex.withLock {
            for pair in held {
                let file = handle(pair.node)
                if let owners = pair.owners40 {
                    if releaseLocks40(pair, owners, file: file) { released += 1 }
                    continue
                }
                let operations = pair.lock == nil ? 2 : 4
                do throws(NFSStartupError) {
                    _ = try control.call("release a lock owner's state", operations: operations) { writer in
                        file.withUnsafeBytes { writer.putfh($0) }
                        if let lock = pair.lock {
                            writer.locku(.write, lockStateid: lock, offset: 0, length: .max)
                            writer.freeStateid(lock)
                        }
                        writer.close(pair.open)
                    } read: { _, status in status }
                    released += 1
                } catch {}
            }
        }
        return (released, held.count - released)
    }

    /// NFSv4.0's undoing of a pair: LOCKU, then CLOSE (which ends the open's lock state), each
    /// owner's call with its seqid. No RELEASE_LOCKOWNER: nfs-ganesha 4.3 corrupts its heap on it
    /// ("malloc(): unaligned tcache chunk detected", then abort) once a restart has come between.
    /// An open never confirmed has nothing to undo but the lease's.
    func releaseLocks40(_ pair: NFSv4LockTable.HeldPair, _ owners: NFSv4LockTable.Owners40, file: [UInt8]) -> Bool {
        guard !owners.unconfirmed else { return false }
        do throws(NFSStartupError) {
            _ = try control.call("release a lock owner's state", operations: pair.lock == nil ? 2 : 3) { writer in
                file.withUnsafeBytes { writer.putfh($0) }
                if let lock = pair.lock { writer.locku(.write, seqid: owners.lockSeqid, lockStateid: lock, offset: 0, length: .max) }
                writer.close(pair.open, seqid: owners.openSeqid)
            } read: { _, status in status }
            return true
        } catch {
            return false
        }
    }

    func noteInterrupt(_ unique: UInt64) {
        guard unique != 0 else { return }
        let at = interruptNext.add(1, ordering: .relaxed).oldValue & (Self.interruptsMax - 1)
        interrupts[at].store(unique, ordering: .releasing)
    }

    /// Whether `unique` was interrupted (then forgotten: one EINTR per INTERRUPT).
    func takeInterrupt(_ unique: UInt64) -> Bool {
        guard unique != 0 else { return false }
        for at in 0..<Self.interruptsMax where interrupts[at].load(ordering: .acquiring) == unique {
            return interrupts[at].compareExchange(expected: unique, desired: 0, ordering: .acquiringAndReleasing).exchanged
        }
        return false
    }

    /// The node table's handles, for the reclaim (set by the device once its table exists).
    var handleOfNode: ((UInt32) -> [UInt8])? = nil
    /// Lock owners reclaimed after a server restart, and those that could not be (lost).
    public private(set) var reclaimedPairs = 0
    public private(set) var reclaimFailures = 0
    /// The reclaim test's control (tools/host/test-nfs4-locks.sh): with DPFS_TEST_NFS4_NO_RECLAIM
    /// set a restart in the grace period must lose the locks, or the test could not tell a
    /// reclaim from a server that kept them.
    static let reclaimDisabledForTest = getenv("DPFS_TEST_NFS4_NO_RECLAIM") != nil

    init(control: NFSv4ControlSession, leaseSeconds: UInt32) {
        self.control = control
        locks = NFSv4LockTable(capacity: Self.lockPairsMax, exactSequences: control.minorVersion == 0)
        // A server that names no lease gets the protocol's usual 90 s; one under 3 s, 3 s.
        leaseNanoseconds = UInt64(leaseSeconds == 0 ? 90 : max(leaseSeconds, 3)) * 1_000_000_000
        for at in 0..<Self.interruptsMax { (interrupts + at).initialize(to: Atomic(0)) }
        control.reclaim = { [unowned self] in self.reclaimLocks() }
    }

    /// The client was made again (the server restarted; in its grace period): each pair's open
    /// (CLAIM_PREVIOUS) and every range it held (LOCK with reclaim set), with their new stateids.
    /// A server past its grace (or Graceless) refuses: the pairs are then lost, as before. Runs
    /// on the control session inside `makeSession`, the mutex held.
    func reclaimLocks() {
        guard !Self.reclaimDisabledForTest, let handleOf = handleOfNode else { return }
        for pair in locks.reclaimable() {
            do throws(NFSStartupError) {
                if control.minorVersion == 0 {
                    let state = try reclaim40(pair, file: handleOf(pair.node))
                    locks.reclaimed(pair.entry, open: state.open, lock: state.lock, seqids40: (state.openSeqid, state.lockSeqid))
                } else {
                    let state = try reclaim(pair, file: handleOf(pair.node))
                    locks.reclaimed(pair.entry, open: state.open, lock: state.lock)
                }
                reclaimedPairs += 1
            } catch {
                locks.reclaimFailed(pair.entry)
                reclaimFailures += 1
            }
        }
    }

    /// NFSv4.0's reclaim of a pair: the server knows none of its owners any more, so their seqids
    /// start again at 0. OPEN CLAIM_PREVIOUS (the current handle is the file itself), OPEN_CONFIRM
    /// when asked, then each range by LOCK with reclaim set: the first introduces the lock-owner
    /// from the open, the others name its lock stateid. Returns the stateids and the next seqids.
    func reclaim40(_ pair: NFSv4ReclaimPair, file: [UInt8]) throws(NFSStartupError)
        -> (open: NFSv4Stateid, lock: NFSv4Stateid, openSeqid: UInt32, lockSeqid: UInt32) {
        let openOwner = withUnsafeBytes(of: NFSQueue.openOwner40(serial: pair.serial)) { Array($0) }
        let lockOwner = withUnsafeBytes(of: NFSQueue.lockOwner40(serial: pair.serial, generation: pair.lockGeneration)) { Array($0) }
        let clientID = control.clientID
        let opened: NFSv4OpenResult? = try control.call("OPEN (reclaim)", operations: 2) { writer in
            file.withUnsafeBytes { writer.putfh($0) }
            openOwner.withUnsafeBytes { writer.open(clientID: clientID, owner: $0, access: pair.access, create: .none, claim: .previous, seqid: 0) }
        } read: { reader, _ throws(XDRError) in
            guard try reader.next(.putfh) == .ok, try reader.next(.open) == .ok else { return nil }
            return try reader.openResult()
        }
        guard let opened else { throw NFSStartupError("the server refused the open's reclaim") }
        var open = opened.stateid
        var openSeqid: UInt32 = 1
        if opened.needsConfirm {
            let confirmed: NFSv4Stateid? = try control.call("OPEN_CONFIRM (reclaim)", operations: 2) { writer in
                file.withUnsafeBytes { writer.putfh($0) }
                writer.openConfirm(open, seqid: openSeqid)
            } read: { reader, _ throws(XDRError) in
                guard try reader.next(.putfh) == .ok, try reader.next(.openConfirm) == .ok else { return nil }
                return try reader.openConfirmResult()
            }
            openSeqid += 1
            guard let confirmed else { throw NFSStartupError("the server refused the reclaimed open's confirmation") }
            open = confirmed
        }
        var lock: NFSv4Stateid? = nil
        var lockSeqid: UInt32 = 0
        for range in pair.ranges {
            let length = range.end >= UInt64(Int64.max) ? UInt64.max : range.end - range.start + 1
            let known = lock
            let granted: NFSv4Stateid? = try control.call("LOCK (reclaim)", operations: 2) { writer in
                file.withUnsafeBytes { writer.putfh($0) }
                lockOwner.withUnsafeBytes { ownerBytes in
                    let locker: NFSv4Locker = known.map { .knownOwner(lockStateid: $0, lockSeqid: lockSeqid) }
                        ?? .newOwner(openStateid: open, openSeqid: openSeqid, clientID: clientID, owner: ownerBytes, lockSeqid: 0)
                    writer.lock(range.write ? .write : .read, reclaim: true, offset: range.start, length: length, locker)
                }
            } read: { reader, _ throws(XDRError) in
                guard try reader.next(.putfh) == .ok else { return nil }
                return try reader.lockResult(try reader.next(.lock)).granted
            }
            if known == nil { openSeqid += 1 }
            lockSeqid += 1
            guard let granted else {
                undoReclaim40(file: file, open: open, openSeqid: openSeqid, lock: lock, lockSeqid: lockSeqid)
                throw NFSStartupError("the server refused a lock's reclaim")
            }
            lock = granted
        }
        guard let lock else { throw NFSStartupError("a pair with no range to reclaim") }
        return (open, lock, openSeqid, lockSeqid)
    }

    func undoReclaim40(file: [UInt8], open: NFSv4Stateid, openSeqid: UInt32, lock: NFSv4Stateid?, lockSeqid: UInt32) {
        do throws(NFSStartupError) {
            _ = try control.call("undo a partial reclaim", operations: lock == nil ? 2 : 3) { writer in
                file.withUnsafeBytes { writer.putfh($0) }
                if let lock { writer.locku(.write, seqid: lockSeqid, lockStateid: lock, offset: 0, length: .max) }
                writer.close(open, seqid: openSeqid)
            } read: { _, status in status }
        } catch {}
    }

    func reclaim(_ pair: NFSv4ReclaimPair, file: [UInt8]) throws(NFSStartupError) -> (open: NFSv4Stateid, lock: NFSv4Stateid) {
        let owner = withUnsafeBytes(of: NFSQueue.lockOwnerBytes(pair.owner)) { Array($0) }
        let clientID = control.clientID
        let open: NFSv4Stateid? = try control.call("OPEN (reclaim)", operations: 2) { writer in
            file.withUnsafeBytes { writer.putfh($0) }
            owner.withUnsafeBytes {
                writer.open(clientID: clientID, owner: $0, access: pair.access | NFSv4ShareAccess.wantNoDelegation, create: .none, claim: .previous)
            }
        } read: { reader, _ throws(XDRError) in
            guard try reader.next(.putfh) == .ok, try reader.next(.open) == .ok else { return nil }
            return try reader.openResult().stateid
        }
        guard let open else { throw NFSStartupError("the server refused the open's reclaim") }
        var lock: NFSv4Stateid? = nil
        for range in pair.ranges {
            let length = range.end >= UInt64(Int64.max) ? UInt64.max : range.end - range.start + 1
            let granted: NFSv4Stateid? = try control.call("LOCK (reclaim)", operations: 2) { writer in
                file.withUnsafeBytes { writer.putfh($0) }
                owner.withUnsafeBytes { ownerBytes in
                    let locker: NFSv4Locker = lock.map { .knownOwner(lockStateid: NFSv4Stateid(sequence: 0, other: $0.other), lockSeqid: 0) }
                        ?? .newOwner(openStateid: open, openSeqid: 0, clientID: clientID, owner: ownerBytes, lockSeqid: 0)
                    writer.lock(range.write ? .write : .read, reclaim: true, offset: range.start, length: length, locker)
                }
            } read: { reader, _ throws(XDRError) in
                guard try reader.next(.putfh) == .ok else { return nil }
                return try reader.lockResult(try reader.next(.lock)).granted
            }
            guard let granted else {
                // Part of the pair came back: undo it, or it would hold ranges nobody owns.
                undoReclaim(file: file, open: open, lock: lock)
                throw NFSStartupError("the server refused a lock's reclaim")
            }
            lock = granted
        }
        guard let lock else { throw NFSStartupError("a pair with no range to reclaim") }
        return (open, lock)
    }

    func undoReclaim(file: [UInt8], open: NFSv4Stateid, lock: NFSv4Stateid?) {
        do throws(NFSStartupError) {
            _ = try control.call("undo a partial reclaim", operations: lock == nil ? 2 : 4) { writer in
                file.withUnsafeBytes { writer.putfh($0) }
                if let lock {
                    writer.locku(.write, lockStateid: lock, offset: 0, length: .max)
                    writer.freeStateid(lock)
                }
                writer.close(open)
            } read: { _, status in status }
        } catch {}
    }

    deinit { interrupts.deallocate() }

    /// A session of up to `slots` fore-channel slots for one queue: its id and the slots granted.
    func makeSession(slots: Int, transferBytesMax: Int, replacing previous: NFSv4SessionID?) throws(NFSStartupError) -> (NFSv4SessionID, Int) {
        if control.minorVersion == 0 {
            try checkClient40()
            return (NFSv4SessionID(), slots)
        }
        let result = mutex.withLock { () -> Result<NFSv4CreateSessionResult, NFSStartupError> in
            Result { () throws(NFSStartupError) in
                // The queue's last session goes first (the server would keep it, and its reply
                // cache, as long as the client lives); it may be gone already.
                if let previous, let index = sessions.firstIndex(of: previous) {
                    sessions.remove(at: index)
                    do throws(NFSStartupError) { try control.destroySession(previous) } catch {}
                }
                do throws(NFSStartupError) {
                    return try control.createSession(slots: UInt32(slots), transferBytesMax: UInt32(transferBytesMax))
                } catch {}
                // A dropped control connection (idle too long, a blip) is not a forgotten client: a
                // new connection and one more try first, or the engine would drop state the server
                // still holds.
                do throws(NFSStartupError) {
                    try control.client.reconnect()
                    return try control.createSession(slots: UInt32(slots), transferBytesMax: UInt32(transferBytesMax))
                } catch {}
                // The server forgot the client (restarted, or the lease ran out): the client is
                // made again once (reclaiming its locks in a grace period), then the session.
                try control.reestablish()
                reestablished += 1
                // A server that still knew the client (CONFIRMED_R) kept its opens and locks.
                if !control.exchange.confirmedBefore { locks.reset() }
                sessions = []
                return try control.createSession(slots: UInt32(slots), transferBytesMax: UInt32(transferBytesMax))
            }
        }
        let made = try result.get()
        mutex.withLock { sessions.append(made.session) }
        return (made.session, Int(min(made.fore.requestsMax, UInt32(slots))))
    }

    /// NFSv4.0 has no sessions: a queue's new connection only checks, with a RENEW, that the server
    /// still knows the client, and makes it again when it does not (a restart, an expired lease).
    func checkClient40() throws(NFSStartupError) {
        let result = mutex.withLock { () -> Result<Void, NFSStartupError> in
            Result { () throws(NFSStartupError) in
                var status: NFSv4Status
                do throws(NFSStartupError) {
                    status = try control.renew40()
                } catch {
                    // A dropped control connection is not a forgotten client: ask again on a new one.
                    do throws(NFSStartupError) {
                        try control.client.reconnect()
                        status = try control.renew40()
                    } catch {
                        status = .staleClientid
                    }
                }
                // CB_PATH_DOWN: renewed; the engine offers no callback service (RFC 7530 §16.29.5).
                guard status != .ok && status != .cbPathDown else { return }
                guard status == .staleClientid || status == .expired || status == .badsession else {
                    throw NFSStartupError("RENEW: the server answered nfsstat4 \(status.rawValue)")
                }
                try control.reestablish()
                reestablished += 1
                locks.reset()
            }
        }
        try result.get()
    }

    /// DESTROY_SESSION of every session, then DESTROY_CLIENTID: the server forgets the client now,
    /// not a lease later. Errors are reported, not fatal: the lease ends it anyway.
    func destroy() -> String? {
        mutex.withLock { () -> String? in
            var failures: [String] = []
            for session in sessions {
                do throws(NFSStartupError) { try control.destroySession(session) } catch { failures.append(error.description) }
            }
            sessions = []
            do throws(NFSStartupError) { try control.destroy() } catch { failures.append(error.description) }
            control.client.close()
            return failures.isEmpty ? nil : failures.joined(separator: "; ")
        }
    }
}

extension NFSDevice {
    /// The v4 start-up: the device state, the export's root handle, the transfer limits, the
    /// handle of `.dpfs-hidden`.
    static func startV4(_ url: NFSURL, timeoutMilliseconds: Int, instance: UInt64) throws(NFSStartupError)
        -> (state: NFSv4DeviceState, root: [UInt8], read: Int, write: Int, hidden: [UInt8]) {
        let client = try NFSv4ControlClient(url: url, timeoutMilliseconds: timeoutMilliseconds)
        var hostBytes = [UInt8](repeating: 0, count: 256)
        gethostname(&hostBytes, 255)
        let hostName = String(decoding: hostBytes.prefix { $0 != 0 }, as: UTF8.self)
        // The owner names this engine instance: two engines on one host are two clients.
        let owner = Array("dpfs-engine/\(hostName)/\(String(instance, radix: 16))".utf8)
        let control: NFSv4ControlSession
        do throws(NFSStartupError) {
            control = try NFSv4ControlSession(client: client, owner: owner, verifier: instance, slots: 1,
                                              transferBytesMax: UInt32(FUSELimits.writeBytesMax))
        } catch {
            client.close()
            throw error
        }
        let root = try exportRootV4(control, path: url.exportPath)
        let state = NFSv4DeviceState(control: control, leaseSeconds: root.attributes.leaseSeconds)
        let limits = root.attributes
        // The server's maxread/maxwrite, at most 1 MiB, and what its sessions carry (the control
        // session asked for FUSE's largest; 8 KiB of each message is the COMPOUND around the data).
        let carried = UInt64(min(control.fore.requestBytesMax, control.fore.responseBytesMax)) &- 8192
        let read = Int(min(limits.maxread == 0 ? 1 << 20 : limits.maxread, 1 << 20, carried))
        let write = Int(min(limits.maxwrite == 0 ? 1 << 20 : limits.maxwrite, 1 << 20, carried))
        guard read >= 4096, write >= 4096 else {
            throw NFSStartupError("the server's sessions carry \(carried) bytes of data per call: fewer than 4 KiB")
        }
        let hidden = try hiddenDirectoryV4(control, root: root.handle)
        return (state, root.handle, read, write, hidden)
    }

    static func exportRootV4(_ control: NFSv4ControlSession, path: String) throws(NFSStartupError) -> (handle: [UInt8], attributes: NFSv4Attributes) {
        let components = path.split(separator: "/").map { Array($0.utf8) }
        guard components.count <= CompoundWriter.operationsMax - 4 else { throw NFSStartupError("the export path \(path) has too many components") }
        var mask = NFSv4Bitmap([.type, .maxread, .maxwrite, .leaseTime])
        mask.insert(NFSv4Attribute.fileid.rawValue)
        let found: (handle: [UInt8], attributes: NFSv4Attributes)? = try control.call("PUTROOTFH+LOOKUP+GETFH+GETATTR", operations: components.count + 3) { writer in
            writer.putrootfh()
            for component in components { component.withUnsafeBytes { writer.lookup($0) } }
            writer.getfh()
            writer.getattr(mask)
        } read: { reader, _ throws(XDRError) in
            guard try reader.next(.putrootfh) == .ok else { return nil }
            for _ in components { guard try reader.next(.lookup) == .ok else { return nil } }
            guard try reader.next(.getfh) == .ok else { return nil }
            let handle = Array(try reader.handle())
            guard try reader.next(.getattr) == .ok else { return nil }
            return (handle, try reader.attributes())
        }
        guard let found else { throw NFSStartupError("the export \(path) is not in the server's pseudo file system") }
        guard found.handle.count >= 1, found.handle.count <= nfsFileHandleBytesMax else {
            throw NFSStartupError("the server sent a \(found.handle.count)-byte handle for the export (at most \(nfsFileHandleBytesMax))")
        }
        guard found.attributes.type == 2 else { throw NFSStartupError("the export \(path) is not a directory") }
        return found
    }

    /// `.dpfs-hidden` in the export's root, made (mode 1777) when missing; EXIST from a MKDIR that
    /// raced another engine's means use it.
    static func hiddenDirectoryV4(_ control: NFSv4ControlSession, root: [UInt8]) throws(NFSStartupError) -> [UInt8] {
        let name = Array(HiddenName.directory.utf8)
        for _ in 0..<2 {
            let looked: (NFSv4Status, [UInt8], UInt32) = try control.call("LOOKUP \(HiddenName.directory)", operations: 4) { writer in
                root.withUnsafeBytes { writer.putfh($0) }
                name.withUnsafeBytes { writer.lookup($0) }
                writer.getfh()
                writer.getattr(NFSv4Bitmap([.type]))
            } read: { reader, _ throws(XDRError) in
                guard try reader.next(.putfh) == .ok else { return (.badhandle, [], 0) }
                let status = try reader.next(.lookup)
                guard status == .ok else { return (status, [], 0) }
                guard try reader.next(.getfh) == .ok else { return (.serverfault, [], 0) }
                let handle = Array(try reader.handle())
                guard try reader.next(.getattr) == .ok else { return (.serverfault, [], 0) }
                return (.ok, handle, try reader.attributes().type)
            }
            if looked.0 == .ok {
                guard looked.2 == 2 else {
                    throw NFSStartupError("\(HiddenName.directory) in the export is not a directory: remove it, the engine keeps unlinked open files there")
                }
                guard looked.1.count >= 1, looked.1.count <= nfsFileHandleBytesMax else {
                    throw NFSStartupError("the server sent a \(looked.1.count)-byte handle for \(HiddenName.directory)")
                }
                return looked.1
            }
            guard looked.0 == .noent else { throw NFSStartupError("LOOKUP \(HiddenName.directory) in the export: nfsstat4 \(looked.0.rawValue)") }
            let made: NFSv4Status = try control.call("CREATE \(HiddenName.directory)", operations: 2) { writer in
                root.withUnsafeBytes { writer.putfh($0) }
                name.withUnsafeBytes { writer.create(.directory, name: $0, attributes: NFSv4SetAttributes(mode: 0o1777)) }
            } read: { reader, _ throws(XDRError) in
                guard try reader.next(.putfh) == .ok else { return .badhandle }
                return try reader.next(.create)
            }
            guard made == .ok || made == .exist else {
                throw NFSStartupError("cannot make \(HiddenName.directory) in the export (nfsstat4 \(made.rawValue)): the export must be writable")
            }
        }
        throw NFSStartupError("\(HiddenName.directory) was made but LOOKUP does not find it")
    }
}

extension NFSv4ControlSession {
    /// One more session of this client (for a queue), over the control connection.
    func createSession(slots: UInt32, transferBytesMax: UInt32) throws(NFSStartupError) -> NFSv4CreateSessionResult {
        let message = transferBytesMax + 8192
        let fore = NFSv4ChannelAttributes(requestBytesMax: message, responseBytesMax: message, responseCachedBytesMax: 8192,
                                          operationsMax: UInt32(CompoundWriter.operationsMax), requestsMax: slots)
        let back = NFSv4ChannelAttributes(requestBytesMax: 4096, responseBytesMax: 4096, responseCachedBytesMax: 0,
                                          operationsMax: 2, requestsMax: 1)
        let clientID = self.clientID
        let sequence = nextCreateSessionSequence()
        let created = try Self.parse("CREATE_SESSION", client.compound("CREATE_SESSION", minorVersion: 1) { writer in
            writer.createSession(clientID: clientID, sequenceID: sequence, fore: fore, back: back)
        }, operations: 1) { reader throws(XDRError) in try reader.createSessionResult() }
        guard created.fore.requestsMax >= 1 else { throw NFSStartupError("CREATE_SESSION: the server granted no slots") }
        return created
    }

    func destroySession(_ session: NFSv4SessionID) throws(NFSStartupError) {
        _ = try Self.parse("DESTROY_SESSION", client.compound("DESTROY_SESSION", minorVersion: 1) { writer in
            writer.destroySession(session)
        }, operations: 1) { _ throws(XDRError) in () }
    }
}
