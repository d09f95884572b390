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
    let socket: ListeningSocket
    let listener: Int32
    public var connectionsServed: Int { device.controlCounts.connections.load(ordering: .relaxed) }

    /// Binds and listens now, so a front-end started right after can connect. The socket admits
    /// this process's user and `access`'s group only (UnixSocketListener: the guest's memory and
    /// every FUSE header's uid come from whoever connects).
    public init(socketPath: String, access: SocketAccess = SocketAccess(), device: VhostUserDevice<B>,
                logger: Logger) throws(SocketPathError) {
        precondition(!socketPath.isEmpty)
        self.socketPath = socketPath
        self.device = device
        self.logger = logger
        // One front-end at a time; a second waits in the backlog until the first is gone.
        socket = try UnixSocketListener.listen(path: socketPath, access: access, backlog: 1)
        listener = socket.fd
    }

    /// Serves on a socket the launcher bound and listens on (`name` only labels it in reports).
    public init(adopting descriptor: Int32, name: String, device: VhostUserDevice<B>, logger: Logger) throws(SocketPathError) {
        socketPath = name
        self.device = device
        self.logger = logger
        socket = try UnixSocketListener.adopt(descriptor: descriptor)
        listener = socket.fd
    }

    /// Whether `closeListener` ran (only the thread that stopped `run` calls it).
    var listenerClosed = false

    deinit {
        closeListener()
    }

    /// Closes the listening socket and removes its file, so a device started next on the same
    /// path (a reload) can bind it. Call after `run` returned; closing twice does nothing.
    public func closeListener() {
        guard !listenerClosed else { return }
        listenerClosed = true
        socket.close()
    }

    /// Serves front-ends until `stop` is set; checks it at least every 50 ms (a reload waits for it).
    public func run(until stop: borrowing Atomic<Bool>) {
        while !stop.load(ordering: .acquiring) {
            guard Self.waitReadable(listener, milliseconds: 50) else { continue }
            let fd = accept4(listener, __SOCKADDR_ARG(__sockaddr__: nil), nil, Int32(SOCK_CLOEXEC.rawValue))
            if fd < 0 { continue }
            device.controlCounts.connections.add(1, ordering: .relaxed)
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
            guard Self.waitReadable(connection.fd, milliseconds: 50) else { continue }
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
