import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import LoopbackTransport
import Virtio
import VhostUserProtocol

// The front-end side of vhost-user, playing QEMU's part: it connects to any vhost-user-fs back-end
// (dpfs-engine, virtiofsd), shares memfd "guest memory", lays out split virtqueues in it with the
// loopback driver, and kicks the back-end through eventfds. dpfs-bench's vhost-user load generator
// and the hostile front-end tests are built on it.

public struct FrontendError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public final class VhostUserFrontend: @unchecked Sendable {
    public let fd: Int32
    public private(set) var features: UInt64 = 0
    public private(set) var protocolFeatures: UInt64 = 0

    /// Connects to the back-end's socket, retrying for up to `timeoutSeconds` while it starts.
    public init(socketPath: String, timeoutSeconds: Double = 5) throws(FrontendError) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(socketPath.utf8)
        guard path.count < MemoryLayout.size(ofValue: address.sun_path) else { throw FrontendError("socket path too long") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (index, byte) in path.enumerated() { raw[index] = byte } }
        let deadline = monotonicNanoseconds() + UInt64(timeoutSeconds * 1e9)
        while true {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw FrontendError("socket: \(String(cString: strerror(errno)))") }
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if connected == 0 {
                self.fd = fd
                return
            }
            let error = errno
            Glibc.close(fd)
            guard monotonicNanoseconds() < deadline else {
                throw FrontendError("connect(\(socketPath)): \(String(cString: strerror(error)))")
            }
            usleep(20_000)
        }
    }

    deinit { Glibc.close(fd) }

    // MARK: - Raw messages (also used to send malformed ones)

    /// Sends one message exactly as given: `size` may lie about the payload on purpose.
    public func sendRaw(request: UInt32, flags: UInt32 = VhostUserWire.version, payload: [UInt8], fds: [Int32] = [],
                        declaredSize: UInt32? = nil) throws(FrontendError) {
        var bytes = [UInt8]()
        func append32(_ value: UInt32) { for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) } }
        append32(request)
        append32(flags)
        append32(declaredSize ?? UInt32(payload.count))
        bytes += payload
        let sent = bytes.withUnsafeBytes { raw in
            fds.withUnsafeBufferPointer { CDPFS_send_with_fds(fd, raw.baseAddress, raw.count, $0.baseAddress, Int32(fds.count)) }
        }
        guard sent == bytes.count else { throw FrontendError("sendmsg: \(String(cString: strerror(errno)))") }
    }

    /// Reads one reply; nil when the back-end closed the connection.
    public func receiveReply(timeoutMilliseconds: Int32 = 5000) throws(FrontendError) -> (request: UInt32, payload: [UInt8])? {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&descriptor, 1, timeoutMilliseconds) > 0 else { throw FrontendError("no reply within \(timeoutMilliseconds) ms") }
        var header = [UInt8](repeating: 0, count: VhostUserWire.headerBytes)
        guard try readExactly(&header) else { return nil }
        let request = UInt32(header[0]) | UInt32(header[1]) << 8 | UInt32(header[2]) << 16 | UInt32(header[3]) << 24
        let size = Int(UInt32(header[8]) | UInt32(header[9]) << 8 | UInt32(header[10]) << 16 | UInt32(header[11]) << 24)
        guard size <= VhostUserWire.payloadBytesMax else { throw FrontendError("reply payload of \(size) bytes") }
        var payload = [UInt8](repeating: 0, count: size)
        guard try readExactly(&payload) else { return nil }
        return (request, payload)
    }

    func readExactly(_ buffer: inout [UInt8]) throws(FrontendError) -> Bool {
        var filled = 0
        while filled < buffer.count {
            let count = buffer.withUnsafeMutableBytes { raw in Retry.onInterrupt { Glibc.recv(fd, raw.baseAddress! + filled, raw.count - filled, 0) } }
            if count == 0 { return false }
            guard count > 0 else { throw FrontendError("recv: \(String(cString: strerror(errno)))") }
            filled += count
        }
        return true
    }

    /// Sends a request and, when `expectsReply`, returns its reply payload.
    @discardableResult
    public func call(_ request: VhostUserRequest, payload: [UInt8] = [], fds: [Int32] = [], expectsReply: Bool = false,
                     needReply: Bool = false) throws(FrontendError) -> [UInt8]? {
        let flags = VhostUserWire.version | (needReply ? VhostUserWire.flagNeedReply : 0)
        try sendRaw(request: request.rawValue, flags: flags, payload: payload, fds: fds)
        guard expectsReply || needReply else { return nil }
        guard let reply = try receiveReply() else { throw FrontendError("back-end closed the connection after \(request)") }
        guard reply.request == request.rawValue else { throw FrontendError("reply to \(reply.request), expected \(request)") }
        return reply.payload
    }

    public static func u64(_ payload: [UInt8]?) -> UInt64? {
        guard let payload, payload.count == 8 else { return nil }
        return payload.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << UInt64(8 * $1.offset) }
    }

    // MARK: - QEMU's start-up sequence

    /// GET_FEATURES … SET_FEATURES as QEMU does it (virtio-fs-protocol.md §1.4). Returns the queue
    /// count the back-end supports.
    @discardableResult
    public func negotiate(wantedFeatures: UInt64 = VirtioFeatures.offered,
                          wantedProtocolFeatures: UInt64 = VhostUserProtocolFeatures.multiqueue | VhostUserProtocolFeatures.replyAck) throws(FrontendError) -> Int {
        guard let offered = Self.u64(try call(.getFeatures, expectsReply: true)) else { throw FrontendError("bad GET_FEATURES reply") }
        var queues = 2
        if offered & VirtioFeatures.protocolFeatures != 0 {
            guard let offeredProtocol = Self.u64(try call(.getProtocolFeatures, expectsReply: true)) else { throw FrontendError("bad GET_PROTOCOL_FEATURES reply") }
            protocolFeatures = offeredProtocol & wantedProtocolFeatures
            try call(.setProtocolFeatures, payload: VhostUserPayload.u64(protocolFeatures))
            if protocolFeatures & VhostUserProtocolFeatures.multiqueue != 0 {
                guard let count = Self.u64(try call(.getQueueNum, expectsReply: true)) else { throw FrontendError("bad GET_QUEUE_NUM reply") }
                queues = Int(count)
            }
        }
        try call(.setOwner)
        features = offered & wantedFeatures
        try call(.setFeatures, payload: VhostUserPayload.u64(features))
        return queues
    }

    /// Sends SET_MEM_TABLE for one region backed by `memoryFD`.
    public func setMemoryTable(guestPhysicalAddress: UInt64, sizeBytes: UInt64, frontendVirtualAddress: UInt64,
                               memoryFD: Int32) throws(FrontendError) {
        var payload = le32(1) + le32(0)
        payload += VhostUserPayload.u64(guestPhysicalAddress) + VhostUserPayload.u64(sizeBytes)
            + VhostUserPayload.u64(frontendVirtualAddress) + VhostUserPayload.u64(0)
        try call(.setMemTable, payload: payload, fds: [memoryFD])
    }

    /// SET_VRING_NUM/BASE/ADDR/KICK/CALL and ENABLE for one queue laid out by `driver`.
    public func startQueue(_ index: Int, driver: LoopbackDriver, kickFD: Int32, callFD: Int32) throws(FrontendError) {
        let addresses = driver.queueAddresses
        try call(.setVringNum, payload: VhostUserPayload.vringState(index: UInt32(index), number: UInt32(driver.configuration.queueSize)))
        try call(.setVringBase, payload: VhostUserPayload.vringState(index: UInt32(index), number: 0))
        var address = le32(UInt32(index)) + le32(0)
        address += VhostUserPayload.u64(UInt64(UInt(bitPattern: addresses.descriptors)))
        address += VhostUserPayload.u64(UInt64(UInt(bitPattern: addresses.used)))
        address += VhostUserPayload.u64(UInt64(UInt(bitPattern: addresses.avail)))
        address += VhostUserPayload.u64(0)
        try call(.setVringAddr, payload: address)
        try call(.setVringKick, payload: VhostUserPayload.u64(UInt64(index)), fds: [kickFD])
        try call(.setVringCall, payload: VhostUserPayload.u64(UInt64(index)), fds: [callFD])
        if features & VirtioFeatures.protocolFeatures != 0 {
            try call(.setVringEnable, payload: VhostUserPayload.vringState(index: UInt32(index), number: 1))
        }
    }

    /// GET_VRING_BASE: stops the queue; returns the back-end's next avail index.
    public func stopQueue(_ index: Int) throws(FrontendError) -> UInt32 {
        let reply = try call(.getVringBase, payload: VhostUserPayload.vringState(index: UInt32(index), number: 0), expectsReply: true)
        guard let reply, reply.count == 8 else { throw FrontendError("bad GET_VRING_BASE reply") }
        return UInt32(reply[4]) | UInt32(reply[5]) << 8 | UInt32(reply[6]) << 16 | UInt32(reply[7]) << 24
    }

    func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> UInt32(8 * $0)) } }
}

/// Shared "guest memory" for a front-end: one memfd, mapped here, holding every queue the
/// front-end drives and their buffers.
public final class FrontendGuestMemory: @unchecked Sendable {
    public let fd: Int32
    public let base: UnsafeMutableRawPointer
    public let sizeBytes: Int
    public let guestPhysicalBase: UInt64 = 0x4000_0000
    var usedBytes = 0

    public init(sizeBytes: Int) throws(FrontendError) {
        precondition(sizeBytes > 0)
        let size = (sizeBytes + 0x1F_FFFF) & ~0x1F_FFFF
        let fd = memfd_create("dpfs-frontend", UInt32(MFD_CLOEXEC))
        guard fd >= 0 else { throw FrontendError("memfd_create: \(String(cString: strerror(errno)))") }
        guard ftruncate(fd, off_t(size)) == 0 else { throw FrontendError("ftruncate: \(String(cString: strerror(errno)))") }
        let pointer = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard pointer != MAP_FAILED, let pointer else { throw FrontendError("mmap: \(String(cString: strerror(errno)))") }
        self.fd = fd
        base = pointer
        self.sizeBytes = size
    }

    deinit {
        munmap(base, sizeBytes)
        Glibc.close(fd)
    }

    public var frontendVirtualAddress: UInt64 { UInt64(UInt(bitPattern: base)) }

    /// Lays out a queue (driver) in the next free part of the memory.
    public func makeDriver(_ configuration: LoopbackDriverConfiguration, bookkeeping: UnsafeMutableRawPointer) -> LoopbackDriver {
        var configuration = configuration
        precondition(usedBytes + configuration.regionBytes <= sizeBytes, "front-end guest memory too small")
        configuration.guestPhysicalBase = guestPhysicalBase + UInt64(usedBytes)
        let driver = LoopbackDriver(configuration: configuration, region: base + usedBytes, bookkeeping: bookkeeping)
        usedBytes += (configuration.regionBytes + 4095) & ~4095
        return driver
    }
}

/// An eventfd owned by the front-end (kick or call).
public final class EventFD: @unchecked Sendable {
    public let fd: Int32

    public init() throws(FrontendError) {
        let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard fd >= 0 else { throw FrontendError("eventfd: \(String(cString: strerror(errno)))") }
        self.fd = fd
    }

    deinit { Glibc.close(fd) }

    public func signal() {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    /// Reads and resets the counter (0 when nothing was signalled).
    public func drain() -> UInt64 {
        var value: UInt64 = 0
        return Glibc.read(fd, &value, 8) == 8 ? value : 0
    }
}
