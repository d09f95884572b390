import CDPFS
import Glibc
import Synchronization

// A very small HTTP/1.0 server for one path, `/metrics`: the control plane's window for Prometheus.
// One connection at a time, a bounded request, a deadline on every read and write, so a client that
// stalls or floods costs at most that deadline and never a thread per connection. Nothing on the
// data path: the body is built by the caller's `render` on this thread.

/// An IPv4 address and port, `127.0.0.1:9464`.
public struct MetricsAddress: Equatable, Sendable, CustomStringConvertible {
    public let host: String
    public let port: UInt16

    /// Parses `HOST:PORT` with a dotted IPv4 host. Port 0 asks the kernel for a free one.
    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return nil }
        let host = String(text[..<colon])
        var address = in_addr()
        guard inet_pton(AF_INET, host, &address) == 1 else { return nil }
        self.host = host
        self.port = port
    }

    public var description: String { "\(host):\(port)" }
}

public final class MetricsHTTPServer: @unchecked Sendable {
    public static let requestBytesMax = 4096
    public static let deadlineMilliseconds: Int32 = 2000

    let listener: Int32
    /// The port bound (the one asked for, or the kernel's choice for port 0).
    public let port: UInt16
    /// Scrapes served with 200, for the stop report.
    public private(set) var scrapesServed = 0

    /// Binds and listens now, so a configuration error is a start-up error.
    public init(address: MetricsAddress) throws(SystemCallError) {
        let fd = try Retry.checked("socket") { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var socketAddress = sockaddr_in()
        socketAddress.sin_family = sa_family_t(AF_INET)
        socketAddress.sin_port = address.port.bigEndian
        _ = inet_pton(AF_INET, address.host, &socketAddress.sin_addr)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0, listen(fd, 8) == 0 else {
            let error = SystemCallError(call: "bind/listen \(address)", errno: errno)
            close(fd)
            throw error
        }
        _ = withUnsafeMutablePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listener = fd
        port = UInt16(bigEndian: socketAddress.sin_port)
    }

    deinit { close(listener) }

    /// Answers scrapes until `stop` is set (looked at every 200 ms). `render` returns the body.
    public func run(until stop: borrowing Atomic<Bool>, render: () -> String) {
        while !stop.load(ordering: .acquiring) {
            var descriptor = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 200) > 0 else { continue }
            let client = accept4(listener, __SOCKADDR_ARG(__sockaddr__: nil), nil, Int32(SOCK_CLOEXEC.rawValue))
            if client < 0 { continue }
            serve(client, render: render)
            close(client)
        }
    }

    func serve(_ client: Int32, render: () -> String) {
        guard let requestLine = Self.readRequestHead(client) else {
            Self.send(client, status: "400 Bad Request", type: "text/plain", body: "bad request\n")
            return
        }
        let parts = requestLine.split(separator: " ")
        guard parts.count >= 2, parts[0] == "GET" || parts[0] == "HEAD" else {
            Self.send(client, status: "405 Method Not Allowed", type: "text/plain", body: "only GET\n")
            return
        }
        let path = parts[1].split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        guard path == "/metrics" else {
            Self.send(client, status: "404 Not Found", type: "text/plain", body: "only /metrics is served here\n")
            return
        }
        let body = render()
        scrapesServed += 1
        Self.send(client, status: "200 OK", type: "text/plain; version=0.0.4; charset=utf-8", body: parts[0] == "HEAD" ? "" : body,
                  contentLength: body.utf8.count)
    }

    /// Reads until the blank line ending the head (at most `requestBytesMax`, within the deadline);
    /// returns the request line.
    static func readRequestHead(_ client: Int32) -> String? {
        var buffer = [UInt8](repeating: 0, count: requestBytesMax)
        var filled = 0
        while filled < requestBytesMax {
            var descriptor = pollfd(fd: client, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, deadlineMilliseconds) > 0 else { return nil }
            let count = buffer.withUnsafeMutableBytes { raw in Retry.onInterrupt { read(client, raw.baseAddress! + filled, requestBytesMax - filled) } }
            guard count > 0 else { return nil }
            filled += count
            let head = buffer[0..<filled]
            if let end = head.firstRange(of: [13, 10, 13, 10]) ?? head.firstRange(of: [10, 10]) {
                let lineEnd = head[..<end.lowerBound].firstIndex(of: 13) ?? head[..<end.lowerBound].firstIndex(of: 10) ?? end.lowerBound
                return String(decoding: head[..<lineEnd], as: UTF8.self)
            }
        }
        return nil
    }

    static func send(_ client: Int32, status: String, type: String, body: String, contentLength: Int? = nil) {
        let head = "HTTP/1.0 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(contentLength ?? body.utf8.count)\r\nConnection: close\r\n\r\n"
        var bytes = Array(head.utf8)
        bytes.append(contentsOf: body.utf8)
        var sent = 0
        while sent < bytes.count {
            var descriptor = pollfd(fd: client, events: Int16(POLLOUT), revents: 0)
            guard poll(&descriptor, 1, deadlineMilliseconds) > 0 else { return }
            let count = bytes.withUnsafeBytes { raw in Retry.onInterrupt { Glibc.send(client, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL)) } }
            guard count > 0 else { return }
            sent += count
        }
    }
}
