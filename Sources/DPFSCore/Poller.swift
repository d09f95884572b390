import Synchronization
import FUSEWire

// The poller loop (docs/architecture.md §5): one thread, bounded work per step:
//   1. drain the completion ring (requests backend threads finished);
//   2. fetch up to a batch of new requests → decode → dispatch;
//   3. publish every completed reply in one go and notify at most once.
// The poller is the only writer of slot state; backend threads only write replies and push tokens.

public struct PollerConfiguration: Sendable {
    /// Requests in flight at most (a power of two).
    public var slotCount: Int
    /// Segments one request may span (header, args, and up to max_pages data pages, both directions).
    public var segmentsPerSlot: Int
    /// Requests fetched per step at most.
    public var batchMax: Int
    public var initPolicy: InitPolicy

    public init(slotCount: Int = 256, segmentsPerSlot: Int = FUSELimits.pagesMax + 8, batchMax: Int = 32,
                initPolicy: InitPolicy = InitPolicy()) {
        precondition(slotCount >= 1 && slotCount <= 1 << 16 && slotCount & (slotCount - 1) == 0,
                     "slotCount must be a power of two in 1...65536")
        precondition(segmentsPerSlot >= 4 && segmentsPerSlot <= 4096)
        precondition(batchMax >= 1 && batchMax <= slotCount)
        self.slotCount = slotCount
        self.segmentsPerSlot = segmentsPerSlot
        self.batchMax = batchMax
        self.initPolicy = initPolicy
    }

    /// Twice the slots: legitimate completions (one per pending slot) can never fill it, and room
    /// remains for as many doubled tokens from a buggy backend, which the poller then discards
    /// (spin found that with exactly `slotCount` cells a duplicate can make a legitimate push fail).
    public var completionRingCapacity: Int { max(2, 2 * slotCount) }

    /// Bytes of arena a poller serving backend `B` takes: its own memory and `B`'s per-request
    /// contexts.
    public func arenaBytes<B: Backend>(for backend: B.Type) -> Int {
        var plan = ArenaPlan()
        plan.reserve(byteCount: arenaBytesWithoutBackend)
        B.requestContextLayout.plan(&plan, slotCount: slotCount)
        return plan.bytes
    }

    /// Bytes of arena the poller's own memory takes.
    var arenaBytesWithoutBackend: Int {
        var plan = ArenaPlan()
        SlotTable.plan(&plan, count: slotCount, segmentsPerSlot: segmentsPerSlot)
        CompletionRing.plan(&plan, capacity: completionRingCapacity)
        plan.reserve(UInt32.self, count: slotCount)   // free list
        plan.reserve(UInt32.self, count: slotCount)   // completed list
        PollerCounters.plan(&plan)
        SharedSession.plan(&plan)
        PollerWake.plan(&plan)
        return plan.bytes
    }
}

/// The FUSE session of one device, shared by the pollers of all its request queues: INIT arrives
/// on one queue and every queue's requests are served under it. Lives in the arena; a copy of this
/// value is a handle to the same state.
@frozen
public struct SharedSession: @unchecked Sendable {
    @usableFromInline let establishedFlag: UnsafeMutablePointer<Atomic<Bool>>
    /// Bumped on every INIT and DESTROY, so pollers re-read the session once per step, not per request.
    @usableFromInline let epochCounter: UnsafeMutablePointer<Atomic<UInt64>>
    /// Valid while established; written before the flag is set (release), read after it (acquire).
    @usableFromInline let state: UnsafeMutablePointer<NegotiatedSession>

    public static func plan(_ plan: inout ArenaPlan) {
        plan.reserve(byteCount: 64)
        plan.reserve(byteCount: 64)
        plan.reserve(NegotiatedSession.self, count: 1)
    }

    public init(arena: inout ArenaAllocator) {
        establishedFlag = arena.allocate(byteCount: 64).bindMemory(to: Atomic<Bool>.self, capacity: 1)
        establishedFlag.initialize(to: Atomic(false))
        epochCounter = arena.allocate(byteCount: 64).bindMemory(to: Atomic<UInt64>.self, capacity: 1)
        epochCounter.initialize(to: Atomic(0))
        state = arena.allocate(NegotiatedSession.self, count: 1)
        state.initialize(to: NegotiatedSession(major: 0, minor: 0, flags: 0, writeBytesMax: UInt32(FUSELimits.writeBytesMax),
                                               readaheadBytesMax: 0))
    }

    /// The negotiated session, or nil before INIT (and after DESTROY).
    @inlinable
    public var negotiated: NegotiatedSession? {
        establishedFlag.pointee.load(ordering: .acquiring) ? state.pointee : nil
    }

    @inlinable
    public var established: Bool { establishedFlag.pointee.load(ordering: .acquiring) }

    @inlinable
    public var epoch: UInt64 { epochCounter.pointee.load(ordering: .acquiring) }

    /// The decoder options in force (defaults before INIT).
    @inlinable
    public var decoderOptions: DecoderOptions {
        established ? state.pointee.decoderOptions : DecoderOptions()
    }

    public func establish(_ negotiated: NegotiatedSession) {
        // Not atomic with respect to a second INIT racing on another queue: the kernel sends INIT
        // once and waits for its answer before sending anything else.
        establishedFlag.pointee.store(false, ordering: .releasing)
        state.pointee = negotiated
        establishedFlag.pointee.store(true, ordering: .releasing)
        epochCounter.pointee.add(1, ordering: .releasing)
    }

    public func end() {
        establishedFlag.pointee.store(false, ordering: .releasing)
        epochCounter.pointee.add(1, ordering: .releasing)
    }
}

/// The engine loop for one request queue, generic over its transport and backend.
public struct Poller<T: Transport, B: Backend> {
    public var transport: T
    public var backend: B
    public let configuration: PollerConfiguration
    public let slots: SlotTable
    /// Backend threads push completion tokens here.
    public let completions: CompletionRing
    /// Everything this poller counts (it alone writes them; the control plane may read while it runs).
    public let counters: PollerCounters
    @inlinable public var metrics: UnsafeMutablePointer<PollerMetrics> { counters.metrics }
    /// Time spent in each state is recorded for one request in `stateSamplingInterval`: recording
    /// every transition of every request cost ~10 ns a request.
    public static var stateSamplingInterval: UInt64 { 16 }
    /// The device's FUSE session, shared with the pollers of its other queues.
    public let session: SharedSession
    /// How other threads wake this poller when it sleeps.
    public let wake: PollerWake

    /// This poller's view of the shared session, refreshed once per step when its epoch moved.
    @usableFromInline var sessionEpochSeen: UInt64 = .max
    @usableFromInline var sessionEstablished = false
    @usableFromInline var sessionDecoderOptions = DecoderOptions()

    @usableFromInline let freeList: UnsafeMutablePointer<UInt32>
    @usableFromInline var freeCount: Int
    @usableFromInline let completedList: UnsafeMutablePointer<UInt32>
    @usableFromInline var completedCount: Int = 0

    /// - Parameter session: the device's shared session; nil gives this poller a session of its own.
    /// - Parameter queueIndex: the queue this poller serves, for the backend's context.
    public init(configuration: PollerConfiguration, transport: T, backend: B, session: SharedSession? = nil,
                queueIndex: Int = 0, arena: inout ArenaAllocator) {
        self.configuration = configuration
        self.transport = transport
        self.backend = backend
        slots = SlotTable(count: configuration.slotCount, segmentsPerSlot: configuration.segmentsPerSlot, arena: &arena)
        completions = CompletionRing(capacity: configuration.completionRingCapacity, arena: &arena)
        freeList = arena.allocate(UInt32.self, count: configuration.slotCount)
        completedList = arena.allocate(UInt32.self, count: configuration.slotCount)
        self.session = session ?? SharedSession(arena: &arena)
        counters = PollerCounters(arena: &arena)
        // Lowest index on top, so a quiet engine reuses the same few (cache-hot) slots.
        for index in 0..<configuration.slotCount {
            freeList[index] = UInt32(configuration.slotCount - 1 - index)
        }
        freeCount = configuration.slotCount
        wake = PollerWake(arena: &arena)
        let layout = B.requestContextLayout
        let contexts = layout.bytes == 0 ? nil
            : arena.allocate(byteCount: layout.stride * configuration.slotCount, alignment: max(layout.alignment, 64))
        self.backend.attach(BackendContext(queueIndex: queueIndex, slotCount: configuration.slotCount,
                                           completions: completions, wake: wake,
                                           requestContexts: contexts, requestContextStride: layout.stride))
    }

    /// Slots currently in use (fetched and not yet published).
    @inlinable
    public var slotsInUse: Int { configuration.slotCount - freeCount }

    /// Requests of `opcode` this poller dispatched (read after it stopped, or as a snapshot).
    public func requestsDispatched(_ opcode: FUSEOpcode) -> UInt64 {
        counters.opcodeRequests[PollerMetrics.opcodeCountSlot(opcode.rawValue)]
    }

    /// The histogram of time spent in `state`, in cycles (sampled).
    public func histogram(for state: SlotState) -> LatencyHistogram {
        counters.stateHistogram(state)
    }

    /// Time from fetch to publish of requests of `opcodeClass`, in cycles: the engine's whole share
    /// of their latency.
    public func residenceHistogram(of opcodeClass: OpcodeClass) -> LatencyHistogram {
        counters.classHistogram(opcodeClass)
    }

    /// Zeroes counters and histograms (after a warm-up, say). Only while the poller is not stepping.
    public func resetMeasurements() {
        counters.reset()
    }

    // MARK: - The loop

    /// One bounded pass of the loop. Returns how much work it did (backend events, requests fetched
    /// and completed).
    @inlinable
    public mutating func step() -> Int {
        metrics.pointee.steps &+= 1
        refreshSession()
        var work = backend.poll()
        work &+= drainCompletions()
        work &+= fetchAndDispatch()
        backend.submit()
        work &+= publishCompleted()
        metrics.pointee.slotsInUse = UInt64(configuration.slotCount &- freeCount)
        return work
    }

    /// A step that fetches nothing: what a stopping poller runs until its in-flight requests are done
    /// (quiesce), so no backend I/O outlives the guest memory it points into.
    @inlinable
    public mutating func drainStep() -> Int {
        refreshSession()
        var work = backend.poll()
        work &+= drainCompletions()
        backend.submit()
        work &+= publishCompleted()
        metrics.pointee.slotsInUse = UInt64(configuration.slotCount &- freeCount)
        return work
    }

    /// Whether a token waits in the completion ring (the last look before sleeping).
    @inlinable
    public var completionsWaiting: Bool { completions.hasTokens }

    /// Re-reads the shared session when its epoch moved, and tells the backend what changed: every
    /// queue's backend hears of every session start and end, whichever queue saw INIT or DESTROY.
    @inlinable
    public mutating func refreshSession() {
        let epoch = session.epoch
        guard epoch != sessionEpochSeen else { return }
        sessionEpochSeen = epoch
        let wasEstablished = sessionEstablished
        sessionEstablished = session.established
        sessionDecoderOptions = session.decoderOptions
        // An epoch that moved while established means the old session ended (and perhaps a new
        // one began) since this poller last looked.
        if wasEstablished { backend.sessionEnded() }
        if sessionEstablished, let negotiated = session.negotiated { backend.sessionStarted(negotiated) }
    }

    /// Moves every slot whose backend finished to `completed`. Bounded by the ring's capacity, so
    /// one step drains everything that can be in the ring (legitimate tokens and duplicates alike).
    @inlinable
    mutating func drainCompletions() -> Int {
        var drained = 0
        while drained < completions.capacity, let token = completions.pop() {
            drained &+= 1
            let index = Int(token.slotIndex)
            guard index < slots.count else {
                metrics.pointee.staleCompletions &+= 1
                continue
            }
            let record = slots.record(index)
            guard record.pointee.generation == token.generation, record.pointee.state == .awaitingBackend else {
                metrics.pointee.staleCompletions &+= 1
                continue
            }
            finishHandler(index, now: cycleCounter())
        }
        return drained
    }

    @inlinable
    mutating func fetchAndDispatch() -> Int {
        var fetched = 0
        while fetched < configuration.batchMax {
            guard freeCount > 0 else {
                metrics.pointee.slotsExhausted &+= 1
                break
            }
            let index = Int(freeList[freeCount &- 1])
            let result = transport.fetch(into: slots.segments(index), capacity: slots.segmentsPerSlot)
            guard case .request(let request) = result else {
                if result == .failed { metrics.pointee.transportFailures &+= 1 }
                break
            }
            freeCount &-= 1
            fetched &+= 1
            metrics.pointee.requestsFetched &+= 1
            let record = slots.record(index)
            record.pointee.fetched = request
            record.pointee.replyLength = 0
            record.pointee.sampled = metrics.pointee.requestsFetched & (Self.stateSamplingInterval &- 1) == 0
            let now = cycleCounter()
            transition(index, .fetch, now: now)
            decodeAndDispatch(index)
        }
        return fetched
    }

    @inlinable
    mutating func decodeAndDispatch(_ index: Int) {
        let record = slots.record(index)
        let fetched = record.pointee.fetched
        let status = decodeRequest(
            readable: UnsafePointer(slots.segments(index)), readableCount: Int(fetched.readableCount),
            readableBytes: Int(fetched.readableBytes), options: sessionDecoderOptions,
            into: slots.decodedRequest(index), args: slots.args(index))
        let opcodeRaw = record.pointee.request.opcodeRaw
        let expectsReply = FUSEOpcode.expectsReply(raw: opcodeRaw)
        // Time in `fetched` is decoding time; a second reading marks its end.
        let now = cycleCounter()

        switch status {
        case .unanswerable:
            metrics.pointee.unanswerableRequests &+= 1
            record.pointee.replyLength = 0
            transition(index, .decodeFailed, now: now)
            return
        case .invalid(let errno):
            metrics.pointee.decodeFailures &+= 1
            if expectsReply && fetched.writableBytes >= UInt32(OutHeaderLayout.size) {
                slots.reply(index).fail(errno)
            } else {
                if expectsReply { metrics.pointee.unanswerableRequests &+= 1 }
                record.pointee.replyLength = 0
            }
            transition(index, .decodeFailed, now: now)
            return
        case .valid:
            break
        }
        // The writable part must hold the opcode's reply: refuse before any work is done.
        if expectsReply && Int(fetched.writableBytes) < OpcodeTable.replyBytesMin(of: opcodeRaw) {
            metrics.pointee.decodeFailures &+= 1
            if fetched.writableBytes >= UInt32(OutHeaderLayout.size) {
                slots.reply(index).fail(.invalid)
            } else {
                metrics.pointee.unanswerableRequests &+= 1
            }
            transition(index, .decodeFailed, now: now)
            return
        }
        transition(index, .decode, now: now)
        transition(index, .dispatch, now: now)
        dispatch(index, opcodeRaw: opcodeRaw, now: now)
    }

    @inlinable
    mutating func dispatch(_ index: Int, opcodeRaw: UInt32, now: UInt64) {
        counters.opcodeRequests[PollerMetrics.opcodeCountSlot(opcodeRaw)] &+= 1
        let reply = slots.reply(index)
        if opcodeRaw == FUSEOpcode.`init`.rawValue {
            let outcome = negotiateInit(slots.request(index), policy: configuration.initPolicy, reply: reply)
            if case .established(let negotiated) = outcome {
                backend.deviceSessionBegins(negotiated)
                session.establish(negotiated)
                refreshSession()
            }
            finishHandler(index, now: now)
            return
        }
        guard sessionEstablished else {
            // Nothing but INIT is served before INIT (libfuse answers EIO the same way).
            if FUSEOpcode.expectsReply(raw: opcodeRaw) { reply.fail(.io) } else { reply.none() }
            finishHandler(index, now: now)
            return
        }
        if opcodeRaw == FUSEOpcode.destroy.rawValue {
            session.end()
            refreshSession()
            reply.send(bodyBytes: 0)
            finishHandler(index, now: now)
            return
        }
        let record = slots.record(index)
        let token = CompletionToken(slotIndex: UInt32(index), generation: record.pointee.generation)
        switch backend.handle(slots.request(index), reply: reply, token: token) {
        case .done:
            finishHandler(index, now: cycleCounter())
        case .pending:
            metrics.pointee.pendingRequests &+= 1
            transition(index, .backendPending, now: now)
        }
    }

    /// `backendDone`: the handler (engine or backend) has written the reply.
    @inlinable
    mutating func finishHandler(_ index: Int, now: UInt64) {
        let record = slots.record(index)
        let opcodeRaw = record.pointee.request.opcodeRaw
        let expectsReply = FUSEOpcode.expectsReply(raw: opcodeRaw)
        if expectsReply && record.pointee.replyLength == 0 {
            // A handler that claims success without a reply would leave the guest waiting forever.
            metrics.pointee.backendsWithoutReply &+= 1
            slots.reply(index).fail(.io)
        }
        transition(index, .backendDone, now: now)
    }

    @inlinable
    mutating func publishCompleted() -> Int {
        let published = completedCount
        guard published > 0 else { return 0 }
        let now = cycleCounter()
        for position in 0..<published {
            let index = Int(completedList[position])
            let record = slots.record(index)
            let replyLength = record.pointee.replyLength
            let opcodeRaw = record.pointee.request.opcodeRaw
            let errno = count(replyLength: replyLength, opcodeRaw: opcodeRaw, staging: slots.staging(index))
            transport.complete(handle: record.pointee.fetched.handle, replyBytes: replyLength)
            counters.recordPublished(opcodeRaw: opcodeRaw,
                                     residenceCycles: now &- record.pointee.enteredCycles[Int(SlotState.fetched.rawValue)],
                                     errno: errno)
            transition(index, .publish, now: now)
            record.pointee.generation &+= 1
            freeList[freeCount] = UInt32(index)
            freeCount &+= 1
        }
        completedCount = 0
        if transport.flush() { metrics.pointee.notifications &+= 1 }
        return published
    }

    /// Counts one reply about to be published: sent or one-way, its errno, the data bytes of a
    /// READ or WRITE that succeeded. Returns the errno (0 for success or no reply).
    @inlinable @inline(__always)
    mutating func count(replyLength: UInt32, opcodeRaw: UInt32, staging: UnsafeMutableRawPointer) -> Int32 {
        guard replyLength > 0 else {
            metrics.pointee.oneWayRequests &+= 1
            return 0
        }
        metrics.pointee.repliesSent &+= 1
        let headerBytes = UInt32(OutHeaderLayout.size)
        if replyLength == headerBytes {
            let error = Int32(littleEndian: staging.load(fromByteOffset: OutHeaderLayout.error, as: Int32.self))
            if error != 0 {
                metrics.pointee.errorReplies &+= 1
                return error == Int32.min ? Int32.max : -error
            }
        }
        if opcodeRaw == FUSEOpcode.read.rawValue {
            metrics.pointee.bytesRead &+= UInt64(replyLength &- headerBytes)
        } else if opcodeRaw == FUSEOpcode.write.rawValue && replyLength >= headerBytes &+ 4 {
            metrics.pointee.bytesWritten &+= UInt64(UInt32(littleEndian: staging.load(fromByteOffset: OutHeaderLayout.size, as: UInt32.self)))
        }
        return 0
    }

    /// The only place slot state changes (through `SlotTable.apply`, the annotated leaf).
    @inlinable
    mutating func transition(_ index: Int, _ event: SlotEvent, now: UInt64) {
        let next = slots.apply(event, toSlot: index, now: now, stateHistograms: counters.histograms, stateCyclesTotal: counters.cyclesTotal)
        if next == .completed {
            completedList[completedCount] = UInt32(index)
            completedCount &+= 1
        }
    }
}
