import DPFSPosix
import Glibc
import RESP

// The control plane's way to talk to the server (start-up, tools): a throw-away connection pumped
// with poll(2) until every reply is in or the time is up. Allocates freely; never on a poller.

/// One token of a reply, as the control plane reads it.
public enum KVValue: Equatable, Sendable {
    case error(String)
    case status(String)
    case integer(Int64)
    case bulk([UInt8])
    case null
    case array(Int)

    public var text: String? {
        if case .bulk(let bytes) = self { return String(decoding: bytes, as: UTF8.self) }
        return nil
    }
}

public enum KVBlockingExchange {
    /// Sends `commands` (each an array of arguments) and answers each one's tokens.
    public static func run(_ endpoint: KVEndpoint, timeoutMilliseconds: Int, commands: [[String]]) throws(KVStartupError) -> [[KVValue]] {
        let bytes = commands.reduce(4096) { $0 + $1.reduce(64) { $0 + $1.utf8.count + 32 } }
        let connection = KVConnection(endpoint: endpoint, sendBytes: bytes, receiveBytes: (1 << 20) + 8192, tagsMax: max(1, commands.count))
        let deadline = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        do throws(KVConnectionError) {
            try connection.connect()
            try wait(connection.fd, events: Int16(POLLOUT), deadline: deadline, endpoint: endpoint)
            let failure = connection.connectionError
            guard failure == 0 else { throw KVConnectionError("connect to \(endpoint): \(String(cString: strerror(failure)))") }
            for (index, command) in commands.enumerated() {
                let queued = connection.queue(tag: UInt32(index)) { writer in
                    guard writer.begin(parts: command.count) else { return false }
                    for part in command {
                        let fits = part.utf8CString.withUnsafeBytes { writer.part(UnsafeRawBufferPointer(rebasing: $0.dropLast())) }
                        guard fits else { return false }
                    }
                    return true
                }
                precondition(queued, "the command buffer is sized for every command")
            }
            while try !connection.flush() { try wait(connection.fd, events: Int16(POLLOUT), deadline: deadline, endpoint: endpoint) }
            var replies = [[KVValue]](repeating: [], count: commands.count)
            var done = 0
            while done < commands.count {
                try wait(connection.fd, events: Int16(POLLIN), deadline: deadline, endpoint: endpoint)
                done += try connection.receive { tag, token, _, buffer in replies[Int(tag)].append(value(token, buffer)) }
            }
            connection.disconnect { _ in }
            return replies
        } catch {
            connection.disconnect { _ in }
            throw KVStartupError(error.description)
        }
    }

    static func value(_ token: RESPToken, _ buffer: UnsafeRawBufferPointer) -> KVValue {
        switch token {
        case .simpleString(let range): .status(String(decoding: buffer[range], as: UTF8.self))
        case .error(let range): .error(String(decoding: buffer[range], as: UTF8.self))
        case .integer(let value): .integer(value)
        case .bulkString(let range): .bulk(Array(buffer[range]))
        case .null: .null
        case .array(let count): .array(count)
        }
    }

    static func wait(_ fd: Int32, events: Int16, deadline: UInt64, endpoint: KVEndpoint) throws(KVConnectionError) {
        let now = monotonicNanoseconds()
        guard now < deadline else { throw KVConnectionError("\(endpoint) did not answer in time") }
        var entry = pollfd(fd: fd, events: events, revents: 0)
        let left = Int32(min(UInt64(Int32.max), (deadline - now) / 1_000_000 + 1))
        let ready = Retry.onInterrupt { Glibc.poll(&entry, 1, left) }
        guard ready >= 0 else { throw KVConnectionError("poll: \(String(cString: strerror(errno)))") }
    }
}
