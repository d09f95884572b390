import CDPFS
import FUSEWire

// Everything a poller counts, in its own arena memory: the poller is the only writer (plain
// increments, no atomics, no lock, no cache line another thread writes). The control plane reads
// a queue's counters while the poller runs — a scrape — through `PollerCounters.load`, a relaxed
// 64-bit load: a counter seen mid-scrape is at most one request old, never torn (aligned 8-byte
// loads and stores are single instructions on the 64-bit targets the engine runs on).

/// What a request is, for latency: the opcodes whose costs differ by orders of magnitude are kept
/// apart, so one histogram is not a blend of 1 µs GETATTRs and 10 ms FSYNCs.
public enum OpcodeClass: UInt8, CaseIterable, Sendable {
    /// Attribute and name lookups: LOOKUP, GETATTR, SETATTR, ACCESS, STATFS, READLINK, xattr reads.
    case metadata = 0
    /// Changes to the name space: CREATE, MKDIR, MKNOD, SYMLINK, LINK, UNLINK, RMDIR, RENAME(2), xattr writes.
    case namespace = 1
    /// OPEN, RELEASE, FLUSH.
    case open = 2
    case read = 3
    case write = 4
    /// OPENDIR, READDIR, READDIRPLUS, RELEASEDIR.
    case directory = 5
    /// FSYNC, FSYNCDIR, SYNCFS, FALLOCATE, LSEEK, COPY_FILE_RANGE: calls that wait on storage.
    case sync = 6
    /// INIT, DESTROY, FORGET, locks, unknown opcodes.
    case other = 7

    public static let count = 8

    /// The label Prometheus shows.
    public var name: String {
        switch self {
        case .metadata: "metadata"
        case .namespace: "namespace"
        case .open: "open"
        case .read: "read"
        case .write: "write"
        case .directory: "directory"
        case .sync: "sync"
        case .other: "other"
        }
    }

    /// A switch, not a table: a global array would be lazily initialised (a lock) on the data path.
    @inlinable @inline(__always)
    @_noAllocation @_noLocks
    public static func of(_ opcodeRaw: UInt32) -> OpcodeClass {
        switch opcodeRaw {
        case 1, 3, 4, 5, 17, 22, 23, 34, 52: .metadata            // lookup getattr setattr readlink statfs getxattr listxattr access statx
        case 6, 8, 9, 10, 11, 12, 13, 21, 24, 35, 45, 51: .namespace
        case 14, 18, 25: .open
        case 15: .read
        case 16: .write
        case 27, 28, 29, 44: .directory
        case 20, 30, 43, 46, 47, 50, 53: .sync
        default: .other
        }
    }
}

/// Pointers to one poller's counters. Copyable, so the control plane keeps a copy per queue and
/// never touches the poller itself.
@frozen
public struct PollerCounters: @unchecked Sendable {
    /// Errors by errno: 1...126 each their own, 127 for anything higher (the kernel allows up to 511).
    public static let errnoSlots = 128
    public static let histogramCount = SlotState.count + OpcodeClass.count

    public let metrics: UnsafeMutablePointer<PollerMetrics>
    /// Requests dispatched, by `PollerMetrics.opcodeCountSlot`.
    public let opcodeRequests: UnsafeMutablePointer<UInt64>
    /// Error replies published, by opcode slot.
    public let opcodeErrors: UnsafeMutablePointer<UInt64>
    /// Error replies published, by errno slot.
    public let errnoErrors: UnsafeMutablePointer<UInt64>
    /// `SlotState.count` per-state histograms (sampled), then one per opcode class (fetch to publish,
    /// every request), each `LatencyHistogram.bucketCount` counters of cycles.
    public let histograms: UnsafeMutablePointer<UInt64>
    /// Exact sums of each histogram's values, in cycles (Prometheus wants `_sum`), in the order of
    /// `histograms`.
    public let cyclesTotal: UnsafeMutablePointer<UInt64>

    public static func plan(_ plan: inout ArenaPlan) {
        plan.reserve(PollerMetrics.self, count: 1)
        plan.reserve(UInt64.self, count: PollerMetrics.opcodeCountSlots * 2 + errnoSlots + histogramCount)
        plan.reserve(UInt64.self, count: LatencyHistogram.bucketCount * histogramCount)
    }

    public init(arena: inout ArenaAllocator) {
        metrics = arena.allocate(PollerMetrics.self, count: 1)
        metrics.initialize(to: PollerMetrics())
        let small = PollerMetrics.opcodeCountSlots * 2 + Self.errnoSlots + Self.histogramCount
        let counts = arena.allocate(UInt64.self, count: small)
        counts.initialize(repeating: 0, count: small)
        opcodeRequests = counts
        opcodeErrors = counts + PollerMetrics.opcodeCountSlots
        errnoErrors = opcodeErrors + PollerMetrics.opcodeCountSlots
        cyclesTotal = errnoErrors + Self.errnoSlots
        histograms = arena.allocate(UInt64.self, count: LatencyHistogram.bucketCount * Self.histogramCount)
        histograms.initialize(repeating: 0, count: LatencyHistogram.bucketCount * Self.histogramCount)
    }

    /// Zeroes everything. Only while the poller is not stepping.
    public func reset() {
        metrics.pointee = PollerMetrics()
        let small = PollerMetrics.opcodeCountSlots * 2 + Self.errnoSlots + Self.histogramCount
        opcodeRequests.update(repeating: 0, count: small)
        histograms.update(repeating: 0, count: LatencyHistogram.bucketCount * Self.histogramCount)
    }

    @inlinable
    public func stateHistogram(_ state: SlotState) -> LatencyHistogram {
        LatencyHistogram(counts: histograms + Int(state.rawValue) &* LatencyHistogram.bucketCount)
    }

    @inlinable
    public func classHistogram(_ opcodeClass: OpcodeClass) -> LatencyHistogram {
        LatencyHistogram(counts: histograms + (SlotState.count &+ Int(opcodeClass.rawValue)) &* LatencyHistogram.bucketCount)
    }

    /// Every class's fetch-to-publish histogram added into `histogram` (reports, control plane).
    public func addResidence(into histogram: LatencyHistogram) {
        for opcodeClass in OpcodeClass.allCases {
            let source = classHistogram(opcodeClass).counts
            for bucket in 0..<LatencyHistogram.bucketCount { histogram.counts[bucket] &+= Self.load(source + bucket) }
        }
    }

    @inlinable
    public static func errnoSlot(_ errno: Int32) -> Int {
        Int(min(max(errno, 0), Int32(errnoSlots - 1)))
    }

    /// Records one published request: its class's latency and, for an error reply, its errno.
    /// Inlined into the publish loop: a call per request cost more than the counting.
    @inlinable @inline(__always)
    @_noAllocation @_noLocks
    public func recordPublished(opcodeRaw: UInt32, residenceCycles: UInt64, errno: Int32) {
        let opcodeClass = Int(OpcodeClass.of(opcodeRaw).rawValue)
        let histogram = histograms + (SlotState.count &+ opcodeClass) &* LatencyHistogram.bucketCount
        histogram[LatencyHistogram.bucket(of: residenceCycles)] &+= 1
        cyclesTotal[SlotState.count &+ opcodeClass] &+= residenceCycles
        if errno != 0 {
            opcodeErrors[PollerMetrics.opcodeCountSlot(opcodeRaw)] &+= 1
            errnoErrors[Self.errnoSlot(errno)] &+= 1
        }
    }

    /// A counter as the poller last stored it, read from another thread.
    @inlinable
    public static func load(_ counter: UnsafePointer<UInt64>) -> UInt64 {
        CDPFS_load_relaxed_u64(counter)
    }
}
