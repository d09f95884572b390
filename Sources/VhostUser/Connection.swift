import CDPFS
import DPFSPosix
import Glibc
import VhostUserProtocol

/// One front-end connection: reads framed messages with their descriptors and writes replies.
/// Control plane only (it allocates), never touched by the pollers.
public final class VhostUserConnection {
    public let fd: Int32
    private var closed = false

    public init(fd: Int32) {
        precondition(fd >= 0)
        self.fd = fd
    }

    deinit { close() }

    public func close() {
        guard !closed else { return }
        closed = true
        _ = Glibc.close(fd)
    }

    /// The next message, or nil when the front-end closed the connection. Throws a fatal error for a
    /// stream that cannot be trusted any more (bad version, oversized payload, short read).
    public func receive() throws(VhostUserError) -> VhostUserMessage? {
        var header = [UInt8](repeating: 0, count: VhostUserWire.headerBytes)
        var fds = [Int32](repeating: -1, count: VhostUserWire.fdsMax)
        var fdCount = Int32(VhostUserWire.fdsMax)
        var truncated: Int32 = 0
        let received = header.withUnsafeMutableBytes { raw in
            fds.withUnsafeMutableBufferPointer { fdBuffer in
                CDPFS_recv_with_fds(fd, raw.baseAddress, raw.count, fdBuffer.baseAddress, &fdCount, &truncated)
            }
        }
        let attached = Array(fds.prefix(Int(fdCount)))
        if received == 0 { closeAll(attached); return nil }
        guard received == VhostUserWire.headerBytes else {
            closeAll(attached)
            if received < 0 { throw VhostUserError("recvmsg failed: \(String(cString: strerror(errno)))", fatal: true) }
            throw VhostUserError("short vhost-user header (\(received) bytes)", fatal: true)
        }
        if truncated != 0 {
            closeAll(attached)
            throw VhostUserError("more than \(VhostUserWire.fdsMax) descriptors attached to one message", fatal: true)
        }
        let request = UInt32(header[0]) | UInt32(header[1]) << 8 | UInt32(header[2]) << 16 | UInt32(header[3]) << 24
        let flags = UInt32(header[4]) | UInt32(header[5]) << 8 | UInt32(header[6]) << 16 | UInt32(header[7]) << 24
        let size = Int(UInt32(header[8]) | UInt32(header[9]) << 8 | UInt32(header[10]) << 16 | UInt32(header[11]) << 24)
        guard flags & VhostUserWire.flagVersionMask == VhostUserWire.version else {
            closeAll(attached)
            throw VhostUserError("unsupported vhost-user version \(flags & VhostUserWire.flagVersionMask)", fatal: true)
        }
        guard size <= VhostUserWire.payloadBytesMax else {
            closeAll(attached)
            throw VhostUserError("payload of \(size) bytes exceeds \(VhostUserWire.payloadBytesMax)", fatal: true)
        }
        var payload = [UInt8](repeating: 0, count: size)
        var filled = 0
        while filled < size {
            let count = payload.withUnsafeMutableBytes { raw in
                Retry.onInterrupt { Glibc.recv(fd, raw.baseAddress! + filled, size - filled, 0) }
            }
            guard count > 0 else {
                closeAll(attached)
                throw VhostUserError("connection closed inside a \(size)-byte payload", fatal: true)
            }
            filled += count
        }
        return VhostUserMessage(requestRaw: request, flags: flags, payload: payload, fds: attached)
    }

    /// Sends a reply to `request` with `payload`.
    public func reply(to request: UInt32, payload: [UInt8]) throws(VhostUserError) {
        var bytes = [UInt8]()
        bytes.reserveCapacity(VhostUserWire.headerBytes + payload.count)
        func append32(_ value: UInt32) { for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) } }
        append32(request)
        append32(VhostUserWire.version | VhostUserWire.flagReply)
        append32(UInt32(payload.count))
        bytes += payload
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { raw in
                Retry.onInterrupt { Glibc.send(fd, raw.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            }
            guard count > 0 else { throw VhostUserError("send failed: \(String(cString: strerror(errno)))", fatal: true) }
            sent += count
        }
    }

    private func closeAll(_ fds: [Int32]) {
        for descriptor in fds { _ = Glibc.close(descriptor) }
    }
}
