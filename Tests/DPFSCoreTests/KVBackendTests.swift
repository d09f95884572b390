import DPFSTestSupport
import Foundation
import FUSEWire
import Glibc
import KeyValueBackend
import Testing

/// The key-value backend's open files against a real redis-server (tools/test-kv-redis.sh starts
/// one): a file unlinked while open stays readable through its handle and goes with its last
/// RELEASE and its FORGET; a new session (the kernel forgot every open) reclaims what the old one left.
@Suite(.enabled(if: ProcessInfo.processInfo.environment["DPFS_REDIS_SOCKET"] != nil, "needs the server tools/test-kv-redis.sh starts"))
struct KVBackendTests {
    let socket = ProcessInfo.processInfo.environment["DPFS_REDIS_SOCKET"]!
    let prefix = "backend-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    func client(fileBytesMax: Int = 1 << 30) throws -> FUSEClient<KVBackend> {
        let configuration = KVConfiguration(
            endpoint: .unix(path: socket), prefix: prefix, chunkBytes: 4096, capacityBytes: 1 << 30, fileBytesMax: fileBytesMax,
            validity: CacheValidity(seconds: 0), openFlags: 0, openFilesMax: 16, requestTimeoutMilliseconds: 10_000)
        return FUSEClient(backend: KVBackend(device: try KVDevice(configuration: configuration)))
    }

    /// Whether the store still holds inode `inode`, and how many orphans it lists.
    func store(_ inode: UInt64) throws -> (exists: Bool, orphans: Int64) {
        let replies = try KVBlockingExchange.run(.unix(path: socket), timeoutMilliseconds: 5000, commands: [
            ["EXISTS", "\(prefix):i:\(inode)"], ["SCARD", "\(prefix):orphans"],
        ])
        guard case .integer(let exists) = replies[0].first, case .integer(let orphans) = replies[1].first else {
            throw KVStartupError("unexpected replies \(replies)")
        }
        return (exists == 1, orphans)
    }

    /// Waits for the reclaim, which goes out without a request waiting for it.
    func reclaimed(_ fs: FUSEClient<KVBackend>, _ inode: UInt64) throws -> Bool {
        var gone = false
        for _ in 0..<200 where !gone { _ = try? fs.getattr(1); gone = try store(inode) == (false, 0) }
        return gone
    }

    @Test("a file unlinked while open is read through its handle and goes with its last RELEASE and its FORGET")
    func unlinkedWhileOpen() throws {
        let fs = try client()
        let (entry, handle) = try fs.create(1, "held")
        let second = try fs.open(entry.nodeID)
        #expect(try fs.write(entry.nodeID, handle, offset: 5000, Array("kept".utf8)) == 4)
        try fs.unlink(1, "held")
        #expect(throws: FUSEFailure(errno: ENOENT)) { try fs.lookup(1, "held") }
        #expect(try fs.read(entry.nodeID, second, offset: 5000, size: 10) == Array("kept".utf8), "still readable by its handle")
        #expect(try store(entry.nodeID) == (true, 1), "an orphan, listed")
        try fs.release(entry.nodeID, handle)
        #expect(try store(entry.nodeID) == (true, 1), "one open left")
        try fs.release(entry.nodeID, second)
        _ = try fs.getattr(1)
        #expect(try store(entry.nodeID) == (true, 1), "the kernel has not forgotten it yet")
        fs.forget(entry.nodeID)
        #expect(try reclaimed(fs, entry.nodeID), "reclaimed by the FORGET after the last RELEASE")
    }

    @Test("an OPEN that comes after the UNLINK took the last name still reads the file (open(2) does not wait for unlink(2))")
    func openAfterUnlink() throws {
        let fs = try client()
        let (entry, handle) = try fs.create(1, "raced")
        #expect(try fs.write(entry.nodeID, handle, offset: 0, Array("still here".utf8)) == 10)
        try fs.release(entry.nodeID, handle)
        try fs.unlink(1, "raced")
        // The opener's path walk found the inode before the unlink: its OPEN comes now.
        let late = try fs.open(entry.nodeID, flags: O_RDONLY)
        #expect(try fs.read(entry.nodeID, late, offset: 0, size: 64) == Array("still here".utf8))
        #expect(try fs.getattr(entry.nodeID).size == 10)
        // FORGET before the last RELEASE: the RELEASE reclaims.
        fs.forget(entry.nodeID)
        #expect(try store(entry.nodeID) == (true, 1), "still open")
        try fs.release(entry.nodeID, late)
        #expect(try reclaimed(fs, entry.nodeID), "reclaimed by the last RELEASE after the FORGET")
        // A file nobody opened goes with its FORGET alone.
        let (plain, plainHandle) = try fs.create(1, "plain")
        try fs.release(plain.nodeID, plainHandle)
        try fs.unlink(1, "plain")
        #expect(try store(plain.nodeID) == (true, 1))
        fs.forget(plain.nodeID)
        #expect(try reclaimed(fs, plain.nodeID))
    }

    @Test("a new session reclaims the orphans of the old one, and its opens are forgotten")
    func newSession() throws {
        let fs = try client()
        let (entry, _) = try fs.create(1, "left-open")
        try fs.unlink(1, "left-open")
        #expect(try store(entry.nodeID) == (true, 1))
        // The old session fills the open table (16 files): none of them is ever released.
        for index in 0..<15 { _ = try fs.create(1, "old-\(index)") }
        #expect(throws: FUSEFailure(errno: ENFILE)) { _ = try fs.create(1, "one-too-many") }
        fs.rig.establishSession()
        #expect(try reclaimed(fs, entry.nodeID), "the old session's orphan reclaimed")
        // The open table starts empty: 16 files fit again, and the 17th does not.
        for index in 0..<16 { _ = try fs.create(1, "new-\(index)") }
        #expect(throws: FUSEFailure(errno: ENFILE)) { _ = try fs.create(1, "new-16") }
    }

    @Test("a write crossing the largest file size is cut short there; one starting at it fails EFBIG; xattrs are bounded")
    func limits() throws {
        let fs = try client(fileBytesMax: 1 << 20)
        let (entry, handle) = try fs.create(1, "big")
        #expect(try fs.write(entry.nodeID, handle, offset: (1 << 20) - 4, Array("12345678".utf8)) == 4)
        #expect(try fs.getattr(entry.nodeID).size == 1 << 20)
        #expect(throws: FUSEFailure(errno: EFBIG)) { _ = try fs.write(entry.nodeID, handle, offset: 1 << 20, [1]) }
        for index in 0..<256 { try fs.setxattr(entry.nodeID, "user.x\(index)", [1]) }
        #expect(throws: FUSEFailure(errno: ENOSPC)) { try fs.setxattr(entry.nodeID, "user.one-too-many", [1]) }
        try fs.setxattr(entry.nodeID, "user.x7", [2])
        #expect(try fs.getxattr(entry.nodeID, "user.x7", size: 16) == [2], "an existing name may still change")
    }
}
