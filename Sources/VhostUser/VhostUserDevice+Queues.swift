import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import Logging
import Synchronization
import Virtio
import VhostUserProtocol

// The queues of a vhost-user device: building a split queue from what the front-end sent, starting
// and stopping (quiescing) poller threads, reset, failure reports, and the thread body.
extension VhostUserDevice {

    /// Builds the split queue from what the front-end sent, checking every ring lies in guest memory.
    func makeSplitQueue(_ index: Int) throws(VhostUserError) -> SplitQueue {
        let setup = plane.queues[index]
        guard setup.size > 0 else { throw VhostUserError("queue \(index) has no size") }
        guard let descriptorAddress = setup.descriptorAddress, let availAddress = setup.availAddress,
              let usedAddress = setup.usedAddress else { throw VhostUserError("queue \(index) has no ring addresses") }
        let memory = guestMemory
        guard let descriptors = memory.translate(frontendVirtual: descriptorAddress, length: UInt64(VirtqueueLayout.descriptorTableBytes(size: setup.size))),
              let avail = memory.translate(frontendVirtual: availAddress, length: UInt64(VirtqueueLayout.availRingBytes(size: setup.size))),
              let used = memory.translate(frontendVirtual: usedAddress, length: UInt64(VirtqueueLayout.usedRingBytes(size: setup.size)))
        else { throw VhostUserError("queue \(index) rings lie outside guest memory") }
        guard Int(bitPattern: descriptors) % 16 == 0, Int(bitPattern: avail) % 2 == 0, Int(bitPattern: used) % 4 == 0 else {
            throw VhostUserError("queue \(index) rings are misaligned")
        }
        return SplitQueue(size: setup.size, addresses: SplitQueueAddresses(descriptors: descriptors, avail: avail, used: used),
                          memory: memory, eventIndex: plane.eventIndex, indirectDescriptors: plane.indirectDescriptors,
                          nextAvailIndex: setup.nextAvailIndex)
    }

    /// Starts queue `index` if the front-end has given everything a running ring needs.
    func startIfReady(_ index: Int) throws(VhostUserError) {
        guard runners[index].thread == nil, plane.readyToStart(index) else { return }
        let setup = plane.queues[index]
        let queue = try makeSplitQueue(index)
        let runner = runners[index]
        runner.poller.transport = VhostUserQueue(queue: queue, callFD: setup.callFD)
        runner.stop.store(false, ordering: .releasing)
        runner.failed.store(false, ordering: .releasing)
        let cpu = configuration.cpus.isEmpty ? nil : configuration.cpus[index % configuration.cpus.count]
        let kickFD = setup.kickFD
        let budget = busyPollCycles
        let logger = logger
        do {
            runner.thread = try PinnedThread(cpu: cpu) {
                Self.run(runner, kickFD: kickFD, busyPollCycles: budget, logger: logger, index: index)
            }
        } catch {
            throw VhostUserError("cannot start the thread of queue \(index): \(error)")
        }
        plane.queueStarted(index)
        logger.debug("queue \(index) started: size \(setup.size), base \(setup.nextAvailIndex)")
    }

    /// Stops queue `index`'s thread (after it finished its in-flight requests) and waits for it.
    func stopQueue(_ index: Int) {
        let runner = runners[index]
        guard let thread = runner.thread else { return }
        runner.stop.store(true, ordering: .releasing)
        // A sleeping poller would see the flag only at its next timeout.
        runner.poller.wake.signalUnconditionally()
        thread.join()
        runner.thread = nil
        plane.queueStopped(index, lastAvailIndex: runner.poller.transport.queue?.lastAvailIndex)
        if runner.failed.load(ordering: .acquiring) { logFailure(index) }
        logger.debug("queue \(index) stopped")
    }

    /// Stops every running queue; returns which were running.
    func stopAllQueues() -> [Int] {
        var running: [Int] = []
        for index in 0..<runners.count where runners[index].thread != nil {
            running.append(index)
            stopQueue(index)
        }
        return running
    }

    /// After a memory change: forget the old translations and restart the queues that ran.
    func rebuildQueues(restarting running: [Int]) {
        for index in 0..<runners.count { runners[index].poller.transport.queue = nil }
        for index in running {
            do throws(VhostUserError) { try startIfReady(index) } catch { logger.warning("queue \(index) not restarted: \(error.message)") }
        }
    }

    /// Back to the state of a fresh connection: rings stopped, memory unmapped, descriptors closed,
    /// the FUSE session over (the guest will INIT again).
    public func reset() {
        _ = stopAllQueues()
        for fd in plane.reset() { _ = Glibc.close(fd) }
        for runner in runners { runner.poller.transport = VhostUserQueue() }
        unmapAll()
        session.end()
        // Every queue's backend hears of the end now, not at its next start: no poller runs, so the
        // control plane may step into them.
        for runner in runners { runner.poller.refreshSession() }
        failureLogged = []
    }

    func logFailure(_ index: Int) {
        guard failureLogged.insert(index).inserted else { return }
        controlCounts.failures.add(1, ordering: .relaxed)
        let reason = runners[index].poller.transport.queue?.failure.description ?? "unknown"
        logger.error("device \(configuration.name) queue \(index) failed (device needs reset): \(reason)")
        if plane.queues[index].errorFD >= 0 {
            var one: UInt64 = 1
            _ = Glibc.write(plane.queues[index].errorFD, &one, 8)
        }
    }

    /// Polls for failed queues (a poller marks its queue; the control plane logs it once).
    public func checkFailures() {
        for index in runners.indices where runners[index].failed.load(ordering: .acquiring) && !failureLogged.contains(index) {
            logFailure(index)
        }
    }

    /// Requests served so far on each queue (control plane view; racy reads of plain counters are
    /// only for reports).
    /// Queue `index`'s counters, readable while its poller runs (`PollerCounters.load`).
    public func counters(queue index: Int) -> PollerCounters {
        runners[index].counters
    }

    /// Queues that failed since the device started (logged once each per connection).
    public var failuresTotal: Int { controlCounts.failures.load(ordering: .relaxed) }

    public func metrics(queue index: Int) -> PollerMetrics {
        runners[index].poller.metrics.pointee
    }

    /// Requests of `opcode` queue `index` dispatched (racy plain read: for reports).
    public func requestsDispatched(_ opcode: FUSEOpcode, queue index: Int) -> UInt64 {
        runners[index].poller.requestsDispatched(opcode)
    }

    // MARK: - The poller thread

    /// A queue's thread: the shared poller loop (DPFSPosix), which sleeps on the kick eventfd, the
    /// wake eventfd and the backend's descriptor, and quiesces before it returns.
    static func run(_ runner: QueueRunner<B>, kickFD: Int32, busyPollCycles: UInt64, logger: Logger, index: Int) {
        PollerLoop.run(
            &runner.poller, stop: runner.stop, kickFD: kickFD,
            configuration: PollerLoopConfiguration(busyPollCycles: busyPollCycles),
            onFailed: { runner.failed.store(true, ordering: .releasing) },
            onQuiesceWait: { inFlight in
                logger.warning("queue \(index) is stopping: still waiting for \(inFlight) request(s) the backend has not completed")
            })
    }
}
