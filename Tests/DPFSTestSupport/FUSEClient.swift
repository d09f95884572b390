import CDPFS
import DPFSCore
import FUSEWire
import Foundation
import Glibc
import LoopbackTransport

/// An errno the backend answered, as the guest would see it.
public struct FUSEFailure: Error, Equatable, CustomStringConvertible {
    public let errno: Int32
    public init(errno: Int32) { self.errno = errno }
    public var description: String { "errno \(errno) (\(String(cString: strerror(errno))))" }
}

/// Plays the kernel's FUSE client against any backend through a loopback rig: builds requests from
/// the kernel's own argument structs, waits for replies that may complete asynchronously, and
/// returns typed answers. Errors come back as the positive errno the guest would see.
public final class FUSEClient<B: Backend> {
    public let rig: TestRig<B>
    var unique: UInt64 = 100
    public var uid: UInt32 = 0
    public var gid: UInt32 = 0

    public init(backend: B, writableBytes: Int = 128 * 1024) {
        rig = TestRig(backend: backend,
                      poller: PollerConfiguration(slotCount: 16, segmentsPerSlot: 64, batchMax: 16),
                      driver: LoopbackDriverConfiguration(queueSize: 64, requestSlots: 16, readableBufferBytes: 128 * 1024 + 4096,
                                                          writableBufferBytes: writableBytes, descriptorsPerRequestMax: 48))
        rig.establishSession()
    }

    /// Replies that arrived while waiting for another request's.
    var early: [UInt64: (Int32, [UInt8])] = [:]

    /// Sends one request without waiting; returns its unique.
    @discardableResult
    public func send(_ opcode: FUSEOpcode, node: UInt64, args: [UInt8], writable: Int = 4096 + 16) -> UInt64 {
        var request = TestRequest(opcode, nodeID: node, args: args)
        unique += 1
        request.unique = unique
        request.uid = uid
        request.gid = gid
        rig.submit(request.bytes, writableBytes: writable)
        return unique
    }

    /// Steps the poller until the reply to `unique` is back (bounded); returns (error, body).
    public func wait(for unique: UInt64, seconds: Double = 10) -> (Int32, [UInt8])? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let reply = early.removeValue(forKey: unique) { return reply }
            for reply in rig.stepAndReap() where reply.usedLength > 0 {
                early[reply.unique] = (reply.error, reply.body)
            }
            if let reply = early.removeValue(forKey: unique) { return reply }
            sched_yield()
        }
        return nil
    }

    /// Sends one request and waits for its reply; one-way requests return at once.
    public func call(_ opcode: FUSEOpcode, node: UInt64, args: [UInt8], writable: Int = 4096 + 16) -> (Int32, [UInt8]) {
        let sent = send(opcode, node: node, args: args, writable: writable)
        if !FUSEOpcode.expectsReply(raw: opcode.rawValue) {
            // The chain comes back with no reply bytes (only one-way requests do): step until it has.
            for _ in 0..<100_000 {
                var returned = false
                for reply in rig.stepAndReap() {
                    if reply.usedLength == 0 { returned = true } else { early[reply.unique] = (reply.error, reply.body) }
                }
                if returned { return (0, []) }
                sched_yield()
            }
            preconditionFailure("\(opcode) never came back")
        }
        guard let reply = wait(for: sent) else { preconditionFailure("no reply to \(opcode)") }
        return reply
    }

    func check(_ result: (Int32, [UInt8])) throws(FUSEFailure) -> [UInt8] {
        guard result.0 == 0 else { throw FUSEFailure(errno: -result.0) }
        return result.1
    }

    static func bytes<T>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value) { Array($0) }
    }

    static func name(_ text: String) -> [UInt8] { Array(text.utf8) + [0] }

    // MARK: - Typed requests

    public struct Entry: Equatable {
        public var nodeID: UInt64
        public var attributes: Attributes
    }

    public struct Attributes: Equatable {
        public var inode: UInt64
        public var size: UInt64
        public var mode: UInt32
        public var linkCount: UInt32
        public var uid: UInt32
        public var gid: UInt32
        public var modificationSeconds: UInt64
        public var modificationNanoseconds: UInt32
    }

    static func attributes(_ body: [UInt8], at offset: Int) -> Attributes {
        Attributes(inode: body.loadLE(UInt64.self, at: offset + AttrLayout.ino),
                   size: body.loadLE(UInt64.self, at: offset + AttrLayout.fileSize),
                   mode: body.loadLE(UInt32.self, at: offset + AttrLayout.mode),
                   linkCount: body.loadLE(UInt32.self, at: offset + AttrLayout.nlink),
                   uid: body.loadLE(UInt32.self, at: offset + AttrLayout.uid),
                   gid: body.loadLE(UInt32.self, at: offset + AttrLayout.gid),
                   modificationSeconds: body.loadLE(UInt64.self, at: offset + AttrLayout.mtime),
                   modificationNanoseconds: body.loadLE(UInt32.self, at: offset + AttrLayout.mtimeNanos))
    }

    static func entry(_ body: [UInt8]) -> Entry {
        Entry(nodeID: body.loadLE(UInt64.self, at: EntryOutLayout.nodeID), attributes: attributes(body, at: EntryOutLayout.attr))
    }

    public func lookup(_ parent: UInt64, _ name: String) throws(FUSEFailure) -> Entry {
        Self.entry(try check(call(.lookup, node: parent, args: Self.name(name))))
    }

    public func forget(_ node: UInt64, count: UInt64 = 1) {
        var arguments = fuse_forget_in()
        arguments.nlookup = count
        _ = call(.forget, node: node, args: Self.bytes(arguments), writable: 0)
    }

    public func getattr(_ node: UInt64) throws(FUSEFailure) -> Attributes {
        Self.attributes(try check(call(.getattr, node: node, args: Self.bytes(fuse_getattr_in()))), at: AttrOutLayout.attr)
    }

    /// CREATE: returns the entry and the file handle.
    public func create(_ parent: UInt64, _ name: String, flags: Int32 = O_RDWR, mode: UInt32 = 0o644) throws(FUSEFailure) -> (Entry, UInt64) {
        var arguments = fuse_create_in()
        arguments.flags = UInt32(bitPattern: flags | O_CREAT)
        arguments.mode = mode | 0o100000
        let body = try check(call(.create, node: parent, args: Self.bytes(arguments) + Self.name(name)))
        return (Self.entry(body), body.loadLE(UInt64.self, at: EntryOutLayout.size + OpenOutLayout.fileHandle))
    }

    public func open(_ node: UInt64, flags: Int32 = O_RDWR) throws(FUSEFailure) -> UInt64 {
        var arguments = fuse_open_in()
        arguments.flags = UInt32(bitPattern: flags)
        return try check(call(.open, node: node, args: Self.bytes(arguments))).loadLE(UInt64.self, at: 0)
    }

    public func opendir(_ node: UInt64) throws(FUSEFailure) -> UInt64 {
        try check(call(.opendir, node: node, args: Self.bytes(fuse_open_in()))).loadLE(UInt64.self, at: 0)
    }

    public func release(_ node: UInt64, _ handle: UInt64, directory: Bool = false) throws(FUSEFailure) {
        var arguments = fuse_release_in()
        arguments.fh = handle
        _ = try check(call(directory ? .releasedir : .release, node: node, args: Self.bytes(arguments)))
    }

    @discardableResult
    public func write(_ node: UInt64, _ handle: UInt64, offset: UInt64, _ data: [UInt8]) throws(FUSEFailure) -> UInt32 {
        var arguments = fuse_write_in()
        arguments.fh = handle
        arguments.offset = offset
        arguments.size = UInt32(data.count)
        return try check(call(.write, node: node, args: Self.bytes(arguments) + data)).loadLE(UInt32.self, at: 0)
    }

    public func read(_ node: UInt64, _ handle: UInt64, offset: UInt64, size: Int) throws(FUSEFailure) -> [UInt8] {
        var arguments = fuse_read_in()
        arguments.fh = handle
        arguments.offset = offset
        arguments.size = UInt32(size)
        return try check(call(.read, node: node, args: Self.bytes(arguments), writable: size + 16))
    }

    public func mkdir(_ parent: UInt64, _ name: String, mode: UInt32 = 0o755) throws(FUSEFailure) -> Entry {
        var arguments = fuse_mkdir_in()
        arguments.mode = mode
        return Self.entry(try check(call(.mkdir, node: parent, args: Self.bytes(arguments) + Self.name(name))))
    }

    public func symlink(_ parent: UInt64, _ name: String, target: String) throws(FUSEFailure) -> Entry {
        Self.entry(try check(call(.symlink, node: parent, args: Self.name(name) + Self.name(target))))
    }

    public func readlink(_ node: UInt64) throws(FUSEFailure) -> String {
        String(decoding: try check(call(.readlink, node: node, args: [])), as: UTF8.self)
    }

    public func link(_ node: UInt64, newParent: UInt64, _ name: String) throws(FUSEFailure) -> Entry {
        var arguments = fuse_link_in()
        arguments.oldnodeid = node
        return Self.entry(try check(call(.link, node: newParent, args: Self.bytes(arguments) + Self.name(name))))
    }

    public func unlink(_ parent: UInt64, _ name: String) throws(FUSEFailure) {
        _ = try check(call(.unlink, node: parent, args: Self.name(name)))
    }

    public func rmdir(_ parent: UInt64, _ name: String) throws(FUSEFailure) {
        _ = try check(call(.rmdir, node: parent, args: Self.name(name)))
    }

    public func rename(_ parent: UInt64, _ name: String, to newParent: UInt64, _ newName: String, flags: UInt32 = 0) throws(FUSEFailure) {
        var arguments = fuse_rename2_in()
        arguments.newdir = newParent
        arguments.flags = flags
        _ = try check(call(.rename2, node: parent, args: Self.bytes(arguments) + Self.name(name) + Self.name(newName)))
    }

    public func setattr(_ node: UInt64, _ fill: (inout fuse_setattr_in) -> Void) throws(FUSEFailure) -> Attributes {
        var arguments = fuse_setattr_in()
        fill(&arguments)
        return Self.attributes(try check(call(.setattr, node: node, args: Self.bytes(arguments))), at: AttrOutLayout.attr)
    }

    public func lseek(_ node: UInt64, _ handle: UInt64, offset: UInt64, whence: Int32) throws(FUSEFailure) -> UInt64 {
        var arguments = fuse_lseek_in()
        arguments.fh = handle
        arguments.offset = offset
        arguments.whence = UInt32(whence)
        return try check(call(.lseek, node: node, args: Self.bytes(arguments))).loadLE(UInt64.self, at: 0)
    }

    public func fallocate(_ node: UInt64, _ handle: UInt64, offset: UInt64, length: UInt64, mode: Int32 = 0) throws(FUSEFailure) {
        var arguments = fuse_fallocate_in()
        arguments.fh = handle
        arguments.offset = offset
        arguments.length = length
        arguments.mode = UInt32(bitPattern: mode)
        _ = try check(call(.fallocate, node: node, args: Self.bytes(arguments)))
    }

    public func setxattr(_ node: UInt64, _ name: String, _ value: [UInt8], flags: Int32 = 0) throws(FUSEFailure) {
        var arguments = fuse_setxattr_in()
        arguments.size = UInt32(value.count)
        arguments.flags = UInt32(bitPattern: flags)
        // Without FUSE_SETXATTR_EXT the kernel sends only size and flags (FUSE_COMPAT_SETXATTR_IN_SIZE).
        _ = try check(call(.setxattr, node: node, args: Array(Self.bytes(arguments).prefix(8)) + Self.name(name) + value))
    }

    /// GETXATTR with `size` 0 returns the value's size as 4 little-endian bytes.
    public func getxattr(_ node: UInt64, _ name: String, size: Int) throws(FUSEFailure) -> [UInt8] {
        var arguments = fuse_getxattr_in()
        arguments.size = UInt32(size)
        return try check(call(.getxattr, node: node, args: Self.bytes(arguments) + Self.name(name), writable: max(size, 8) + 16))
    }

    public func listxattr(_ node: UInt64, size: Int) throws(FUSEFailure) -> [UInt8] {
        var arguments = fuse_getxattr_in()
        arguments.size = UInt32(size)
        return try check(call(.listxattr, node: node, args: Self.bytes(arguments), writable: max(size, 8) + 16))
    }

    public func removexattr(_ node: UInt64, _ name: String) throws(FUSEFailure) {
        _ = try check(call(.removexattr, node: node, args: Self.name(name)))
    }

    /// One READDIR call: (names, next offsets).
    public func readdir(_ node: UInt64, _ handle: UInt64, offset: UInt64, size: Int = 4096) throws(FUSEFailure) -> [(name: String, next: UInt64)] {
        var arguments = fuse_read_in()
        arguments.fh = handle
        arguments.offset = offset
        arguments.size = UInt32(size)
        let body = try check(call(.readdir, node: node, args: Self.bytes(arguments), writable: size + 16))
        var entries: [(String, UInt64)] = []
        var position = 0
        while position + DirentLayout.headerSize <= body.count {
            let next = body.loadLE(UInt64.self, at: position + DirentLayout.offset)
            let length = Int(body.loadLE(UInt32.self, at: position + DirentLayout.nameLength))
            let name = String(decoding: body[(position + DirentLayout.headerSize)..<(position + DirentLayout.headerSize + length)], as: UTF8.self)
            entries.append((name, next))
            position += DirentLayout.alignedSize(nameLength: length)
        }
        return entries
    }

    /// GETLK/SETLK/SETLKW arguments: `end` is the last byte (Int64.max: to the end of the file).
    public static func lockArguments(handle: UInt64, owner: UInt64, type: Int32, start: UInt64, end: UInt64) -> [UInt8] {
        var arguments = fuse_lk_in()
        arguments.fh = handle
        arguments.owner = owner
        arguments.lk.start = start
        arguments.lk.end = end
        arguments.lk.type = UInt32(type)
        return bytes(arguments)
    }

    public func setlk(_ node: UInt64, _ handle: UInt64, owner: UInt64, type: Int32, start: UInt64, end: UInt64) throws(FUSEFailure) {
        _ = try check(call(.setlk, node: node, args: Self.lockArguments(handle: handle, owner: owner, type: type, start: start, end: end)))
    }

    /// The conflicting lock, or type F_UNLCK.
    public func getlk(_ node: UInt64, _ handle: UInt64, owner: UInt64, type: Int32, start: UInt64, end: UInt64) throws(FUSEFailure) -> (type: UInt32, start: UInt64, end: UInt64) {
        let body = try check(call(.getlk, node: node, args: Self.lockArguments(handle: handle, owner: owner, type: type, start: start, end: end)))
        return (body.loadLE(UInt32.self, at: LockOutLayout.type), body.loadLE(UInt64.self, at: LockOutLayout.start),
                body.loadLE(UInt64.self, at: LockOutLayout.end))
    }

    public func flush(_ node: UInt64, _ handle: UInt64, owner: UInt64) throws(FUSEFailure) {
        var arguments = fuse_flush_in()
        arguments.fh = handle
        arguments.lock_owner = owner
        _ = try check(call(.flush, node: node, args: Self.bytes(arguments)))
    }

    public func statfs(_ node: UInt64 = 1) throws(FUSEFailure) -> [UInt8] {
        try check(call(.statfs, node: node, args: []))
    }
}
