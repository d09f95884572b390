import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import KeyValueStore
import RESP

// The queue's connection: made without blocking, checked when the socket turns writable, given the
// store's functions first (FUNCTION LOAD REPLACE is cheap when they are loaded already, and a
// server restarted from an old file gets the current ones), torn down when the server hangs up,
// breaks the protocol or stalls past the timeout, and made again with exponential back-off.

extension KVQueue {
    func connect(now: UInt64) {
        do throws(KVConnectionError) {
            try connection.connect()
            state = .connecting
        } catch {
            scheduleReconnect(now: now)
        }
    }

    func scheduleReconnect(now: UInt64) {
        state = .down
        reconnectAt = now &+ backoffNanoseconds
        backoffNanoseconds = min(backoffNanoseconds * 2, Self.backoffMax)
    }

    /// The connect in progress ended: up (the functions are loaded first, then what waited goes
    /// out), or down until the next attempt.
    func connectingProgress(now: UInt64) {
        var entry = pollfd(fd: connection.fd, events: Int16(POLLOUT), revents: 0)
        let ready = Retry.onInterrupt { Glibc.poll(&entry, 1, 0) }
        guard ready > 0 else { return }
        guard connection.connectionError == 0 else {
            connection.disconnect { _ in preconditionFailure("nothing is queued before a connection is up") }
            return scheduleReconnect(now: now)
        }
        state = .up
        backoffNanoseconds = Self.backoffMin
        let library = KVFunctions.library
        var text = library
        let loaded = text.withUTF8 { bytes in
            connection.queue(tag: Self.loadTag) { writer in
                writer.begin(parts: 4) && writer.part("FUNCTION") && writer.part("LOAD") && writer.part("REPLACE")
                    && writer.part(UnsafeRawBufferPointer(bytes))
            }
        }
        precondition(loaded, "the command buffer holds the functions")
        unsent = true
        issueWaiting(now: now)
    }

    /// Services the connection: progress of a connect, replies, sends that waited for room,
    /// deadlines. The number of requests answered.
    func service() -> Int {
        let before = completed
        let now = monotonicNanoseconds()
        switch state {
        case .down:
            if now >= reconnectAt {
                reconnects += 1
                device.reconnectCount.add(1, ordering: .relaxed)
                connect(now: now)
            }
        case .connecting:
            connectingProgress(now: now)
        case .up:
            receive(now: now)
        }
        if state == .up {
            issueWaiting(now: now)
            send()
        }
        if now >= nextDeadlineScan {
            nextDeadlineScan = now &+ Self.deadlineScanNanoseconds
            expire(now: now)
        }
        return completed - before
    }

    func receive(now: UInt64) {
        do throws(KVConnectionError) {
            _ = try connection.receive { tag, token, complete, bytes in
                self.received(tag: tag, token: token, complete: complete, bytes: bytes)
            }
        } catch {
            return teardown(now: now)
        }
        if reloadWanted {
            reloadWanted = false
            teardown(now: now)
        }
    }

    /// Sends what the step queued (one send for the batch); the rest goes when the socket has room.
    func send() {
        guard unsent, state == .up else { return }
        do throws(KVConnectionError) {
            unsent = try !connection.flush()
        } catch {
            teardown(now: monotonicNanoseconds())
        }
    }

    /// The connection is gone: what is safe to send again waits for the next one, changes that
    /// may have reached the server fail EIO.
    func teardown(now: UInt64) {
        connection.disconnect { tag in
            guard tag != Self.controlTag && tag != Self.loadTag else { return }
            let slot = Int(tag & 0xFFFF)
            guard records[slot].state == .inFlight, UInt16(tag >> 16) == records[slot].sequence else { return }
            if records[slot].call.repeatable {
                inFlight -= 1
                wait(slot)
            } else {
                device.lostChangeCount.add(1, ordering: .relaxed)
                fail(slot, .io)
            }
        }
        unsent = false
        scheduleReconnect(now: now)
    }

    /// A command with the server longer than the timeout takes the connection down (a stalled
    /// server answers nobody); then requests waiting past their deadline fail EIO. A request in
    /// flight thus waits at most its deadline plus one timeout.
    func expire(now: UInt64) {
        var stalled = false
        for slot in 0..<slotCount where records[slot].state == .inFlight && now &- records[slot].sentAt >= timeoutNanoseconds {
            stalled = true
        }
        if stalled { teardown(now: now) }
        var expired = 0
        for slot in 0..<slotCount where records[slot].state == .waiting && records[slot].deadline <= now {
            device.timeoutCount.add(1, ordering: .relaxed)
            records[slot].reply.fail(.io)
            records[slot].state = .free
            records[slot].call = .none
            completed += 1
            expired += 1
            context.complete(records[slot].token)
        }
        if expired > 0 { compactWaiting() }
    }

    /// Drops the places of slots that stopped waiting, keeping the others' order.
    func compactWaiting() {
        var kept = 0
        for index in 0..<waitingCount {
            let slot = waitingSlots[(waitingHead + index) % slotCount]
            guard records[Int(slot)].state == .waiting else { continue }
            waitingSlots[(waitingHead + kept) % slotCount] = slot
            kept += 1
        }
        waitingCount = kept
    }
}
