import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import Synchronization

// The queue's TCP connections (`nfs_connections`, default 1): each made without blocking (the
// sleeping poller waits for POLLOUT), serviced from the poller's steps, torn down and re-made with
// back-off when it breaks, on its own; calls go round robin over those that are up, and a request
// whose connection broke waits for any of them. The deadline of every waiting request is checked
// every 100 ms. With one connection the poller sleeps on its socket; with several, on an epoll
// set of them (one descriptor, so the poller's event sources stay what they are).

/// One connection of a queue and what belongs to it alone.
final class NFSConnection {
    let index: Int
    var rpc: OpaquePointer? = nil
    var state: NFSConnectionState = .down
    var reconnectAtNanoseconds: UInt64 = 0
    var backoffNanoseconds: UInt64
    /// The AUTH_SYS ids the context carries now.
    var currentUID: UInt32 = 0
    var currentGID: UInt32 = 0
    var inFlight = 0
    /// A callback asked for the connection to go (it cannot be destroyed from inside libnfs).
    var teardownWanted = false
    var lastIdleServiceNanoseconds: UInt64 = 0
    var everConnected = false
    /// The socket and events registered in the queue's epoll set (-1 = none).
    var registeredFD: Int32 = -1
    var registeredEvents: UInt32 = 0

    init(index: Int, backoffNanoseconds: UInt64) {
        self.index = index
        self.backoffNanoseconds = backoffNanoseconds
    }
}

extension NFSQueue {
    static let deadlineScanNanoseconds: UInt64 = 100_000_000
    /// With nothing in flight a socket is read at most this often while the poller spins (it only
    /// carries a close from the server then, and a sleeping poller sees that by itself).
    static let idleServiceNanoseconds: UInt64 = 1_000_000

    static let connected: rpc_cb = { _, status, _, tag in
        let tag = tag!.assumingMemoryBound(to: NFSCallTag.self).pointee
        let queue = Unmanaged<NFSQueue>.fromOpaque(tag.queue).takeUnretainedValue()
        queue.connectFinished(queue.connections[Int(tag.slot) - queue.slotCount], success: status == RPC_STATUS_SUCCESS)
    }

    func connect(_ link: NFSConnection, now: UInt64) {
        precondition(link.rpc == nil && link.state == .down)
        guard let context = rpc_init_context() else {
            link.reconnectAtNanoseconds = now + link.backoffNanoseconds
            return
        }
        // Our own reconnect: libnfs's would resend non-idempotent calls and never give up.
        rpc_set_autoreconnect(context, 0)
        rpc_set_uid(context, Int32(bitPattern: link.currentUID))
        rpc_set_gid(context, Int32(bitPattern: link.currentGID))
        link.rpc = context
        link.state = .connecting
        let version4 = v4 != nil
        let started = rpc_connect_port_async(context, device.hostName, Int32(device.configuration.url.nfsPort),
                                             Int32(version4 ? NFS4_PROGRAM : NFS_PROGRAM), Int32(version4 ? NFS_V4 : NFS_V3),
                                             Self.connected, connectTag(link.index))
        if started != 0 { dropConnection(link, now: now) }
    }

    func connectFinished(_ link: NFSConnection, success: Bool) {
        // NFSv4.1: a new session with each connection (a blocking CREATE_SESSION on the device's
        // control connection, taken only when a connection comes up).
        guard success, establishSession4() else {
            link.teardownWanted = true
            return
        }
        link.state = .up
        upCount += 1
        if link.everConnected {
            reconnects += 1
            device.reconnectCount.add(1, ordering: .relaxed)
        }
        link.everConnected = true
        link.backoffNanoseconds = UInt64(device.configuration.reconnectBackoffMillisecondsMin) * 1_000_000
        // Everything that waited for a connection goes now (the server orders nothing across requests).
        guard waiting > 0 else { return }
        for slot in 0..<slotCount where records[slot].state == .waiting && (v4 == nil || v4!.retryAtNanoseconds[slot] == 0) {
            records[slot].state = .free
            waiting -= 1
            issue(slot)
        }
    }

    /// Closes a connection (every call in flight on it gets its callback now) and schedules the next.
    func dropConnection(_ link: NFSConnection, now: UInt64) {
        link.teardownWanted = false
        guard let context = link.rpc else { return }
        // Down first: the callbacks the disconnect runs must park their slots, not send again here.
        let wasUp = link.state == .up
        link.state = .down
        if wasUp {
            upCount -= 1
            rpc_disconnect(context, "dpfs: connection dropped")
        }
        unregister(link)
        // Calls still queued inside libnfs (never written) are failed by its destroy.
        rpc_destroy_context(context)
        link.rpc = nil
        link.reconnectAtNanoseconds = now + link.backoffNanoseconds
        let backoffMax = UInt64(device.configuration.reconnectBackoffMillisecondsMax) * 1_000_000
        link.backoffNanoseconds = min(link.backoffNanoseconds * 2, backoffMax)
        precondition(link.inFlight == 0, "a call outlived its connection")
    }

    /// The next connection that is up, round robin; nil when none is.
    func pickConnection() -> NFSConnection? {
        guard upCount > 0 else { return nil }
        let count = connections.count
        for _ in 0..<count {
            let link = connections[nextConnection]
            nextConnection = nextConnection + 1 == count ? 0 : nextConnection + 1
            // (Not one about to be dropped: a call sent there now would only be lost with it.)
            if link.state == .up && !link.teardownWanted { return link }
        }
        return nil
    }

    /// One poller step's worth of connection work; returns the requests completed.
    ///
    /// Each rpc_service call costs about 7 000 instructions before it reads anything (libnfs 4.0
    /// walks all 1 024 buckets of its pending-call table for timeouts on every call). Asking the
    /// sockets with one poll(2) first and servicing only the readable ones was measured (A/B,
    /// tools/bench-nfs.sh, 2026-12-03) and lost: the extra syscall per answer added 5–20 µs at QD1
    /// on this VM, more than the walk it saved. So a socket with calls in flight is serviced
    /// directly.
    func service() -> Int {
        completedSinceLastPoll = 0
        var now: UInt64 = 0
        for link in connections {
            switch link.state {
            case .up:
                if link.inFlight > 0 {
                    if rpc_service(link.rpc!, Int32(POLLIN)) < 0 { link.teardownWanted = true }
                } else {
                    if now == 0 { now = monotonicNanoseconds() }
                    if now &- link.lastIdleServiceNanoseconds >= Self.idleServiceNanoseconds {
                        link.lastIdleServiceNanoseconds = now
                        if rpc_service(link.rpc!, Int32(POLLIN)) < 0 { link.teardownWanted = true }
                    }
                }
            case .connecting:
                // The socket connects (POLLOUT), then libnfs pings the program and reads its answer.
                let rpc = link.rpc!
                var entry = pollfd(fd: rpc_get_fd(rpc), events: Int16(truncatingIfNeeded: rpc_which_events(rpc)), revents: 0)
                if Glibc.poll(&entry, 1, 0) > 0 {
                    if rpc_service(rpc, Int32(entry.revents)) < 0 { link.teardownWanted = true }
                }
            case .down:
                if now == 0 { now = monotonicNanoseconds() }
                if now >= link.reconnectAtNanoseconds { connect(link, now: now) }
            }
            if link.teardownWanted { dropConnection(link, now: now == 0 ? monotonicNanoseconds() : now) }
        }
        if let session = v4 {
            // NFSv4.1 renews from idle queues only (any SEQUENCE renews); 4.0 busy or idle.
            if pendingCount == 0 || session.minorVersion == 0 {
                if now == 0 { now = monotonicNanoseconds() }
                renewLease4(session, now: now)
            }
            if pendingCount > 0 && session.delayedCount > 0 {
                if now == 0 { now = monotonicNanoseconds() }
                retryDelayed4(session, now: now)
            }
        }
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
        for link in connections {
            guard link.state == .up, let context = link.rpc, rpc_which_events(context) & Int32(POLLOUT) != 0 else { continue }
            if rpc_service(context, Int32(POLLOUT)) < 0 {
                dropConnection(link, now: monotonicNanoseconds())
            }
        }
    }

    /// Fails what waited past its deadline; a call in flight past it takes its connection down
    /// (its callback then fails it, and the rest wait for the next connection).
    func expire(now: UInt64) {
        var stalled: UInt64 = 0
        for slot in 0..<slotCount where records[slot].state != .free && records[slot].deadline <= now {
            if records[slot].state == .waiting {
                if let session = v4, session.retryAtNanoseconds[slot] != 0 {
                    session.retryAtNanoseconds[slot] = 0
                    session.delayedCount -= 1
                }
                records[slot].state = .free
                waiting -= 1
                timeouts += 1
                device.timeoutCount.add(1, ordering: .relaxed)
                finish(slot, .io)
            } else {
                stalled |= 1 << UInt64(records[slot].connection)
            }
        }
        guard stalled != 0 else { return }
        for link in connections where stalled & (1 << UInt64(link.index)) != 0 { dropConnection(link, now: now) }
    }

    /// AUTH_SYS of the caller. libnfs builds a new authenticator when the ids change (its own
    /// allocation, counted separately by the allocation gate); a run of one user's calls costs none.
    func become(_ link: NFSConnection, uid: UInt32, gid: UInt32) {
        guard let context = link.rpc else { return }
        if uid != link.currentUID {
            rpc_set_uid(context, Int32(bitPattern: uid))
            link.currentUID = uid
        }
        if gid != link.currentGID {
            rpc_set_gid(context, Int32(bitPattern: gid))
            link.currentGID = gid
        }
    }

    // MARK: - The epoll set (several connections)

    /// The events the poller should sleep on for one connection (poll(2) bits).
    static func wantedEvents(_ link: NFSConnection) -> UInt32 {
        guard let rpc = link.rpc, link.state != .down else { return 0 }
        if link.state == .connecting { return UInt32(truncatingIfNeeded: rpc_which_events(rpc)) }
        return UInt32(POLLIN) | (rpc_which_events(rpc) & Int32(POLLOUT) != 0 ? UInt32(POLLOUT) : 0)
    }

    /// Brings the epoll set in line with what each connection waits for. Called when the poller
    /// is about to sleep: a change (a new socket, output that did not fit) costs one epoll_ctl.
    func refreshEpollSet() {
        for link in connections {
            let fd = link.rpc.map { rpc_get_fd($0) } ?? -1
            let wanted = Self.wantedEvents(link)
            if link.registeredFD != -1 && (link.registeredFD != fd || wanted == 0) { unregister(link) }
            guard fd >= 0, wanted != 0 else { continue }
            var event = epoll_event()
            // poll(2) and epoll share the values of IN and OUT.
            event.events = wanted
            event.data.u64 = UInt64(link.index)
            if link.registeredFD == -1 {
                if epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) == 0 {
                    link.registeredFD = fd
                    link.registeredEvents = wanted
                }
            } else if link.registeredEvents != wanted {
                if epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, &event) == 0 { link.registeredEvents = wanted }
            }
        }
    }

    func unregister(_ link: NFSConnection) {
        guard link.registeredFD != -1 else { return }
        _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, link.registeredFD, nil)
        link.registeredFD = -1
        link.registeredEvents = 0
    }
}
