import CDPFS
import DPFSCore
import FUSEWire
import Glibc
import Synchronization

// Answers: libnfs runs `completed` from inside `rpc_service` once per call (a reply, or the
// connection's end). What the server sent is read here and only here, and nothing of it is
// trusted: handle lengths, counts, names and times are checked before they reach the guest.

extension NFSQueue {
    static let completed: rpc_cb = { _, status, data, tag in
        let tag = tag!.assumingMemoryBound(to: NFSCallTag.self).pointee
        let queue = Unmanaged<NFSQueue>.fromOpaque(tag.queue).takeUnretainedValue()
        queue.finished(Int(tag.slot), status: status, data: data)
    }

    func finished(_ slot: Int, status: Int32, data: UnsafeMutableRawPointer?) {
        precondition(records[slot].state == .inFlight, "an answer for a slot with nothing in flight")
        records[slot].state = .free
        inFlight -= 1
        let link = connections[Int(records[slot].connection)]
        link.inFlight -= 1
        guard status == RPC_STATUS_SUCCESS, let data else {
            // The connection ended (or the answer did not decode: the connection is not to be
            // trusted either). What is safe to repeat waits for the next connection.
            link.teardownWanted = true
            return perform(slot, .connectionLost(sent: records[slot].sent))
        }
        switch records[slot].plan.call {
        case .none:
            preconditionFailure("an answer for a slot without a call")
        case .lookup: answeredLookup(slot, data)
        case .getattr: answeredGetattr(slot, data)
        case .setattr: answeredSetattr(slot, data)
        case .readlink: answeredReadlink(slot, data)
        case .symlink:
            let result = data.assumingMemoryBound(to: SYMLINK3res.self).pointee
            answeredMade(slot, status: result.status.rawValue, handle: result.SYMLINK3res_u.resok.obj, attributes: result.SYMLINK3res_u.resok.obj_attributes)
        case .mknod:
            let result = data.assumingMemoryBound(to: MKNOD3res.self).pointee
            answeredMade(slot, status: result.status.rawValue, handle: result.MKNOD3res_u.resok.obj, attributes: result.MKNOD3res_u.resok.obj_attributes)
        case .mkdir:
            let result = data.assumingMemoryBound(to: MKDIR3res.self).pointee
            answeredMade(slot, status: result.status.rawValue, handle: result.MKDIR3res_u.resok.obj, attributes: result.MKDIR3res_u.resok.obj_attributes)
        case .create:
            let result = data.assumingMemoryBound(to: CREATE3res.self).pointee
            answeredMade(slot, status: result.status.rawValue, handle: result.CREATE3res_u.resok.obj, attributes: result.CREATE3res_u.resok.obj_attributes)
        case .remove: perform(slot, .status(data.assumingMemoryBound(to: REMOVE3res.self).pointee.status.rawValue))
        case .rmdir: perform(slot, .status(data.assumingMemoryBound(to: RMDIR3res.self).pointee.status.rawValue))
        case .rename: perform(slot, .status(data.assumingMemoryBound(to: RENAME3res.self).pointee.status.rawValue))
        case .link: answeredLink(slot, data)
        case .access: answeredAccess(slot, data)
        case .read: answeredRead(slot, data)
        case .write: answeredWrite(slot, data)
        case .commit: answeredCommit(slot, data)
        case .fsstat: answeredFsstat(slot, data)
        case .resendWrite: answeredResendWrite(slot, data)
        case .readdir: answeredReaddir(slot, data)
        case .readdirplus: answeredReaddirplus(slot, data)
        case .lockBegin, .lockOpen, .lock, .unlock, .lockTest, .unlockAll: preconditionFailure("NFSv3 sends no lock call")
        }
    }

    // MARK: - Performing the plan

    /// Hands the plan what this stage brought and does what it decides.
    func perform(_ slot: Int, _ outcome: NFSStageOutcome) {
        perform(slot, action: records[slot].plan.answer(outcome))
    }

    /// `.reply` is the answering function's own business (it holds the answer's data): see `replyWanted`.
    func perform(_ slot: Int, action: NFSStageAction) {
        switch action {
        case .send: issue(slot)
        case .wait:
            records[slot].state = .waiting
            waiting += 1
        case .reply: preconditionFailure("a data reply is written where its answer is read")
        case .replyEntry: replyEntry(slot)
        case .open: replyOpen(slot)
        case .succeed: succeed(slot)
        case .fail(let errno): finish(slot, errno)
        case .markHidden:
            device.names?.moved(records[slot].stagedNode, parent: device.hiddenDirectory,
                                name: UnsafeRawBufferPointer(start: hiddenName(slot), count: 33))
            perform(slot, .hidden(removeNow: device.nodes.hid(records[slot].stagedNode)))
        case .dropStagedAndSend:
            device.nodes.unpin(records[slot].stagedNode)
            records[slot].stagedNode = 0
            issue(slot)
        case .recordCommit(let repaired): recordCommit(slot, repaired: repaired)
        case .endOpen: endReleasedOpen(slot)
        }
    }

    /// A single-stage call's status: true when the plan wants the answer's data as the reply (the
    /// caller writes it), else the plan's decision is performed.
    func replyWanted(_ slot: Int, status: UInt32) -> Bool {
        let action = records[slot].plan.answer(.status(status))
        if action == .reply { return true }
        perform(slot, action: action)
        return false
    }

    // MARK: - Answers

    /// LOOKUP: the entry of a LOOKUP, or the check before RENAME_NOREPLACE, UNLINK or RENAME over a name.
    func answeredLookup(_ slot: Int, _ data: UnsafeMutableRawPointer) {
        let result = data.assumingMemoryBound(to: LOOKUP3res.self).pointee
        let status = result.status.rawValue
        switch records[slot].plan.lookupPurpose {
        case .noReplaceCheck:
            perform(slot, .status(status))
        case .target:
            perform(slot, .target(status: status, openByGuest: status == 0 && stageOpenTarget(slot, result.LOOKUP3res_u.resok)))
        case .entry:
            guard status == 0 else { return perform(slot, .entry(status: status, handle: .absent, attributes: false)) }
            let ok = result.LOOKUP3res_u.resok
            guard stage(slot, handle: ok.object) else { return perform(slot, .malformed) }
            perform(slot, .entry(status: 0, handle: .valid, attributes: stage(slot, attributes: ok.obj_attributes)))
        }
    }

    /// GETATTR: the attributes asked for, or those of a staged entry.
    func answeredGetattr(_ slot: Int, _ data: UnsafeMutableRawPointer) {
        let result = data.assumingMemoryBound(to: GETATTR3res.self).pointee
        let status = result.status.rawValue
        guard status == 0 else { return perform(slot, .entry(status: status, handle: .absent, attributes: false)) }
        let attributes = Self.attributes(result.GETATTR3res_u.resok.obj_attributes)
        if records[slot].plan.progress.contains(.stagedTarget) { records[slot].stagedAttributes = attributes }
        let action = records[slot].plan.answer(.entry(status: 0, handle: .absent, attributes: true))
        guard action == .reply else { return perform(slot, action: action) }
        replyAttributes(slot, attributes)
    }

    /// SETATTR: the attributes after it (or a GETATTR for them); refused set-ID drops go again as the engine.
    func answeredSetattr(_ slot: Int, _ data: UnsafeMutableRawPointer) {
        let result = data.assumingMemoryBound(to: SETATTR3res.self).pointee
        let status = result.status.rawValue
        guard status == 0 else {
            return perform(slot, .setattr(status: status, setIDDropRefused: setIDDropRefused(slot, result), attributes: false))
        }
        let after = result.SETATTR3res_u.resok.obj_wcc.after
        let came = records[slot].plan.progress.contains(.stagedTarget) ? stage(slot, attributes: after) : after.attributes_follow != 0
        let action = records[slot].plan.answer(.setattr(status: 0, setIDDropRefused: false, attributes: came))
        guard action == .reply else { return perform(slot, action: action) }
        replyAttributes(slot, Self.attributes(after.post_op_attr_u.attributes))
    }

    /// GETATTR's and SETATTR's answer (NFSv3 and NFSv4.1): a hidden file has no link left.
    func replyAttributes(_ slot: Int, _ attributes: FileAttributes) {
        var attributes = attributes
        if device.nodes.isHidden(records[slot].primaryNode) { attributes.linkCount = 0 }
        records[slot].reply.attributes(attributes, valid: validity)
        complete(slot)
    }

    /// READLINK: the target, checked for length.
    func answeredReadlink(_ slot: Int, _ data: UnsafeMutableRawPointer) {
        let result = data.assumingMemoryBound(to: READLINK3res.self).pointee
        guard replyWanted(slot, status: result.status.rawValue) else { return }
        guard let target = result.READLINK3res_u.resok.data else { return finish(slot, .io) }
        let length = strnlen(target, FUSELimits.symlinkTargetBytesMax + 1)
        let reply = records[slot].reply
        // An empty target is no symlink a server may have; one longer than PATH_MAX no guest can take.
        guard length >= 1 else { return finish(slot, .io) }
        guard length <= FUSELimits.symlinkTargetBytesMax, length <= reply.dataCapacity else {
            return finish(slot, .nameTooLong)
        }
        var cursor = reply.data
        let written = cursor.write(from: UnsafeRawPointer(target), byteCount: length)
        precondition(written == length)
        reply.sendInPlace(dataBytes: length)
        complete(slot)
    }

    /// SYMLINK, MKNOD, MKDIR and CREATE: the new entry (and, for CREATE, the open file). The
    /// handle and attributes are read only on success (the answer is a union).
    func answeredMade(_ slot: Int, status: UInt32, handle: @autoclosure () -> post_op_fh3, attributes: @autoclosure () -> post_op_attr) {
        guard status == 0 else { return perform(slot, .entry(status: status, handle: .absent, attributes: false)) }
        let made = handle()
        var part = NFSHandlePart.absent
        if made.handle_follows != 0 {
            guard stage(slot, handle: made.post_op_fh3_u.handle) else { return perform(slot, .malformed) }
            part = .valid
        }
        perform(slot, .entry(status: 0, handle: part, attributes: stage(slot, attributes: attributes())))
    }

    /// LINK: the entry names the linked node.
    func answeredLink(_ slot: Int, _ data: UnsafeMutableRawPointer) {
        let result = data.assumingMemoryBound(to: LINK3res.self).pointee
        let status = result.status.rawValue
        guard status == 0 else { return perform(slot, .entry(status: status, handle: .absent, attributes: false)) }
        // The entry names the linked node: its handle, found again in the table by `replyEntry`
        // (which counts the lookup the kernel will FORGET).
        let linked = device.nodes.handle(records[slot].secondaryNode)
        stagedHandle(bytesOf: slot).copyMemory(from: linked.baseAddress!, byteCount: linked.count)
        records[slot].stagedHandleLength = linked.count
        perform(slot, .entry(status: 0, handle: .valid, attributes: stage(slot, attributes: result.LINK3res_u.resok.file_attributes)))
    }

    /// ACCESS: an ACCESS, or the check an OPEN makes.
    func answeredAccess(_ slot: Int, _ data: UnsafeMutableRawPointer) {
        let result = data.assumingMemoryBound(to: ACCESS3res.self).pointee
        let status = result.status.rawValue
        perform(slot, .access(status: status, allowed: status == 0 && accessAllowed(slot, granted: result.ACCESS3res_u.resok.access)))
    }

    /// READ: the data, checked against what was asked.
    func answeredRead(_ slot: Int, _ data: UnsafeMutableRawPointer) {
        let result = data.assumingMemoryBound(to: READ3res.self).pointee
        guard replyWanted(slot, status: result.status.rawValue) else { return }
        let ok = result.READ3res_u.resok
        let reply = records[slot].reply
        let asked = min(Int(records[slot].request.size), reply.dataCapacity, device.readBytesMax)
        let count = Int(ok.count)
        guard count <= asked, count <= Int(ok.data.data_len), count == 0 || ok.data.data_val != nil else {
            return finish(slot, .io)
        }
        if count > 0 {
            var cursor = reply.data
            let written = cursor.write(from: UnsafeRawPointer(ok.data.data_val!), byteCount: count)
            precondition(written == count)
        }
        reply.sendInPlace(dataBytes: count)
        complete(slot)
    }

    /// WRITE: the count, and the verifier an UNSTABLE write was acknowledged with.
    func answeredWrite(_ slot: Int, _ data: UnsafeMutableRawPointer) {
        let result = data.assumingMemoryBound(to: WRITE3res.self).pointee
        guard replyWanted(slot, status: result.status.rawValue) else { return }
        let ok = result.WRITE3res_u.resok
        wrote(slot, count: Int(ok.count), unstable: ok.committed == UNSTABLE, verifier: Self.verifier(ok.verf))
    }

    /// A WRITE's answer (NFSv3 and NFSv4.1): no more than was sent; an UNSTABLE one's verifier
    /// goes to the journal and the open.
    func wrote(_ slot: Int, count: Int, unstable: Bool, verifier: UInt64) {
        let asked = min(records[slot].request.payloadLength, device.writeBytesMax)
        guard count <= asked else { return finish(slot, .io) }
        if unstable {
            if records[slot].journalEntry >= 0 {
                // The journal keeps the bytes until a COMMIT with this verifier covers them.
                journal.acknowledge(records[slot].journalEntry, verifier: verifier)
                records[slot].journalEntry = -1
            }
            device.files.wrote(records[slot].openFile, verifier: verifier)
        }
        records[slot].reply.written(bytes: UInt32(count))
        complete(slot)
    }

    /// COMMIT: FLUSH, FSYNC and RELEASE. The plan decides on a repair when this queue's journal
    /// holds an entry the server lost (a verifier that changed).
    func answeredCommit(_ slot: Int, _ data: UnsafeMutableRawPointer) {
        let result = data.assumingMemoryBound(to: COMMIT3res.self).pointee
        let status = result.status.rawValue
        guard status == 0 else { return perform(slot, .committed(status: status, repairable: false, mismatch: false)) }
        committed(slot, verifier: Self.verifier(result.COMMIT3res_u.resok.verf))
    }

    /// A successful COMMIT's verifier (NFSv3 and NFSv4.1).
    func committed(_ slot: Int, verifier: UInt64) {
        records[slot].commitVerifier = verifier
        let repairable = repairable(records[slot].openFile)
        var mismatch = false
        if repairable, let entry = journal.mismatch(fileHandle: openHandle(slot), coveredBy: records[slot].journalSnapshot,
                                                    verifier: verifier, from: 0) {
            // Written before the server restarted: the plan may send it again.
            mismatch = true
            records[slot].resendVerifier = verifier
            records[slot].resendEntry = entry
        }
        perform(slot, .committed(status: 0, repairable: repairable, mismatch: mismatch))
    }

    /// The COMMIT is recorded in the open table; a whole repair releases the journal's entries.
    func recordCommit(_ slot: Int, repaired: Bool) {
        if repaired { journal.releaseCommitted(fileHandle: openHandle(slot), coveredBy: records[slot].journalSnapshot) }
        let safe = device.files.committed(records[slot].openFile, verifier: records[slot].commitVerifier,
                                          snapshot: records[slot].commitSnapshot, repaired: repaired)
        perform(slot, .commitRecorded(safe: safe))
    }

    /// RELEASE's open ends; the last open of a hidden file hands its node to the slot for the REMOVE.
    func endReleasedOpen(_ slot: Int) {
        let fh = records[slot].request.fh
        journal.releaseCommitted(fileHandle: fh, coveredBy: 0, everything: true)
        let ended = endOpen(fh)
        if ended.removeHidden {
            // The kernel does not look at RELEASE's answer: the hidden name goes next.
            records[slot].stagedNode = ended.node
            writeHiddenName(slot)
        } else if ended.node != 0 {
            device.nodes.unpin(ended.node)
        }
        perform(slot, .openEnded(removeHidden: ended.removeHidden))
    }

    /// FSSTAT: STATFS.
    func answeredFsstat(_ slot: Int, _ data: UnsafeMutableRawPointer) {
        let result = data.assumingMemoryBound(to: FSSTAT3res.self).pointee
        guard replyWanted(slot, status: result.status.rawValue) else { return }
        let ok = result.FSSTAT3res_u.resok
        statistics(slot, total: ok.tbytes, free: ok.fbytes, available: ok.abytes, files: ok.tfiles, filesFree: ok.afiles)
    }

    /// STATFS's answer in 4 KiB blocks (NFSv3 and NFSv4.1).
    func statistics(_ slot: Int, total: UInt64, free: UInt64, available: UInt64, files: UInt64, filesFree: UInt64) {
        let blockBytes: UInt64 = 4096
        records[slot].reply.statistics(FileSystemStatistics(
            blocks: total / blockBytes, blocksFree: free / blockBytes, blocksAvailable: available / blockBytes,
            files: files, filesFree: filesFree, blockSizeBytes: UInt32(blockBytes),
            nameBytesMax: UInt32(FUSELimits.nameBytesMax), fragmentSizeBytes: UInt32(blockBytes)))
        complete(slot)
    }

    /// A journal entry written again during a repair.
    func answeredResendWrite(_ slot: Int, _ data: UnsafeMutableRawPointer) {
        let result = data.assumingMemoryBound(to: WRITE3res.self).pointee
        let status = result.status.rawValue
        guard status == 0 else { return perform(slot, .resent(status: status, more: false)) }
        let ok = result.WRITE3res_u.resok
        resentWrite(slot, count: Int(ok.count), unstable: ok.committed == UNSTABLE, verifier: Self.verifier(ok.verf))
    }

    /// A successful resend of a journal entry (NFSv3 and NFSv4.1): the next entry to resend, if any.
    func resentWrite(_ slot: Int, count: Int, unstable: Bool, verifier: UInt64) {
        let entry = records[slot].resendEntry
        guard count == journal.entry(entry).pointee.length else { return perform(slot, .malformed) }
        device.resentWriteCount.add(1, ordering: .relaxed)
        if unstable {
            journal.rewritten(entry, verifier: verifier)
        } else {
            journal.rewritten(entry, verifier: records[slot].resendVerifier)
            journal.release(entry)
        }
        // A verifier that changed once more: the server restarted again, and what was resent
        // before is to be resent against the new one.
        if unstable && verifier != records[slot].resendVerifier { records[slot].resendVerifier = verifier }
        let next = journal.mismatch(fileHandle: openHandle(slot), coveredBy: records[slot].journalSnapshot,
                                    verifier: records[slot].resendVerifier, from: 0)
        records[slot].resendEntry = next ?? -1
        perform(slot, .resent(status: 0, more: next != nil))
    }

    /// READDIR.
    func answeredReaddir(_ slot: Int, _ data: UnsafeMutableRawPointer) {
        let result = data.assumingMemoryBound(to: READDIR3res.self).pointee
        guard replyWanted(slot, status: result.status.rawValue) else { return }
        listed(slot, result.READDIR3res_u.resok)
    }

    /// READDIRPLUS.
    func answeredReaddirplus(_ slot: Int, _ data: UnsafeMutableRawPointer) {
        let result = data.assumingMemoryBound(to: READDIRPLUS3res.self).pointee
        guard replyWanted(slot, status: result.status.rawValue) else { return }
        listedPlus(slot, result.READDIRPLUS3res_u.resok)
    }

    /// A virtio-fs guest without handle_killpriv_v2 drops set-ID bits after a write with a SETATTR
    /// of the mode without them, sent as the writer, who need not own the file: the server refuses
    /// it (NFS3ERR_PERM). When the refused SETATTR asked for nothing else, and the attributes that
    /// came with the refusal show it only takes set-ID bits away, the plan sends it once more as
    /// the engine (the guest kernel authorised it; a guest can act as any uid anyway).
    func setIDDropRefused(_ slot: Int, _ result: SETATTR3res) -> Bool {
        guard result.status.rawValue == 1, records[slot].request.uid != 0 else { return false }
        let fuse = records[slot].request.setattr
        guard fuse.valid & ~UInt32(FATTR_FH | FATTR_LOCKOWNER) == UInt32(FATTR_MODE) else { return false }
        let after = result.SETATTR3res_u.resfail.obj_wcc.after
        guard after.attributes_follow != 0 else { return false }
        return SetIDBits.onlyDrops(from: after.post_op_attr_u.attributes.mode, to: fuse.mode)
    }

    // MARK: - Entries

    /// UNLINK's or RENAME's target, as its LOOKUP found it: true when it is a regular file with one
    /// link that the guest has open and that is not hidden yet (then pinned as the slot's staged
    /// node, its hidden name written); anything else goes straight to the REMOVE or RENAME.
    func stageOpenTarget(_ slot: Int, _ ok: LOOKUP3resok) -> Bool {
        let length = Int(ok.object.data.data_len)
        guard ok.obj_attributes.attributes_follow != 0, length >= 1, length <= nfsFileHandleBytesMax,
              let bytes = ok.object.data.data_val else { return false }
        let attributes = ok.obj_attributes.post_op_attr_u.attributes
        return stageOpenTarget(slot, handle: UnsafeRawBufferPointer(start: bytes, count: length),
                               regularWithOneLink: attributes.type == NF3REG && attributes.nlink == 1)
    }

    /// The check itself (NFSv3 and NFSv4.1), once the server's answer is read.
    func stageOpenTarget(_ slot: Int, handle: UnsafeRawBufferPointer, regularWithOneLink: Bool) -> Bool {
        guard regularWithOneLink, handle.count >= 1, handle.count <= nfsFileHandleBytesMax,
              let node = device.nodes.findPinned(handle: handle) else { return false }
        guard device.nodes.openCount(node) > 0, !device.nodes.isHidden(node) else {
            device.nodes.unpin(node)
            return false
        }
        records[slot].stagedNode = node
        writeHiddenName(slot)
        return true
    }

    /// Keeps a handle the server sent for the next stage; false when it is not a valid NFSv3 handle.
    func stage(_ slot: Int, handle: nfs_fh3) -> Bool {
        let length = Int(handle.data.data_len)
        guard length >= 1, length <= nfsFileHandleBytesMax, let bytes = handle.data.data_val else { return false }
        stagedHandle(bytesOf: slot).copyMemory(from: bytes, byteCount: length)
        records[slot].stagedHandleLength = length
        return true
    }

    /// Keeps the attributes the server sent for the reply; false when it sent none.
    func stage(_ slot: Int, attributes: post_op_attr) -> Bool {
        guard attributes.attributes_follow != 0 else { return false }
        records[slot].stagedAttributes = Self.attributes(attributes.post_op_attr_u.attributes)
        return true
    }

    /// The entry is complete: the staged handle becomes a node the kernel will FORGET (CREATE: and
    /// an open of it).
    func replyEntry(_ slot: Int) {
        let attributes = records[slot].stagedAttributes
        let staged = UnsafeRawBufferPointer(start: stagedHandle(bytesOf: slot), count: records[slot].stagedHandleLength)
        guard let nodeID = device.nodes.lookup(handle: staged, kind: attributes.mode & FileType.mask) else {
            return finish(slot, Self.ENFILE)
        }
        device.names?.record(UInt32(truncatingIfNeeded: nodeID), parent: records[slot].primaryNode, name: records[slot].request.name,
                             fileid: attributes.inode)
        let reply = records[slot].reply
        if records[slot].request.opcodeRaw == FUSEOpcode.create.rawValue {
            // The lookup just counted keeps the record alive, so the pin cannot fail.
            let node = device.nodes.pin(nodeID)!
            device.nodes.opened(node)
            device.nodes.unpin(node)
            guard let fh = device.files.open(node: node) else {
                _ = device.nodes.closed(node)
                device.nodes.unpin(node)
                device.nodes.forget(nodeID, count: 1)
                return finish(slot, Self.ENFILE)
            }
            reply.created(nodeID: nodeID, generation: 0, entryValid: validity, attrValid: validity, attributes: attributes,
                          fileHandle: fh, openFlags: device.configuration.openFlags)
        } else {
            reply.entry(nodeID: nodeID, generation: 0, entryValid: validity, attrValid: validity, attributes: attributes)
        }
        complete(slot)
    }

    /// OPEN's check passed: counted since the OPEN began (`countedOpen`), the count and its pin
    /// pass to the open.
    func replyOpen(_ slot: Int) {
        guard let fh = device.files.open(node: records[slot].primaryNode) else { return finish(slot, Self.ENFILE) }
        records[slot].plan.progress.remove(.countedOpen)
        records[slot].reply.open(fileHandle: fh, openFlags: device.configuration.openFlags)
        complete(slot)
    }

    // MARK: - Listings

    /// READDIR: the NFS cookie of each entry is its FUSE offset, so the guest's next call goes on
    /// from the last entry that fitted, however the listing is cut.
    func listed(_ slot: Int, _ ok: READDIR3resok) {
        let from = records[slot].request.offset
        let reply = records[slot].reply
        let request = records[slot].request
        var writer = DirectoryEntryWriter(destination: reply.body,
                                          capacity: min(Int(request.size), reply.bodyCapacity))
        device.files.cookieVerifiers[records[slot].openFile] = Self.verifier(ok.cookieverf)
        var entry = ok.reply.entries
        var entriesMax = Self.entriesPerListingMax
        while let current = entry, entriesMax > 0 {
            entriesMax -= 1
            let value = current.pointee
            entry = value.nextentry
            // A server handing out the cookie it was asked to continue from would list forever.
            if from != 0 && value.cookie == from { return finish(slot, Self.ELOOP) }
            guard let name = Self.name(value.name), !HiddenName.isReserved(name) else { continue }
            guard writer.append(inode: value.fileid, nextOffset: value.cookie, type: 0, name: name) else { break }
        }
        reply.send(bodyBytes: writer.bytesWritten)
        complete(slot)
    }

    /// READDIRPLUS: every entry but "." and ".." with a handle and attributes becomes a node the
    /// kernel will FORGET; the others carry node 0 (the kernel then makes no dentry for them).
    func listedPlus(_ slot: Int, _ ok: READDIRPLUS3resok) {
        let from = records[slot].request.offset
        let reply = records[slot].reply
        let request = records[slot].request
        var writer = DirectoryEntryWriter(destination: reply.body,
                                          capacity: min(Int(request.size), reply.bodyCapacity))
        device.files.cookieVerifiers[records[slot].openFile] = Self.verifier(ok.cookieverf)
        let none = CacheValidity(seconds: 0)
        var entry = ok.reply.entries
        var entriesMax = Self.entriesPerListingMax
        while let current = entry, entriesMax > 0 {
            entriesMax -= 1
            let value = current.pointee
            entry = value.nextentry
            // A server handing out the cookie it was asked to continue from would list forever.
            if from != 0 && value.cookie == from { return finish(slot, Self.ELOOP) }
            guard let name = Self.name(value.name), !HiddenName.isReserved(name) else { continue }
            let needed = EntryOutLayout.size + DirentLayout.alignedSize(nameLength: name.count)
            guard writer.bytesWritten + needed <= writer.capacity else { break }
            let isDot = name.count <= 2 && name.allSatisfy { $0 == UInt8(ascii: ".") }
            var attributes = Self.unknownAttributes(inode: value.fileid)
            var nodeID: UInt64 = 0
            if value.name_attributes.attributes_follow != 0 {
                attributes = Self.attributes(value.name_attributes.post_op_attr_u.attributes)
            }
            if !isDot, value.name_attributes.attributes_follow != 0, value.name_handle.handle_follows != 0 {
                let handle = value.name_handle.post_op_fh3_u.handle
                let length = Int(handle.data.data_len)
                if length >= 1, length <= nfsFileHandleBytesMax, let bytes = handle.data.data_val {
                    guard let id = device.nodes.lookup(handle: UnsafeRawBufferPointer(start: bytes, count: length),
                                                       kind: attributes.mode & FileType.mask) else {
                        if writer.bytesWritten == 0 { return finish(slot, Self.ENFILE) }
                        break
                    }
                    nodeID = id
                }
            }
            let validity = nodeID == 0 ? none : self.validity
            let appended = writer.appendPlus(nodeID: nodeID, generation: 0, entryValid: validity, attrValid: validity,
                                             attributes: attributes, nextOffset: value.cookie,
                                             type: (attributes.mode & FileType.mask) >> 12, name: name)
            precondition(appended, "an entry that was measured to fit did not")
        }
        reply.send(bodyBytes: writer.bytesWritten)
        complete(slot)
    }

    /// Entries one answer may carry (a hostile server's endless list ends here).
    static let entriesPerListingMax = 4096

    /// A server's entry name, if it is one the guest can take: 1...255 bytes, no '/'.
    static func name(_ name: UnsafeMutablePointer<CChar>?) -> UnsafeRawBufferPointer? {
        guard let name else { return nil }
        let length = strnlen(name, FUSELimits.nameBytesMax + 1)
        guard length >= 1, length <= FUSELimits.nameBytesMax else { return nil }
        let bytes = UnsafeRawBufferPointer(start: name, count: length)
        guard !bytes.contains(UInt8(ascii: "/")) else { return nil }
        return bytes
    }

    // MARK: - Attributes

    static func verifier<T>(_ bytes: T) -> UInt64 {
        withUnsafeBytes(of: bytes) { $0.loadUnaligned(as: UInt64.self) }
    }

    static func time(_ time: nfstime3) -> FUSETime {
        FUSETime(seconds: UInt64(time.seconds), nanoseconds: min(time.nseconds, 999_999_999))
    }

    /// fattr3 → fuse_attr: the type becomes st_mode's type bits, the blocks are 512-byte units.
    static func attributes(_ a: fattr3) -> FileAttributes {
        let type: UInt32 = switch a.type.rawValue {
        case 2: FileType.directory
        case 3: FileType.blockDevice
        case 4: FileType.characterDevice
        case 5: FileType.symlink
        case 6: FileType.socket
        case 7: FileType.fifo
        default: FileType.regular
        }
        return FileAttributes(
            inode: a.fileid, sizeBytes: a.size, blocks: a.used / 512 + (a.used % 512 == 0 ? 0 : 1),
            accessTime: time(a.atime), modificationTime: time(a.mtime), changeTime: time(a.ctime),
            mode: type | (a.mode & 0o7777), linkCount: a.nlink, uid: a.uid, gid: a.gid,
            rdev: encodeDevice(major: a.rdev.specdata1, minor: a.rdev.specdata2), blockSizeBytes: 4096)
    }

    static func unknownAttributes(inode: UInt64) -> FileAttributes {
        let zero = FUSETime(seconds: 0)
        return FileAttributes(inode: inode, sizeBytes: 0, blocks: 0, accessTime: zero, modificationTime: zero, changeTime: zero,
                              mode: 0, linkCount: 0, uid: 0, gid: 0, rdev: 0, blockSizeBytes: 0)
    }
}
