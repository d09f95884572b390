import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import RESP

// Directory listings as their tokens come, and each request's answer once its reply is whole.

extension KVQueue {
    /// READDIR and READDIRPLUS: the parent first, then entries of 4 (offset, inode, mode, name) or
    /// 15 (offset, the 13 attribute strings, name) tokens; "." and ".." come from the engine.
    func listed(_ slot: Int, _ field: Int, _ token: RESPToken, _ bytes: UnsafeRawBufferPointer) -> Bool {
        if field == 0 { if case .array(let count) = token, count >= 1 { return true } else { return false } }
        guard !records[slot].listingFull else { return true }
        let plus = records[slot].call == .readdirplus
        if case .bulkString(let range) = token, field >= 2, (field - 2) % (plus ? 15 : 4) == (plus ? 14 : 3) {
            return appendEntry(slot, name: UnsafeRawBufferPointer(rebasing: bytes[range]))
        }
        let position = field < 2 ? -1 : (field - 2) % (plus ? 15 : 4)
        let seconds = plus && position >= 1 && Self.isSeconds(position - 1)
        guard let value = seconds ? Self.seconds(token, bytes) : Self.decimal(token, bytes) else { return false }
        if field == 1 {
            records[slot].values[15] = value
            listDots(slot)
            return true
        }
        // Offsets only grow: a server handing back what it was asked to continue from would list for ever.
        if position == 0 && value <= max(records[slot].offset, 2) { return false }
        records[slot].values[position] = value
        return true
    }

    func entryWriter(_ slot: Int) -> DirectoryEntryWriter {
        let reply = records[slot].reply
        var writer = DirectoryEntryWriter(destination: reply.body, capacity: min(Int(records[slot].size), reply.bodyCapacity))
        writer.bytesWritten = records[slot].listed
        return writer
    }

    func appendEntry(_ slot: Int, name: UnsafeRawBufferPointer) -> Bool {
        guard name.count >= 1, name.count <= FUSELimits.nameBytesMax, !name.contains(0), !name.contains(UInt8(ascii: "/")),
              !(name.count <= 2 && name.allSatisfy { $0 == UInt8(ascii: ".") }) else { return false }
        var writer = entryWriter(slot)
        let nextOffset = records[slot].values[0]
        let fits: Bool
        if records[slot].call == .readdirplus {
            guard let attributes = attributes(slot, from: 1) else { return false }
            let validity = device.configuration.validity
            fits = writer.appendPlus(nodeID: attributes.inode, generation: 0, entryValid: validity, attrValid: validity,
                                     attributes: attributes, nextOffset: nextOffset, type: DirentType.of(mode: attributes.mode), name: name)
        } else {
            let mode = records[slot].values[2]
            guard records[slot].values[1] >= 1, mode & UInt64(FileType.mask) != 0, mode <= 0o177777 else { return false }
            fits = writer.append(inode: records[slot].values[1], nextOffset: nextOffset, type: DirentType.of(mode: UInt32(mode)), name: name)
        }
        records[slot].listed = writer.bytesWritten
        if !fits { records[slot].listingFull = true }
        return true
    }

    /// "." (offset 1) and ".." (offset 2) when the listing starts before them; in READDIRPLUS with
    /// node 0, so the kernel makes no dentry of them.
    func listDots(_ slot: Int) {
        var writer = entryWriter(slot)
        let offset = records[slot].offset
        let none = CacheValidity(seconds: 0)
        for index in UInt64(1)...2 where offset < index {
            let inode = index == 1 ? records[slot].nodeID : records[slot].values[15]
            var name: (UInt8, UInt8) = (UInt8(ascii: "."), UInt8(ascii: "."))
            let fits = withUnsafeBytes(of: &name) { raw in
                let dots = UnsafeRawBufferPointer(rebasing: raw[0..<Int(index)])
                if records[slot].call == .readdirplus {
                    let attributes = FileAttributes(inode: inode, sizeBytes: 0, blocks: 0, accessTime: FUSETime(seconds: 0),
                                                    modificationTime: FUSETime(seconds: 0), changeTime: FUSETime(seconds: 0),
                                                    mode: FileType.directory, linkCount: 2, uid: 0, gid: 0, rdev: 0, blockSizeBytes: 4096)
                    return writer.appendPlus(nodeID: 0, generation: 0, entryValid: none, attrValid: none, attributes: attributes,
                                             nextOffset: index, type: DirentType.of(mode: FileType.directory), name: dots)
                }
                return writer.append(inode: inode, nextOffset: index, type: DirentType.of(mode: FileType.directory), name: dots)
            }
            if !fits { records[slot].listingFull = true }
        }
        records[slot].listed = writer.bytesWritten
    }

    /// The reply is whole: answer the request from what its tokens left in the record.
    func finish(_ slot: Int) {
        let failure = records[slot].failure
        if failure == -1 {
            // Not run: the server is loading its data. Sent again after a pause.
            inFlight -= 1
            wait(slot)
            retryAt = monotonicNanoseconds() &+ Self.loadingRetryNanoseconds
            return
        }
        if records[slot].malformed {
            device.badReplyCount.add(1, ordering: .relaxed)
            return fail(slot, .io)
        }
        if failure > 0 { return fail(slot, FUSEErrno(failure)) }
        answer(slot)
        complete(slot)
    }

    func answer(_ slot: Int) {
        let reply = records[slot].reply
        let v = records[slot].values
        switch records[slot].call {
        case .none: preconditionFailure("an answer for a slot without a call")
        case .getattr, .setattr, .access, .lookup, .create, .link:
            guard let attributes = attributes(slot, from: 0) else {
                device.badReplyCount.add(1, ordering: .relaxed)
                return reply.fail(.io)
            }
            answerAttributes(slot, attributes)
        case .unlink:
            if v[1] == 0 && device.opens.lostLastName(v[0]) { reclaim(v[0]) }
            reply.send(bodyBytes: 0)
        case .rename:
            if v[0] != 0 && device.opens.lostLastName(v[0]) { reclaim(v[0]) }
            reply.send(bodyBytes: 0)
        case .rmdir, .setxattr, .removexattr, .punch:
            reply.send(bodyBytes: 0)
        case .write:
            guard v[0] == UInt64(records[slot].size) else { return reply.fail(.io) }
            reply.written(bytes: records[slot].size)
        case .read, .readlink:
            reply.sendInPlace(dataBytes: Int(v[0]))
        case .getxattr:
            if records[slot].size == 0 { reply.xattrSize(UInt32(v[0])) } else { reply.sendInPlace(dataBytes: Int(v[0])) }
        case .listxattr:
            let listed = records[slot].listed
            if records[slot].size == 0 { reply.xattrSize(UInt32(listed)) } else { reply.sendInPlace(dataBytes: listed) }
        case .readdir, .readdirplus:
            reply.send(bodyBytes: records[slot].listed)
        case .statfs:
            let capacity = UInt64(device.configuration.capacityBytes)
            let used = min(v[0], capacity)
            let inodes = UInt64(device.configuration.inodesMax)
            reply.statistics(FileSystemStatistics(
                blocks: capacity / 4096, blocksFree: (capacity - used) / 4096, blocksAvailable: (capacity - used) / 4096,
                files: inodes, filesFree: inodes - min(v[1], inodes), blockSizeBytes: 4096, nameBytesMax: UInt32(FUSELimits.nameBytesMax),
                fragmentSizeBytes: 4096))
        }
    }

    func answerAttributes(_ slot: Int, _ attributes: FileAttributes) {
        let reply = records[slot].reply
        let validity = device.configuration.validity
        switch records[slot].call {
        case .getattr: reply.attributes(attributes, valid: validity)
        case .setattr:
            if records[slot].opcodeRaw == FUSEOpcode.fallocate.rawValue { reply.send(bodyBytes: 0) } else { reply.attributes(attributes, valid: validity) }
        case .access:
            if Self.permits(attributes, uid: records[slot].uid, gid: records[slot].gid, mask: records[slot].flags) {
                reply.send(bodyBytes: 0)
            } else {
                reply.fail(.accessDenied)
            }
        case .create where records[slot].opcodeRaw == FUSEOpcode.create.rawValue:
            guard attributes.mode & FileType.mask == FileType.regular else { return reply.fail(.isDirectory) }
            guard device.opens.open(attributes.inode) else { return reply.fail(FUSEErrno(ENFILE)) }
            reply.created(nodeID: attributes.inode, generation: 0, entryValid: validity, attrValid: validity,
                          attributes: attributes, fileHandle: attributes.inode, openFlags: device.configuration.openFlags)
        default:
            reply.entry(nodeID: attributes.inode, generation: 0, entryValid: validity, attrValid: validity, attributes: attributes)
        }
    }

    /// access(2) by owner, group or others' bits (root passes but for execute, which needs a bit).
    /// Supplementary groups are not known here: the kernel's own check (default_permissions, on for
    /// every mount the engine makes) is the one that counts.
    @_noAllocation @_noLocks
    static func permits(_ attributes: FileAttributes, uid: UInt32, gid: UInt32, mask: UInt32) -> Bool {
        let wanted = mask & 7
        if uid == 0 { return wanted & 1 == 0 || attributes.mode & 0o111 != 0 || attributes.mode & FileType.mask == FileType.directory }
        let bits = attributes.uid == uid ? (attributes.mode >> 6) & 7 : attributes.gid == gid ? (attributes.mode >> 3) & 7 : attributes.mode & 7
        return bits & wanted == wanted
    }
}
