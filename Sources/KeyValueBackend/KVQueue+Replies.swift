import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import RESP

// Replies, token by token as the connection reads them: each token is checked against the shape
// its function answers and kept in the slot's record (numbers) or written where the reply goes
// (data, names, directory entries), and the last token finishes the request. Nothing the server
// sends is trusted: inode numbers, modes, sizes, times, names and lengths are checked before they
// reach the guest, and a reply of the wrong shape fails its request EIO.

extension KVQueue {
    /// Attribute strings in an attributes reply: the inode and its 12 attributes (KVFunctions ATTRS).
    static let attributeFields = 13
    /// Inode numbers, sizes and offsets stay below 2^53 (Lua's numbers are doubles).
    static let numberMax: UInt64 = 1 << 53
    /// How long a server loading its data is left alone before a refused request is sent again.
    static let loadingRetryNanoseconds: UInt64 = 100_000_000

    func received(tag: UInt32, token: RESPToken, complete: Bool, bytes: UnsafeRawBufferPointer) {
        guard tag != Self.controlTag else { return }
        if tag == Self.loadTag {
            if case .error = token { reloadWanted = true }
            return
        }
        let slot = Int(tag & 0xFFFF)
        guard slot < slotCount, records[slot].state == .inFlight, UInt16(tag >> 16) == records[slot].sequence else { return }
        let field = records[slot].field
        records[slot].field = field + 1
        if field == 0, case .error(let range) = token {
            records[slot].failure = Self.errno(UnsafeRawBufferPointer(rebasing: bytes[range]))
        } else if records[slot].failure == 0 && !records[slot].malformed {
            if !consume(slot, field, token, bytes) { records[slot].malformed = true }
        }
        if complete { finish(slot) }
    }

    /// The errno of an error reply "ERRNO what" (KVFunctions' fail), -1 for a server that did not
    /// run the command and may later (LOADING, BUSY), EIO for anything else.
    @_noAllocation @_noLocks
    static func errno(_ line: UnsafeRawBufferPointer) -> Int32 {
        var word = 0
        while word < line.count && line[word] != UInt8(ascii: " ") { word += 1 }
        let first = UnsafeRawBufferPointer(rebasing: line[0..<word])
        func named(_ name: StaticString) -> Bool {
            guard name.utf8CodeUnitCount == first.count else { return false }
            for index in 0..<first.count where name.utf8Start[index] != first[index] { return false }
            return true
        }
        if named("LOADING") || named("BUSY") { return -1 }
        if named("ENOENT") { return ENOENT }
        if named("EEXIST") { return EEXIST }
        if named("ENOTDIR") { return ENOTDIR }
        if named("EISDIR") { return EISDIR }
        if named("ENOTEMPTY") { return ENOTEMPTY }
        if named("EINVAL") { return EINVAL }
        if named("EPERM") { return EPERM }
        if named("ENODATA") { return ENODATA }
        if named("ENOSPC") { return ENOSPC }
        if named("EFBIG") { return EFBIG }
        return EIO
    }

    /// A decimal bulk string below 2^53, or nil.
    @_noAllocation @_noLocks
    static func decimal(_ token: RESPToken, _ bytes: UnsafeRawBufferPointer) -> UInt64? {
        switch token {
        case .integer(let value): return value >= 0 && UInt64(value) < numberMax ? UInt64(value) : nil
        case .bulkString(let range):
            guard range.count >= 1 && range.count <= 16 else { return nil }
            var value: UInt64 = 0
            for index in range {
                let digit = bytes[index] &- UInt8(ascii: "0")
                guard digit < 10 else { return nil }
                value = value * 10 + UInt64(digit)
            }
            return value < numberMax ? value : nil
        default: return nil
        }
    }

    /// A time's seconds: a decimal with an optional '-' (before 1970), within ±2^53, as the bit
    /// pattern `fuse_attr` carries; or nil.
    @_noAllocation @_noLocks
    static func seconds(_ token: RESPToken, _ bytes: UnsafeRawBufferPointer) -> UInt64? {
        guard case .bulkString(let range) = token, range.count >= 2, bytes[range.lowerBound] == UInt8(ascii: "-") else {
            return decimal(token, bytes)
        }
        guard let magnitude = decimal(.bulkString(range.lowerBound + 1..<range.upperBound), bytes) else { return nil }
        return UInt64(bitPattern: -Int64(magnitude))
    }

    /// Whether value `index` of an attributes list (inode first) is a time's seconds.
    @_noAllocation @_noLocks
    static func isSeconds(_ index: Int) -> Bool { index == 7 || index == 9 || index == 11 }

    /// Takes one token of a successful reply; false when it breaks the reply's shape.
    func consume(_ slot: Int, _ field: Int, _ token: RESPToken, _ bytes: UnsafeRawBufferPointer) -> Bool {
        switch records[slot].call {
        case .none: return false
        case .getattr, .access, .lookup, .create, .link, .setattr:
            if field == 0 { return token == .array(count: Self.attributeFields) }
            if field == 2, token == .null { records[slot].failure = ENOENT; return true }
            guard let value = Self.isSeconds(field - 1) ? Self.seconds(token, bytes) : Self.decimal(token, bytes) else { return false }
            records[slot].values[field - 1] = value
            return true
        case .unlink, .statfs:
            if field == 0 { return token == .array(count: records[slot].call == .unlink ? 2 : 3) }
            guard let value = Self.decimal(token, bytes) else { return false }
            records[slot].values[field - 1] = value
            return true
        case .rmdir, .rename, .write, .setxattr, .removexattr, .punch:
            guard field == 0, let value = Self.decimal(token, bytes) else { return false }
            records[slot].values[0] = value
            return true
        case .read, .readlink, .getxattr:
            guard field == 0 else { return false }
            if token == .null { records[slot].failure = records[slot].call == .read ? ENOENT : EINVAL; return true }
            guard case .bulkString(let range) = token else { return false }
            return copyData(slot, UnsafeRawBufferPointer(rebasing: bytes[range]))
        case .listxattr:
            if field == 0 { if case .array = token { return true } else { return false } }
            guard case .bulkString(let range) = token, range.count > 0, range.count <= FUSELimits.nameBytesMax else { return false }
            return listName(slot, UnsafeRawBufferPointer(rebasing: bytes[range]))
        case .readdir, .readdirplus:
            return listed(slot, field, token, bytes)
        }
    }

    /// A data reply's bytes, into the guest's buffer in place (READ, READLINK, GETXATTR).
    @_noAllocation @_noLocks
    func copyData(_ slot: Int, _ data: UnsafeRawBufferPointer) -> Bool {
        let wanted = Int(records[slot].size)
        switch records[slot].call {
        case .read: guard data.count <= wanted else { return false }
        case .getxattr:
            records[slot].values[0] = UInt64(data.count)
            if wanted == 0 { return true }
            guard data.count <= wanted else { records[slot].failure = ERANGE; return true }
        default: guard data.count <= FUSELimits.symlinkTargetBytesMax else { return false }
        }
        guard data.count <= records[slot].reply.dataCapacity else { return false }
        var cursor = records[slot].reply.data
        if data.count > 0 { _ = cursor.write(from: data.baseAddress!, byteCount: data.count) }
        records[slot].values[0] = UInt64(data.count)
        return true
    }

    /// One LISTXATTR name, NUL-terminated, after those before it (or only counted for a size query).
    func listName(_ slot: Int, _ name: UnsafeRawBufferPointer) -> Bool {
        let at = records[slot].listed
        records[slot].listed = at + name.count + 1
        let wanted = Int(records[slot].size)
        guard wanted > 0 else { return true }
        guard at + name.count + 1 <= wanted, at + name.count + 1 <= records[slot].reply.dataCapacity else {
            records[slot].failure = ERANGE
            return true
        }
        var cursor = records[slot].reply.data
        _ = cursor.skip(byteCount: at)
        _ = cursor.write(from: name.baseAddress!, byteCount: name.count)
        var nul: UInt8 = 0
        _ = cursor.write(from: &nul, byteCount: 1)
        return true
    }

    /// The attributes in `values[first...first + 12]`, checked; nil when the server's are not
    /// an inode's.
    @_noAllocation @_noLocks
    func attributes(_ slot: Int, from first: Int) -> FileAttributes? {
        let v = records[slot].values
        let mode = v[first + 1]
        let kind = UInt32(truncatingIfNeeded: mode) & FileType.mask
        guard v[first] >= 1, mode <= 0o177777, kind != 0,
              v[first + 2] <= UInt32.max, v[first + 3] <= UInt32.max, v[first + 5] <= UInt32.max, v[first + 6] <= UInt32.max,
              v[first + 8] < 1_000_000_000, v[first + 10] < 1_000_000_000, v[first + 12] < 1_000_000_000 else { return nil }
        let size = v[first + 4]
        return FileAttributes(
            inode: v[first], sizeBytes: size, blocks: (size + 511) / 512,
            accessTime: FUSETime(seconds: v[first + 7], nanoseconds: UInt32(v[first + 8])),
            modificationTime: FUSETime(seconds: v[first + 9], nanoseconds: UInt32(v[first + 10])),
            changeTime: FUSETime(seconds: v[first + 11], nanoseconds: UInt32(v[first + 12])),
            mode: UInt32(mode), linkCount: UInt32(v[first + 5]), uid: UInt32(v[first + 2]), gid: UInt32(v[first + 3]),
            rdev: UInt32(v[first + 6]), blockSizeBytes: 4096)
    }
}
