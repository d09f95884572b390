import CDPFS

/// The cycle counter used for per-transition timestamps (TSC on x86-64). Conversion to nanoseconds
/// uses a rate measured at start-up (`DPFSPosix.CycleClock.calibrate`).
@inlinable
@_noAllocation @_noLocks
public func cycleCounter() -> UInt64 {
    _unsafePerformance { CDPFS_cycles() }
}

/// A hint to the CPU that this thread is spinning.
@inlinable
@_noAllocation @_noLocks
public func spinHint() {
    _unsafePerformance { CDPFS_cpu_relax() }
}
