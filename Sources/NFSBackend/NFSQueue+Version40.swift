import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import NFSv4Wire

// NFSv4.0 on the NFSv4.1 driver (NFSQueue+Version4.swift): the same stages and COMPOUNDs without
// SEQUENCE. What 4.0 asks instead:
// - The client is made by SETCLIENTID and SETCLIENTID_CONFIRM (NFSv4Setup.swift) and kept by
//   RENEW every third of the lease. STALE_CLIENTID or EXPIRED takes the connection down; the next
//   one makes the client again and the stage goes then (nothing naming the client ran).
// - Only a CREATE of a regular file holds state: its OPEN (by directory and name, the only claim a
//   4.0 server must take) carries its open-owner's seqid. Each engine slot is its own open-owner,
//   so one seqid-bearing call at most is in flight per owner (RFC 7530 §9.1.7); the seqid moves on
//   with every answer except the statuses that do not advance it. An owner whose seqid is in doubt
//   (its connection ended with the call in flight, or the server says BAD_SEQID) is dropped for a
//   new one (the slot's generation changes).
// - 4.0 has no current stateid: the OPEN's stateid comes back in its reply, so the next stage
//   closes it (OPEN_CONFIRM first when the server asks, a new owner's first open).

extension NFSQueue {
    /// RFC 7530 §9.1.7: the errors after which the server did not move the owner's seqid.
    static func seqidAdvances40(_ status: NFSv4Status) -> Bool {
        switch status.rawValue {
        case NFSv4Status.staleClientid.rawValue, NFSv4Status.staleStateid.rawValue, NFSv4Status.badStateid.rawValue,
             NFSv4Status.badSeqid.rawValue, 10036 /* BADXDR */, 10018 /* RESOURCE */, 10020 /* NOFILEHANDLE */, 10019 /* MOVED */:
            return false
        default:
            return true
        }
    }

    /// The slot's open-owner as it travels: 16 bytes naming the queue, the slot and its generation.
    func owner40(_ slot: Int) -> (UInt32, UInt32, UInt32, UInt32) {
        let session = v4!
        return (0x6470_3430 /* "dp40" */, session.queueNumber.bigEndian, UInt32(slot).bigEndian, session.ownerGenerations[slot].bigEndian)
    }

    /// The slot's owner can no longer be trusted to be in step: a new one (any seqid starts it).
    func abandonOwner40(_ slot: Int) {
        v4!.ownerGenerations[slot] &+= 1
        v4!.ownerSeqids[slot] = 0
    }

    /// CREATE's OPEN, or (the stage after it) the OPEN_CONFIRM and CLOSE of the open it made.
    func sendCreate40(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer, directory: UnsafeRawBufferPointer,
                      _ request: NFSRequestArguments) -> Int32 {
        let session = v4!
        let seqid = session.ownerSeqids[slot]
        if session.closingCreated[slot] != 0 {
            let file = UnsafeRawBufferPointer(start: stagedHandle(bytesOf: slot), count: records[slot].stagedHandleLength)
            let opened = session.createdOpens[slot]
            let confirm = session.closingCreated[slot] == 2
            return compound4(slot, rpc, tag) { writer in
                writer.putfh(file)
                guard confirm else { return writer.close(opened, seqid: seqid) }
                writer.openConfirm(opened, seqid: seqid)
                // OPEN_CONFIRM moves the stateid's sequence on by one (RFC 7530 §16.18.5).
                writer.close(NFSv4Stateid(sequence: opened.sequence &+ 1, other: opened.other), seqid: seqid &+ 1)
            }
        }
        let (how, access) = createOpen4(slot, request)
        let clientID = device.v4!.clientID
        let owner = owner40(slot)
        return compound4(slot, rpc, tag) { writer in
            writer.putfh(directory)
            withUnsafeBytes(of: owner) {
                writer.open(clientID: clientID, owner: $0, access: access, create: how, claim: .name(request.name), seqid: seqid)
            }
            writer.getfh()
            writer.getattr(.standard)
        }
    }

    /// An NFSv4.0 answer (no SEQUENCE to read first).
    func finished40(_ slot: Int, _ bytes: UnsafeRawBufferPointer, link: NFSConnection) {
        let session = v4!
        do throws(XDRError) {
            var reader = try CompoundReader(buffer: bytes, operationsSent: Int(session.operationsSent[slot]))
            if records[slot].plan.call == .create, !countSeqids40(slot, reader) { return }
            if records[slot].plan.call.isLock { countLockSeqids40(slot, reader) }
            // The server forgot the client (a restart, an expired lease): nothing naming it ran.
            if reader.status == .staleClientid || reader.status == .expired {
                device.sequenceFailureCount.add(1, ordering: .relaxed)
                link.teardownWanted = true
                if session.closingCreated[slot] != 0 { return createdLeftOpen40(slot) }
                return perform(slot, .connectionLost(sent: false))
            }
            // The server is in its grace period, or busy: nothing of the stage changed; it goes again.
            if reader.status == .grace || reader.status == .delay, session.closingCreated[slot] == 0,
               reader.results + 1 <= (changingResult4(slot) ?? Int.max), delay4(slot, now: monotonicNanoseconds()) { return }
            try answered4(slot, &reader)
        } catch {
            if session.closingCreated[slot] != 0 { return createdLeftOpen40(slot) }
            abandonOwner40(slot)
            // An answer that does not read leaves the pair's seqids in doubt: its locks are lost.
            if records[slot].plan.call.isLock, records[slot].request.lockEntry >= 0 { device.v4!.locks.lose(records[slot].request.lockEntry) }
            perform(slot, .malformed)
        }
    }

    /// Moves the slot's owner's seqid on by the seqid-bearing results the reply holds (the OPEN at
    /// result 2; OPEN_CONFIRM and CLOSE from 2). False when the server said BAD_SEQID: the owner
    /// is dropped and the stage has been dealt with.
    func countSeqids40(_ slot: Int, _ reader: CompoundReader) -> Bool {
        let session = v4!
        let bearing = session.closingCreated[slot] == 2 ? 2 : 1
        for position in 2..<(2 + bearing) where position <= reader.results {
            let status = position < reader.results ? NFSv4Status.ok : reader.status
            guard status != .badSeqid else {
                device.seqidRefusedCount.add(1, ordering: .relaxed)
                let fresh = session.ownerSeqids[slot] == 0
                abandonOwner40(slot)
                if session.closingCreated[slot] != 0 { createdLeftOpen40(slot); return false }
                // A new owner takes any seqid: BAD_SEQID for one is a server out of step with itself.
                if fresh { perform(slot, .malformed) } else { issue(slot) }
                return false
            }
            if Self.seqidAdvances40(status) { session.ownerSeqids[slot] &+= 1 }
        }
        return true
    }

    /// CREATE's OPEN answered (the file made, opened by the slot's owner), or the CLOSE after it.
    func answeredCreate40(_ slot: Int, _ reader: inout CompoundReader) throws(XDRError) {
        let session = v4!
        let closing = session.closingCreated[slot]
        guard closing == 0 else {
            var status = try putfh4(&reader)
            if closing == 2, status == .ok {
                status = try reader.next(.openConfirm)
                if status == .ok { _ = try reader.openConfirmResult() }
            }
            if status == .ok {
                status = try reader.next(.close)
                if status == .ok { _ = try reader.stateidResult() }
            }
            guard status == .ok else { return createdLeftOpen40(slot) }
            session.closingCreated[slot] = 0
            return perform(slot, .entry(status: 0, handle: .valid, attributes: session.createdAttributesCame[slot]))
        }
        var status = try putfh4(&reader)
        if status == .ok { status = try reader.next(.open) }
        guard status == .ok else { return perform(slot, .entry(status: Self.v3Equivalent(status), handle: .absent, attributes: false)) }
        let opened = try reader.openResult()
        guard try reader.next(.getfh) == .ok, stage4(slot, handle: try reader.handle()) else {
            // Made and opened, but no handle to close it by: the open is left to the lease.
            device.opensLeftToLease.add(1, ordering: .relaxed)
            return perform(slot, .malformed)
        }
        var came = false
        if try reader.next(.getattr) == .ok {
            records[slot].stagedAttributes = Self.attributes4(try reader.attributes())
            came = true
        }
        session.createdOpens[slot] = opened.stateid
        session.closingCreated[slot] = opened.needsConfirm ? 2 : 1
        session.createdAttributesCame[slot] = came
        issue(slot)
    }

    /// The file is made; its open could not be closed (a connection that ended, a refusal): the
    /// CREATE succeeds and the open is left to the lease (the client's end, or the engine's stop).
    func createdLeftOpen40(_ slot: Int) {
        let session = v4!
        session.closingCreated[slot] = 0
        device.opensLeftToLease.add(1, ordering: .relaxed)
        perform(slot, .entry(status: 0, handle: .valid, attributes: session.createdAttributesCame[slot]))
    }

    /// The connection ended with the slot's call in flight: its owner's seqid is in doubt.
    ///
    /// A lock call that carries a seqid and was sent waits for the next connection with no
    /// deadline: sent again with the same seqid, it gets its own answer back from the server's
    /// replay cache if it ran. Ended by its deadline instead, the pair's next call would reuse the
    /// seqid and could get that answer in place of its own (RFC 7530 §9.1.9). The device's stop
    /// ends it.
    func connectionLost40(_ slot: Int) {
        abandonOwner40(slot)
        if v4!.closingCreated[slot] != 0 { return createdLeftOpen40(slot) }
        let call = records[slot].plan.call
        if records[slot].sent && call.isLock && call != .lockTest && call != .lockBegin { records[slot].deadline = .max }
        perform(slot, .connectionLost(sent: records[slot].sent))
    }
}
