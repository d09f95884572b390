import CDPFS
import DPFSCore
import Glibc

/// Converts the cycle counter to nanoseconds with a rate measured against CLOCK_MONOTONIC.
public struct CycleClock: Sendable {
    public let cyclesPerNanosecond: Double

    public init(cyclesPerNanosecond: Double) {
        precondition(cyclesPerNanosecond > 0)
        self.cyclesPerNanosecond = cyclesPerNanosecond
    }

    /// Measures the counter's rate over `milliseconds` of wall time.
    public static func calibrate(milliseconds: Int = 50) -> CycleClock {
        precondition(milliseconds > 0)
        let startNanos = monotonicNanoseconds()
        let startCycles = cycleCounter()
        var now = startNanos
        while now - startNanos < UInt64(milliseconds) * 1_000_000 {
            now = monotonicNanoseconds()
        }
        let cycles = cycleCounter() &- startCycles
        return CycleClock(cyclesPerNanosecond: Double(cycles) / Double(now - startNanos))
    }

    public func nanoseconds(cycles: UInt64) -> Double {
        Double(cycles) / cyclesPerNanosecond
    }
}

public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// CPU time the calling thread has used, in nanoseconds.
public func threadCPUNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
