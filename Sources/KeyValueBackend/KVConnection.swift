import CDPFS
import DPFSPosix
import Glibc
import RESP

// One connection of the key-value backend to its Redis server, for one poller: a non-blocking
// socket, a command buffer and a reply buffer allocated once, and the FIFO of requests whose
// replies are due (Redis answers a connection's commands in order, so the n-th reply belongs to
// the n-th command sent). Pipelined: a poller step queues every command, one send flushes them,
// and the replies are read as they come. No thread, no allocation per request.

/// Where the server is: `redis://HOST:PORT[/DB]` (a numeric IPv4 address: no name lookup on a
/// poller) or `unix:///PATH`.
public enum KVEndpoint: Equatable, Sendable, CustomStringConvertible {
    case tcp(address: String, port: UInt16)
    case unix(path: String)

    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public let description: String
    }

    public static func parse(_ url: String) throws(ParseError) -> KVEndpoint {
        if url.hasPrefix("unix://") {
            let path = String(url.dropFirst("unix://".count))
            guard path.hasPrefix("/"), path.utf8.count < 108 else {
                throw ParseError(description: "unix socket path must be absolute and shorter than 108 bytes: '\(url)'")
            }
            return .unix(path: path)
        }
        guard url.hasPrefix("redis://") else { throw ParseError(description: "key-value URL must be redis://HOST:PORT or unix:///PATH (got '\(url)')") }
        var rest = Substring(url.dropFirst("redis://".count))
        if let slash = rest.firstIndex(of: "/") {
            guard rest[rest.index(after: slash)...] == "0" || rest[rest.index(after: slash)...].isEmpty else {
                throw ParseError(description: "only database 0 is served (got '\(url)')")
            }
            rest = rest[..<slash]
        }
        let parts = rest.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let port = UInt16(parts[1]), port > 0 else { throw ParseError(description: "key-value URL needs HOST:PORT (got '\(url)')") }
        var address = in_addr()
        guard inet_pton(AF_INET, String(parts[0]), &address) == 1 else {
            throw ParseError(description: "key-value server must be a numeric IPv4 address, no name lookup on a poller (got '\(parts[0])')")
        }
        return .tcp(address: String(parts[0]), port: port)
    }

    public var description: String {
        switch self {
        case .tcp(let address, let port): "redis://\(address):\(port)/0"
        case .unix(let path): "unix://\(path)"
        }
    }
}

public struct KVConnectionError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public final class KVConnection {
    public let endpoint: KVEndpoint
    public private(set) var fd: Int32 = -1
    let sendStorage: UnsafeMutableRawBufferPointer
    var writer: RESPCommandWriter
    /// Bytes of `sendStorage` already sent.
    var sentBytes = 0
    let receiveStorage: UnsafeMutableRawBufferPointer
    var receivedBytes = 0
    var reader: RESPReader
    /// The tags of the commands whose replies are due, oldest first (a ring of `tagsMax`).
    let tags: UnsafeMutablePointer<UInt32>
    public let tagsMax: Int
    var tagHead = 0
    public private(set) var tagCount = 0

    /// - Parameters: buffers in bytes; `tagsMax`: commands in flight at most (the poller's slots).
    public init(endpoint: KVEndpoint, sendBytes: Int, receiveBytes: Int, tagsMax: Int, limits: RESPLimits = RESPLimits()) {
        precondition(sendBytes >= 4096 && receiveBytes >= limits.bulkBytesMax + 4096, "a reply buffer holds the largest bulk string")
        precondition(tagsMax >= 1 && tagsMax <= 1 << 16)
        self.endpoint = endpoint
        sendStorage = .allocate(byteCount: sendBytes, alignment: 64)
        writer = RESPCommandWriter(into: sendStorage)
        receiveStorage = .allocate(byteCount: receiveBytes, alignment: 64)
        reader = RESPReader(limits: limits)
        tags = .allocate(capacity: tagsMax)
        self.tagsMax = tagsMax
    }

    deinit {
        if fd >= 0 { _ = Glibc.close(fd) }
        sendStorage.deallocate()
        receiveStorage.deallocate()
        tags.deallocate()
    }

    public var isConnected: Bool { fd >= 0 }
    /// Commands queued or sent whose replies have not come.
    public var inFlight: Int { tagCount }
}

extension KVConnection {
    /// Starts connecting (non-blocking: a TCP connect may still be in progress; `connectionError`
    /// says how it ended once the socket is writable). A non-blocking connect is not retried on
    /// EINTR: it goes on in the kernel, and a second call would answer EALREADY.
    public func connect() throws(KVConnectionError) {
        precondition(fd < 0, "already connected")
        let family = if case .unix = endpoint { AF_UNIX } else { AF_INET }
        let socketFD = Glibc.socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard socketFD >= 0 else { throw KVConnectionError("socket: errno \(errno)") }
        let result = Self.connect(socketFD, to: endpoint)
        guard result == 0 || errno == EINPROGRESS else {
            let failure = errno
            _ = Glibc.close(socketFD)
            throw KVConnectionError("connect to \(endpoint): \(String(cString: strerror(failure)))")
        }
        fd = socketFD
    }

    static func connect(_ fd: Int32, to endpoint: KVEndpoint) -> Int32 {
        switch endpoint {
        case .unix(let path):
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
            }
            return withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in Glibc.connect(fd, raw, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        case .tcp(let host, let port):
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            _ = inet_pton(AF_INET, host, &address.sin_addr)
            return withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in Glibc.connect(fd, raw, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
    }

    /// How a connect in progress ended: 0 (connected) or the errno.
    public var connectionError: Int32 {
        var failure: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &failure, &length) == 0 else { return errno }
        return failure
    }

    /// Queues one command whose reply is `tag`'s. False: the buffer or the tag ring is full (send
    /// and read first); nothing was queued.
    public func queue(tag: UInt32, _ write: (inout RESPCommandWriter) -> Bool) -> Bool {
        guard tagCount < tagsMax, write(&writer) else { return false }
        tags[(tagHead + tagCount) % tagsMax] = tag
        tagCount += 1
        return true
    }

    /// Sends what is queued, as far as the socket takes it. True when everything went out.
    public func flush() throws(KVConnectionError) -> Bool {
        let end = writer.completeBytes
        while sentBytes < end {
            let sent = Retry.onInterrupt {
                Glibc.send(fd, sendStorage.baseAddress! + sentBytes, end - sentBytes, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOTCONN) { return false }
            guard sent > 0 else { throw KVConnectionError("send to \(endpoint): \(String(cString: strerror(errno)))") }
            sentBytes += sent
        }
        writer.reset()
        sentBytes = 0
        return true
    }

    /// Reads what the server sent and hands each reply token to `handle` with its command's tag,
    /// the reply buffer its ranges point into, and whether it ends the reply. The number of whole
    /// replies. Throws when the connection ended or the server broke the protocol.
    public func receive(_ handle: (UInt32, RESPToken, Bool, UnsafeRawBufferPointer) -> Void) throws(KVConnectionError) -> Int {
        var replies = 0
        while true {
            let room = receiveStorage.count - receivedBytes
            let got = room == 0 ? 0 : Retry.onInterrupt {
                Glibc.recv(fd, receiveStorage.baseAddress! + receivedBytes, room, Int32(MSG_DONTWAIT))
            }
            if got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return replies }
            guard got > 0 || room == 0 else {
                throw KVConnectionError(got == 0 ? "\(endpoint) closed the connection" : "recv: \(String(cString: strerror(errno)))")
            }
            receivedBytes += got
            replies += try parse(handle)
            if room == 0 && got == 0 { return replies }
        }
    }

    /// Hands over every whole token received, then moves what is left to the buffer's start.
    func parse(_ handle: (UInt32, RESPToken, Bool, UnsafeRawBufferPointer) -> Void) throws(KVConnectionError) -> Int {
        let bytes = UnsafeRawBufferPointer(rebasing: receiveStorage[0..<receivedBytes])
        var replies = 0
        parsing: while true {
            switch reader.next(in: bytes) {
            case .needMore: break parsing
            case .malformed(let reason): throw KVConnectionError("\(endpoint) broke the protocol: \(reason)")
            case .token(let token, let complete):
                guard tagCount > 0 else { throw KVConnectionError("\(endpoint) sent a reply nobody asked for") }
                handle(tags[tagHead], token, complete, bytes)
                if complete {
                    tagHead = (tagHead + 1) % tagsMax
                    tagCount -= 1
                    replies += 1
                }
            }
        }
        let consumed = reader.position
        if consumed > 0 {
            (receiveStorage.baseAddress!).copyMemory(from: receiveStorage.baseAddress! + consumed, byteCount: receivedBytes - consumed)
            receivedBytes -= consumed
            reader.shift(by: consumed)
        }
        return replies
    }

    /// Closes the connection; `lost` gets the tag of every command whose reply will not come,
    /// oldest first (what is safe to send again is the caller's decision).
    public func disconnect(_ lost: (UInt32) -> Void) {
        if fd >= 0 { _ = Glibc.close(fd) }
        fd = -1
        while tagCount > 0 {
            lost(tags[tagHead])
            tagHead = (tagHead + 1) % tagsMax
            tagCount -= 1
        }
        writer.reset()
        sentBytes = 0
        receivedBytes = 0
        reader = RESPReader(limits: reader.limits)
    }
}
