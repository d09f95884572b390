import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import NFSv4Wire

// NFSv4.1 answers, read in place inside libnfs's callback and turned into the same outcomes the
// NFSv3 answers give the plan. A reply that lies (a result for another operation, a length past
// its end, more results than sent, an attribute it was not asked for) is `.malformed`: the request
// fails EIO, nothing is read past the reply.

extension NFSQueue {
    /// An NFSv4 status as the NFSv3 one the plan and the errno table know (Specs/nfs-errno.md).
    static func v3Equivalent(_ status: NFSv4Status) -> UInt32 { NFSStatus.v3Equivalent(v4: status.rawValue) }

    func finished4(_ slot: Int, status: Int32, data: UnsafeMutableRawPointer?) {
        if slot == renewalTag { return renewed4(status: status, data: data) }
        precondition(records[slot].state == .inFlight, "an answer for a slot with nothing in flight")
        records[slot].state = .free
        inFlight -= 1
        let link = connections[Int(records[slot].connection)]
        link.inFlight -= 1
        let session = v4!
        let sessionSlot = session.held[slot]
        session.held[slot] = -1
        guard status == RPC_STATUS_SUCCESS, let data else {
            // The session is made again with the next connection: this slot's sequence no longer matters.
            session.release(sessionSlot, advanced: false)
            link.teardownWanted = true
            if session.minorVersion == 0 { return connectionLost40(slot) }
            return perform(slot, .connectionLost(sent: records[slot].sent))
        }
        let captured = data.assumingMemoryBound(to: CDPFS_nfs4_reply.self).pointee
        let bytes = UnsafeRawBufferPointer(start: captured.bytes, count: Int(captured.count))
        if session.minorVersion == 0 {
            session.release(sessionSlot, advanced: false)
            reissueWaiting4()
            return finished40(slot, bytes, link: link)
        }
        // The server answered, so it saw this sequence id, whatever the answer says after it.
        var released = false
        do throws(XDRError) {
            var reader = try CompoundReader(buffer: bytes, operationsSent: Int(session.operationsSent[slot]))
            let sequenceStatus = try reader.next(.sequence)
            guard sequenceStatus == .ok else {
                session.release(sessionSlot, advanced: false)
                reissueWaiting4()
                return sequenceFailed4(slot, sequenceStatus, link: link)
            }
            _ = try reader.sequenceResult(session: session.id)
            session.release(sessionSlot, advanced: true)
            released = true
            reissueWaiting4()
            // The server is in its grace period, or busy: nothing of the stage ran; it goes again.
            if reader.status == .grace || reader.status == .delay, reader.results <= (changingResult4(slot) ?? Int.max),
               delay4(slot, now: monotonicNanoseconds()) { return }
            try answered4(slot, &reader)
        } catch {
            if !released {
                session.release(sessionSlot, advanced: true)
                reissueWaiting4()
            }
            perform(slot, .malformed)
        }
    }

    /// SEQUENCE itself failed: the session is gone (server restart, expiry) or the slot is out of
    /// step. The connection is made again, and with it the session; what is safe to repeat waits.
    func sequenceFailed4(_ slot: Int, _ status: NFSv4Status, link: NFSConnection) {
        device.sequenceFailureCount.add(1, ordering: .relaxed)
        // DELAY: the server is busy, the session fine: the request goes again shortly.
        if status == .delay, delay4(slot, now: monotonicNanoseconds()) { return }
        link.teardownWanted = true
        // Nothing after a failed SEQUENCE ran: the request is safe to send again.
        perform(slot, .connectionLost(sent: false))
    }

    /// A session slot came free: one request waiting for one goes.
    func reissueWaiting4() {
        guard waiting > 0, upCount > 0 else { return }
        for candidate in 0..<slotCount where records[candidate].state == .waiting && v4!.retryAtNanoseconds[candidate] == 0 {
            records[candidate].state = .free
            waiting -= 1
            issue(candidate)
            return
        }
    }

    /// The stage's results after SEQUENCE.
    func answered4(_ slot: Int, _ reader: inout CompoundReader) throws(XDRError) {
        switch records[slot].plan.call {
        case .none: preconditionFailure("an answer for a slot without a call")
        case .lookup: try answeredLookup4(slot, &reader)
        case .getattr:
            let status = try putfh4(&reader)
            guard status == .ok, try reader.next(.getattr) == .ok else { return failedEntry4(slot, status) }
            answeredAttributes4(slot, try reader.attributes())
        case .setattr: try answeredSetattr4(slot, &reader)
        case .readlink: try answeredReadlink4(slot, &reader)
        case .symlink, .mknod, .mkdir: try answeredMade4(slot, &reader, .create)
        case .create:
            if v4!.minorVersion == 0 { return try answeredCreate40(slot, &reader) }
            try answeredMade4(slot, &reader, .open)
        case .remove, .rmdir:
            var status = try putfh4(&reader)
            if status == .ok {
                status = try reader.next(.remove)
                if status == .ok { _ = try reader.changeInfo() }
            }
            perform(slot, .status(Self.v3Equivalent(status)))
        case .rename: try answeredRename4(slot, &reader)
        case .link: try answeredLink4(slot, &reader)
        case .access:
            var status = try putfh4(&reader)
            var granted: UInt32 = 0
            if status == .ok {
                status = try reader.next(.access)
                if status == .ok { granted = try reader.accessResult().granted }
            }
            perform(slot, .access(status: Self.v3Equivalent(status), allowed: status == .ok && accessAllowed(slot, granted: granted)))
        case .lockBegin: preconditionFailure("the lock table decides before a lock call is sent")
        case .lockOpen, .lock, .unlock, .lockTest, .unlockAll: try answeredLock4(slot, &reader)
        default: try answeredData4(slot, &reader)
        }
    }

    /// PUTFH's status (every stage starts with one).
    func putfh4(_ reader: inout CompoundReader) throws(XDRError) -> NFSv4Status { try reader.next(.putfh) }

    func failedEntry4(_ slot: Int, _ status: NFSv4Status) {
        // A GETATTR that failed after an OK PUTFH carries its own status; none is a lie.
        perform(slot, .entry(status: status == .ok ? 5 : Self.v3Equivalent(status), handle: .absent, attributes: false))
    }

    func answeredLookup4(_ slot: Int, _ reader: inout CompoundReader) throws(XDRError) {
        var status = try putfh4(&reader)
        if status == .ok { status = try reader.next(.lookup) }
        let v3 = Self.v3Equivalent(status)
        switch records[slot].plan.lookupPurpose {
        case .noReplaceCheck:
            perform(slot, .status(v3))
        case .target:
            guard status == .ok, try reader.next(.getfh) == .ok else { return perform(slot, .target(status: status == .ok ? 5 : v3, openByGuest: false)) }
            let handle = try reader.handle()
            guard try reader.next(.getattr) == .ok else { return perform(slot, .target(status: 5, openByGuest: false)) }
            let attributes = try reader.attributes()
            perform(slot, .target(status: 0, openByGuest: stageOpenTarget(slot, handle: handle,
                                                                            regularWithOneLink: attributes.type == 1 && attributes.numlinks == 1)))
        case .entry:
            guard status == .ok else { return perform(slot, .entry(status: v3, handle: .absent, attributes: false)) }
            try stagedEntry4(slot, &reader)
        }
    }

    /// GETFH and GETATTR of a new or found entry, staged for the plan.
    func stagedEntry4(_ slot: Int, _ reader: inout CompoundReader, closeFirst: Bool = false) throws(XDRError) {
        guard try reader.next(.getfh) == .ok else { return perform(slot, .malformed) }
        guard stage4(slot, handle: try reader.handle()) else { return perform(slot, .malformed) }
        // CREATE's OPEN is closed before its GETATTR (a CLOSE that failed leaves the open to the
        // lease; the file is made either way).
        if closeFirst, try reader.next(.close) == .ok { _ = try reader.stateidResult() }
        var came = false
        if try reader.next(.getattr) == .ok {
            records[slot].stagedAttributes = Self.attributes4(try reader.attributes())
            came = true
        }
        perform(slot, .entry(status: 0, handle: .valid, attributes: came))
    }

    func answeredAttributes4(_ slot: Int, _ received: NFSv4Attributes) {
        let attributes = Self.attributes4(received)
        if records[slot].plan.progress.contains(.stagedTarget) { records[slot].stagedAttributes = attributes }
        let action = records[slot].plan.answer(.entry(status: 0, handle: .absent, attributes: true))
        guard action == .reply else { return perform(slot, action: action) }
        replyAttributes(slot, attributes)
    }

    /// SETATTR between two GETATTRs: the one before tells a refused set-ID drop (NFSv3 has it in
    /// the refusal), the one after is the answer.
    func answeredSetattr4(_ slot: Int, _ reader: inout CompoundReader) throws(XDRError) {
        let status = try putfh4(&reader)
        guard status == .ok, try reader.next(.getattr) == .ok else {
            return perform(slot, .setattr(status: status == .ok ? 5 : Self.v3Equivalent(status), setIDDropRefused: false, attributes: false))
        }
        let before = try reader.attributes()
        if newAttributes4(slot).mask == NFSv4Bitmap() {
            let action = records[slot].plan.answer(.setattr(status: 0, setIDDropRefused: false, attributes: true))
            let attributes = Self.attributes4(before)
            if records[slot].plan.progress.contains(.stagedTarget) { records[slot].stagedAttributes = attributes }
            guard action == .reply else { return perform(slot, action: action) }
            return replyAttributes(slot, attributes)
        }
        let setStatus = try reader.next(.setattr)
        _ = try reader.setattrResult()
        guard setStatus == .ok else {
            let fuse = records[slot].request.setattr
            let refused = setStatus == .perm && records[slot].request.uid != 0
                && fuse.valid & ~UInt32(FATTR_FH | FATTR_LOCKOWNER) == UInt32(FATTR_MODE)
                && SetIDBits.onlyDrops(from: before.mode, to: fuse.mode)
            return perform(slot, .setattr(status: Self.v3Equivalent(setStatus), setIDDropRefused: refused, attributes: false))
        }
        var came = false
        var attributes = Self.attributes4(before)
        if try reader.next(.getattr) == .ok {
            attributes = Self.attributes4(try reader.attributes())
            came = true
        }
        if records[slot].plan.progress.contains(.stagedTarget) && came { records[slot].stagedAttributes = attributes }
        let action = records[slot].plan.answer(.setattr(status: 0, setIDDropRefused: false, attributes: came))
        guard action == .reply else { return perform(slot, action: action) }
        replyAttributes(slot, attributes)
    }

    func answeredReadlink4(_ slot: Int, _ reader: inout CompoundReader) throws(XDRError) {
        var status = try putfh4(&reader)
        if status == .ok { status = try reader.next(.readlink) }
        guard replyWanted(slot, status: Self.v3Equivalent(status)) else { return }
        let target = try reader.readlinkResult()
        let reply = records[slot].reply
        // An empty target is no symlink a server may have; one longer than PATH_MAX no guest can take.
        guard target.count >= 1, !target.contains(0) else { return finish(slot, .io) }
        guard target.count <= FUSELimits.symlinkTargetBytesMax, target.count <= reply.dataCapacity else { return finish(slot, .nameTooLong) }
        var cursor = reply.data
        let written = cursor.write(from: target.baseAddress!, byteCount: target.count)
        precondition(written == target.count)
        reply.sendInPlace(dataBytes: target.count)
        complete(slot)
    }

    /// CREATE (SYMLINK, MKNOD, MKDIR) or OPEN+CLOSE (CREATE of a regular file), then GETFH, GETATTR.
    func answeredMade4(_ slot: Int, _ reader: inout CompoundReader, _ operation: NFSv4Operation) throws(XDRError) {
        var status = try putfh4(&reader)
        if status == .ok { status = try reader.next(operation) }
        guard status == .ok else { return perform(slot, .entry(status: Self.v3Equivalent(status), handle: .absent, attributes: false)) }
        if operation == .open {
            let opened = try reader.openResult()
            // 4.1 needs no OPEN_CONFIRM; a server asking for one is not speaking 4.1.
            guard !opened.needsConfirm else { return perform(slot, .malformed) }
        } else {
            _ = try reader.createResult()
        }
        try stagedEntry4(slot, &reader, closeFirst: operation == .open)
    }

    func answeredRename4(_ slot: Int, _ reader: inout CompoundReader) throws(XDRError) {
        var status = try putfh4(&reader)
        if status == .ok { status = try reader.next(.savefh) }
        if status == .ok { status = try reader.next(.putfh) }
        if status == .ok {
            status = try reader.next(.rename)
            if status == .ok { _ = try reader.renameResult() }
        }
        perform(slot, .status(Self.v3Equivalent(status)))
    }

    /// LINK: the entry names the linked node (its handle is the one the request pinned).
    func answeredLink4(_ slot: Int, _ reader: inout CompoundReader) throws(XDRError) {
        var status = try putfh4(&reader)
        if status == .ok { status = try reader.next(.savefh) }
        if status == .ok { status = try reader.next(.putfh) }
        if status == .ok {
            status = try reader.next(.link)
            if status == .ok { _ = try reader.changeInfo() }
        }
        guard status == .ok else { return perform(slot, .entry(status: Self.v3Equivalent(status), handle: .absent, attributes: false)) }
        let linked = device.nodes.handle(records[slot].secondaryNode)
        stagedHandle(bytesOf: slot).copyMemory(from: linked.baseAddress!, byteCount: linked.count)
        records[slot].stagedHandleLength = linked.count
        var came = false
        if try reader.next(.restorefh) == .ok, try reader.next(.getattr) == .ok {
            records[slot].stagedAttributes = Self.attributes4(try reader.attributes())
            came = true
        }
        perform(slot, .entry(status: 0, handle: .valid, attributes: came))
    }
}

extension NFSQueue {
    /// READ, WRITE, COMMIT, the journal's WRITE again, FSSTAT, READDIR, READDIRPLUS.
    func answeredData4(_ slot: Int, _ reader: inout CompoundReader) throws(XDRError) {
        let call = records[slot].plan.call
        var status = try putfh4(&reader)
        let dots = (call == .readdir || call == .readdirplus) && records[slot].request.offset < Self.firstServerCookie
        var directoryInode: UInt64 = 0
        if dots && status == .ok {
            status = try reader.next(.getattr)
            if status == .ok { directoryInode = try reader.attributes().fileid }
        }
        let operation: NFSv4Operation = switch call {
        case .read: .read
        case .write, .resendWrite: .write
        case .commit: .commit
        case .fsstat: .getattr
        default: .readdir
        }
        if status == .ok { status = try reader.next(operation) }
        if operation == .readdir, status == .access, !v4!.namesOnly[slot] {
            // Readable but not searchable: the names alone, as a local file system lists them.
            v4!.namesOnly[slot] = true
            return issue(slot)
        }
        let v3 = Self.v3Equivalent(status)
        switch call {
        case .commit:
            guard status == .ok else { return perform(slot, .committed(status: v3, repairable: false, mismatch: false)) }
            committed(slot, verifier: try reader.commitVerifier())
        case .resendWrite:
            guard status == .ok else { return perform(slot, .resent(status: v3, more: false)) }
            let result = try reader.writeResult()
            resentWrite(slot, count: Int(result.count), unstable: result.committed == .unstable, verifier: result.verifier)
        default:
            guard replyWanted(slot, status: v3) else { return }
            switch call {
            case .read:
                let asked = min(Int(records[slot].request.size), records[slot].reply.dataCapacity, device.readBytesMax)
                let (_, data) = try reader.readData(limit: asked)
                read4(slot, data)
            case .write:
                let result = try reader.writeResult()
                wrote(slot, count: Int(result.count), unstable: result.committed == .unstable, verifier: result.verifier)
            case .fsstat:
                let a = try reader.attributes()
                statistics(slot, total: a.space.total, free: a.space.free, available: a.space.available,
                           files: a.files.total, filesFree: a.files.available)
            default:
                guard dots else { return try listed4(slot, &reader, dots: nil) }
                // The parent's inode follows the listing: read past it on a copy of the reader.
                var ahead = reader
                var parentInode = directoryInode
                _ = try ahead.readdirVerifier()
                var skipped = 0
                while skipped < Self.entriesPerListingMax, try ahead.directoryEntry() != nil { skipped += 1 }
                if skipped < Self.entriesPerListingMax, (try? ahead.readdirEnd()) != nil,
                   (try? ahead.next(.lookupp)) == .ok, (try? ahead.next(.getattr)) == .ok,
                   let parent = try? ahead.attributes() {
                    parentInode = parent.fileid
                }
                try listed4(slot, &reader, dots: (directoryInode, parentInode))
            }
        }
    }

    func read4(_ slot: Int, _ data: UnsafeRawBufferPointer) {
        let reply = records[slot].reply
        if !data.isEmpty {
            var cursor = reply.data
            let written = cursor.write(from: data.baseAddress!, byteCount: data.count)
            precondition(written == data.count)
        }
        reply.sendInPlace(dataBytes: data.count)
        complete(slot)
    }

    /// READDIR and READDIRPLUS: each entry's cookie is its FUSE offset. For READDIRPLUS every
    /// entry with a handle becomes a node the kernel will FORGET (v4 lists no "." or "..").
    func listed4(_ slot: Int, _ reader: inout CompoundReader, dots: (UInt64, UInt64)?) throws(XDRError) {
        let offset = records[slot].request.offset
        let from = offset <= Self.firstServerCookie ? 0 : offset
        let reply = records[slot].reply
        let plus = records[slot].plan.call == .readdirplus
        var writer = DirectoryEntryWriter(destination: reply.body, capacity: min(Int(records[slot].request.size), reply.bodyCapacity))
        let verifier = try reader.readdirVerifier()
        if let (directory, parent) = dots {
            for index in Int(offset)..<2 {
                let name = index == 0 ? Self.dotName : Self.dotDotName
                var attributes = Self.unknownAttributes(inode: index == 0 ? directory : parent)
                attributes.mode = FileType.directory
                let appended = name.withUnsafeBytes { name in
                    plus ? writer.appendPlus(nodeID: 0, generation: 0, entryValid: CacheValidity(seconds: 0), attrValid: CacheValidity(seconds: 0),
                                             attributes: attributes, nextOffset: UInt64(index + 1), type: FileType.directory >> 12, name: name)
                         : writer.append(inode: attributes.inode, nextOffset: UInt64(index + 1), type: FileType.directory >> 12, name: name)
                }
                guard appended else { break }
            }
        }
        var entriesMax = Self.entriesPerListingMax
        var failure: FUSEErrno? = nil
        while entriesMax > 0, let entry = try reader.directoryEntry() {
            entriesMax -= 1
            // A server handing out the cookie it was asked to continue from would list forever.
            if from != 0 && entry.cookie == from { failure = Self.ELOOP; break }
            // Cookies 0, 1 and 2 are not the server's to give (RFC 7530 §16.24.4); here they are
            // the offsets of the start, "." and "..": taking one would list the directory again.
            if entry.cookie <= Self.firstServerCookie { failure = .io; break }
            guard Self.entryName4(entry.name), !HiddenName.isReserved(entry.name) else { continue }
            let attributes = Self.attributes4(entry.attributes)
            let namesOnly = !entry.attributes.present.contains(NFSv4Attribute.fileid.rawValue)
            if !plus || namesOnly {
                // Without its attributes an entry's inode is unknown: its cookie stands in (never 0).
                let inode = namesOnly ? entry.cookie : entry.attributes.fileid
                if plus {
                    var unknown = Self.unknownAttributes(inode: inode)
                    unknown.mode = 0
                    guard writer.bytesWritten + EntryOutLayout.size + DirentLayout.alignedSize(nameLength: entry.name.count) <= writer.capacity,
                          writer.appendPlus(nodeID: 0, generation: 0, entryValid: CacheValidity(seconds: 0), attrValid: CacheValidity(seconds: 0),
                                            attributes: unknown, nextOffset: entry.cookie, type: 0, name: entry.name) else { break }
                    continue
                }
                guard writer.append(inode: inode, nextOffset: entry.cookie, type: 0, name: entry.name) else { break }
                continue
            }
            let needed = EntryOutLayout.size + DirentLayout.alignedSize(nameLength: entry.name.count)
            guard writer.bytesWritten + needed <= writer.capacity else { break }
            var nodeID: UInt64 = 0
            let a = entry.attributes
            if a.handleOffset >= 0, a.handleLength >= 1, a.handleLength <= nfsFileHandleBytesMax, a.present.contains(NFSv4Attribute.type.rawValue) {
                let handle = UnsafeRawBufferPointer(rebasing: reader.xdr.buffer[a.handleOffset..<(a.handleOffset + a.handleLength)])
                guard let id = device.nodes.lookup(handle: handle, kind: attributes.mode & FileType.mask) else {
                    if writer.bytesWritten == 0 { failure = Self.ENFILE }
                    break
                }
                nodeID = id
                device.names?.record(UInt32(truncatingIfNeeded: id), parent: records[slot].primaryNode, name: entry.name, fileid: attributes.inode)
            }
            let valid = nodeID == 0 ? CacheValidity(seconds: 0) : validity
            let appended = writer.appendPlus(nodeID: nodeID, generation: 0, entryValid: valid, attrValid: valid, attributes: attributes,
                                             nextOffset: entry.cookie, type: (attributes.mode & FileType.mask) >> 12, name: entry.name)
            precondition(appended, "an entry that was measured to fit did not")
        }
        v4!.namesOnly[slot] = false
        if let failure { return finish(slot, failure) }
        device.files.cookieVerifiers[records[slot].openFile] = verifier
        reply.send(bodyBytes: writer.bytesWritten)
        complete(slot)
    }

    static let dotName: [UInt8] = [UInt8(ascii: ".")]
    static let dotDotName: [UInt8] = [UInt8(ascii: "."), UInt8(ascii: ".")]

    /// A server's entry name the guest can take: 1...255 bytes, no '/', no NUL.
    static func entryName4(_ name: UnsafeRawBufferPointer) -> Bool {
        name.count >= 1 && name.count <= FUSELimits.nameBytesMax && !name.contains(UInt8(ascii: "/")) && !name.contains(0)
    }

    /// Keeps a handle the server sent for the next stage; false when it is not one the table takes.
    func stage4(_ slot: Int, handle: UnsafeRawBufferPointer) -> Bool {
        guard handle.count >= 1, handle.count <= nfsFileHandleBytesMax else { return false }
        stagedHandle(bytesOf: slot).copyMemory(from: handle.baseAddress!, byteCount: handle.count)
        records[slot].stagedHandleLength = handle.count
        return true
    }

    /// fattr4 → fuse_attr: the type becomes st_mode's type bits, the blocks are 512-byte units. An
    /// owner the server named instead of numbering (a misconfigured server) is "nobody".
    static func attributes4(_ a: NFSv4Attributes) -> FileAttributes {
        let type: UInt32 = switch a.type {
        case 2: FileType.directory
        case 3: FileType.blockDevice
        case 4: FileType.characterDevice
        case 5: FileType.symlink
        case 6: FileType.socket
        case 7: FileType.fifo
        default: FileType.regular
        }
        func time(_ t: NFSv4Time) -> FUSETime { FUSETime(seconds: UInt64(bitPattern: t.seconds), nanoseconds: t.nanoseconds) }
        return FileAttributes(
            inode: a.fileid, sizeBytes: a.size, blocks: a.spaceUsed / 512 + (a.spaceUsed % 512 == 0 ? 0 : 1),
            accessTime: time(a.accessTime), modificationTime: time(a.modifyTime), changeTime: time(a.metadataTime),
            mode: type | (a.mode & 0o7777), linkCount: a.numlinks, uid: a.owner ?? 65_534, gid: a.ownerGroup ?? 65_534,
            rdev: encodeDevice(major: a.rawdev.major, minor: a.rawdev.minor), blockSizeBytes: 4096)
    }
}
