// Start-up allocation: everything the data path needs is carved out of one region (a hugepage arena
// in production, see DPFSPosix.HugepageArena) before the first request. There is no free: the
// region lives as long as the engine.

/// A bump allocator over a caller-owned region. Used only at start-up.
public struct ArenaAllocator {
    public let base: UnsafeMutableRawPointer
    public let capacityBytes: Int
    public private(set) var usedBytes: Int = 0

    public init(base: UnsafeMutableRawPointer, capacityBytes: Int) {
        precondition(capacityBytes > 0)
        precondition(Int(bitPattern: base) % 64 == 0, "arena base must be cache-line aligned")
        self.base = base
        self.capacityBytes = capacityBytes
    }

    /// Carves `byteCount` bytes aligned to `alignment`, zero-filled. Traps when the arena is too
    /// small: the arena is sized from the same plan (`ArenaPlan`), so running out is a bug.
    public mutating func allocate(byteCount: Int, alignment: Int = 64) -> UnsafeMutableRawPointer {
        precondition(byteCount >= 0 && alignment > 0 && alignment & (alignment - 1) == 0)
        let start = (usedBytes + alignment - 1) & ~(alignment - 1)
        precondition(start + byteCount <= capacityBytes,
                     "arena exhausted: need \(start + byteCount) bytes, have \(capacityBytes)")
        usedBytes = start + byteCount
        let pointer = base + start
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
        return pointer
    }

    public mutating func allocate<T>(_ type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        precondition(count >= 0)
        let raw = allocate(byteCount: MemoryLayout<T>.stride * max(count, 1),
                           alignment: max(MemoryLayout<T>.alignment, 64))
        return raw.bindMemory(to: T.self, capacity: max(count, 1))
    }
}

/// Adds up what a set of components will allocate, so the arena is mapped once at the right size.
public struct ArenaPlan {
    public private(set) var bytes: Int = 0

    public init() {}

    public mutating func reserve(byteCount: Int, alignment: Int = 64) {
        precondition(byteCount >= 0 && alignment > 0)
        bytes = (bytes + alignment - 1) & ~(alignment - 1)
        bytes += byteCount
    }

    public mutating func reserve<T>(_ type: T.Type, count: Int) {
        reserve(byteCount: MemoryLayout<T>.stride * max(count, 1), alignment: max(MemoryLayout<T>.alignment, 64))
    }
}
