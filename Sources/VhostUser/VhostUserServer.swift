import CDPFS
import DPFSCore
import DPFSPosix
import Glibc
import Logging
import Synchronization

/// Listens on a Unix socket for one front-end at a time, feeds its messages to a device, and
/// survives the front-end going away: the device is reset and the next connection starts fresh.
public final class VhostUserServer<B: Backend>: @unchecked Sendable {
    public let socketPath: String
    public let device: VhostUserDevice<B>
    let logger: Logger
    let listener: Int32
    public private(set) var connectionsServed = 0

    /// Binds and listens now, so a front-end started right after can connect.
    public init(socketPath: String, device: VhostUserDevice<B>, logger: Logger) throws(SystemCallError) {
        precondition(!socketPath.isEmpty)
        self.socketPath = socketPath
        self.device = device
        self.logger = logger
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard pathBytes.count < capacity else { throw SystemCallError(call: "socket path longer than \(capacity - 1) bytes", errno: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in pathBytes.enumerated() { raw[index] = byte }
        }
        unlink(socketPath)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemCallError(call: "socket", errno: errno) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let error = errno
            Glibc.close(fd)
            throw SystemCallError(call: "bind(\(socketPath))", errno: error)
        }
        guard listen(fd, 1) == 0 else {
            let error = errno
            Glibc.close(fd)
            throw SystemCallError(call: "listen(\(socketPath))", errno: error)
        }
        listener = fd
    }

    deinit {
        Glibc.close(listener)
        unlink(socketPath)
    }

    /// Serves front-ends until `stop` is set; checks it at least every 200 ms.
    public func run(until stop: borrowing Atomic<Bool>) {
        while !stop.load(ordering: .acquiring) {
            guard Self.waitReadable(listener, milliseconds: 200) else { continue }
            let fd = accept4(listener, __SOCKADDR_ARG(__sockaddr__: nil), nil, Int32(SOCK_CLOEXEC.rawValue))
            if fd < 0 { continue }
            connectionsServed += 1
            logger.info("front-end connected to \(socketPath) (connection \(connectionsServed))")
            serve(VhostUserConnection(fd: fd), until: stop)
            device.reset()
            // Cumulative per-queue traffic: shows which queues carried requests (multi-queue guests).
            let perQueue = (0..<device.configuration.queueCount).map { "queue \($0): \(device.metrics(queue: $0).requestsFetched)" }
            logger.info("requests so far: \(perQueue.joined(separator: ", "))")
            logger.info("front-end of \(socketPath) gone: device reset, waiting for the next one")
        }
    }

    func serve(_ connection: VhostUserConnection, until stop: borrowing Atomic<Bool>) {
        while !stop.load(ordering: .acquiring) {
            device.checkFailures()
            guard Self.waitReadable(connection.fd, milliseconds: 200) else { continue }
            do throws(VhostUserError) {
                guard let message = try connection.receive() else { return }
                if let reply = device.handle(message) {
                    try connection.reply(to: message.requestRaw, payload: reply)
                }
            } catch {
                logger.error("closing the connection on \(socketPath): \(error.message)")
                return
            }
        }
    }

    static func waitReadable(_ fd: Int32, milliseconds: Int32) -> Bool {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, milliseconds) > 0
    }
}
