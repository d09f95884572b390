import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import Synchronization

// Requests as NFSv3 calls. A FUSE request becomes one or more RPCs on its slot ("stages"), which
// its plan (NFSStagePlan.swift) chooses. Every stage is built from the slot's own record (the
// request stays in slot memory until it is answered), so a stage that waited for a new connection
// is simply built again.

/// ACCESS3 bits (RFC 1813 §3.3.4).
enum NFSAccess {
    static let read: UInt32 = 0x01
    static let lookup: UInt32 = 0x02
    static let modify: UInt32 = 0x04
    static let extend: UInt32 = 0x08
    static let delete: UInt32 = 0x10
    static let execute: UInt32 = 0x20
}


extension NFSQueue {
    static let ENFILE = FUSEErrno(23)
    static let ESTALE = FUSEErrno(116)
    /// A listing that does not advance (Linux's NFS client answers ELOOP too).
    static let ELOOP = FUSEErrno(40)

    // MARK: - Starting a request

    /// Ends an open: its node's open count drops, and the caller owns the open's pin (`node`, 0 when
    /// `fh` was not open). `removeHidden`: it was the last open of a hidden file, which the caller
    /// must now remove.
    func endOpen(_ fh: UInt64) -> (node: UInt32, removeHidden: Bool) {
        let node = device.files.close(fh)
        guard node != 0 else { return (0, false) }
        return (node, device.nodes.closed(node))
    }
    /// FLUSH, FSYNC and RELEASE COMMIT what this open wrote unstably; RELEASE then forgets the open.
    /// An open whose data the server may have lost (its write verifier changed) fails them EIO.
    func closeOrSync(_ opcode: FUSEOpcode, _ request: NFSRequestArguments, reply: FUSEReply, token: CompletionToken) -> BackendAnswer {
        let files = device.files
        switch opcode {
        case .releasedir:
            let ended = endOpen(request.fh)
            if ended.node != 0 { device.nodes.unpin(ended.node) }
            reply.send(bodyBytes: 0)
            return .done
        case .fsyncdir:
            // Directory operations are synchronous on an NFSv3 server (RFC 1813 §3.3): nothing waits.
            reply.send(bodyBytes: 0)
            return .done
        case .release:
            let fh = request.fh
            guard let index = files.index(fh) else { reply.send(bodyBytes: 0); return .done }
            if files.isDirty(index) {
                return begin(request, reply: reply, token: token, call: .commit, secondaryID: 0, openFile: index, progress: [])
            }
            let ended = endOpen(fh)
            journal.releaseCommitted(fileHandle: fh, coveredBy: 0, everything: true)
            guard ended.removeHidden else {
                if ended.node != 0 { device.nodes.unpin(ended.node) }
                reply.send(bodyBytes: 0)
                return .done
            }
            return begin(request, reply: reply, token: token, call: .remove, secondaryID: 0, openFile: 0,
                         progress: .removingHidden, stagedNode: ended.node)
        default:
            let fh = request.fh
            guard let index = files.index(fh) else { reply.fail(.badFileDescriptor); return .done }
            // A changed verifier is repaired from the journal when this queue holds all the open's data.
            if files.hasLostData(index) && !repairable(index) { reply.fail(.io); return .done }
            guard files.isDirty(index) else { reply.send(bodyBytes: 0); return .done }
            return begin(request, reply: reply, token: token, call: .commit, secondaryID: 0, openFile: index, progress: [])
        }
    }

    /// Records the request on its slot, pins its nodes and issues the first stage.
    /// `stagedNode`: a node record the caller holds pinned, handed to the slot.
    func begin(_ request: NFSRequestArguments, reply: FUSEReply, token: CompletionToken, call: NFSCall, secondaryID: UInt64,
               openFile: Int, progress: NFSProgress, stagedNode: UInt32 = 0) -> BackendAnswer {
        let slot = Int(token.slotIndex)
        precondition(slot < slotCount && records[slot].state == .free, "slot already busy")
        guard let primary = device.nodes.pin(request.nodeID) else {
            if stagedNode != 0 { device.nodes.unpin(stagedNode) }
            if request.opcodeRaw == FUSEOpcode.release.rawValue {
                let ended = endOpen(request.fh)
                if ended.node != 0 { device.nodes.unpin(ended.node) }
            }
            reply.fail(Self.ESTALE)
            return .done
        }
        var secondary: UInt32 = 0
        if secondaryID != 0 {
            guard let pinned = device.nodes.pin(secondaryID) else {
                device.nodes.unpin(primary)
                if stagedNode != 0 { device.nodes.unpin(stagedNode) }
                reply.fail(Self.ESTALE)
                return .done
            }
            secondary = pinned
        }
        records[slot].stagedNode = stagedNode
        // The count holds a pin of its own, handed to the open when it succeeds.
        if progress.contains(.countedOpen) { device.nodes.opened(primary) }
        records[slot].journalEntry = -1
        records[slot].resendEntry = -1
        records[slot].request = request
        records[slot].reply = reply
        records[slot].token = token
        records[slot].plan = NFSStagePlan(call: call, progress: progress, kind: NFSRequestKind(request.opcodeRaw))
        records[slot].sent = false
        records[slot].primaryNode = primary
        records[slot].secondaryNode = secondary
        records[slot].openFile = openFile
        if stagedNode != 0 { writeHiddenName(slot) }
        records[slot].stagedHandleLength = 0
        if progress.contains(.exclusive) {
            // Unique per request and kept across resends: a repeat of the same CREATE is recognised.
            createSequence &+= 1
            records[slot].createVerifier = createSequence ^ (UInt64(truncatingIfNeeded: request.unique) << 20)
        }
        let now = monotonicNanoseconds()
        records[slot].deadline = now &+ timeoutNanoseconds
        v4?.lastActiveNanoseconds = now
        pendingCount += 1
        startingSlot = slot
        startAnsweredInline = false
        issue(slot)
        startingSlot = -1
        return startAnsweredInline ? .done : .pending
    }

    // MARK: - Issuing a stage

    /// Sends the slot's current stage, or parks it until the connection is up.
    func issue(_ slot: Int) {
        precondition(records[slot].state == .free)
        // A lock request asks the lock table first, which may make it wait or answer it.
        if records[slot].plan.call == .lockBegin, !decideLock4(slot) { return }
        guard let link = pickConnection(), let rpc = link.rpc else {
            records[slot].state = .waiting
            waiting += 1
            return
        }
        if let session = v4 {
            // NFSv4.1: the call needs a session slot of its own; without one it waits for the next.
            guard let sessionSlot = session.acquire() else {
                records[slot].state = .waiting
                waiting += 1
                return
            }
            session.held[slot] = sessionSlot
        }
        let request = records[slot].request
        if records[slot].plan.progress.contains(.asEngine) { become(link, uid: 0, gid: 0) } else { become(link, uid: request.uid, gid: request.gid) }
        let tag = UnsafeMutableRawPointer(tags + slot)
        let started = send(slot, rpc, tag)
        guard started == 0 else {
            if let session = v4 {
                session.release(session.held[slot], advanced: false)
                session.held[slot] = -1
            }
            // libnfs could not even queue it: out of memory, or (-2) the arguments do not fit the
            // 4 KiB buffer libnfs 4.0 encodes every call into, which only a symlink target near
            // PATH_MAX reaches (Specs/nfs-semantics.md).
            finish(slot, started == -2 && records[slot].plan.call == .symlink ? .nameTooLong : .io)
            return
        }
        records[slot].state = .inFlight
        records[slot].sent = true
        records[slot].connection = UInt8(link.index)
        link.inFlight += 1
        inFlight += 1
    }

    /// Queues the RPC of the slot's current stage in libnfs (AUTH_SYS already set): 0, or
    /// libnfs's failure (-2: the arguments do not fit its encoding buffer).
    func send(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        if v4 != nil { return send4(slot, rpc, tag) }
        switch records[slot].plan.call {
        case .none:
            preconditionFailure("a slot issued without a call")
        case .lookup: return sendLookup(slot, rpc, tag)
        case .getattr: return sendGetattr(slot, rpc, tag)
        case .setattr: return sendSetattr(slot, rpc, tag)
        case .readlink: return sendReadlink(slot, rpc, tag)
        case .symlink: return sendSymlink(slot, rpc, tag)
        case .mknod: return sendMknod(slot, rpc, tag)
        case .mkdir: return sendMkdir(slot, rpc, tag)
        case .create: return sendCreate(slot, rpc, tag)
        case .remove: return sendRemove(slot, rpc, tag)
        case .rmdir: return sendRmdir(slot, rpc, tag)
        case .rename: return sendRename(slot, rpc, tag)
        case .link: return sendLink(slot, rpc, tag)
        case .access: return sendAccess(slot, rpc, tag)
        case .read: return sendRead(slot, rpc, tag)
        case .write: return sendWrite(slot, rpc, tag)
        case .resendWrite: return sendResendWrite(slot, rpc, tag)
        case .commit: return sendCommit(slot, rpc, tag)
        case .fsstat: return sendFsstat(slot, rpc, tag)
        case .readdir, .readdirplus: return sendReaddir(slot, rpc, tag)
        case .lockBegin, .lockOpen, .lock, .unlock, .lockTest, .unlockAll: preconditionFailure("NFSv3 sends no lock call")
        }
    }

    /// The LOOKUP call of a stage.
    func sendLookup(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let request = records[slot].request
        let primary = records[slot].primaryNode
        let what = records[slot].plan.progress.contains(.noReplaceCheck) || records[slot].plan.progress.contains(.replaceCheck)
            ? directoryOperation(records[slot].secondaryNode, request.secondName) : directoryOperation(primary, request.name)
        var arguments = LOOKUP3args(what: what)
        return rpc_nfs3_lookup_async(rpc, Self.completed, &arguments, tag)
    }

    /// The GETATTR call of a stage.
    func sendGetattr(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        var arguments = GETATTR3args(object: target(slot))
        return rpc_nfs3_getattr_async(rpc, Self.completed, &arguments, tag)
    }

    /// The SETATTR call of a stage.
    func sendSetattr(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        var arguments = SETATTR3args(object: target(slot), new_attributes: newAttributes(slot), guard: sattrguard3())
        return rpc_nfs3_setattr_async(rpc, Self.completed, &arguments, tag)
    }

    /// The READLINK call of a stage.
    func sendReadlink(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let primary = records[slot].primaryNode
        var arguments = READLINK3args(symlink: handle(primary))
        return rpc_nfs3_readlink_async(rpc, Self.completed, &arguments, tag)
    }

    /// The SYMLINK call of a stage.
    func sendSymlink(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let request = records[slot].request
        let primary = records[slot].primaryNode
        var arguments = SYMLINK3args(where: directoryOperation(primary, request.name),
                                     symlink: symlinkdata3(symlink_attributes: sattr3(), symlink_data: cString(request.secondName)))
        return rpc_nfs3_symlink_async(rpc, Self.completed, &arguments, tag)
    }

    /// The MKNOD call of a stage.
    func sendMknod(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let request = records[slot].request
        let primary = records[slot].primaryNode
        let fuse = request
        var what = mknoddata3()
        var attributes = sattr3()
        attributes.mode = set_mode3(set_it: 1, set_mode3_u: .init(mode: fuse.mode & 0o7777))
        switch fuse.mode & FileType.mask {
        case FileType.characterDevice, FileType.blockDevice:
            let device = devicedata3(dev_attributes: attributes, spec: specdata3(specdata1: Self.major(fuse.rdev), specdata2: Self.minor(fuse.rdev)))
            if fuse.mode & FileType.mask == FileType.characterDevice {
                what.type = NF3CHR
                what.mknoddata3_u.chr_device = device
            } else {
                what.type = NF3BLK
                what.mknoddata3_u.blk_device = device
            }
        case 0o140000:
            what.type = NF3SOCK
            what.mknoddata3_u.sock_attributes = attributes
        default:
            what.type = NF3FIFO
            what.mknoddata3_u.pipe_attributes = attributes
        }
        var arguments = MKNOD3args(where: directoryOperation(primary, request.name), what: what)
        return rpc_nfs3_mknod_async(rpc, Self.completed, &arguments, tag)
    }

    /// The MKDIR call of a stage.
    func sendMkdir(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let request = records[slot].request
        let primary = records[slot].primaryNode
        var attributes = sattr3()
        attributes.mode = set_mode3(set_it: 1, set_mode3_u: .init(mode: request.mode & 0o7777))
        var arguments = MKDIR3args(where: directoryOperation(primary, request.name), attributes: attributes)
        return rpc_nfs3_mkdir_async(rpc, Self.completed, &arguments, tag)
    }

    /// The CREATE call of a stage.
    func sendCreate(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let request = records[slot].request
        let primary = records[slot].primaryNode
        var how = createhow3()
        let state = records[slot].plan.progress
        if state.contains(.exclusive) {
            how.mode = EXCLUSIVE
            withUnsafeMutableBytes(of: &how.createhow3_u.verf) { $0.storeBytes(of: records[slot].createVerifier, as: UInt64.self) }
        } else {
            var attributes = sattr3()
            if state.contains(.guarded) {
                how.mode = GUARDED
                attributes.mode = set_mode3(set_it: 1, set_mode3_u: .init(mode: request.mode & 0o7777))
            } else {
                how.mode = UNCHECKED
                let fuse = request
                attributes.mode = set_mode3(set_it: 1, set_mode3_u: .init(mode: fuse.mode & 0o7777))
                // O_TRUNC of a file that exists: UNCHECKED applies only the size to it.
                if Int32(bitPattern: fuse.flags) & O_TRUNC != 0 {
                    attributes.size = set_size3(set_it: 1, set_size3_u: .init(size: 0))
                }
            }
            how.createhow3_u.obj_attributes = attributes
        }
        var arguments = CREATE3args(where: directoryOperation(primary, request.name), how: how)
        return rpc_nfs3_create_async(rpc, Self.completed, &arguments, tag)
    }

    /// The REMOVE call of a stage.
    func sendRemove(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let request = records[slot].request
        let primary = records[slot].primaryNode
        let object = records[slot].plan.progress.contains(.removingHidden)
            ? diropargs3(dir: handle(device.hiddenDirectory), name: hiddenNameC(slot))
            : directoryOperation(primary, request.name)
        var arguments = REMOVE3args(object: object)
        return rpc_nfs3_remove_async(rpc, Self.completed, &arguments, tag)
    }

    /// The RMDIR call of a stage.
    func sendRmdir(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let request = records[slot].request
        let primary = records[slot].primaryNode
        var arguments = RMDIR3args(object: directoryOperation(primary, request.name))
        return rpc_nfs3_rmdir_async(rpc, Self.completed, &arguments, tag)
    }

    /// The RENAME call of a stage.
    func sendRename(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let request = records[slot].request
        let primary = records[slot].primaryNode
        var arguments: RENAME3args
        if records[slot].plan.progress.contains(.hiding) {
            // UNLINK hides its name's file; RENAME the file its new name would replace.
            let isUnlink = request.opcodeRaw == FUSEOpcode.unlink.rawValue
            let directory = isUnlink ? primary : records[slot].secondaryNode
            arguments = RENAME3args(from: directoryOperation(directory, isUnlink ? request.name : request.secondName),
                                    to: diropargs3(dir: handle(device.hiddenDirectory), name: hiddenNameC(slot)))
        } else {
            arguments = RENAME3args(from: directoryOperation(primary, request.name),
                                    to: directoryOperation(records[slot].secondaryNode, request.secondName))
        }
        return rpc_nfs3_rename_async(rpc, Self.completed, &arguments, tag)
    }

    /// The LINK call of a stage.
    func sendLink(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let request = records[slot].request
        let primary = records[slot].primaryNode
        var arguments = LINK3args(file: handle(records[slot].secondaryNode), link: directoryOperation(primary, request.name))
        return rpc_nfs3_link_async(rpc, Self.completed, &arguments, tag)
    }

    /// The ACCESS call of a stage.
    func sendAccess(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let primary = records[slot].primaryNode
        var arguments = ACCESS3args(object: handle(primary), access: accessWanted(slot))
        return rpc_nfs3_access_async(rpc, Self.completed, &arguments, tag)
    }

    /// The READ call of a stage.
    func sendRead(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let request = records[slot].request
        let primary = records[slot].primaryNode
        let fuse = request
        let count = min(Int(fuse.size), records[slot].reply.dataCapacity, device.readBytesMax)
        var arguments = READ3args(file: handle(primary), offset: fuse.offset, count: count3(count))
        return rpc_nfs3_read_async(rpc, Self.completed, &arguments, tag)
    }

    /// The WRITE call of a stage.
    func sendWrite(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let request = records[slot].request
        let primary = records[slot].primaryNode
        let fuse = request
        let count = min(request.payloadLength, device.writeBytesMax)
        let data = journaledPayload(slot, request, count: count)
        var arguments = WRITE3args(file: handle(primary), offset: fuse.offset, count: count3(count), stable: UNSTABLE,
                                   data: .init(data_len: u_int(count), data_val: data))
        return rpc_nfs3_write_async(rpc, Self.completed, &arguments, tag)
    }

    /// The WRITE (a journal entry again) call of a stage.
    func sendResendWrite(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let primary = records[slot].primaryNode
        let entry = journal.entry(records[slot].resendEntry).pointee
        var arguments = WRITE3args(file: handle(primary), offset: entry.offsetInFile, count: count3(entry.length), stable: UNSTABLE,
                                   data: .init(data_len: u_int(entry.length),
                                               data_val: journal.data(records[slot].resendEntry).assumingMemoryBound(to: CChar.self)))
        return rpc_nfs3_write_async(rpc, Self.completed, &arguments, tag)
    }

    /// The COMMIT call of a stage.
    func sendCommit(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let primary = records[slot].primaryNode
        // What this COMMIT covers: every WRITE answered before it is sent (a resend after a
        // reconnect covers the ones answered meanwhile too, which is just as true).
        records[slot].commitSnapshot = device.files.commitSnapshot(records[slot].openFile)
        records[slot].journalSnapshot = journal.ackCounter
        var arguments = COMMIT3args(file: handle(primary), offset: 0, count: 0)
        return rpc_nfs3_commit_async(rpc, Self.completed, &arguments, tag)
    }

    /// The FSSTAT call of a stage.
    func sendFsstat(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let primary = records[slot].primaryNode
        var arguments = FSSTAT3args(fsroot: handle(primary))
        return rpc_nfs3_fsstat_async(rpc, Self.completed, &arguments, tag)
    }

    /// The READDIR, READDIRPLUS call of a stage.
    func sendReaddir(_ slot: Int, _ rpc: OpaquePointer, _ tag: UnsafeMutableRawPointer) -> Int32 {
        let request = records[slot].request
        let primary = records[slot].primaryNode
        let fuse = request
        let capacity = min(Int(fuse.size), records[slot].reply.bodyCapacity)
        var verifier = cookieverf3(0, 0, 0, 0, 0, 0, 0, 0)
        if fuse.offset != 0 {
            withUnsafeMutableBytes(of: &verifier) { $0.storeBytes(of: device.files.cookieVerifiers[records[slot].openFile], as: UInt64.self) }
        }
        if records[slot].plan.call == .readdir {
            // NFS entries are about the size of FUSE's; a little more keeps the last one whole.
            var arguments = READDIR3args(dir: handle(primary), cookie: fuse.offset, cookieverf: verifier, count: count3(capacity + 512))
            return rpc_nfs3_readdir_async(rpc, Self.completed, &arguments, tag)
        } else {
            var arguments = READDIRPLUS3args(dir: handle(primary), cookie: fuse.offset, cookieverf: verifier,
                                             dircount: count3(capacity), maxcount: count3(2 * capacity + 1024))
            return rpc_nfs3_readdirplus_async(rpc, Self.completed, &arguments, tag)
        }
    }

    // MARK: - Argument helpers

    /// An NFS handle view of a pinned node's stored handle (valid while it stays pinned).
    func handle(_ index: UInt32) -> nfs_fh3 {
        let bytes = device.nodes.handle(index)
        return nfs_fh3(data: .init(data_len: u_int(bytes.count),
                                   data_val: UnsafeMutablePointer(mutating: bytes.baseAddress!.assumingMemoryBound(to: CChar.self))))
    }

    func stagedHandle(_ slot: Int) -> nfs_fh3 {
        nfs_fh3(data: .init(data_len: u_int(records[slot].stagedHandleLength),
                            data_val: stagedHandle(bytesOf: slot).assumingMemoryBound(to: CChar.self)))
    }

    func target(_ slot: Int) -> nfs_fh3 {
        records[slot].plan.progress.contains(.stagedTarget) ? stagedHandle(slot) : handle(records[slot].primaryNode)
    }

    /// The request's names are NUL-terminated in slot memory (the decoder checked the NUL).
    func cString(_ name: UnsafeRawBufferPointer) -> UnsafeMutablePointer<CChar> {
        UnsafeMutablePointer(mutating: name.baseAddress!.assumingMemoryBound(to: CChar.self))
    }

    func hiddenName(_ slot: Int) -> UnsafeMutableRawPointer { UnsafeMutableRawPointer(records + slot) + hiddenNameOffset }

    /// Where the slot's staged file handle is kept (at most `nfsFileHandleBytesMax` bytes).
    func stagedHandle(bytesOf slot: Int) -> UnsafeMutableRawPointer { UnsafeMutableRawPointer(records + slot) + stagedHandleOffset }

    func hiddenNameC(_ slot: Int) -> UnsafeMutablePointer<CChar> { hiddenName(slot).assumingMemoryBound(to: CChar.self) }

    /// The hidden name of the slot's staged node.
    func writeHiddenName(_ slot: Int) {
        HiddenName.write(instance: device.instance, nodeID: device.nodes.id(of: records[slot].stagedNode), into: hiddenName(slot))
    }

    func directoryOperation(_ directory: UInt32, _ name: UnsafeRawBufferPointer) -> diropargs3 {
        diropargs3(dir: handle(directory), name: cString(name))
    }

    /// SETATTR's attributes: the guest's (FUSE SETATTR) or an exclusive CREATE's mode.
    func newAttributes(_ slot: Int) -> sattr3 {
        var attributes = sattr3()
        let request = records[slot].request
        if records[slot].plan.progress.contains(.stagedTarget) {
            let mode = request.mode & 0o7777
            attributes.mode = set_mode3(set_it: 1, set_mode3_u: .init(mode: mode))
            // The verifier was stored in the times: give the file real ones.
            attributes.atime = set_atime(set_it: SET_TO_SERVER_TIME, set_atime_u: .init())
            attributes.mtime = set_mtime(set_it: SET_TO_SERVER_TIME, set_mtime_u: .init())
            return attributes
        }
        let fuse = request.setattr
        let valid = fuse.valid
        if valid & UInt32(FATTR_MODE) != 0 { attributes.mode = set_mode3(set_it: 1, set_mode3_u: .init(mode: fuse.mode & 0o7777)) }
        if valid & UInt32(FATTR_UID) != 0 { attributes.uid = set_uid3(set_it: 1, set_uid3_u: .init(uid: fuse.uid)) }
        if valid & UInt32(FATTR_GID) != 0 { attributes.gid = set_gid3(set_it: 1, set_gid3_u: .init(gid: fuse.gid)) }
        if valid & UInt32(FATTR_SIZE) != 0 { attributes.size = set_size3(set_it: 1, set_size3_u: .init(size: fuse.size)) }
        if valid & UInt32(FATTR_ATIME_NOW) != 0 {
            attributes.atime = set_atime(set_it: SET_TO_SERVER_TIME, set_atime_u: .init())
        } else if valid & UInt32(FATTR_ATIME) != 0 {
            attributes.atime = set_atime(set_it: SET_TO_CLIENT_TIME,
                                         set_atime_u: .init(atime: nfstime3(seconds: u_int(truncatingIfNeeded: fuse.atime), nseconds: fuse.atimensec)))
        }
        if valid & UInt32(FATTR_MTIME_NOW) != 0 {
            attributes.mtime = set_mtime(set_it: SET_TO_SERVER_TIME, set_mtime_u: .init())
        } else if valid & UInt32(FATTR_MTIME) != 0 {
            attributes.mtime = set_mtime(set_it: SET_TO_CLIENT_TIME,
                                         set_mtime_u: .init(mtime: nfstime3(seconds: u_int(truncatingIfNeeded: fuse.mtime), nseconds: fuse.mtimensec)))
        }
        return attributes
    }

    /// The ACCESS bits a request needs (`accessNeeded`) asked of the server.
    func accessWanted(_ slot: Int) -> UInt32 {
        NFSAccess.read | NFSAccess.lookup | NFSAccess.modify | NFSAccess.extend | NFSAccess.delete | NFSAccess.execute
    }

    /// Whether the bits the server granted allow the request: OPEN by its access mode, OPENDIR to
    /// read, ACCESS by its mask (a directory's "execute" is LOOKUP, its "write" any change).
    func accessAllowed(_ slot: Int, granted: UInt32) -> Bool {
        let request = records[slot].request
        let isDirectory = device.nodes.kind(records[slot].primaryNode) == FileType.directory
        switch FUSEOpcode(rawValue: request.opcodeRaw) {
        case .open:
            let mode = Int32(bitPattern: request.flags) & O_ACCMODE
            if mode != O_WRONLY && granted & NFSAccess.read == 0 { return false }
            if mode != O_RDONLY && granted & NFSAccess.modify == 0 { return false }
            return true
        case .opendir:
            return granted & NFSAccess.read != 0
        default:
            let mask = request.mask
            if mask & 4 != 0 && granted & NFSAccess.read == 0 { return false }
            if mask & 2 != 0 {
                let changes = isDirectory ? NFSAccess.modify | NFSAccess.extend | NFSAccess.delete : NFSAccess.modify
                if granted & changes == 0 { return false }
            }
            if mask & 1 != 0 && granted & (isDirectory ? NFSAccess.lookup : NFSAccess.execute) == 0 { return false }
            return true
        }
    }

    /// The FUSE file handle a WRITE, FLUSH, FSYNC or RELEASE names.
    func openHandle(_ slot: Int) -> UInt64 {
        let request = records[slot].request
        switch FUSEOpcode(rawValue: request.opcodeRaw) {
        case .write: return request.fh
        case .release: return request.fh
        case .flush: return request.fh
        case .fsync: return request.fh
        default: return 0
        }
    }

    /// This queue's journal holds every uncommitted byte written through the open.
    func repairable(_ openFile: Int) -> Bool {
        journal.isEnabled && device.files.isSoleWriter(openFile, queue: queueNumber)
    }

    /// A WRITE's data as it is sent. The first time: copied into the journal when this queue is the
    /// open's only writer (and sent from the copy, so a repair resends exactly these bytes). When
    /// the journal is full, or the open has other writers, it is sent as it is and the open can no
    /// longer be repaired: a changed verifier then fails its next FSYNC with EIO, as without a
    /// journal. (FILE_SYNC instead would be safe too, but costs the server an fsync per WRITE: 5×
    /// slower here.) A resend after a reconnect takes the same path it took the first time.
    func journaledPayload(_ slot: Int, _ request: NFSRequestArguments, count: Int) -> UnsafeMutablePointer<CChar> {
        if records[slot].journalEntry >= 0 { return journal.data(records[slot].journalEntry).assumingMemoryBound(to: CChar.self) }
        let data = payload(request, count: count)
        guard journal.isEnabled, device.files.claimWriter(records[slot].openFile, queue: queueNumber) else { return data }
        let fh = request.fh
        var reserved = journal.reserve(fileHandle: fh, offsetInFile: request.offset, length: count)
        if reserved == nil {
            // Entries of opens that ended through another queue are only found by looking; an
            // open that holds the tail uncommitted for long gives up its repair so the ring moves.
            reclaimClosedEntries()
            if journal.isFull(forLength: count) { evictTailOpen() }
            reserved = journal.reserve(fileHandle: fh, offsetInFile: request.offset, length: count)
        }
        guard let entry = reserved else {
            device.unjournaledWriteCount.add(1, ordering: .relaxed)
            device.files.giveUpRepair(records[slot].openFile)
            return data
        }
        records[slot].journalEntry = entry
        let copy = journal.data(entry)
        copy.copyMemory(from: data, byteCount: count)
        return copy.assumingMemoryBound(to: CChar.self)
    }

    /// The open whose entry holds the journal's tail stops being repairable and its entries here
    /// go, unless a COMMIT or repair of it is in flight on this queue (it then keeps them). Its next
    /// FSYNC after a server restart fails EIO instead: the oldest open pays, not the newest.
    func evictTailOpen() {
        guard journal.entryTail < journal.entryHead else { return }
        let victim = journal.entry(journal.entryTail).pointee
        guard victim.state == .acknowledged, let openFile = device.files.index(victim.fileHandle) else { return }
        for slot in 0..<slotCount where records[slot].plan.call == .commit || records[slot].plan.call == .resendWrite {
            if openHandle(slot) == victim.fileHandle { return }
        }
        device.files.giveUpRepair(openFile)
        journal.releaseCommitted(fileHandle: victim.fileHandle, coveredBy: 0, everything: true)
    }

    /// Releases the journal's oldest entries while they belong to opens that are no longer open
    /// (amortised: each entry is looked at once on its way out).
    func reclaimClosedEntries() {
        while journal.entryTail < journal.entryHead {
            let entry = journal.entry(journal.entryTail).pointee
            guard entry.state == .acknowledged, device.files.index(entry.fileHandle) == nil else { return }
            journal.release(journal.entryTail)
        }
    }

    /// WRITE data: the guest's memory in place when it is one segment, else gathered (libnfs
    /// encodes the call before returning, so one gather buffer serves the whole queue).
    func payload(_ request: NFSRequestArguments, count: Int) -> UnsafeMutablePointer<CChar> {
        var cursor = request.payload!
        let index = Int(cursor.position.index)
        if index < cursor.count {
            let segment = cursor.segments[index]
            if Int(segment.length) - Int(cursor.position.offset) >= count {
                return (segment.base + Int(cursor.position.offset)).assumingMemoryBound(to: CChar.self)
            }
        }
        let copied = cursor.read(into: gather, byteCount: count)
        precondition(copied == count, "WRITE payload shorter than the decoder said")
        return gather.assumingMemoryBound(to: CChar.self)
    }

    /// FUSE's rdev is the kernel's new_encode_dev: minor bits 0...7 and 20...31, major 8...19.
    @_noAllocation @_noLocks
    static func major(_ rdev: UInt32) -> UInt32 { (rdev & 0xF_FF00) >> 8 }
    @_noAllocation @_noLocks
    static func minor(_ rdev: UInt32) -> UInt32 { (rdev & 0xFF) | ((rdev >> 12) & 0xF_FF00) }
    static func encodeDevice(major: UInt32, minor: UInt32) -> UInt32 {
        (minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFF) << 12)
    }

    // MARK: - Finishing

    /// Ends a request whose reply is written: unpins, frees the slot, completes the token.
    func complete(_ slot: Int) {
        if records[slot].request.lockEntry >= 0 { releaseLockEntry4(slot) }
        if records[slot].plan.progress.contains(.countedOpen) {
            // The OPEN failed: its count goes. Should that leave a file hidden meanwhile with no open,
            // its hidden name stays on the server (as after a crash): a failed OPEN racing an UNLINK.
            _ = device.nodes.closed(records[slot].primaryNode)
            device.nodes.unpin(records[slot].primaryNode)
        }
        if records[slot].primaryNode != 0 { device.nodes.unpin(records[slot].primaryNode) }
        if records[slot].secondaryNode != 0 { device.nodes.unpin(records[slot].secondaryNode) }
        if records[slot].stagedNode != 0 { device.nodes.unpin(records[slot].stagedNode) }
        // A WRITE that did not come back UNSTABLE keeps nothing in the journal.
        if records[slot].journalEntry >= 0 { journal.release(records[slot].journalEntry) }
        records[slot].journalEntry = -1
        records[slot].resendEntry = -1
        records[slot].primaryNode = 0
        records[slot].secondaryNode = 0
        records[slot].stagedNode = 0
        records[slot].state = .free
        records[slot].plan = NFSStagePlan(call: .none)
        records[slot].sent = false
        records[slot].openFile = 0
        records[slot].stagedHandleLength = 0
        v4?.namesOnly[slot] = false
        v4?.closingCreated[slot] = 0
        pendingCount -= 1
        if slot == startingSlot {
            // Answered before `begin` returned: the poller sees `.done`, not a completion.
            startAnsweredInline = true
            return
        }
        completedSinceLastPoll += 1
        context.complete(records[slot].token)
    }

    func finish(_ slot: Int, _ errno: FUSEErrno) {
        records[slot].reply.fail(errno)
        complete(slot)
    }

    func succeed(_ slot: Int) {
        records[slot].reply.send(bodyBytes: 0)
        complete(slot)
    }
}
