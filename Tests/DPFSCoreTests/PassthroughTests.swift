import CDPFS
import DPFSCore
import DPFSTestSupport
import FUSEWire
import Foundation
import Glibc
import PassthroughBackend
import Testing

// POSIX behaviour of the passthrough backend through the loopback transport, each answer compared
// with the errno a local file system gives. Every test gets a fresh shared directory.

/// A fresh directory under /tmp, removed with its contents when the value goes.
final class SharedDirectory: Sendable {
    let path: String
    init() {
        var template = Array("/tmp/dpfs-passthrough-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil)
        path = String(cString: made!)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func host(_ name: String) -> String { path + "/" + name }
}

func makeClient(_ directory: SharedDirectory, useIOURing: Bool = true, inodesMax: Int = 1024,
                inodeDescriptorsMax: Int = 4096, dataPath: PassthroughDataPath = .inlineFirst) throws -> FUSEClient<PassthroughBackend> {
    var configuration = PassthroughConfiguration(sharedDirectory: directory.path, cacheMode: .never, inodesMax: inodesMax, openFilesMax: 256)
    configuration.dataPath = dataPath
    configuration.inodeDescriptorsMax = inodeDescriptorsMax
    let device = try PassthroughDevice(configuration: configuration)
    return FUSEClient(backend: PassthroughBackend(device: device, useIOURing: useIOURing))
}

/// Hands a value to another thread in a test that joins that thread before using the value again.
final class UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

func expectErrno(_ expected: Int32, _ sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected errno \(expected), got success", sourceLocation: sourceLocation)
    } catch let failure as FUSEFailure {
        #expect(failure.errno == expected, "expected errno \(expected), got \(failure)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
    }
}

@Suite struct PassthroughTests {
    @Test("files written through the engine are on the host byte for byte, and host files are read back",
          arguments: [(true, PassthroughDataPath.inlineFirst), (true, .uring), (false, .uring)])
    func dataBothWays(useIOURing: Bool, dataPath: PassthroughDataPath) throws {
        let directory = SharedDirectory()
        let client = try makeClient(directory, useIOURing: useIOURing, dataPath: dataPath)
        let payload = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let (entry, handle) = try client.create(1, "data.bin")
        var offset = 0
        while offset < payload.count {
            let chunk = Array(payload[offset..<min(offset + 65536, payload.count)])
            #expect(try client.write(entry.nodeID, handle, offset: UInt64(offset), chunk) == UInt32(chunk.count))
            offset += chunk.count
        }
        try client.release(entry.nodeID, handle)
        #expect(FileManager.default.contents(atPath: directory.host("data.bin")) == Data(payload))

        // An unaligned overwrite, read back through the engine.
        let reopened = try client.open(entry.nodeID)
        try client.write(entry.nodeID, reopened, offset: 12_345, Array(repeating: 0xEE, count: 5000))
        var expected = payload
        for index in 12_345..<17_345 { expected[index] = 0xEE }
        var readBack: [UInt8] = []
        while readBack.count < expected.count {
            readBack += try client.read(entry.nodeID, reopened, offset: UInt64(readBack.count), size: 32768)
        }
        #expect(readBack == expected)
        #expect(try client.read(entry.nodeID, reopened, offset: UInt64(expected.count), size: 4096).isEmpty)
        try client.release(entry.nodeID, reopened)

        try "from the host\n".write(toFile: directory.host("host.txt"), atomically: false, encoding: .utf8)
        let hostEntry = try client.lookup(1, "host.txt")
        let hostHandle = try client.open(hostEntry.nodeID, flags: O_RDONLY)
        #expect(String(decoding: try client.read(hostEntry.nodeID, hostHandle, offset: 0, size: 100), as: UTF8.self) == "from the host\n")
    }

    @Test("names: missing entries, 255-byte names, O_EXCL, unlink and rmdir errnos")
    func names() throws {
        let directory = SharedDirectory()
        let client = try makeClient(directory)
        expectErrno(ENOENT) { _ = try client.lookup(1, "missing") }
        let long = String(repeating: "n", count: 255)
        let (entry, handle) = try client.create(1, long)
        try client.release(entry.nodeID, handle)
        #expect(try client.lookup(1, long).nodeID == entry.nodeID)
        // 256 bytes never reach the backend: the decoder refuses them.
        expectErrno(ENAMETOOLONG) { _ = try client.lookup(1, long + "x") }
        expectErrno(EEXIST) { _ = try client.create(1, long, flags: O_RDWR | O_EXCL) }
        expectErrno(ENOTDIR) { _ = try client.lookup(entry.nodeID, "child") }
        let sub = try client.mkdir(1, "sub")
        let (inner, innerHandle) = try client.create(sub.nodeID, "inner")
        try client.release(inner.nodeID, innerHandle)
        expectErrno(ENOTEMPTY) { try client.rmdir(1, "sub") }
        expectErrno(EISDIR) { try client.unlink(1, "sub") }
        expectErrno(ENOTDIR) { try client.rmdir(1, long) }
        expectErrno(EEXIST) { _ = try client.mkdir(1, "sub") }
        try client.unlink(sub.nodeID, "inner")
        try client.rmdir(1, "sub")
        expectErrno(ENOENT) { _ = try client.lookup(1, "sub") }
    }

    @Test("rename: over files and directories, into its own subtree, NOREPLACE, EXCHANGE")
    func rename() throws {
        let directory = SharedDirectory()
        let client = try makeClient(directory)
        for name in ["a", "b"] {
            let (entry, handle) = try client.create(1, name)
            try client.write(entry.nodeID, handle, offset: 0, Array(name.utf8))
            try client.release(entry.nodeID, handle)
        }
        expectErrno(EEXIST) { try client.rename(1, "a", to: 1, "b", flags: UInt32(RENAME_NOREPLACE)) }
        try client.rename(1, "a", to: 1, "b", flags: UInt32(RENAME_EXCHANGE))
        #expect(try String(contentsOfFile: directory.host("a"), encoding: .utf8) == "b")
        try client.rename(1, "a", to: 1, "b")
        #expect(!FileManager.default.fileExists(atPath: directory.host("a")))
        #expect(try String(contentsOfFile: directory.host("b"), encoding: .utf8) == "b")
        let d1 = try client.mkdir(1, "d1")
        let d2 = try client.mkdir(1, "d2")
        _ = try client.mkdir(d2.nodeID, "full")
        expectErrno(EINVAL) { try client.rename(1, "d1", to: d1.nodeID, "inside") }
        expectErrno(ENOTEMPTY) { try client.rename(1, "d1", to: 1, "d2") }
        expectErrno(EISDIR) { try client.rename(1, "b", to: 1, "d1") }
        expectErrno(ENOTDIR) { try client.rename(1, "d1", to: 1, "b") }
        try client.rmdir(d2.nodeID, "full")
        try client.rename(1, "d1", to: 1, "d2")
        #expect(FileManager.default.fileExists(atPath: directory.host("d2")))
        expectErrno(EINVAL) { try client.rename(1, "b", to: 1, "c", flags: 1 << 7) }
    }

    @Test("hard links count, symlinks are stored and never followed, FORGET ends a node id")
    func linksAndSymlinks() throws {
        let directory = SharedDirectory()
        let client = try makeClient(directory)
        let (file, handle) = try client.create(1, "file")
        try client.release(file.nodeID, handle)
        let second = try client.link(file.nodeID, newParent: 1, "second")
        #expect(second.nodeID == file.nodeID)
        #expect(second.attributes.linkCount == 2)
        try client.unlink(1, "file")
        #expect(try client.getattr(second.nodeID).linkCount == 1)

        let escape = try client.symlink(1, "escape", target: "/etc")
        #expect(try client.readlink(escape.nodeID) == "/etc")
        #expect(escape.attributes.mode & 0o170000 == 0o120000)
        // A symlink node cannot be walked through, opened, or truncated on the host.
        expectErrno(ENOTDIR) { _ = try client.lookup(escape.nodeID, "passwd") }
        expectErrno(ELOOP) { _ = try client.open(escape.nodeID, flags: O_RDONLY) }
        expectErrno(ENOTDIR) { _ = try client.opendir(escape.nodeID) }
        expectErrno(EINVAL) { _ = try client.setattr(escape.nodeID) { $0.valid = UInt32(FATTR_SIZE) } }
        // A host-made symlink to the host's root is no way out either.
        #expect(Glibc.symlink("/", directory.host("root-link")) == 0)
        let rootLink = try client.lookup(1, "root-link")
        expectErrno(ENOTDIR) { _ = try client.lookup(rootLink.nodeID, "etc") }
        expectErrno(ELOOP) { _ = try client.open(rootLink.nodeID, flags: O_RDONLY) }
        // ".." at the root is the root.
        #expect(try client.lookup(1, "..").nodeID == 1)

        client.forget(second.nodeID, count: 2)
        expectErrno(ENOENT) { _ = try client.getattr(second.nodeID) }
        let again = try client.lookup(1, "second")
        #expect(again.nodeID != second.nodeID, "a forgotten node id must not come back")
    }

    @Test("sparse files, truncation, SEEK_DATA/SEEK_HOLE, offsets beyond 4 GiB, fallocate")
    func sparseFiles() throws {
        let directory = SharedDirectory()
        let client = try makeClient(directory)
        let (entry, handle) = try client.create(1, "sparse")
        let far: UInt64 = 5 << 30
        try client.write(entry.nodeID, handle, offset: far, Array("end".utf8))
        #expect(try client.getattr(entry.nodeID).size == far + 3)
        #expect(try client.read(entry.nodeID, handle, offset: far, size: 3) == Array("end".utf8))
        #expect(try client.read(entry.nodeID, handle, offset: 4096, size: 4096) == Array(repeating: 0, count: 4096))
        #expect(try client.lseek(entry.nodeID, handle, offset: 0, whence: SEEK_HOLE) == 0)
        let data = try client.lseek(entry.nodeID, handle, offset: 0, whence: SEEK_DATA)
        #expect(data <= far && data >= far - (1 << 20))
        expectErrno(ENXIO) { _ = try client.lseek(entry.nodeID, handle, offset: far + 100, whence: SEEK_DATA) }
        let shrunk = try client.setattr(entry.nodeID) { $0.valid = UInt32(FATTR_SIZE | FATTR_FH); $0.fh = handle; $0.size = 10 }
        #expect(shrunk.size == 10)
        try client.fallocate(entry.nodeID, handle, offset: 0, length: 1 << 20)
        #expect(try client.getattr(entry.nodeID).size == 1 << 20)
        #expect(try client.read(entry.nodeID, handle, offset: 100, size: 100) == Array(repeating: 0, count: 100))
        try client.release(entry.nodeID, handle)
    }

    @Test("O_APPEND appends whatever the offset; O_TRUNC empties")
    func appendAndTruncate() throws {
        let directory = SharedDirectory()
        let client = try makeClient(directory)
        let (entry, handle) = try client.create(1, "log")
        try client.write(entry.nodeID, handle, offset: 0, Array("one ".utf8))
        try client.release(entry.nodeID, handle)
        let appending = try client.open(entry.nodeID, flags: O_WRONLY | O_APPEND)
        try client.write(entry.nodeID, appending, offset: 0, Array("two".utf8))
        try client.release(entry.nodeID, appending)
        #expect(try String(contentsOfFile: directory.host("log"), encoding: .utf8) == "one two")
        let truncating = try client.open(entry.nodeID, flags: O_WRONLY | O_TRUNC)
        try client.release(entry.nodeID, truncating)
        #expect(try client.getattr(entry.nodeID).size == 0)
    }

    @Test("attributes: chmod, chown, times with nanoseconds, UTIME_NOW")
    func attributes() throws {
        let directory = SharedDirectory()
        let client = try makeClient(directory)
        let (entry, handle) = try client.create(1, "f", mode: 0o600)
        try client.release(entry.nodeID, handle)
        #expect(try client.setattr(entry.nodeID) { $0.valid = UInt32(FATTR_MODE); $0.mode = 0o751 }.mode & 0o7777 == 0o751)
        let owned = try client.setattr(entry.nodeID) { $0.valid = UInt32(FATTR_UID | FATTR_GID); $0.uid = 1234; $0.gid = 5678 }
        #expect(owned.uid == 1234 && owned.gid == 5678)
        let timed = try client.setattr(entry.nodeID) {
            $0.valid = UInt32(FATTR_MTIME | FATTR_ATIME); $0.mtime = 1_600_000_000; $0.mtimensec = 123_456_789; $0.atime = 1
        }
        #expect(timed.modificationSeconds == 1_600_000_000 && timed.modificationNanoseconds == 123_456_789)
        var status = stat()
        #expect(lstat(directory.host("f"), &status) == 0 && status.st_mtim.tv_nsec == 123_456_789)
        let now = try client.setattr(entry.nodeID) { $0.valid = UInt32(FATTR_MTIME | FATTR_MTIME_NOW) }
        #expect(now.modificationSeconds > 1_700_000_000)
    }

    @Test("a queue moved to a new thread acts as the caller there too, and creates keep the guest's exact modes under any umask")
    func newThreadCredentialsAndModes() throws {
        try #require(geteuid() == 0, "the engine switches credentials only as root")
        let directory = SharedDirectory()
        let client = try makeClient(directory)
        #expect(chmod(directory.path, 0o777) == 0)
        let rootOnly = try client.mkdir(1, "root-only", mode: 0o755)
        client.uid = 1000
        client.gid = 1000
        // This thread now acts as 1000; the backend remembers that.
        let (entry, handle) = try client.create(1, "mine", mode: 0o600)
        try client.release(entry.nodeID, handle)
        // A queue restarted after a reconnect runs the same backend on a new thread, whose fs ids
        // are root's: the same caller must still be 1000 there. And a umask of 077 on that thread
        // must not narrow what the guest asked for (the kernel applied the guest's umask already).
        let shared = UncheckedBox(client)
        let rootOnlyNode = rootOnly.nodeID
        let problems = try withThreadUmask(0o077) { () -> [String] in
            var problems: [String] = []
            // As the engine's queue threads are: made by a control thread acting as root.
            _ = setfsgid(0)
            _ = setfsuid(0)
            do {
                _ = try shared.value.mkdir(rootOnlyNode, "escalated")
                problems.append("uid 1000 made a directory in root's 0755 directory on a new thread")
            } catch let failure as FUSEFailure {
                if failure.errno != EACCES { problems.append("mkdir in root-only: \(failure)") }
            } catch {
                problems.append("mkdir in root-only: \(error)")
            }
            do {
                let (file, fileHandle) = try shared.value.create(1, "exact", mode: 0o666)
                try shared.value.release(file.nodeID, fileHandle)
                _ = try shared.value.mkdir(1, "exact-dir", mode: 0o777)
            } catch {
                problems.append("create: \(error)")
            }
            return problems
        }
        #expect(problems.isEmpty, "\(problems)")
        var status = stat()
        #expect(lstat(directory.host("root-only/escalated"), &status) != 0)
        #expect(lstat(directory.host("exact"), &status) == 0 && status.st_mode & 0o7777 == 0o666 && status.st_uid == 1000)
        #expect(lstat(directory.host("exact-dir"), &status) == 0 && status.st_mode & 0o7777 == 0o777)
        // The poller runs on this test's thread again: leave it with root's fs credentials.
        client.uid = 0
        client.gid = 0
        _ = try client.getattr(1)
    }

    @Test("the caller's credentials decide: another user's 0600 file cannot be read")
    func credentials() throws {
        try #require(geteuid() == 0, "the engine switches credentials only as root")
        let directory = SharedDirectory()
        let client = try makeClient(directory)
        client.uid = 1000
        client.gid = 1000
        // Only the caller's uid may create in a 0755 root-owned directory... so open it up first.
        #expect(chmod(directory.path, 0o777) == 0)
        let (entry, handle) = try client.create(1, "private", mode: 0o600)
        try client.release(entry.nodeID, handle)
        var status = stat()
        #expect(lstat(directory.host("private"), &status) == 0 && status.st_uid == 1000 && status.st_gid == 1000)
        client.uid = 1001
        client.gid = 1001
        expectErrno(EACCES) { _ = try client.open(entry.nodeID, flags: O_RDONLY) }
        expectErrno(EPERM) { _ = try client.setattr(entry.nodeID) { $0.valid = UInt32(FATTR_MODE); $0.mode = 0o644 } }
        client.uid = 0
        client.gid = 0
        _ = try client.open(entry.nodeID, flags: O_RDONLY)
        let rootOnly = try client.mkdir(1, "root-only", mode: 0o755)
        client.uid = 1001
        client.gid = 1001
        expectErrno(EACCES) { _ = try client.mkdir(rootOnly.nodeID, "x") }
        expectErrno(EACCES) { _ = try client.create(rootOnly.nodeID, "y") }
        // The poller runs on this test's thread: leave it with root's fs credentials again.
        client.uid = 0
        client.gid = 0
        _ = try client.getattr(1)
    }

    @Test("xattrs: size probe, ERANGE, ENODATA, list, remove")
    func extendedAttributes() throws {
        let directory = SharedDirectory()
        let client = try makeClient(directory)
        let (entry, handle) = try client.create(1, "x")
        try client.release(entry.nodeID, handle)
        expectErrno(ENODATA) { _ = try client.getxattr(entry.nodeID, "user.missing", size: 100) }
        let value = Array(repeating: UInt8(ascii: "v"), count: 300)
        try client.setxattr(entry.nodeID, "user.comment", value)
        #expect(try client.getxattr(entry.nodeID, "user.comment", size: 0).loadLE(UInt32.self, at: 0) == 300)
        #expect(try client.getxattr(entry.nodeID, "user.comment", size: 300) == value)
        expectErrno(ERANGE) { _ = try client.getxattr(entry.nodeID, "user.comment", size: 10) }
        expectErrno(EEXIST) { try client.setxattr(entry.nodeID, "user.comment", value, flags: Int32(XATTR_CREATE)) }
        let names = try client.listxattr(entry.nodeID, size: 1000)
        #expect(String(decoding: names, as: UTF8.self).contains("user.comment"))
        try client.removexattr(entry.nodeID, "user.comment")
        expectErrno(ENODATA) { try client.removexattr(entry.nodeID, "user.comment") }
    }

    @Test("a directory of 2,000 entries read across many READDIR calls, each name once")
    func largeDirectory() throws {
        let directory = SharedDirectory()
        for index in 0..<2000 {
            #expect(FileManager.default.createFile(atPath: directory.host("entry-\(index)"), contents: nil))
        }
        let client = try makeClient(directory)
        let handle = try client.opendir(1)
        var names: [String] = []
        var offset: UInt64 = 0
        var calls = 0
        while true {
            let batch = try client.readdir(1, handle, offset: offset, size: 4096)
            if batch.isEmpty { break }
            names += batch.map(\.name)
            offset = batch.last!.next
            calls += 1
            precondition(calls < 10_000)
        }
        #expect(calls > 10)
        #expect(names.count == 2002)
        #expect(Set(names).count == 2002)
        #expect(Set(names).isSuperset(of: [".", "..", "entry-0", "entry-1999"]))
        try client.release(1, handle, directory: true)
    }

    @Test("limits: a full inode table answers ENFILE and recovers after FORGET; bad handles EBADF")
    func limits() throws {
        let directory = SharedDirectory()
        for index in 0..<40 { #expect(FileManager.default.createFile(atPath: directory.host("f\(index)"), contents: nil)) }
        let client = try makeClient(directory, inodesMax: 16)
        var known: [UInt64] = []
        var full = false
        for index in 0..<40 {
            do { known.append(try client.lookup(1, "f\(index)").nodeID) } catch { #expect(error.errno == ENFILE); full = true; break }
        }
        #expect(full && known.count == 15)
        client.forget(known[0])
        #expect(throws: Never.self) { _ = try client.lookup(1, "f39") }
        expectErrno(EBADF) { _ = try client.read(known[1], 0xDEAD_BEEF, offset: 0, size: 10) }
        expectErrno(ENOENT) { _ = try client.getattr(0x7777_0000_0003) }
    }

    @Test("hostile requests: escapes through symlinks and names, lying READ/WRITE lengths; nothing outside is touched")
    func hostileRequests() throws {
        let directory = SharedDirectory()
        let outside = SharedDirectory()
        try "outside secret".write(toFile: outside.host("secret"), atomically: false, encoding: .utf8)
        #expect(Glibc.symlink(outside.host("secret"), directory.host("to-secret")) == 0)
        #expect(Glibc.symlink(outside.path, directory.host("to-outside")) == 0)
        let client = try makeClient(directory)
        let link = try client.lookup(1, "to-secret")
        expectErrno(ELOOP) { _ = try client.open(link.nodeID, flags: O_RDWR) }
        expectErrno(ELOOP) { _ = try client.open(link.nodeID, flags: O_RDONLY | O_TRUNC) }
        expectErrno(EINVAL) { _ = try client.setattr(link.nodeID) { $0.valid = UInt32(FATTR_SIZE); $0.size = 0 } }
        expectErrno(ENOTSUP) { _ = try client.setattr(link.nodeID) { $0.valid = UInt32(FATTR_MODE); $0.mode = 0o777 } }
        let outsideDirectory = try client.lookup(1, "to-outside")
        expectErrno(ENOTDIR) { _ = try client.lookup(outsideDirectory.nodeID, "secret") }
        expectErrno(ENOTDIR) { _ = try client.create(outsideDirectory.nodeID, "planted") }
        expectErrno(ENOTDIR) { _ = try client.mkdir(outsideDirectory.nodeID, "planted") }
        expectErrno(EPERM) { _ = try client.link(outsideDirectory.nodeID == 0 ? 1 : try client.lookup(1, "..").nodeID, newParent: 1, "root-link") }
        // Names the kernel never sends: a '/' is refused by the decoder, ".." never climbs out.
        let (error, _) = client.call(.lookup, node: 1, args: Array("../etc".utf8) + [0])
        #expect(error == -EINVAL)
        #expect(try client.lookup(1, "..").nodeID == 1)
        expectErrno(EINVAL) { try client.unlink(1, "..") }
        expectErrno(EINVAL) { try client.rename(1, "..", to: 1, "x") }

        let (file, handle) = try client.create(1, "victim")
        try client.write(file.nodeID, handle, offset: 0, Array("0123456789".utf8))
        // A WRITE whose declared size is not the payload it carries.
        var write = fuse_write_in()
        write.fh = handle
        write.size = 1 << 20
        let lying = client.call(.write, node: file.nodeID, args: withUnsafeBytes(of: write) { Array($0) } + Array("xyz".utf8))
        #expect(lying.0 == -EINVAL)
        // A READ asking for more than its buffers hold gets what fits, never more.
        var read = fuse_read_in()
        read.fh = handle
        read.size = 1 << 20
        let short = client.call(.read, node: file.nodeID, args: withUnsafeBytes(of: read) { Array($0) }, writable: 16 + 4)
        #expect(short.0 == 0 && short.1 == Array("0123".utf8))
        // A handle that was never issued, a node id with a stale generation.
        expectErrno(EBADF) { try client.write(file.nodeID, handle ^ (1 << 40), offset: 0, [1]) }
        expectErrno(ENOENT) { _ = try client.getattr(file.nodeID ^ (1 << 40)) }
        try client.release(file.nodeID, handle)

        #expect(try String(contentsOfFile: outside.host("secret"), encoding: .utf8) == "outside secret")
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside.path) == ["secret"])
        #expect(try String(contentsOfFile: directory.host("victim"), encoding: .utf8) == "0123456789")
        #expect(try client.getattr(1).mode & 0o170000 == 0o040000, "the device keeps serving")
    }

    @Test("POSIX locks between owners: conflicts, GETLK, unlocking a sub-range, SETLKW woken by unlock, INTERRUPT, FLUSH")
    func posixLocks() throws {
        let directory = SharedDirectory()
        let client = try makeClient(directory)
        let (file, handle) = try client.create(1, "locked")
        let second = try client.open(file.nodeID)
        let a: UInt64 = 0xA, b: UInt64 = 0xB
        try client.setlk(file.nodeID, handle, owner: a, type: F_WRLCK, start: 0, end: 99)
        expectErrno(EAGAIN) { try client.setlk(file.nodeID, second, owner: b, type: F_WRLCK, start: 50, end: 60) }
        let conflict = try client.getlk(file.nodeID, second, owner: b, type: F_WRLCK, start: 50, end: 60)
        #expect(conflict.type == UInt32(F_WRLCK) && conflict.start == 0 && conflict.end == 99)
        #expect(try client.getlk(file.nodeID, handle, owner: a, type: F_WRLCK, start: 50, end: 60).type == UInt32(F_UNLCK),
                "an owner never conflicts with itself")
        // Unlocking the middle splits A's lock in two.
        try client.setlk(file.nodeID, handle, owner: a, type: F_UNLCK, start: 40, end: 59)
        try client.setlk(file.nodeID, second, owner: b, type: F_RDLCK, start: 45, end: 55)
        expectErrno(EAGAIN) { try client.setlk(file.nodeID, second, owner: b, type: F_WRLCK, start: 70, end: 80) }
        expectErrno(EAGAIN) { try client.setlk(file.nodeID, second, owner: b, type: F_WRLCK, start: 10, end: 20) }

        // SETLKW on a held range waits (off the poller) until A unlocks it.
        let waiting = client.send(.setlkw, node: file.nodeID,
                                  args: FUSEClient<PassthroughBackend>.lockArguments(handle: second, owner: b, type: F_WRLCK, start: 0, end: 10))
        #expect(client.wait(for: waiting, seconds: 0.2) == nil, "SETLKW must wait while A holds the range")
        #expect(client.rig.rig.poller.slotsInUse == 1)
        try client.setlk(file.nodeID, handle, owner: a, type: F_UNLCK, start: 0, end: 39)
        let granted = try #require(client.wait(for: waiting, seconds: 5))
        #expect(granted.0 == 0)

        // A SETLKW that is interrupted gives up with EINTR.
        let interrupted = client.send(.setlkw, node: file.nodeID,
                                      args: FUSEClient<PassthroughBackend>.lockArguments(handle: second, owner: b, type: F_WRLCK, start: 60, end: 99))
        #expect(client.wait(for: interrupted, seconds: 0.1) == nil)
        _ = client.call(.interrupt, node: 0, args: withUnsafeBytes(of: interrupted.littleEndian) { Array($0) })
        let gaveUp = try #require(client.wait(for: interrupted, seconds: 5))
        #expect(gaveUp.0 == -EINTR)

        // A's close (FLUSH with its owner) drops its remaining locks.
        try client.flush(file.nodeID, handle, owner: a)
        try client.setlk(file.nodeID, second, owner: b, type: F_WRLCK, start: 60, end: UInt64(Int64.max))
        try client.release(file.nodeID, handle)
        try client.release(file.nodeID, second)
    }

    @Test("a walk over 3,000 files keeps at most the cache's descriptors open; evicted inodes reopen by file handle")
    func descriptorCache() throws {
        let directory = SharedDirectory()
        for index in 0..<3000 { #expect(FileManager.default.createFile(atPath: directory.host("n\(index)"), contents: Data("\(index)".utf8))) }
        let client = try makeClient(directory, inodesMax: 8192, inodeDescriptorsMax: 64)
        let inodes = client.rig.rig.poller.backend.device.inodes
        var nodes: [UInt64] = []
        for index in 0..<3000 { nodes.append(try client.lookup(1, "n\(index)").nodeID) }
        #expect(inodes.inUse == 3000, "the guest knows every inode")
        #expect(inodes.descriptorsOpen <= 64, "\(inodes.descriptorsOpen) descriptors open for 3000 inodes")
        #expect(inodes.evictions.load(ordering: .relaxed) >= 3000 - 64)
        // Every inode still answers, re-opened from its file handle when its descriptor was closed.
        for (index, node) in nodes.enumerated() where index % 97 == 0 {
            #expect(try client.getattr(node).size == UInt64("\(index)".utf8.count))
            let handle = try client.open(node, flags: O_RDONLY)
            #expect(try client.read(node, handle, offset: 0, size: 16) == Array("\(index)".utf8))
            try client.release(node, handle)
        }
        #expect(inodes.reopens.load(ordering: .relaxed) > 0)
        // A file removed on the host while only its handle was kept answers ENOENT or ESTALE.
        let victim = nodes[1]
        #expect(unlink(directory.host("n1")) == 0)
        do { _ = try client.getattr(victim); Issue.record("a removed file still answered") }
        catch { #expect(error.errno == ENOENT || error.errno == ESTALE) }
        for node in nodes { client.forget(node) }
        #expect(inodes.inUse == 0 && inodes.descriptorsOpen == 0)
    }
}
