import DPFSCore
import DPFSPosix
import DPFSTestSupport
import FUSEWire
import Glibc
import LoopbackTransport
import Synchronization
import Testing

// The poller thread's loop (DPFSPosix.PollerLoop) with an asynchronous backend: a completion from
// another thread wakes a sleeping poller through its wake eventfd (not at its next timeout), and a
// stopping poller quiesces — it waits for every pending request before it returns, so guest memory
// is never changed under backend I/O.

final class LoopHarness: @unchecked Sendable {
    let rig: TestRig<ScriptedBackend>
    let state = ScriptedBackend.State()
    let stop = Atomic<Bool>(false)
    let finished = Atomic<Bool>(false)
    let wake: WakeEventFD
    var thread: PinnedThread? = nil
    /// Once the loop runs, the poller belongs to its thread and the driver to the test's: each
    /// side works on its own copy (they share only the queue memory, as a guest and a device do).
    var driver: LoopbackDriver
    var finalPoller: Poller<LoopbackDevice, ScriptedBackend>? = nil

    init() throws {
        rig = TestRig(backend: ScriptedBackend(state: state))
        rig.establishSession()
        wake = try WakeEventFD()
        wake.attach(to: rig.rig.poller.wake)
        driver = rig.rig.driver
    }

    /// Starts the loop with no busy polling and a 10 s sleep: only the wake eventfd can end a sleep
    /// early.
    func start() throws {
        driver = rig.rig.driver
        nonisolated(unsafe) let initial = rig.rig.poller   // handed to the thread; this side never uses it again
        thread = try PinnedThread { [self] in
            var poller = initial
            PollerLoop.run(&poller, stop: stop, kickFD: -1,
                           configuration: PollerLoopConfiguration(busyPollCycles: 0, sleepMillisecondsMax: 10_000),
                           onFailed: {}, onQuiesceWait: { _ in })
            finalPoller = poller
            finished.store(true, ordering: .releasing)
        }
    }

    func submitPending(unique: UInt64) {
        var request = TestRequest.valid(.getattr)
        request.unique = unique
        state.plans[unique] = .pending
        rig.submit(request.bytes, writableBytes: 120)
    }

    func complete() {
        let pending = state.pending.removeFirst()
        ScriptedBackend.writeSuccess(pending.reply, unique: pending.unique)
        state.context!.complete(pending.token)
    }

    /// Waits up to `seconds` for a reply from the driver.
    func reap(within seconds: Double) -> UInt32? {
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        while monotonicNanoseconds() < deadline {
            if let (slot, used) = driver.reap() {
                driver.releaseSlot(slot)
                return used
            }
            usleep(100)
        }
        return nil
    }
}

/// Polls `condition` until it holds or `seconds` pass (generous: these are not timing tests).
func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
    while monotonicNanoseconds() < deadline {
        if condition() { return true }
        usleep(1_000)
    }
    return condition()
}

@Suite(.serialized) struct PollerLoopTests {
    @Test("a completion pushed while the poller sleeps is answered at once, not at the sleep's timeout")
    func completionWakesSleepingPoller() throws {
        let harness = try LoopHarness()
        harness.submitPending(unique: 77)
        // The request is fetched and handed to the backend before the loop starts.
        _ = harness.rig.rig.poller.step()
        #expect(harness.state.pending.count == 1)
        try harness.start()
        // Observed, not assumed: the poller announces its sleep (no busy-poll budget, so at once).
        #expect(waitUntil(seconds: 10) { harness.rig.rig.poller.wake.isSleeping }, "the poller never went to sleep")
        let started = monotonicNanoseconds()
        harness.complete()
        let used = harness.reap(within: 5)
        let elapsedMilliseconds = Double(monotonicNanoseconds() - started) / 1e6
        #expect(used == UInt32(16 + 104), "no reply: the completion did not wake the poller")
        #expect(elapsedMilliseconds < 5_000)
        harness.stop.store(true, ordering: .releasing)
        // Stopping needs a wake too: the poller sleeps up to 10 s otherwise.
        harness.rig.rig.poller.wake.signalUnconditionally()
        harness.thread!.join()
    }

    @Test("a stopping poller quiesces: it returns only after its pending request completed")
    func stopWaitsForPendingRequests() throws {
        let harness = try LoopHarness()
        harness.submitPending(unique: 78)
        _ = harness.rig.rig.poller.step()
        try harness.start()
        harness.stop.store(true, ordering: .releasing)
        harness.rig.rig.poller.wake.signalUnconditionally()
        // Once the backend was asked to quiesce, the loop can only be waiting for the request.
        #expect(waitUntil(seconds: 10) { harness.state.quiesceCalls.load(ordering: .acquiring) == 1 }, "the backend was not asked to quiesce")
        let returnedEarly = harness.finished.load(ordering: .acquiring)
        #expect(!returnedEarly, "the loop returned with a request still pending")
        #expect(harness.state.quiesceCalls.load(ordering: .acquiring) == 1, "the backend was not asked to quiesce")
        harness.complete()
        harness.thread!.join()
        let returned = harness.finished.load(ordering: .acquiring)
        #expect(returned)
        #expect(harness.reap(within: 1) == UInt32(16 + 104), "the pending reply was not published before the loop returned")
        #expect(harness.finalPoller?.slotsInUse == 0)
    }
}
