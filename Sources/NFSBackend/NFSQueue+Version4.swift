import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import NFSv4Wire

// NFSv4.1 as a second wire under the same stages. Each stage the plan chooses (NFSStagePlan.swift)
// is one COMPOUND instead of one NFSv3 call: SEQUENCE on the request's session slot, PUTFH, the
// operation, and what NFSv3 returns with it for free (GETFH, GETATTR), so the plan, the node and
// open tables, the journal and the hidden names work unchanged. The COMPOUND is written by our own
// XDR straight into libnfs's send buffer, and the reply read in place inside libnfs's callback
// (the CDPFS_nfs4_* shim): nothing of ours allocates per request. READ and WRITE use the anonymous
// stateid, as NFSv3 needs no open; a new regular file is OPENed and CLOSEd in the one COMPOUND that
// makes it (CLOSE names the current stateid, RFC 8881 §16.2.3.1.2).

/// A queue's NFSv4.1 session: the sequence id of each of its slots and which request holds which.
/// Made again (CREATE_SESSION over the device's control connection) each time the queue's
/// connection comes up, so no slot is ever left in doubt by a call lost with a connection.
final class NFSv4QueueSession {
    static let slotsMax = 1024
    var id = NFSv4SessionID()
    var granted = 0
    let sequences: UnsafeMutablePointer<UInt32>
    let freeSlots: UnsafeMutablePointer<Int32>
    var freeCount = 0
    /// Per engine slot: the session slot its call holds (-1: none), and how many operations it sent.
    let held: UnsafeMutablePointer<Int32>
    let operationsSent: UnsafeMutablePointer<Int32>
    /// Per engine slot: its listing asks for names only (the directory cannot be searched).
    let namesOnly: UnsafeMutablePointer<Bool>
    let owner: [UInt8]
    /// Per engine slot: when a stage the server asked to wait for (GRACE, DELAY) goes again (0: none).
    let retryAtNanoseconds: UnsafeMutablePointer<UInt64>
    var delayedCount = 0
    /// When the queue last sent a request, and whether a renewal is in flight.
    var lastActiveNanoseconds: UInt64 = 0
    var renewing = false
    /// 0 or 1. Over 4.0 there is no session: the slots above only pace the queue's own calls
    /// (every engine slot gets one), and the fields below carry what 4.0 asks instead.
    let minorVersion: UInt32
    /// NFSv4.0: when this queue last sent RENEW (4.0 leases are kept by RENEW, not by traffic).
    var lastRenewalNanoseconds: UInt64 = 0
    /// NFSv4.0, per engine slot: its own open-owner (so one seqid-bearing call at most is in
    /// flight per owner, RFC 7530 §9.1.7), named by the slot and a generation that changes when
    /// the owner's seqid is in doubt, and the seqid its next OPEN, OPEN_CONFIRM or CLOSE carries.
    let ownerSeqids: UnsafeMutablePointer<UInt32>
    let ownerGenerations: UnsafeMutablePointer<UInt32>
    let queueNumber: UInt32
    /// NFSv4.0, per engine slot: the open a CREATE's OPEN made, closed by the stage after it
    /// (4.0 has no current stateid to CLOSE it in the same COMPOUND); 0 none, 1 CLOSE it,
    /// 2 OPEN_CONFIRM then CLOSE it (a new owner's first open).
    let createdOpens: UnsafeMutablePointer<NFSv4Stateid>
    let closingCreated: UnsafeMutablePointer<UInt8>
    let createdAttributesCame: UnsafeMutablePointer<Bool>

    init(engineSlots: Int, queueNumber: Int32, minorVersion: UInt32) {
        precondition(minorVersion <= 1)
        self.minorVersion = minorVersion
        self.queueNumber = UInt32(bitPattern: queueNumber)
        ownerSeqids = .allocate(capacity: engineSlots)
        ownerSeqids.initialize(repeating: 0, count: engineSlots)
        ownerGenerations = .allocate(capacity: engineSlots)
        ownerGenerations.initialize(repeating: 0, count: engineSlots)
        createdOpens = .allocate(capacity: engineSlots)
        createdOpens.initialize(repeating: NFSv4Stateid(), count: engineSlots)
        closingCreated = .allocate(capacity: engineSlots)
        closingCreated.initialize(repeating: 0, count: engineSlots)
        createdAttributesCame = .allocate(capacity: engineSlots)
        createdAttributesCame.initialize(repeating: false, count: engineSlots)
        sequences = .allocate(capacity: Self.slotsMax)
        sequences.initialize(repeating: 0, count: Self.slotsMax)
        freeSlots = .allocate(capacity: Self.slotsMax)
        freeSlots.initialize(repeating: 0, count: Self.slotsMax)
        // One more than the engine's slots: the lease renewal's.
        held = .allocate(capacity: engineSlots + 1)
        held.initialize(repeating: -1, count: engineSlots + 1)
        operationsSent = .allocate(capacity: engineSlots + 1)
        operationsSent.initialize(repeating: 0, count: engineSlots + 1)
        namesOnly = .allocate(capacity: engineSlots)
        namesOnly.initialize(repeating: false, count: engineSlots)
        retryAtNanoseconds = .allocate(capacity: engineSlots)
        retryAtNanoseconds.initialize(repeating: 0, count: engineSlots)
        owner = Array("dpfs-queue-\(queueNumber)".utf8)
    }

    deinit {
        sequences.deallocate()
        freeSlots.deallocate()
        held.deallocate()
        operationsSent.deallocate()
        namesOnly.deallocate()
        retryAtNanoseconds.deallocate()
        ownerSeqids.deallocate()
        ownerGenerations.deallocate()
        createdOpens.deallocate()
        closingCreated.deallocate()
        createdAttributesCame.deallocate()
    }

    /// A new session: every slot free, every sequence at 1.
    func reset(_ session: NFSv4SessionID, granted: Int) {
        precondition(granted >= 1 && granted <= Self.slotsMax)
        id = session
        self.granted = granted
        freeCount = 0
        for slot in stride(from: granted - 1, through: 0, by: -1) {
            sequences[slot] = 1
            freeSlots[freeCount] = Int32(slot)
            freeCount += 1
        }
    }

    @_noAllocation @_noLocks
    func acquire() -> Int32? {
        guard freeCount > 0 else { return nil }
        freeCount -= 1
        return freeSlots[freeCount]
    }

    /// Gives the slot back; `advanced`: the server saw this sequence id (the next call uses +1).
    @_noAllocation @_noLocks
    func release(_ slot: Int32, advanced: Bool) {
        if advanced { sequences[Int(slot)] &+= 1 }
        freeSlots[freeCount] = slot
        freeCount += 1
    }
}

extension NFSv4Stateid {
    /// The current stateid (RFC 8881 §16.2.3.1.2): the one the COMPOUND's previous operation made.
    static let current = NFSv4Stateid(sequence: 1, other: (0, 0))
}

extension NFSQueue {
    static let completed4: rpc_cb = { _, status, data, tag in
        let tag = tag!.assumingMemoryBound(to: NFSCallTag.self).pointee
        let queue = Unmanaged<NFSQueue>.fromOpaque(tag.queue).takeUnretainedValue()
        queue.finished4(Int(tag.slot), status: status, data: data)
    }

    /// The queue's session, made when its connection comes up; false when the server refused.
    func establishSession4() -> Bool {
        guard let session = v4, let state = device.v4 else { return true }
        do throws(NFSStartupError) {
            let previous = session.granted > 0 ? session.id : nil
            // Over 4.0 the "session" is the queue's own pacing: every engine slot and the renewal.
            let slots = min(session.minorVersion == 0 ? slotCount + 1 : slotCount, NFSv4QueueSession.slotsMax)
            let made = try state.makeSession(slots: slots, transferBytesMax: device.transferBytesMax, replacing: previous)
            session.reset(made.0, granted: made.1)
            return true
        } catch {
            return false
        }
    }

    /// How long a stage the server asked to wait (GRACE after its restart, DELAY) waits before it
    /// goes again; its request's deadline still holds.
    static let retryDelayNanoseconds: UInt64 = 200_000_000

    /// Results (SEQUENCE counted) up to and including the stage's first operation that changes
    /// the server's state; nil for a stage that changes nothing. A GRACE or DELAY after it means
    /// the change happened: sending the stage again would be a second change.
    func changingResult4(_ slot: Int) -> Int? {
        switch records[slot].plan.call {
        case .setattr: return 4                      // SEQUENCE, PUTFH, GETATTR, SETATTR
        case .create, .symlink, .mknod, .mkdir, .remove, .rmdir: return 3
        case .rename, .link: return 5                // SEQUENCE, PUTFH, SAVEFH, PUTFH, RENAME / LINK
        case .unlockAll: return 3                    // SEQUENCE, PUTFH, LOCKU (or CLOSE)
        default: return nil
        }
    }

    /// The stage failed with GRACE or DELAY: it goes again later, if its deadline allows.
    func delay4(_ slot: Int, now: UInt64) -> Bool {
        let retryAt = now &+ Self.retryDelayNanoseconds
        guard retryAt < records[slot].deadline else { return false }
        v4!.retryAtNanoseconds[slot] = retryAt
        v4!.delayedCount += 1
        records[slot].state = .waiting
        waiting += 1
        return true
    }

    /// Sends again the delayed stages whose time came (from the poller's step).
    func retryDelayed4(_ session: NFSv4QueueSession, now: UInt64) {
        guard session.delayedCount > 0 else { return }
        for slot in 0..<slotCount where session.retryAtNanoseconds[slot] != 0 && session.retryAtNanoseconds[slot] <= now {
            session.retryAtNanoseconds[slot] = 0
            session.delayedCount -= 1
            guard records[slot].state == .waiting else { continue }
            records[slot].state = .free
            waiting -= 1
            issue(slot)
        }
    }

    /// The lease test's control (tools/host/test-nfs4-lease.sh): with DPFS_TEST_NFS4_NO_RENEWAL set
    /// an idle client must expire, or the test could not tell renewals from a lenient server.
    static let renewalDisabledForTest = getenv("DPFS_TEST_NFS4_NO_RENEWAL") != nil

    /// An idle queue keeps its client's lease: a SEQUENCE alone every third of the lease (any
    /// SEQUENCE renews it, RFC 8881 §8.3). Without it an idle device's client would expire and its
    /// next request would find its session gone.
    ///
    /// NFSv4.0: RENEW every third of the lease, busy or idle. Only calls naming the client's state
    /// renew a 4.0 lease (RFC 7530 §9.5), and the engine's I/O uses the anonymous stateid.
    ///
    /// A renewal unanswered for a third of the lease takes its connection down (its callback then
    /// ends it): a server that drops it silently would otherwise stop every later renewal.
    func renewLease4(_ session: NFSv4QueueSession, now: UInt64) {
        if session.renewing {
            if let lease = device.v4?.leaseNanoseconds, now &- session.lastRenewalNanoseconds >= lease / 3 {
                connections[0].teardownWanted = true
            }
            return
        }
        let since = session.minorVersion == 1 ? session.lastActiveNanoseconds : session.lastRenewalNanoseconds
        guard !session.renewing, !Self.renewalDisabledForTest, upCount > 0, let lease = device.v4?.leaseNanoseconds,
              now &- since >= lease / 3, let link = pickConnection(), let rpc = link.rpc,
              let sessionSlot = session.acquire() else { return }
        let tag = renewalTag
        session.held[tag - connections.count] = sessionSlot
        session.lastActiveNanoseconds = now
        session.lastRenewalNanoseconds = now
        var area: UnsafeMutablePointer<UInt8>? = nil
        var areaBytes = 0
        var layoutWrong: Int32 = 0
        guard let pdu = CDPFS_nfs4_begin(rpc, Self.completed4, UnsafeMutableRawPointer(tags + tag), 0, &area, &areaBytes, &layoutWrong) else {
            session.release(sessionSlot, advanced: false)
            return
        }
        var writer = CompoundWriter(buffer: UnsafeMutableRawBufferPointer(start: area, count: areaBytes), minorVersion: session.minorVersion)
        if session.minorVersion == 0 {
            writer.renew(clientID: device.v4!.clientID)
        } else {
            withUnsafeBytes(of: session.id.bytes) {
                writer.sequence(session: $0, sequenceID: session.sequences[Int(sessionSlot)], slot: UInt32(sessionSlot),
                                highestSlot: UInt32(session.granted - 1), cacheThis: false)
            }
        }
        guard let written = writer.finish(), CDPFS_nfs4_send(rpc, pdu, written) == 0 else {
            session.release(sessionSlot, advanced: false)
            return
        }
        session.renewing = true
        renewals += 1
        device.renewalCount.add(1, ordering: .relaxed)
        link.inFlight += 1
        inFlight += 1
    }

    /// The renewal's answer (or its connection's end).
    func renewed4(status: Int32, data: UnsafeMutableRawPointer?) {
        let session = v4!
        let link = connections[0]
        link.inFlight -= 1
        inFlight -= 1
        session.renewing = false
        let index = renewalTag - connections.count
        let sessionSlot = session.held[index]
        session.held[index] = -1
        guard status == RPC_STATUS_SUCCESS, let data else {
            session.release(sessionSlot, advanced: false)
            link.teardownWanted = true
            return
        }
        let captured = data.assumingMemoryBound(to: CDPFS_nfs4_reply.self).pointee
        let bytes = UnsafeRawBufferPointer(start: captured.bytes, count: Int(captured.count))
        do throws(XDRError) {
            var reader = try CompoundReader(buffer: bytes, operationsSent: 1)
            // A refused RENEW or SEQUENCE: the server forgot the client (or the session); the
            // next connection makes it again.
            let renewed = try reader.next(session.minorVersion == 0 ? .renew : .sequence)
            // CB_PATH_DOWN renews the lease all the same (RFC 7530 §16.29.5): no callback is offered.
            guard renewed == .ok || (session.minorVersion == 0 && renewed == .cbPathDown) else {
                device.sequenceFailureCount.add(1, ordering: .relaxed)
                session.release(sessionSlot, advanced: false)
                link.teardownWanted = true
                return
            }
            if session.minorVersion == 1 { _ = try reader.sequenceResult(session: session.id) }
            session.release(sessionSlot, advanced: true)
            reissueWaiting4()
        } catch {
            session.release(sessionSlot, advanced: true)
            link.teardownWanted = true
        }
    }

    /// Writes the slot's stage as one COMPOUND (over 4.1 after SEQUENCE) and queues it: 0, -1
    /// (libnfs could not), -2 (it does not fit).
    func compound4(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer, roomBytes: Int = 0, cacheThis: Bool = false,
                   _ body: (inout CompoundWriter) -> Void) -> Int32 {
        let session = v4!
        let sessionSlot = session.held[slot]
        precondition(sessionSlot >= 0, "a COMPOUND without a session slot")
        var area: UnsafeMutablePointer<UInt8>? = nil
        var areaBytes = 0
        var layoutWrong: Int32 = 0
        guard let pdu = CDPFS_nfs4_begin(rpc, Self.completed4, tag, roomBytes, &area, &areaBytes, &layoutWrong) else { return -1 }
        var writer = CompoundWriter(buffer: UnsafeMutableRawBufferPointer(start: area, count: areaBytes), minorVersion: session.minorVersion)
        if session.minorVersion == 1 {
            withUnsafeBytes(of: session.id.bytes) {
                writer.sequence(session: $0, sequenceID: session.sequences[Int(sessionSlot)], slot: UInt32(sessionSlot),
                                highestSlot: UInt32(session.granted - 1), cacheThis: cacheThis)
            }
        }
        body(&writer)
        guard let written = writer.finish() else {
            CDPFS_nfs4_abandon(rpc, pdu)
            return -2
        }
        session.operationsSent[slot] = Int32(writer.operations)
        return CDPFS_nfs4_send(rpc, pdu, written) == 0 ? 0 : -1
    }

    /// The slot's current stage as a COMPOUND.
    func send4(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let request = records[slot].request
        let primary = device.nodes.handle(records[slot].primaryNode)
        switch records[slot].plan.call {
        case .none:
            preconditionFailure("a slot issued without a call")
        case .lookup:
            let check = records[slot].plan.progress.contains(.noReplaceCheck) || records[slot].plan.progress.contains(.replaceCheck)
            let directory = check ? device.nodes.handle(records[slot].secondaryNode) : primary
            let name = check ? request.secondName : request.name
            return compound4(slot, rpc, tag) { writer in
                writer.putfh(directory)
                writer.lookup(name)
                writer.getfh()
                writer.getattr(.standard)
            }
        case .getattr:
            let target = target4(slot)
            return compound4(slot, rpc, tag) { writer in
                writer.putfh(target)
                writer.getattr(.standard)
            }
        case .setattr:
            let target = target4(slot)
            let attributes = newAttributes4(slot)
            return compound4(slot, rpc, tag, cacheThis: true) { writer in
                writer.putfh(target)
                writer.getattr(.standard)
                // Nothing to set (chown(-1, -1)): an empty SETATTR is refused to a non-owner by
                // the server, and answered by POSIX as success. The attributes are the answer.
                guard attributes.mask != NFSv4Bitmap() else { return }
                writer.setattr(.anonymous, attributes)
                writer.getattr(.standard)
            }
        case .readlink:
            return compound4(slot, rpc, tag) { writer in
                writer.putfh(primary)
                writer.readlink()
            }
        case .symlink, .mknod, .mkdir:
            return sendMade4(slot, rpc, tag, directory: primary, request)
        case .create:
            if v4!.minorVersion == 0 { return sendCreate40(slot, rpc, tag, directory: primary, request) }
            return sendCreate4(slot, rpc, tag, directory: primary, request)
        case .remove, .rmdir, .link:
            return sendRemoveOrLink4(slot, rpc, tag, primary, request)
        case .rename:
            return sendRename4(slot, rpc, tag, primary, request)
        case .access:
            let bits = accessWanted(slot)
            return compound4(slot, rpc, tag) { writer in
                writer.putfh(primary)
                writer.access(bits)
            }
        case .lockBegin: preconditionFailure("the lock table decides before a lock call is sent")
        case .lockOpen, .lock, .unlock, .lockTest, .unlockAll: return sendLock4(slot, rpc, tag, primary, request)
        default:
            return sendData4(slot, rpc, tag, primary, request)
        }
    }

    /// READ, WRITE (first or from the journal), COMMIT, FSSTAT, READDIR, READDIRPLUS.
    func sendData4(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer, _ primary: UnsafeRawBufferPointer,
                   _ request: NFSRequestArguments) -> Int32 {
        switch records[slot].plan.call {
        case .read:
            let count = min(Int(request.size), records[slot].reply.dataCapacity, device.readBytesMax)
            return compound4(slot, rpc, tag) { writer in
                writer.putfh(primary)
                writer.read(.anonymous, offset: request.offset, count: UInt32(count))
            }
        case .write:
            let count = min(request.payloadLength, device.writeBytesMax)
            let data = journaledPayload(slot, request, count: count)
            return compound4(slot, rpc, tag, roomBytes: count + 512) { writer in
                writer.putfh(primary)
                guard let area = writer.write(.anonymous, offset: request.offset, stability: .unstable, byteCount: count) else { return }
                if count > 0 { area.baseAddress!.copyMemory(from: data, byteCount: count) }
            }
        case .resendWrite:
            let entry = journal.entry(records[slot].resendEntry).pointee
            let data = journal.data(records[slot].resendEntry)
            return compound4(slot, rpc, tag, roomBytes: entry.length + 512) { writer in
                writer.putfh(primary)
                guard let area = writer.write(.anonymous, offset: entry.offsetInFile, stability: .unstable, byteCount: entry.length) else { return }
                if entry.length > 0 { area.baseAddress!.copyMemory(from: data, byteCount: entry.length) }
            }
        case .commit:
            records[slot].commitSnapshot = device.files.commitSnapshot(records[slot].openFile)
            records[slot].journalSnapshot = journal.ackCounter
            return compound4(slot, rpc, tag) { writer in
                writer.putfh(primary)
                writer.commit(offset: 0, count: 0)
            }
        case .fsstat:
            return compound4(slot, rpc, tag) { writer in
                writer.putfh(primary)
                writer.getattr(.statistics)
            }
        default:
            return sendReaddir4(slot, rpc, tag, primary, request)
        }
    }

    func sendReaddir4(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer, _ primary: UnsafeRawBufferPointer,
                      _ request: NFSRequestArguments) -> Int32 {
        let capacity = min(Int(request.size), records[slot].reply.bodyCapacity)
        // Cookie 0 goes with verifier 0 (RFC 8881 §18.23.3), also at FUSE offsets 1 and 2.
        let verifier = request.offset <= Self.firstServerCookie ? 0 : device.files.cookieVerifiers[records[slot].openFile]
        let plus = records[slot].plan.call == .readdirplus
        var names = Self.listingNames
        if plus { names = .listing }
        // A directory the caller may read but not search lists its names only (the server
        // refuses any attribute of its entries then, as a local file system refuses their stat).
        if v4!.namesOnly[slot] { names = .namesOnly }
        // A v4 entry carries its attributes: a listing's worth of them is several times FUSE's size.
        let replyBytes = plus ? 4 * capacity + 4096 : 2 * capacity + 2048
        // NFSv4 lists no "." or "..": the engine adds them at offsets 0 and 1 (cookies 1 and 2 are
        // reserved for them, RFC 7530 §16.24.4), with the inode numbers a GETATTR and a LOOKUPP
        // in the same COMPOUND give.
        let dots = request.offset < Self.firstServerCookie
        let cookie = request.offset <= Self.firstServerCookie ? 0 : request.offset
        return compound4(slot, rpc, tag) { writer in
            writer.putfh(primary)
            if dots { writer.getattr(Self.fileidOnly) }
            writer.readdir(cookie: cookie, verifier: verifier, directoryBytes: UInt32(capacity),
                           replyBytes: UInt32(replyBytes), names)
            if dots {
                writer.lookupp()
                writer.getattr(Self.fileidOnly)
            }
        }
    }

    /// FUSE offsets 1 and 2 are "." and "..": the server's own cookies start above them.
    static let firstServerCookie: UInt64 = 2
    static let fileidOnly = NFSv4Bitmap([.fileid])
    /// READDIR's (not PLUS): what a dirent carries. A static: a bitmap built per request allocates.
    static let listingNames = NFSv4Bitmap([.type, .fileid])

    /// SYMLINK, MKNOD (not of a regular file) and MKDIR: CREATE, then the new entry's handle and attributes.
    func sendMade4(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer, directory: UnsafeRawBufferPointer,
                   _ request: NFSRequestArguments) -> Int32 {
        let mode = request.mode & 0o7777
        return compound4(slot, rpc, tag, cacheThis: true) { writer in
            writer.putfh(directory)
            switch records[slot].plan.call {
            case .symlink: writer.create(.symlink(request.secondName), name: request.name, attributes: NFSv4SetAttributes())
            case .mkdir: writer.create(.directory, name: request.name, attributes: NFSv4SetAttributes(mode: mode))
            default: writer.create(Self.nodeType4(request), name: request.name, attributes: NFSv4SetAttributes(mode: mode))
            }
            writer.getfh()
            writer.getattr(.standard)
        }
    }

    static func nodeType4(_ request: NFSRequestArguments) -> NFSv4CreateType {
        switch request.mode & FileType.mask {
        case FileType.characterDevice: return .character(major: major(request.rdev), minor: minor(request.rdev))
        case FileType.blockDevice: return .block(major: major(request.rdev), minor: minor(request.rdev))
        case FileType.socket: return .socket
        default: return .fifo
        }
    }

    /// CREATE (and MKNOD of a regular file): OPEN creating it by name, its handle and attributes,
    /// and CLOSE of the open just made: the guest's open is the engine's, as over NFSv3.
    func sendCreate4(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer, directory: UnsafeRawBufferPointer,
                     _ request: NFSRequestArguments) -> Int32 {
        let (how, access) = createOpen4(slot, request)
        let clientID = device.v4!.clientID
        let owner = v4!.owner
        return compound4(slot, rpc, tag, cacheThis: true) { writer in
            writer.putfh(directory)
            owner.withUnsafeBytes {
                writer.open(clientID: clientID, owner: $0, access: access | NFSv4ShareAccess.wantNoDelegation, create: how,
                            claim: .name(request.name))
            }
            writer.getfh()
            // CLOSE before GETATTR: an open must not outlive a COMPOUND that stops early.
            writer.close(.current)
            writer.getattr(.standard)
        }
    }

    /// How a CREATE's OPEN makes the file, and the access it opens it for.
    func createOpen4(_ slot: Int, _ request: NFSRequestArguments) -> (NFSv4OpenCreate, UInt32) {
        let progress = records[slot].plan.progress
        let mode = request.mode & 0o7777
        let how: NFSv4OpenCreate
        if progress.contains(.exclusive) {
            how = v4!.minorVersion == 0 ? .exclusive40(verifier: records[slot].createVerifier)
                                        : .exclusive(verifier: records[slot].createVerifier, NFSv4SetAttributes())
        } else if progress.contains(.guarded) {
            how = .guarded(NFSv4SetAttributes(mode: mode))
        } else {
            // O_TRUNC of a file that exists: UNCHECKED applies only the size to it.
            let truncate = Int32(bitPattern: request.flags) & O_TRUNC != 0
            how = .unchecked(NFSv4SetAttributes(size: truncate ? 0 : nil, mode: mode))
        }
        let access: UInt32
        if request.opcodeRaw == FUSEOpcode.create.rawValue {
            switch Int32(bitPattern: request.flags) & O_ACCMODE {
            case O_RDONLY: access = NFSv4ShareAccess.read
            case O_WRONLY: access = NFSv4ShareAccess.write
            default: access = NFSv4ShareAccess.both
            }
        } else {
            access = NFSv4ShareAccess.write
        }
        return (how, access)
    }

    /// REMOVE (a name, or the slot's hidden name) and LINK.
    func sendRemoveOrLink4(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer, _ primary: UnsafeRawBufferPointer,
                           _ request: NFSRequestArguments) -> Int32 {
        guard records[slot].plan.call == .link else {
            let hidden = records[slot].plan.progress.contains(.removingHidden)
            let directory = hidden ? device.nodes.handle(device.hiddenDirectory) : primary
            let name = hidden ? hiddenName4(slot) : request.name
            return compound4(slot, rpc, tag, cacheThis: true) { writer in
                writer.putfh(directory)
                writer.remove(name)
            }
        }
        let file = device.nodes.handle(records[slot].secondaryNode)
        return compound4(slot, rpc, tag, cacheThis: true) { writer in
            writer.putfh(file)
            writer.savefh()
            writer.putfh(primary)
            writer.link(request.name)
            writer.restorefh()
            writer.getattr(.standard)
        }
    }

    func sendRename4(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer, _ primary: UnsafeRawBufferPointer,
                     _ request: NFSRequestArguments) -> Int32 {
        let from: UnsafeRawBufferPointer, fromName: UnsafeRawBufferPointer, to: UnsafeRawBufferPointer, toName: UnsafeRawBufferPointer
        if records[slot].plan.progress.contains(.hiding) {
            // UNLINK hides its name's file; RENAME the file its new name would replace.
            let isUnlink = request.opcodeRaw == FUSEOpcode.unlink.rawValue
            from = isUnlink ? primary : device.nodes.handle(records[slot].secondaryNode)
            fromName = isUnlink ? request.name : request.secondName
            to = device.nodes.handle(device.hiddenDirectory)
            toName = hiddenName4(slot)
        } else {
            from = primary
            fromName = request.name
            to = device.nodes.handle(records[slot].secondaryNode)
            toName = request.secondName
        }
        return compound4(slot, rpc, tag, cacheThis: true) { writer in
            writer.putfh(from)
            writer.savefh()
            writer.putfh(to)
            writer.rename(fromName, to: toName)
        }
    }

    // MARK: - Argument helpers

    func target4(_ slot: Int) -> UnsafeRawBufferPointer {
        records[slot].plan.progress.contains(.stagedTarget)
            ? UnsafeRawBufferPointer(start: stagedHandle(bytesOf: slot), count: records[slot].stagedHandleLength)
            : device.nodes.handle(records[slot].primaryNode)
    }

    /// The slot's hidden name (16 hex digits, '-', 16 hex digits), without its NUL.
    func hiddenName4(_ slot: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: hiddenName(slot), count: 33)
    }

    /// SETATTR's attributes: the guest's (FUSE SETATTR) or an exclusive CREATE's mode.
    func newAttributes4(_ slot: Int) -> NFSv4SetAttributes {
        let request = records[slot].request
        if records[slot].plan.progress.contains(.stagedTarget) {
            // The verifier may be stored in the times: give the file real ones.
            return NFSv4SetAttributes(mode: request.mode & 0o7777, accessTime: .server, modifyTime: .server)
        }
        let fuse = request.setattr
        let valid = fuse.valid
        var attributes = NFSv4SetAttributes()
        if valid & UInt32(FATTR_MODE) != 0 { attributes.mode = fuse.mode & 0o7777 }
        if valid & UInt32(FATTR_UID) != 0 { attributes.owner = fuse.uid }
        if valid & UInt32(FATTR_GID) != 0 { attributes.ownerGroup = fuse.gid }
        if valid & UInt32(FATTR_SIZE) != 0 { attributes.size = fuse.size }
        if valid & UInt32(FATTR_ATIME_NOW) != 0 {
            attributes.accessTime = .server
        } else if valid & UInt32(FATTR_ATIME) != 0 {
            attributes.accessTime = .client(NFSv4Time(seconds: Int64(bitPattern: fuse.atime), nanoseconds: min(fuse.atimensec, 999_999_999)))
        }
        if valid & UInt32(FATTR_MTIME_NOW) != 0 {
            attributes.modifyTime = .server
        } else if valid & UInt32(FATTR_MTIME) != 0 {
            attributes.modifyTime = .client(NFSv4Time(seconds: Int64(bitPattern: fuse.mtime), nanoseconds: min(fuse.mtimensec, 999_999_999)))
        }
        return attributes
    }
}
