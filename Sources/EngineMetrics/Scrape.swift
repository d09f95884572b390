import DPFSCore

// What one scrape saw: every queue's counters copied out of poller memory (relaxed loads, no lock,
// nothing written there), and each device's control-plane counts. Pure values, so the text format
// is rendered and tested without threads.

/// The latency boundaries exported, in seconds: Prometheus's usual spread, finer at the low end
/// where a request served from memory lands (1–100 µs).
public let latencyBoundariesSeconds: [Double] = [
    0.000_001, 0.000_002_5, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5,
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
]

/// One histogram at the exported boundaries.
public struct CoarseHistogram: Equatable, Sendable {
    /// Counts per boundary of `latencyBoundariesSeconds`, then +Inf; not cumulative.
    public var counts: [UInt64]
    public var sumSeconds: Double

    public init(counts: [UInt64] = Array(repeating: 0, count: latencyBoundariesSeconds.count + 1), sumSeconds: Double = 0) {
        precondition(counts.count == latencyBoundariesSeconds.count + 1)
        self.counts = counts
        self.sumSeconds = sumSeconds
    }

    public var count: UInt64 { counts.reduce(0, &+) }

    /// Folds a fine histogram in: each fine bucket goes to the first boundary at or above its
    /// largest value, so no request is reported faster than it was.
    public mutating func add(_ fine: LatencyHistogram, cyclesTotal: UInt64, cyclesPerSecond: Double) {
        precondition(cyclesPerSecond > 0)
        var boundary = 0
        for bucket in 0..<LatencyHistogram.bucketCount {
            let value = PollerCounters.load(fine.counts + bucket)
            if value == 0 { continue }
            let largestCycles = bucket + 1 < LatencyHistogram.bucketCount
                ? Double(LatencyHistogram.lowerBound(ofBucket: bucket + 1) - 1) : Double.infinity
            let seconds = largestCycles / cyclesPerSecond
            while boundary < latencyBoundariesSeconds.count && latencyBoundariesSeconds[boundary] < seconds { boundary += 1 }
            counts[boundary] &+= value
        }
        sumSeconds += Double(cyclesTotal) / cyclesPerSecond
    }

    public static func + (a: CoarseHistogram, b: CoarseHistogram) -> CoarseHistogram {
        CoarseHistogram(counts: zip(a.counts, b.counts).map { $0 &+ $1 }, sumSeconds: a.sumSeconds + b.sumSeconds)
    }
}

/// One queue's counters as a scrape copied them.
public struct QueueScrape: Sendable {
    public var queue: Int
    public var slots: Int
    public var metrics = PollerMetrics()
    public var opcodeRequests = [UInt64](repeating: 0, count: PollerMetrics.opcodeCountSlots)
    public var opcodeErrors = [UInt64](repeating: 0, count: PollerMetrics.opcodeCountSlots)
    public var errnoErrors = [UInt64](repeating: 0, count: PollerCounters.errnoSlots)
    /// By `OpcodeClass.rawValue`: fetch to publish.
    public var classLatency = [CoarseHistogram](repeating: CoarseHistogram(), count: OpcodeClass.count)
    /// By `SlotState.rawValue`: time in each state, one request in 16.
    public var stateLatency = [CoarseHistogram](repeating: CoarseHistogram(), count: SlotState.count)

    public init(queue: Int, slots: Int) {
        self.queue = queue
        self.slots = slots
    }

    /// Copies `counters` while their poller may be running.
    public init(queue: Int, slots: Int, counters: PollerCounters, cyclesPerSecond: Double) {
        self.init(queue: queue, slots: slots)
        withUnsafeMutableBytes(of: &metrics) { copy in
            let words = MemoryLayout<PollerMetrics>.size / 8
            let source = UnsafeRawPointer(counters.metrics).assumingMemoryBound(to: UInt64.self)
            for word in 0..<words { copy.storeBytes(of: PollerCounters.load(source + word), toByteOffset: word * 8, as: UInt64.self) }
        }
        for slot in 0..<PollerMetrics.opcodeCountSlots {
            opcodeRequests[slot] = PollerCounters.load(counters.opcodeRequests + slot)
            opcodeErrors[slot] = PollerCounters.load(counters.opcodeErrors + slot)
        }
        for slot in 0..<PollerCounters.errnoSlots { errnoErrors[slot] = PollerCounters.load(counters.errnoErrors + slot) }
        for opcodeClass in OpcodeClass.allCases {
            let total = PollerCounters.load(counters.cyclesTotal + SlotState.count + Int(opcodeClass.rawValue))
            classLatency[Int(opcodeClass.rawValue)].add(counters.classHistogram(opcodeClass), cyclesTotal: total, cyclesPerSecond: cyclesPerSecond)
        }
        for state in SlotState.allCases {
            let total = PollerCounters.load(counters.cyclesTotal + Int(state.rawValue))
            stateLatency[Int(state.rawValue)].add(counters.stateHistogram(state), cyclesTotal: total, cyclesPerSecond: cyclesPerSecond)
        }
    }
}

/// A counter or gauge a backend keeps on its control plane (reconnects, say).
public struct BackendCounter: Sendable, Equatable {
    public enum Kind: String, Sendable { case counter, gauge }
    /// Without the `dpfs_backend_` prefix or `_total`: `reconnects`.
    public let name: String
    public let help: String
    public let kind: Kind
    public let value: UInt64

    public init(name: String, help: String, kind: Kind = .counter, value: UInt64) {
        precondition(!name.isEmpty && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") })
        self.name = name
        self.help = help
        self.kind = kind
        self.value = value
    }
}

/// One device as a scrape saw it.
public struct DeviceScrape: Sendable {
    public var name: String
    /// vhost-user or fuse.
    public var transport: String
    public var backend: String
    public var queues: [QueueScrape]
    /// Queues that failed (a broken guest ring, say) since the device started.
    public var failures: UInt64
    /// Front-end connections accepted (vhost-user) since the device started.
    public var connections: UInt64
    public var backendCounters: [BackendCounter]

    public init(name: String, transport: String, backend: String, queues: [QueueScrape], failures: UInt64 = 0,
                connections: UInt64 = 0, backendCounters: [BackendCounter] = []) {
        self.name = name
        self.transport = transport
        self.backend = backend
        self.queues = queues
        self.failures = failures
        self.connections = connections
        self.backendCounters = backendCounters
    }
}
