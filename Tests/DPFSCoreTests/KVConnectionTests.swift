import Foundation
import Glibc
import KeyValueBackend
import RESP
import Testing

/// The key-value backend's connection: URLs checked before any socket, pipelined commands whose
/// replies come back to their own tags in order, a full tag ring refusing more, and a server that
/// hangs up, lies or answers what nobody asked failing the connection with every pending tag
/// handed back. The real server comes from tools/test-kv-redis.sh; the misbehaving ones are
/// sockets made here.
@Suite struct KVConnectionTests {
    @Test("key-value URLs: numeric TCP or an absolute unix path, database 0, and nothing else", arguments: [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/0"),
        ("unix:///run/redis/redis.sock", "unix:///run/redis/redis.sock"),
        ("redis://localhost:6379/0", "numeric IPv4"),
        ("redis://127.0.0.1/0", "needs HOST:PORT"),
        ("redis://127.0.0.1:0/0", "needs HOST:PORT"),
        ("redis://127.0.0.1:6379/3", "only database 0"),
        ("unix://relative.sock", "absolute"),
        ("http://127.0.0.1:6379", "must be redis://"),
    ])
    func urls(url: String, expected: String) {
        do {
            #expect(try KVEndpoint.parse(url).description == expected)
        } catch {
            #expect(error.description.contains(expected), "\(error.description)")
        }
    }

    static func waitWritable(_ fd: Int32) {
        var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        _ = poll(&entry, 1, 2000)
    }

    /// Sends and reads until `replies` whole replies came: each token with its tag.
    static func run(_ connection: KVConnection, replies: Int) throws -> [(UInt32, String)] {
        var seen: [(UInt32, String)] = []
        var complete = 0
        var rounds = 0
        while try !connection.flush() { waitWritable(connection.fd) }
        while complete < replies {
            rounds += 1
            guard rounds < 100_000 else { throw KVConnectionError("no reply") }
            complete += try connection.receive { tag, token, _, bytes in seen.append((tag, RESPTests.describe(token, Array(bytes)))) }
            if complete < replies { var entry = pollfd(fd: connection.fd, events: Int16(POLLIN), revents: 0); _ = poll(&entry, 1, 2000) }
        }
        return seen
    }

    static func connection(_ url: String, tagsMax: Int = 4096) throws -> KVConnection {
        let connection = KVConnection(endpoint: try KVEndpoint.parse(url), sendBytes: 1 << 16, receiveBytes: (1 << 20) + 8192, tagsMax: tagsMax)
        try connection.connect()
        waitWritable(connection.fd)
        #expect(connection.connectionError == 0)
        return connection
    }

    @Test("a thousand pipelined commands come back in order, each to its own tag, over unix and TCP",
          .enabled(if: ProcessInfo.processInfo.environment["DPFS_REDIS_URL"] != nil, "needs the server tools/test-kv-redis.sh starts"))
    func pipelined() throws {
        let environment = ProcessInfo.processInfo.environment
        for url in ["unix://" + environment["DPFS_REDIS_SOCKET"]!, environment["DPFS_REDIS_URL"]!] {
            let connection = try Self.connection(url)
            let key = "dpfs-conn-test:\(getpid()):\(url.hasPrefix("unix") ? "u" : "t")"
            for tag in 0..<1000 {
                let queued = connection.queue(tag: UInt32(tag)) { writer in
                    writer.begin(parts: 2) && writer.part("INCR") && key.utf8CString.withUnsafeBytes { writer.part(UnsafeRawBufferPointer(rebasing: $0.dropLast())) }
                }
                #expect(queued)
            }
            let seen = try Self.run(connection, replies: 1000)
            #expect(seen.map(\.0) == (0..<1000).map(UInt32.init), "\(url): replies in the order of their commands")
            #expect(seen.map(\.1) == (1...1000).map { ":\($0)" }, "\(url)")
            #expect(connection.inFlight == 0)
        }
    }

    @Test("the tag ring is the bound: a full one refuses a command and queues nothing")
    func tagRing() throws {
        let connection = KVConnection(endpoint: .unix(path: "/nonexistent"), sendBytes: 4096, receiveBytes: (1 << 20) + 8192, tagsMax: 2)
        #expect(connection.queue(tag: 1) { $0.begin(parts: 1) && $0.part("PING") })
        #expect(connection.queue(tag: 2) { $0.begin(parts: 1) && $0.part("PING") })
        #expect(!connection.queue(tag: 3) { $0.begin(parts: 1) && $0.part("PING") })
        var lost: [UInt32] = []
        connection.disconnect { lost.append($0) }
        #expect(lost == [1, 2], "every command whose reply will not come, oldest first")
        #expect(connection.inFlight == 0)
    }

    /// A server on a unix socket of this test that answers with `answer` once it read a command.
    static func fakeServer(answer: [UInt8]?) throws -> (path: String, thread: Thread) {
        let path = "/tmp/dpfs-kv-fake-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard bound == 0, listen(listener, 1) == 0 else { throw KVConnectionError("fake server: errno \(errno)") }
        let thread = Thread {
            let client = accept(listener, nil, nil)
            var scratch = [UInt8](repeating: 0, count: 4096)
            _ = scratch.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            if let answer { _ = answer.withUnsafeBytes { send(client, $0.baseAddress, $0.count, 0) } }
            close(client)
            close(listener)
            unlink(path)
        }
        thread.start()
        return (path, thread)
    }

    @Test("a server that hangs up, lies, or answers what nobody asked fails the connection and hands back every tag", arguments: [
        (nil as String?, "closed the connection"),
        ("?garbage\r\n", "broke the protocol"),
        ("+OK\r\n+OK\r\n+OK\r\n", "a reply nobody asked for"),
    ])
    func misbehaving(answer: String?, expected: String) throws {
        let server = try Self.fakeServer(answer: answer.map { Array($0.utf8) })
        let connection = try Self.connection("unix://" + server.path)
        for tag in [7, 8] as [UInt32] { #expect(connection.queue(tag: tag) { $0.begin(parts: 1) && $0.part("PING") }) }
        do {
            _ = try Self.run(connection, replies: 3)
            Issue.record("no failure")
        } catch {
            #expect("\(error)".contains(expected), "\(error)")
        }
        var lost: [UInt32] = []
        connection.disconnect { lost.append($0) }
        #expect(lost == (expected.contains("nobody") ? [] : [7, 8]), "the tags whose replies did not come")
        #expect(!connection.isConnected)
    }
}
