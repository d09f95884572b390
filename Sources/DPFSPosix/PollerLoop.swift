import CDPFS
import DPFSCore
import Glibc
import Synchronization

// The thread body every transport runs its pollers with (docs/architecture.md §5): step while there is
// work; after a busy-poll budget with none, arm the transport's notifications and sleep on every
// event source at once — the transport's kick, the poller's wake eventfd (completions from other
// threads) and the backend's own descriptor (an io_uring completion queue, a socket) — so an idle
// engine costs no CPU and any of them wakes it at once. On stop it quiesces: no more fetching, the
// backend cancels what it can, and the loop steps until no request is in flight, because a pending
// reply may point into guest memory the caller is about to unmap.

/// What a poller thread needs besides its poller.
public struct PollerLoopConfiguration: Sendable {
    /// Spin this long after the last work before sleeping.
    public var busyPollCycles: UInt64
    /// Sleep at most this long at a time (so `stop` is seen even without any event).
    public var sleepMillisecondsMax: Int32
    /// How often a quiesce that waits on the backend logs that it still waits.
    public var quiesceReportNanoseconds: UInt64

    /// A busy-poll budget given in microseconds, in cycles of the calibrated clock: the one place
    /// the conversion is written.
    public static func busyPollCycles(microseconds: Int, cyclesPerNanosecond: Double) -> UInt64 {
        precondition(microseconds >= 0 && cyclesPerNanosecond > 0)
        return UInt64(Double(microseconds) * 1000 * cyclesPerNanosecond)
    }

    public init(busyPollCycles: UInt64, sleepMillisecondsMax: Int32 = 100, quiesceReportNanoseconds: UInt64 = 1_000_000_000) {
        precondition(sleepMillisecondsMax >= 1 && sleepMillisecondsMax <= 10_000)
        self.busyPollCycles = busyPollCycles
        self.sleepMillisecondsMax = sleepMillisecondsMax
        self.quiesceReportNanoseconds = quiesceReportNanoseconds
    }
}

/// The wake eventfd of one poller: made at start-up, closed with the queue.
public final class WakeEventFD: @unchecked Sendable {
    public let fd: Int32

    public init() throws(SystemCallError) {
        let fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard fd >= 0 else { throw SystemCallError(call: "eventfd", errno: errno) }
        self.fd = fd
    }

    deinit { _ = Glibc.close(fd) }

    /// Makes `wake` signal through this eventfd (DPFSCore itself makes no system call).
    public func attach(to wake: PollerWake) {
        wake.attach(fd: fd, notifier: { fd in _ = eventfd_write(fd, 1) })
    }
}

public enum PollerLoop {
    /// Runs `poller` until `stop` is set, then quiesces. `kickFD` < 0 means the transport has no
    /// kick descriptor (polled rings). `kickIsCounter`: the kick is an eventfd the loop drains when
    /// it fires; a /dev/fuse descriptor is not (its readiness goes away when `fetch` reads the
    /// request). `onFailed` runs once each time the transport reports failure; `onQuiesceWait` each
    /// `quiesceReportNanoseconds` a stop waits for the backend.
    public static func run<T: Transport, B: Backend>(
        _ poller: inout Poller<T, B>, stop: borrowing Atomic<Bool>, kickFD: Int32, kickIsCounter: Bool = true,
        configuration: PollerLoopConfiguration, onFailed: () -> Void, onQuiesceWait: (Int) -> Void
    ) {
        var lastWork = cycleCounter()
        var failureReported = false
        while !stop.load(ordering: .relaxed) {
            let work = poller.step()
            if work > 0 {
                lastWork = cycleCounter()
                continue
            }
            if poller.transport.isFailed {
                if !failureReported { onFailed() }
                failureReported = true
                // A failed queue yields nothing, but the backend may still complete what it started.
                sleep(on: -1, wakeFD: poller.wake.fd, backendFD: poller.backend.eventFD, backendEvents: poller.backend.eventFDEvents,
                      milliseconds: configuration.sleepMillisecondsMax)
                continue
            }
            if cycleCounter() &- lastWork < configuration.busyPollCycles {
                spinHint()
                continue
            }
            // Announce sleep, then look once more at everything that could have arrived meanwhile.
            poller.wake.announceSleep()
            let transportHasWork = poller.transport.armNotifications()
            if !transportHasWork && !poller.completionsWaiting {
                sleep(on: kickFD, wakeFD: poller.wake.fd, backendFD: poller.backend.eventFD, backendEvents: poller.backend.eventFDEvents,
                      milliseconds: configuration.sleepMillisecondsMax, drainKick: kickIsCounter)
            }
            poller.wake.announceAwake()
            poller.transport.disarmNotifications()
            lastWork = cycleCounter()
        }
        quiesce(&poller, configuration: configuration, onQuiesceWait: onQuiesceWait)
    }

    /// Stops fetching and steps until nothing is in flight. There is no deadline: guest memory must
    /// not change while a backend may still write a reply into it, so a backend that never
    /// completes holds the stop (and says so every `quiesceReportNanoseconds`).
    public static func quiesce<T: Transport, B: Backend>(
        _ poller: inout Poller<T, B>, configuration: PollerLoopConfiguration, onQuiesceWait: (Int) -> Void
    ) {
        guard poller.slotsInUse > 0 else { return }
        poller.backend.quiesce()
        var nextReport = monotonicNanoseconds() + configuration.quiesceReportNanoseconds
        while poller.slotsInUse > 0 {
            if poller.drainStep() > 0 { continue }
            let now = monotonicNanoseconds()
            if now >= nextReport {
                onQuiesceWait(poller.slotsInUse)
                nextReport = now + configuration.quiesceReportNanoseconds
            }
            poller.wake.announceSleep()
            if !poller.completionsWaiting {
                sleep(on: -1, wakeFD: poller.wake.fd, backendFD: poller.backend.eventFD, backendEvents: poller.backend.eventFDEvents, milliseconds: 10)
            }
            poller.wake.announceAwake()
        }
    }

    /// One wait on up to three descriptors (those < 0 are left out); drains the eventfds that fired.
    /// The backend's descriptor is not read here: `poll()` consumes its events.
    static func sleep(on kickFD: Int32, wakeFD: Int32, backendFD: Int32, backendEvents: Int16, milliseconds: Int32,
                      drainKick: Bool = true) {
        var descriptors: (pollfd, pollfd, pollfd) = (
            pollfd(fd: kickFD, events: Int16(POLLIN), revents: 0),
            pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0),
            pollfd(fd: backendFD, events: backendEvents, revents: 0))
        // poll(2) ignores entries with a negative fd, so the three slots are always passed.
        let ready = withUnsafeMutableBytes(of: &descriptors) { raw in
            let entries = raw.baseAddress!.assumingMemoryBound(to: pollfd.self)
            return Retry.onInterrupt { poll(entries, 3, milliseconds) }
        }
        guard ready > 0 else { return }
        var counter: UInt64 = 0
        if drainKick && descriptors.0.revents & Int16(POLLIN) != 0 { _ = read(kickFD, &counter, 8) }
        if descriptors.1.revents & Int16(POLLIN) != 0 { _ = read(wakeFD, &counter, 8) }
    }
}
