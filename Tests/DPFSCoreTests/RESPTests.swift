import Foundation
import Glibc
import RESP
import Testing

/// The key-value backend's wire: commands written into caller memory (never partly), replies
/// parsed token by token in place, whatever way the stream is cut, and hostile streams refused
/// with a reason instead of read past a limit. The real redis-server runs the same codec in the
/// key-value backend's tests.
@Suite struct RESPTests {
    /// The tokens of `stream`, parsed with the bytes arriving `cut` at a time (the reader sees a
    /// growing buffer, as from a socket).
    static func tokens(_ stream: [UInt8], cut: Int = Int.max, limits: RESPLimits = RESPLimits()) -> [String] {
        var reader = RESPReader(limits: limits)
        var result: [String] = []
        var available = min(cut, stream.count)
        while true {
            let parse = stream.withUnsafeBytes { reader.next(in: UnsafeRawBufferPointer(rebasing: $0[0..<available])) }
            switch parse {
            case .needMore:
                guard available < stream.count else { return result }
                available = min(stream.count, available + cut)
            case .malformed(let reason):
                result.append("malformed \(reason)")
                return result
            case .token(let token, let complete):
                result.append(describe(token, stream) + (complete ? " |" : ""))
            }
        }
    }

    static func describe(_ token: RESPToken, _ stream: [UInt8]) -> String {
        switch token {
        case .simpleString(let range): "+" + String(decoding: stream[range], as: UTF8.self)
        case .error(let range): "-" + String(decoding: stream[range], as: UTF8.self)
        case .integer(let value): ":\(value)"
        case .bulkString(let range): "$" + String(decoding: stream[range], as: UTF8.self)
        case .null: "nil"
        case .array(let count): "*\(count)"
        }
    }

    static let replies = Array("+OK\r\n-ERR wrong\r\n:-42\r\n$5\r\nhe\r\nl\r\n$0\r\n\r\n$-1\r\n*2\r\n*2\r\n:1\r\n$1\r\nx\r\n*0\r\n*-1\r\n:9223372036854775807\r\n".utf8)
    static let expected = ["+OK |", "-ERR wrong |", ":-42 |", "$he\r\nl |", "$ |", "nil |", "*2", "*2", ":1", "$x", "*0 |", "nil |",
                           ":9223372036854775807 |"]

    @Test("every reply type, nested arrays, binary bulk strings; a reply ends where its last array closes")
    func replies() {
        #expect(Self.tokens(Self.replies) == Self.expected)
    }

    @Test("however the stream is cut, the same tokens come out")
    func anyCut() {
        for cut in 1...Self.replies.count {
            #expect(Self.tokens(Self.replies, cut: cut) == Self.expected, "cut every \(cut) bytes")
        }
    }

    @Test("hostile streams are refused with a reason, and stay refused", arguments: [
        ("?\r\n", "malformed unknownType(63)"),
        (":12a\r\n", "malformed badNumber"),
        (":99999999999999999999\r\n", "malformed badNumber"),
        (":-\r\n", "malformed badNumber"),
        (":\r\n", "malformed badNumber"),
        ("$-2\r\n", "malformed badNumber"),
        ("$2000000\r\n", "malformed bulkTooLong"),
        ("$3\r\nabcXY", "malformed missingLineEnd"),
        ("*70000\r\n", "malformed arrayTooLong"),
        ("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", "malformed tooDeep"),
        ("+" + String(repeating: "a", count: 5000) + "\r\n", "malformed lineTooLong"),
    ])
    func hostile(stream: String, expected: String) {
        let tokens = Self.tokens(Array(stream.utf8))
        #expect(tokens.last == expected, "\(tokens)")
        var reader = RESPReader()
        let bytes = Array(stream.utf8)
        var last = RESPParse.needMore
        for _ in 0..<8 { last = bytes.withUnsafeBytes { reader.next(in: $0) } }
        guard case .malformed = last else { Issue.record("the reader went on after \(expected)"); return }
    }

    @Test("the limits are the caller's: a smaller bulk limit refuses what the default takes")
    func limits() {
        let stream = Array("$10\r\n0123456789\r\n".utf8)
        #expect(Self.tokens(stream) == ["$0123456789 |"])
        #expect(Self.tokens(stream, limits: RESPLimits(bulkBytesMax: 9)) == ["malformed bulkTooLong"])
    }

    @Test("consumed bytes can be dropped from the buffer's front and parsing goes on")
    func shifting() {
        var buffer = Array("+A\r\n:7\r\n".utf8)
        var reader = RESPReader()
        #expect(buffer.withUnsafeBytes { reader.next(in: $0) } != .needMore)
        let consumed = reader.position
        buffer.removeFirst(consumed)
        reader.shift(by: consumed)
        #expect(buffer.withUnsafeBytes { reader.next(in: $0) } == .token(.integer(7), replyComplete: true))
        #expect(buffer.withUnsafeBytes { reader.next(in: $0) } == .needMore)
    }

    @Test("commands are arrays of bulk strings, byte for byte, and read back by the reader")
    func commands() {
        var storage = [UInt8](repeating: 0, count: 256)
        let written = storage.withUnsafeMutableBytes { raw -> Int in
            var writer = RESPCommandWriter(into: raw)
            let set = writer.begin(parts: 3) && writer.part("SET") && writer.part("k\r\n") && writer.part(Int64.min)
            let increment = writer.begin(parts: 2) && writer.part("INCRBY") && writer.part(-7)
            #expect(set && increment)
            return writer.completeBytes
        }
        let text = String(decoding: storage[0..<written], as: UTF8.self)
        #expect(text == "*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$20\r\n-9223372036854775808\r\n*2\r\n$6\r\nINCRBY\r\n$2\r\n-7\r\n")
        #expect(Self.tokens(Array(storage[0..<written])) == ["*3", "$SET", "$k\r\n", "$-9223372036854775808 |", "*2", "$INCRBY", "$-7 |"])
    }

    @Test("a command that does not fit leaves the buffer as it was")
    func full() {
        var storage = [UInt8](repeating: 0, count: 32)
        storage.withUnsafeMutableBytes { raw in
            var writer = RESPCommandWriter(into: raw)
            let ping = writer.begin(parts: 1) && writer.part("PING")
            #expect(ping)
            let before = writer.completeBytes
            #expect(before == 14)
            let started = writer.begin(parts: 2) && writer.part("GET")
            #expect(started)
            let fitted = writer.part("a key far too long for what is left")
            #expect(!fitted, "no room")
            #expect(writer.completeBytes == before && writer.count == before, "the half command is gone")
            let next = writer.begin(parts: 1) && writer.part("PING")
            #expect(next, "and the buffer takes the next one")
            writer.reset()
            #expect(writer.count == 0)
        }
    }
}

/// The codec against a real redis-server (tools/test-kv-redis.sh starts one on a unix socket and
/// runs this suite with DPFS_REDIS_SOCKET set; a step of tools/test.sh, so CI always runs it).
@Suite struct RESPRedisTests {
    /// A blocking unix-socket client speaking through RESPCommandWriter and RESPReader.
    final class Client {
        let fd: Int32
        var received = [UInt8]()
        var reader = RESPReader()
        /// The bulk strings of the last exchange, byte for byte.
        var bulks: [[UInt8]] = []

        init(path: String) throws {
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
            }
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard connected == 0 else { throw RESPTestError("connect \(path): errno \(errno)") }
        }

        deinit { close(fd) }

        /// Sends what `write` puts in a command buffer, then reads `replies` whole replies.
        func exchange(replies: Int, _ write: (inout RESPCommandWriter) -> Bool) throws -> [String] {
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            let count = buffer.withUnsafeMutableBytes { raw -> Int in
                var writer = RESPCommandWriter(into: raw)
                return write(&writer) ? writer.completeBytes : -1
            }
            guard count > 0, buffer.withUnsafeBytes({ send(fd, $0.baseAddress, count, 0) }) == count else { throw RESPTestError("send") }
            var tokens: [String] = []
            var complete = 0
            while complete < replies {
                switch received.withUnsafeBytes({ reader.next(in: $0) }) {
                case .needMore:
                    var chunk = [UInt8](repeating: 0, count: 4096)
                    let got = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                    guard got > 0 else { throw RESPTestError("connection closed") }
                    received += chunk[0..<got]
                case .malformed(let reason): throw RESPTestError("malformed \(reason)")
                case .token(let token, let done):
                    if case .bulkString(let range) = token { bulks.append(Array(received[range])) }
                    tokens.append(RESPTests.describe(token, received) + (done ? " |" : ""))
                    if done { complete += 1 }
                }
            }
            return tokens
        }
    }

    struct RESPTestError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    @Test("redis-server understands the commands and its replies parse: strings, integers, nil, errors, arrays, binary values",
          .enabled(if: ProcessInfo.processInfo.environment["DPFS_REDIS_SOCKET"] != nil, "needs the server tools/test-kv-redis.sh starts"))
    func realServer() throws {
        let client = try Client(path: ProcessInfo.processInfo.environment["DPFS_REDIS_SOCKET"]!)
        let key = "dpfs-resp-test:\(getpid())"
        var binary = [UInt8](0...255)
        binary += Array("\r\n$-1\r\n".utf8)
        let tokens = try client.exchange(replies: 7) { writer in
            key.utf8CString.withUnsafeBytes { keyBytes in
                let name = UnsafeRawBufferPointer(rebasing: keyBytes[0..<(keyBytes.count - 1)])
                return binary.withUnsafeBytes { value in
                    writer.begin(parts: 1) && writer.part("PING")
                        && writer.begin(parts: 3) && writer.part("SET") && writer.part(name) && writer.part(value)
                        && writer.begin(parts: 2) && writer.part("STRLEN") && writer.part(name)
                        && writer.begin(parts: 2) && writer.part("GET") && writer.part("dpfs-resp-test:absent")
                        && writer.begin(parts: 2) && writer.part("INCR") && writer.part(name)
                        && writer.begin(parts: 3) && writer.part("MGET") && writer.part(name) && writer.part("dpfs-resp-test:absent")
                        && writer.begin(parts: 2) && writer.part("DEL") && writer.part(name)
                }
            }
        }
        try #require(tokens.count == 9, "\(tokens)")
        #expect(Array(tokens[0...3]) == ["+PONG |", "+OK |", ":\(binary.count) |", "nil |"])
        #expect(tokens[4].hasPrefix("-ERR value is not an integer"), "an error reply: \(tokens[4])")
        #expect(tokens[5] == "*2" && tokens[7] == "nil |" && tokens[8] == ":1 |", "\(tokens[5...])")
        #expect(client.bulks == [binary], "the binary value comes back byte for byte")
    }
}
