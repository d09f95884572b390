import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc

// The queue's one TCP connection: made without blocking (the sleeping poller waits for POLLOUT),
// serviced from the poller's steps, torn down and re-made with back-off when it breaks, and the
// deadline of every waiting request checked every 100 ms.

extension NFSQueue {
    static let deadlineScanNanoseconds: UInt64 = 100_000_000
    /// With nothing in flight the socket is read at most this often while the poller spins (it
    /// only carries a close from the server then, and a sleeping poller sees that by itself).
    static let idleServiceNanoseconds: UInt64 = 1_000_000

    static let connected: rpc_cb = { _, status, _, tag in
        let tag = tag!.assumingMemoryBound(to: NFSCallTag.self).pointee
        let queue = Unmanaged<NFSQueue>.fromOpaque(tag.queue).takeUnretainedValue()
        queue.connectFinished(success: status == RPC_STATUS_SUCCESS)
    }

    func connect(now: UInt64) {
        precondition(rpc == nil && connection == .down)
        guard let context = rpc_init_context() else {
            reconnectAtNanoseconds = now + backoffNanoseconds
            return
        }
        // Our own reconnect: libnfs's would resend non-idempotent calls and never give up.
        rpc_set_autoreconnect(context, 0)
        rpc_set_uid(context, Int32(bitPattern: currentUID))
        rpc_set_gid(context, Int32(bitPattern: currentGID))
        rpc = context
        connection = .connecting
        let started = rpc_connect_port_async(context, device.hostName, Int32(device.configuration.url.nfsPort),
                                             Int32(NFS_PROGRAM), Int32(NFS_V3), Self.connected, connectTag)
        if started != 0 { dropConnection(now: now) }
    }

    func connectFinished(success: Bool) {
        guard success else {
            teardownWanted = true
            return
        }
        connection = .up
        if reconnectAtNanoseconds != 0 { reconnects += 1 }
        backoffNanoseconds = UInt64(device.configuration.reconnectBackoffMillisecondsMin) * 1_000_000
        // Everything that waited for the connection goes now, oldest stage first is not needed:
        // the server orders nothing across requests.
        guard waiting > 0 else { return }
        for slot in 0..<slotCount where states[slot] == .waiting {
            states[slot] = .free
            waiting -= 1
            issue(slot)
        }
    }

    /// Closes the connection (every call in flight gets its callback now) and schedules the next.
    func dropConnection(now: UInt64) {
        teardownWanted = false
        guard let context = rpc else { return }
        // Down first: the callbacks the disconnect runs must park their slots, not send again.
        let wasUp = connection == .up
        connection = .down
        if wasUp { rpc_disconnect(context, "dpfs: connection dropped") }
        // Calls still queued inside libnfs (never written) are failed by its destroy.
        rpc_destroy_context(context)
        rpc = nil
        connection = .down
        reconnectAtNanoseconds = now + backoffNanoseconds
        let backoffMax = UInt64(device.configuration.reconnectBackoffMillisecondsMax) * 1_000_000
        backoffNanoseconds = min(backoffNanoseconds * 2, backoffMax)
        precondition(inFlight == 0, "a call outlived its connection")
    }

    /// One poller step's worth of connection work; returns the requests completed.
    func service() -> Int {
        completedSinceLastPoll = 0
        let now: UInt64
        switch connection {
        case .up:
            if inFlight > 0 {
                if rpc_service(rpc!, Int32(POLLIN)) < 0 { teardownWanted = true }
                now = pendingCount > 0 ? monotonicNanoseconds() : 0
            } else {
                now = monotonicNanoseconds()
                if now &- lastIdleServiceNanoseconds >= Self.idleServiceNanoseconds {
                    lastIdleServiceNanoseconds = now
                    if rpc_service(rpc!, Int32(POLLIN)) < 0 { teardownWanted = true }
                }
            }
        case .connecting:
            now = monotonicNanoseconds()
            // The socket connects (POLLOUT), then libnfs pings the program and reads its answer.
            var entry = pollfd(fd: rpc_get_fd(rpc!), events: Int16(truncatingIfNeeded: rpc_which_events(rpc!)), revents: 0)
            if Glibc.poll(&entry, 1, 0) > 0 {
                if rpc_service(rpc!, Int32(entry.revents)) < 0 { teardownWanted = true }
            }
        case .down:
            now = monotonicNanoseconds()
            if now >= reconnectAtNanoseconds { connect(now: now) }
        }
        if teardownWanted { dropConnection(now: now == 0 ? monotonicNanoseconds() : now) }
        if pendingCount > 0 {
            let clock = now == 0 ? monotonicNanoseconds() : now
            if clock >= nextDeadlineScanNanoseconds {
                nextDeadlineScanNanoseconds = clock + Self.deadlineScanNanoseconds
                expire(now: clock)
            }
        }
        return completedSinceLastPoll
    }

    /// Writes what this step queued (libnfs sends only when asked to service POLLOUT).
    func flushOutput() {
        guard connection == .up, let context = rpc, rpc_which_events(context) & Int32(POLLOUT) != 0 else { return }
        if rpc_service(context, Int32(POLLOUT)) < 0 {
            dropConnection(now: monotonicNanoseconds())
        }
    }

    /// Fails what waited past its deadline; a call in flight past it takes the connection down
    /// (its callback then fails it, and the rest wait for the next connection).
    func expire(now: UInt64) {
        var stalled = false
        for slot in 0..<slotCount where states[slot] != .free && deadlines[slot] <= now {
            if states[slot] == .waiting {
                states[slot] = .free
                waiting -= 1
                timeouts += 1
                finish(slot, .io)
            } else {
                stalled = true
            }
        }
        if stalled { dropConnection(now: now) }
    }

    /// AUTH_SYS of the caller. libnfs builds a new authenticator when the ids change (its own
    /// allocation, counted separately by the allocation gate); a run of one user's calls costs none.
    func become(uid: UInt32, gid: UInt32) {
        guard let context = rpc else { return }
        if uid != currentUID {
            rpc_set_uid(context, Int32(bitPattern: uid))
            currentUID = uid
        }
        if gid != currentGID {
            rpc_set_gid(context, Int32(bitPattern: gid))
            currentGID = gid
        }
    }
}
