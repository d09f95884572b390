import DPFSTestSupport
import Foundation
import FUSEWire
import Glibc
import KeyValueBackend
import Testing

/// The key-value backend against a server that lies: a fake Redis made here answers the start-up
/// honestly and then what each test scripts for one function. Nothing a server sends is trusted:
/// every lie fails its own request with EIO (or the honest errno a well-formed error names), and
/// the device keeps serving: the next honest answer goes through.
@Suite(.serialized) struct KVHostileServerTests {
    /// A scripted Redis on a unix socket: FUNCTION LOAD and dpfs_start answered as a real server
    /// does, every other FCALL with `answers[function]` (an honest root GETATTR by default).
    final class FakeServer: @unchecked Sendable {
        let path = "/tmp/dpfs-kv-hostile-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener: Int32
        let lock = NSLock()
        var answers: [String: [UInt8]] = [:]
        /// Answers given once, before `answers`.
        var once: [String: [UInt8]] = [:]
        /// FUNCTION LOADs seen, and how many more are answered LOADING.
        var loads = 0
        var loadingLoads = 0
        var running = true

        static let honestAttributes = "*13\r\n$1\r\n1\r\n$5\r\n16877\r\n$1\r\n0\r\n$1\r\n0\r\n$4\r\n4096\r\n$1\r\n2\r\n$1\r\n0\r\n"
            + "$1\r\n1\r\n$1\r\n0\r\n$1\r\n1\r\n$1\r\n0\r\n$1\r\n1\r\n$1\r\n0\r\n"

        init() throws {
            listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard bound == 0, listen(listener, 8) == 0 else { throw KVConnectionError("fake server: errno \(errno)") }
            Thread { self.acceptLoop() }.start()
        }

        func stop() {
            lock.withLock { running = false }
            shutdown(listener, Int32(SHUT_RDWR))
            close(listener)
            unlink(path)
        }

        func answer(_ function: String, _ text: String) { lock.withLock { answers[function] = Array(text.utf8) } }

        func acceptLoop() {
            while lock.withLock({ running }) {
                let client = accept(listener, nil, nil)
                guard client >= 0 else { return }
                Thread { self.serve(client) }.start()
            }
        }

        /// Reads commands (arrays of bulk strings) and answers each.
        func serve(_ client: Int32) {
            var buffer: [UInt8] = []
            var scratch = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let got = scratch.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
                guard got > 0 else { break }
                buffer += scratch[0..<got]
                while let (parts, used) = Self.command(buffer) {
                    buffer.removeFirst(used)
                    let reply = respond(parts)
                    _ = reply.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                }
            }
            close(client)
        }

        func respond(_ parts: [String]) -> [UInt8] {
            if parts.first == "FUNCTION" {
                return lock.withLock {
                    loads += 1
                    guard loadingLoads > 0 else { return Array("$7\r\ndpfs_v1\r\n".utf8) }
                    loadingLoads -= 1
                    return Array("-LOADING Redis is loading the dataset in memory\r\n".utf8)
                }
            }
            guard parts.count >= 2, parts[0] == "FCALL" else { return Array("-ERR unknown\r\n".utf8) }
            if parts[1] == "dpfs_start" { return Array("*2\r\n:65536\r\n:0\r\n".utf8) }
            return lock.withLock { once.removeValue(forKey: parts[1]) ?? answers[parts[1]] } ?? Array(Self.honestAttributes.utf8)
        }

        /// One whole command at the buffer's start and its length, or nil.
        static func command(_ bytes: [UInt8]) -> ([String], Int)? {
            func line(_ from: Int) -> (Int, Int)? {
                var index = from
                while index + 1 < bytes.count {
                    if bytes[index] == 13 && bytes[index + 1] == 10 { return (Int(String(decoding: bytes[(from + 1)..<index], as: UTF8.self)) ?? -1, index + 2) }
                    index += 1
                }
                return nil
            }
            guard !bytes.isEmpty, let (count, first) = line(0) else { return nil }
            var at = first
            var parts: [String] = []
            for _ in 0..<count {
                guard let (length, start) = line(at), start + length + 2 <= bytes.count else { return nil }
                parts.append(String(decoding: bytes[start..<(start + length)], as: UTF8.self))
                at = start + length + 2
            }
            return (parts, at)
        }
    }

    /// A device on the fake server (requests time out after 600 ms), its client, and the server.
    static func device() throws -> (FUSEClient<KVBackend>, FakeServer) {
        let server = try FakeServer()
        let configuration = KVConfiguration(
            endpoint: .unix(path: server.path), prefix: "hostile", chunkBytes: 65536, capacityBytes: 1 << 30, fileBytesMax: 1 << 30,
            validity: CacheValidity(seconds: 0), openFlags: 0, openFilesMax: 64, requestTimeoutMilliseconds: 600)
        let device = try KVDevice(configuration: configuration)
        return (FUSEClient(backend: KVBackend(device: device)), server)
    }

    /// An attributes reply with `field` (0 inode, 1 mode, ... 12 ctime ns) replaced by `value`.
    static func attributes(_ field: Int, _ value: String) -> String {
        var fields = ["1", "16877", "0", "0", "4096", "2", "0", "1", "0", "1", "0", "1", "0"]
        fields[field] = value
        return "*13\r\n" + fields.map { "$\($0.utf8.count)\r\n\($0)\r\n" }.joined()
    }

    @Test("lies in an attributes reply fail the request EIO, and the next honest answer is served", arguments: [
        ("not a number", attributes(4, "4k")),
        ("inode 0", attributes(0, "0")),
        ("a mode without a file type", attributes(1, "420")),
        ("nanoseconds past a second", attributes(10, "1000000000")),
        ("a size past 2^53", attributes(4, "9007199254740993")),
        ("an inode number of 20 digits", attributes(0, "12345678901234567890")),
        ("twelve fields", "*12\r\n" + String(repeating: "$1\r\n1\r\n", count: 12)),
        ("an integer instead of an array", ":5\r\n"),
        ("an error no errno names", "-OOM command not allowed when used memory > 'maxmemory'\r\n"),
    ])
    func lyingAttributes(lie: String, answer: String) throws {
        let (client, server) = try Self.device()
        defer { server.stop() }
        server.answer("dpfs_getattr", answer)
        #expect(throws: FUSEFailure(errno: EIO), "\(lie)") { try client.getattr(1) }
        server.answer("dpfs_getattr", FakeServer.honestAttributes)
        #expect(try client.getattr(1).mode == 0o40755, "the device serves again")
    }

    @Test("a well-formed error names its errno; a LOADING server is asked again, not failed")
    func honestErrors() throws {
        let (client, server) = try Self.device()
        defer { server.stop() }
        server.answer("dpfs_lookup", "-ENOTDIR not a directory\r\n")
        #expect(throws: FUSEFailure(errno: ENOTDIR)) { try client.lookup(1, "x") }
        server.answer("dpfs_getattr", "-LOADING Redis is loading the dataset in memory\r\n")
        let unique = client.send(.getattr, node: 1, args: [UInt8](repeating: 0, count: 16), writable: 16 + 104)
        Thread.sleep(forTimeInterval: 0.05)
        server.answer("dpfs_getattr", FakeServer.honestAttributes)
        let reply = client.wait(for: unique)
        #expect(reply?.0 == 0, "answered once the server had loaded: \(String(describing: reply?.0))")
    }

    @Test("READ answering more than asked, and listings that lie, fail EIO", arguments: [
        ("dpfs_read", "$5000\r\n" + String(repeating: "x", count: 5000) + "\r\n", "read"),
        ("dpfs_readdir", "*5\r\n$1\r\n1\r\n$1\r\n3\r\n$1\r\n2\r\n$5\r\n32768\r\n$3\r\na/b\r\n", "a name with '/'"),
        ("dpfs_readdir", "*5\r\n$1\r\n1\r\n$1\r\n3\r\n$1\r\n2\r\n$5\r\n32768\r\n$2\r\n..\r\n", "'..' from the store"),
        ("dpfs_readdir", "*5\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n2\r\n$5\r\n32768\r\n$1\r\na\r\n", "an offset that does not grow"),
        ("dpfs_readdir", "*5\r\n$1\r\n1\r\n$1\r\n3\r\n$1\r\n2\r\n$3\r\n420\r\n$1\r\na\r\n", "an entry without a file type"),
    ])
    func lyingData(function: String, answer: String, what: String) throws {
        let (client, server) = try Self.device()
        defer { server.stop() }
        server.answer(function, answer)
        if function == "dpfs_read" {
            #expect(throws: FUSEFailure(errno: EIO), "\(what)") { _ = try client.read(2, 2, offset: 0, size: 4096) }
        } else {
            #expect(throws: FUSEFailure(errno: EIO), "\(what)") { _ = try client.readdir(1, 1, offset: 0) }
        }
        #expect(try client.getattr(1).mode == 0o40755, "the device serves again")
    }

    @Test("a stream past the RESP limits ends the connection; the request fails EIO by its deadline, and a new connection serves")
    func brokenStream() throws {
        let (client, server) = try Self.device()
        defer { server.stop() }
        server.answer("dpfs_getattr", "$999999999\r\n")
        let began = Date()
        #expect(throws: FUSEFailure(errno: EIO)) { try client.getattr(1) }
        #expect(Date().timeIntervalSince(began) < 3, "within the 600 ms deadline and a scan")
        server.answer("dpfs_getattr", FakeServer.honestAttributes)
        #expect(try client.getattr(1).mode == 0o40755, "served on a new connection")
    }

    @Test("functions refused at a reconnect (LOADING) are loaded again on a new connection before requests rely on them")
    func reloadAfterLoading() throws {
        let (client, server) = try Self.device()
        defer { server.stop() }
        #expect(try client.getattr(1).mode == 0o40755)
        server.lock.withLock {
            server.once["dpfs_getattr"] = Array("$999999999\r\n".utf8)   // breaks the stream: a reconnect
            server.loadingLoads = 1                                    // whose FUNCTION LOAD is refused
        }
        let loadsBefore = server.lock.withLock { server.loads }
        #expect(try client.getattr(1).mode == 0o40755, "sent again on the next connection")
        #expect(try client.getattr(1).mode == 0o40755)
        let loads = server.lock.withLock { server.loads } - loadsBefore
        #expect(loads >= 2, "the refused load and the one on the next connection: \(loads)")
    }
}
