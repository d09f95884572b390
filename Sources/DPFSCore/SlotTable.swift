import FUSEWire

// The slot arena: fixed-size records, each with its segment table, argument copy and reply
// staging, all carved from the arena at start-up.

/// The engine-private record of one in-flight request.
@frozen
public struct SlotRecord {
    public var stateRaw: UInt8 = SlotState.free.rawValue
    public var generation: UInt32 = 0
    public var fetched = FetchedRequest(handle: 0, readableCount: 0, writableCount: 0, readableBytes: 0, writableBytes: 0)
    /// Bytes of reply written; 0 = no reply.
    public var replyLength: UInt32 = 0
    /// Whether this request's time in each state goes into the per-state histograms (a sample).
    public var sampled: Bool = false
    /// Cycle counter when the slot entered each state (index = `SlotState.rawValue`).
    public var enteredCycles: InlineArray<6, UInt64> = .init(repeating: 0)
    public var request = DecodedRequest()

    @inlinable
    public var state: SlotState { SlotState(rawValue: stateRaw)! }
}

/// Per-slot memory, addressed by slot index.
@frozen
public struct SlotTable: @unchecked Sendable {
    public let count: Int
    public let segmentsPerSlot: Int
    public let records: UnsafeMutablePointer<SlotRecord>
    @usableFromInline let segments: UnsafeMutablePointer<Segment>
    @usableFromInline let args: UnsafeMutableRawPointer
    @usableFromInline let staging: UnsafeMutableRawPointer

    /// Field offsets inside a record, resolved once: projecting a key path per request costs a
    /// runtime call.
    @usableFromInline let requestOffset: Int
    @usableFromInline let replyLengthOffset: Int

    @usableFromInline static let argsStride = (FUSELimits.argsBytesMax + 63) & ~63
    @usableFromInline static let stagingStride = (FUSELimits.replyStagingBytes + 63) & ~63

    public static func plan(_ plan: inout ArenaPlan, count: Int, segmentsPerSlot: Int) {
        plan.reserve(SlotRecord.self, count: count)
        plan.reserve(Segment.self, count: count * segmentsPerSlot)
        plan.reserve(byteCount: argsStride * count)
        plan.reserve(byteCount: stagingStride * count)
    }

    public init(count: Int, segmentsPerSlot: Int, arena: inout ArenaAllocator) {
        precondition(count > 0 && count <= 1 << 16, "slot count must be 1...65536")
        precondition(segmentsPerSlot >= 2 && segmentsPerSlot <= Int(UInt16.max))
        self.count = count
        self.segmentsPerSlot = segmentsPerSlot
        requestOffset = MemoryLayout<SlotRecord>.offset(of: \SlotRecord.request)!
        replyLengthOffset = MemoryLayout<SlotRecord>.offset(of: \SlotRecord.replyLength)!
        records = arena.allocate(SlotRecord.self, count: count)
        records.initialize(repeating: SlotRecord(), count: count)
        segments = arena.allocate(Segment.self, count: count * segmentsPerSlot)
        args = arena.allocate(byteCount: Self.argsStride * count)
        staging = arena.allocate(byteCount: Self.stagingStride * count)
    }

    @inlinable
    public func record(_ index: Int) -> UnsafeMutablePointer<SlotRecord> {
        precondition(index >= 0 && index < count)
        return records + index
    }

    @inlinable
    public func segments(_ index: Int) -> UnsafeMutablePointer<Segment> {
        precondition(index >= 0 && index < count)
        return segments + index &* segmentsPerSlot
    }

    @inlinable
    public func args(_ index: Int) -> UnsafeMutableRawPointer {
        precondition(index >= 0 && index < count)
        return args + index &* Self.argsStride
    }

    @inlinable
    public func staging(_ index: Int) -> UnsafeMutableRawPointer {
        precondition(index >= 0 && index < count)
        return staging + index &* Self.stagingStride
    }

    /// The decoded request in slot `index`, as a backend sees it.
    @inlinable
    public func request(_ index: Int) -> FUSERequest {
        let record = record(index)
        return FUSERequest(header: UnsafePointer(decodedRequest(index)), args: UnsafeRawPointer(args(index)),
                           readable: UnsafePointer(segments(index)), readableCount: Int(record.pointee.fetched.readableCount))
    }

    /// The reply writer for slot `index`.
    @inlinable
    public func reply(_ index: Int) -> FUSEReply {
        let record = record(index)
        let fetched = record.pointee.fetched
        return FUSEReply(
            writable: UnsafePointer(segments(index) + Int(fetched.readableCount)),
            writableCount: Int(fetched.writableCount), writableBytes: Int(fetched.writableBytes),
            staging: staging(index), unique: record.pointee.request.unique,
            replyLength: (UnsafeMutableRawPointer(record) + replyLengthOffset).assumingMemoryBound(to: UInt32.self))
    }

    /// Where slot `index`'s decoded request lives.
    @inlinable
    public func decodedRequest(_ index: Int) -> UnsafeMutablePointer<DecodedRequest> {
        (UnsafeMutableRawPointer(record(index)) + requestOffset).assumingMemoryBound(to: DecodedRequest.self)
    }

    /// Moves slot `index` by `event` through the transition table, timestamps the new state and,
    /// for sampled requests, records the time spent in the state left. Traps on a transition that is
    /// not in the protocol: only engine code drives slots, so that is a programmer error.
    @inlinable
    @_noAllocation @_noLocks
    public func apply(_ event: SlotEvent, toSlot index: Int, now: UInt64,
                      stateHistograms: UnsafeMutablePointer<UInt64>, stateCyclesTotal: UnsafeMutablePointer<UInt64>) -> SlotState {
        let record = record(index)
        let current = record.pointee.state
        guard let next = SlotTransitions.next(from: current, on: event) else {
            preconditionFailure("slot transition not in the protocol")
        }
        if record.pointee.sampled && current != .free {
            let entered = record.pointee.enteredCycles[Int(current.rawValue)]
            let histogram = stateHistograms + Int(current.rawValue) &* LatencyHistogram.bucketCount
            histogram[LatencyHistogram.bucket(of: now &- entered)] &+= 1
            stateCyclesTotal[Int(current.rawValue)] &+= now &- entered
        }
        record.pointee.enteredCycles[Int(next.rawValue)] = now
        record.pointee.stateRaw = next.rawValue
        return next
    }
}
