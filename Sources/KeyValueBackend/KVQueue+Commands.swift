import CDPFS
import FUSEWire
import Glibc
import RESP

// Each request is one FCALL of the store's functions (KeyValueStore/KVFunctions.swift), written
// from its record, so the first send and a resend after a reconnect write the same command.
// Arguments follow the functions' comments there, in the same order.

extension KVQueue {
    /// FCALL FUNCTION 0 PREFIX, with `arguments` more to come.
    func header(_ writer: inout RESPCommandWriter, _ function: StaticString, arguments: Int) -> Bool {
        writer.begin(parts: 4 + arguments) && writer.part("FCALL") && writer.part(function) && writer.part("0")
            && writer.part(device.prefix)
    }

    func number(_ writer: inout RESPCommandWriter, _ value: UInt64) -> Bool { writer.part(Int64(bitPattern: value)) }

    func time(_ writer: inout RESPCommandWriter, _ time: FUSETime) -> Bool {
        writer.part(Int64(bitPattern: time.seconds)) && writer.part(Int64(time.nanoseconds))
    }

    /// The slot's payload (WRITE data, an xattr value) gathered from guest memory into the command.
    func payload(_ writer: inout RESPCommandWriter, _ slot: Int) -> Bool {
        let count = Int(records[slot].size)
        guard let space = writer.partSpace(byteCount: count) else { return false }
        guard count > 0 else { return true }
        var cursor = records[slot].payload!
        let copied = cursor.read(into: space, byteCount: count)
        // The decoder checked that the payload holds `size` bytes.
        precondition(copied == count, "a payload shorter than its size")
        return true
    }

    func writeCommand(_ slot: Int, _ writer: inout RESPCommandWriter) -> Bool {
        let r = records[slot]
        let chunk = Int64(device.chunkBytes)
        let capacity = Int64(device.configuration.capacityBytes)
        switch r.call {
        case .none: preconditionFailure("a command for a slot without a call")
        case .getattr, .access:
            return header(&writer, "dpfs_getattr", arguments: 1) && number(&writer, r.nodeID)
        case .lookup:
            return header(&writer, "dpfs_lookup", arguments: 2) && number(&writer, r.nodeID) && writer.part(r.name)
        case .create:
            let target = r.secondName.count > 0 ? r.secondName : UnsafeRawBufferPointer(start: nil, count: 0)
            let shared: Int64 = r.flags & UInt32(O_EXCL) == 0 && r.opcodeRaw == FUSEOpcode.create.rawValue ? 1 : 0
            return header(&writer, "dpfs_create", arguments: 11) && number(&writer, r.nodeID) && writer.part(r.name)
                && writer.part(Int64(r.mode)) && writer.part(Int64(r.uid)) && writer.part(Int64(r.gid)) && writer.part(Int64(r.rdev))
                && time(&writer, r.now) && writer.part(target) && writer.part(shared) && writer.part(Int64(device.configuration.inodesMax))
        case .unlink:
            return header(&writer, "dpfs_unlink", arguments: 4) && number(&writer, r.nodeID) && writer.part(r.name) && time(&writer, r.now)
        case .rmdir:
            return header(&writer, "dpfs_rmdir", arguments: 5) && number(&writer, r.nodeID) && writer.part(r.name)
                && time(&writer, r.now) && writer.part(chunk)
        case .rename:
            return header(&writer, "dpfs_rename", arguments: 8) && number(&writer, r.nodeID) && writer.part(r.name)
                && number(&writer, r.secondNode) && writer.part(r.secondName) && writer.part(Int64(r.flags))
                && time(&writer, r.now) && writer.part(chunk)
        case .link:
            return header(&writer, "dpfs_link", arguments: 5) && number(&writer, r.secondNode) && number(&writer, r.nodeID)
                && writer.part(r.name) && time(&writer, r.now)
        case .write:
            return header(&writer, "dpfs_write", arguments: 8) && number(&writer, r.nodeID) && number(&writer, r.offset)
                && payload(&writer, slot) && writer.part(chunk) && time(&writer, r.now) && writer.part(capacity)
                && writer.part(Int64(r.flags & UInt32(FUSE_WRITE_KILL_SUIDGID) != 0 ? 1 : 0))
        case .read:
            return header(&writer, "dpfs_read", arguments: 4) && number(&writer, r.nodeID) && number(&writer, r.offset)
                && writer.part(Int64(r.size)) && writer.part(chunk)
        case .setattr:
            return header(&writer, "dpfs_setattr", arguments: 14) && number(&writer, r.nodeID) && writer.part(Int64(r.flags))
                && writer.part(Int64(r.mode)) && writer.part(Int64(r.uid)) && writer.part(Int64(r.gid)) && number(&writer, r.setSize)
                && time(&writer, r.accessTime) && time(&writer, r.modificationTime) && time(&writer, r.now)
                && writer.part(chunk) && writer.part(capacity)
        case .readlink:
            return header(&writer, "dpfs_readlink", arguments: 1) && number(&writer, r.nodeID)
        case .readdir, .readdirplus:
            let entryBytesMin = r.call == .readdirplus ? 160 : 32
            let count = max(1, min(256, Int(r.size) / entryBytesMin))
            return header(&writer, "dpfs_readdir", arguments: 4) && number(&writer, r.nodeID) && number(&writer, r.offset)
                && writer.part(Int64(count)) && writer.part(r.call == .readdirplus ? 1 : 0)
        case .setxattr:
            return header(&writer, "dpfs_setxattr", arguments: 6) && number(&writer, r.nodeID) && writer.part(r.name)
                && payload(&writer, slot) && writer.part(Int64(r.flags)) && time(&writer, r.now)
        case .getxattr:
            return header(&writer, "dpfs_getxattr", arguments: 2) && number(&writer, r.nodeID) && writer.part(r.name)
        case .listxattr:
            return header(&writer, "dpfs_listxattr", arguments: 1) && number(&writer, r.nodeID)
        case .removexattr:
            return header(&writer, "dpfs_removexattr", arguments: 4) && number(&writer, r.nodeID) && writer.part(r.name) && time(&writer, r.now)
        case .statfs:
            return header(&writer, "dpfs_statfs", arguments: 0)
        case .punch:
            return header(&writer, "dpfs_punch", arguments: 6) && number(&writer, r.nodeID) && number(&writer, r.offset)
                && number(&writer, r.setSize) && writer.part(chunk) && time(&writer, r.now)
        }
    }

    /// Reclaims an orphan nobody has open any more (no request waits for it).
    func reclaim(_ inode: UInt64) {
        let chunk = Int64(device.chunkBytes)
        queueControl { writer in header(&writer, "dpfs_reclaim", arguments: 2) && number(&writer, inode) && writer.part(chunk) }
    }
}
