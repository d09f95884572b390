import CDPFS
import DPFSCore
import FUSEWire

// The one opcode switch every backend shares: a `FileSystem` is a `Backend` through this
// extension. Generic and specialised per backend (no existential, no closure, no allocation);
// the argument views are built here and only here, under the opcode they belong to.

/// A typed view the adapter builds from a decoded request.
@usableFromInline
protocol RequestArguments {
    init(_ request: FUSERequest)
}

extension NoArguments: RequestArguments {}
extension NameArguments: RequestArguments {}
extension GetattrArguments: RequestArguments {}
extension SetattrArguments: RequestArguments {}
extension SymlinkArguments: RequestArguments {}
extension MakeNodeArguments: RequestArguments {}
extension RenameArguments: RequestArguments {}
extension LinkArguments: RequestArguments {}
extension OpenArguments: RequestArguments {}
extension CreateArguments: RequestArguments {}
extension ReadArguments: RequestArguments {}
extension WriteArguments: RequestArguments {}
extension ReleaseArguments: RequestArguments {}
extension FlushArguments: RequestArguments {}
extension FsyncArguments: RequestArguments {}
extension SetxattrArguments: RequestArguments {}
extension XattrQueryArguments: RequestArguments {}
extension LockArguments: RequestArguments {}
extension AccessArguments: RequestArguments {}
extension FallocateArguments: RequestArguments {}
extension LseekArguments: RequestArguments {}
extension CopyFileRangeArguments: RequestArguments {}
extension StatxArguments: RequestArguments {}
extension InterruptArguments: RequestArguments {}

extension Operation where Arguments: RequestArguments {
    @inlinable
    init(_ request: FUSERequest, _ token: CompletionToken) {
        self.init(request, token: token, arguments: Arguments(request))
    }
}

/// What a read-only share refuses (virtiofsd's --readonly): every opcode that changes the tree,
/// a file's data or its attributes, and an OPEN that asks to write or truncate. FSYNC, FLUSH and
/// locks are allowed: they change nothing on a share nobody can write.
public enum ReadOnlyShare {
    @inlinable
    public static func refuses(_ request: FUSERequest) -> Bool {
        switch request.opcodeRaw {
        case FUSEOpcode.setattr.rawValue, FUSEOpcode.symlink.rawValue, FUSEOpcode.mknod.rawValue, FUSEOpcode.mkdir.rawValue,
             FUSEOpcode.unlink.rawValue, FUSEOpcode.rmdir.rawValue, FUSEOpcode.rename.rawValue, FUSEOpcode.rename2.rawValue,
             FUSEOpcode.link.rawValue, FUSEOpcode.create.rawValue, FUSEOpcode.tmpfile.rawValue, FUSEOpcode.write.rawValue,
             FUSEOpcode.setxattr.rawValue, FUSEOpcode.removexattr.rawValue, FUSEOpcode.fallocate.rawValue,
             FUSEOpcode.copyFileRange.rawValue, FUSEOpcode.copyFileRange64.rawValue:
            return true
        case FUSEOpcode.open.rawValue:
            let flags = OpenArguments(request).flags
            return flags & UInt32(O_ACCMODE) != UInt32(O_RDONLY) || flags & UInt32(O_TRUNC) != 0
        default:
            return false
        }
    }
}

extension FileSystem {
    /// Routes one decoded request to its typed method. INIT and DESTROY never arrive (the engine
    /// answers them); FORGET and BATCH_FORGET become `forget` calls; the opcodes no backend of a
    /// directory share answers (BMAP, IOCTL, POLL, SETUPMAPPING, REMOVEMAPPING) get ENOSYS.
    @inlinable
    public mutating func handle(_ request: FUSERequest, reply: FUSEReply, token: CompletionToken) -> BackendAnswer {
        // On the raw number, not FUSEOpcode(rawValue:): one jump table instead of a conversion
        // call and then a jump table.
        let opcode = request.opcodeRaw
        if refusesChanges && ReadOnlyShare.refuses(request) {
            reply.fail(.readOnlyFileSystem)
            return .done
        }
        switch opcode {
        case FUSEOpcode.lookup.rawValue: return lookup(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.getattr.rawValue: return getattr(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.setattr.rawValue: return setattr(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.statx.rawValue: return statx(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.readlink.rawValue: return readlink(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.symlink.rawValue: return symlink(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.mknod.rawValue: return mknod(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.mkdir.rawValue: return mkdir(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.unlink.rawValue: return unlink(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.rmdir.rawValue: return rmdir(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.rename.rawValue, FUSEOpcode.rename2.rawValue: return rename(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.link.rawValue: return link(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.open.rawValue: return open(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.create.rawValue: return create(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.tmpfile.rawValue: return tmpfile(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.read.rawValue: return read(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.write.rawValue: return write(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.flush.rawValue: return flush(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.release.rawValue: return release(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.fsync.rawValue: return fsync(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.opendir.rawValue: return opendir(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.readdir.rawValue: return readdir(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.readdirplus.rawValue: return readdirplus(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.releasedir.rawValue: return releasedir(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.fsyncdir.rawValue: return fsyncdir(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.statfs.rawValue: return statfs(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.setxattr.rawValue: return setxattr(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.getxattr.rawValue: return getxattr(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.listxattr.rawValue: return listxattr(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.removexattr.rawValue: return removexattr(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.access.rawValue: return access(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.getlk.rawValue: return getlk(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.setlk.rawValue, FUSEOpcode.setlkw.rawValue: return setlk(Operation(request, token), wait: opcode == FUSEOpcode.setlkw.rawValue, reply: Reply(reply))
        case FUSEOpcode.interrupt.rawValue: return interrupt(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.fallocate.rawValue: return fallocate(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.lseek.rawValue: return lseek(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.copyFileRange.rawValue, FUSEOpcode.copyFileRange64.rawValue:
            return copyFileRange(Operation(request, token), reply: CopiedReply(reply, sixtyFourBit: opcode == FUSEOpcode.copyFileRange64.rawValue))
        case FUSEOpcode.syncfs.rawValue: return syncfs(Operation(request, token), reply: Reply(reply))
        case FUSEOpcode.forget.rawValue:
            forget(nodeID: request.nodeID, lookups: request.arguments(as: fuse_forget_in.self).nlookup)
            reply.none()
        case FUSEOpcode.batchForget.rawValue:
            forgetBatch(request)
            reply.none()
        case FUSEOpcode.notifyReply.rawValue:
            // The answer to a retrieve we never send: one-way, nothing to do.
            reply.none()
        case FUSEOpcode.bmap.rawValue, FUSEOpcode.ioctl.rawValue, FUSEOpcode.poll.rawValue, FUSEOpcode.setupMapping.rawValue, FUSEOpcode.removeMapping.rawValue:
            // No block device behind a share, no ioctls passed on, no poll events, no DAX window.
            reply.fail(.notImplemented)
        case FUSEOpcode.`init`.rawValue, FUSEOpcode.destroy.rawValue:
            preconditionFailure("the engine answers INIT and DESTROY itself")
        default:
            // Not an opcode of protocol 7.45 (the decoder answers those itself; kept for safety).
            reply.fail(.notImplemented)
        }
        return .done
    }

    /// BATCH_FORGET: `count` entries of (node id, lookups), 16 bytes each, in place; the decoder
    /// checked that exactly `count` entries follow.
    @inlinable
    mutating func forgetBatch(_ request: FUSERequest) {
        var cursor = request.payload
        let entryBytes = MemoryLayout<fuse_forget_one>.size
        var remaining = request.payloadLength / entryBytes
        var entry = fuse_forget_one()
        while remaining > 0 {
            let read = withUnsafeMutableBytes(of: &entry) { cursor.read(into: $0.baseAddress!, byteCount: entryBytes) }
            guard read == entryBytes else { break }
            forget(nodeID: entry.nodeid, lookups: entry.nlookup)
            remaining -= 1
        }
    }
}
