import Synchronization

// The completion ring: backend threads (any number) push completion tokens, the poller alone pops
// them. It is Vyukov's bounded MPMC queue used multi-producer/single-consumer: each cell carries a
// sequence number that says whose turn it is, so a producer can never overwrite a cell the consumer
// has not read, and neither side takes a lock. Specs/slot-ring.pml is the model spin checks.

/// One ring cell: the sequence tells producers and the consumer whose turn it is.
@usableFromInline
struct CompletionRingCell: ~Copyable {
    @usableFromInline let sequence: Atomic<UInt64>
    @usableFromInline var value: UInt64
}

/// A pointer-backed MPSC ring of completion tokens living in the arena. Copies of this value refer
/// to the same ring (it is a handle), which is what lets backend threads hold one.
@frozen
public struct CompletionRing: @unchecked Sendable {
    @usableFromInline let cells: UnsafeMutablePointer<CompletionRingCell>
    @usableFromInline let enqueuePosition: UnsafeMutablePointer<Atomic<UInt64>>
    @usableFromInline let dequeuePosition: UnsafeMutablePointer<Atomic<UInt64>>
    public let capacity: Int
    @usableFromInline let mask: UInt64

    public static func plan(_ plan: inout ArenaPlan, capacity: Int) {
        plan.reserve(byteCount: MemoryLayout<CompletionRingCell>.stride * capacity)
        plan.reserve(byteCount: 64)   // enqueue position, alone on its cache line
        plan.reserve(byteCount: 64)   // dequeue position, alone on its cache line
    }

    public init(capacity: Int, arena: inout ArenaAllocator) {
        precondition(capacity >= 2 && capacity & (capacity - 1) == 0, "ring capacity must be a power of two")
        precondition(capacity <= 1 << 24)
        let cellMemory = arena.allocate(byteCount: MemoryLayout<CompletionRingCell>.stride * capacity)
        let cells = cellMemory.bindMemory(to: CompletionRingCell.self, capacity: capacity)
        for index in 0..<capacity {
            (cells + index).initialize(to: CompletionRingCell(sequence: Atomic(UInt64(index)), value: 0))
        }
        let enqueue = arena.allocate(byteCount: 64).bindMemory(to: Atomic<UInt64>.self, capacity: 1)
        enqueue.initialize(to: Atomic(0))
        let dequeue = arena.allocate(byteCount: 64).bindMemory(to: Atomic<UInt64>.self, capacity: 1)
        dequeue.initialize(to: Atomic(0))
        self.cells = cells
        self.enqueuePosition = enqueue
        self.dequeuePosition = dequeue
        self.capacity = capacity
        self.mask = UInt64(capacity - 1)
    }

    /// Pushes a token from any thread. Returns false only when the ring is full, which the engine
    /// rules out by giving the ring at least as many cells as there are slots.
    @inlinable
    @_noAllocation @_noLocks
    public func push(_ token: CompletionToken) -> Bool {
        var position = enqueuePosition.pointee.load(ordering: .relaxed)
        while true {
            let cell = cells + Int(position & mask)
            let sequence = cell.pointee.sequence.load(ordering: .acquiring)
            let difference = Int64(bitPattern: sequence &- position)
            if difference == 0 {
                let (exchanged, original) = enqueuePosition.pointee.compareExchange(
                    expected: position, desired: position &+ 1, ordering: .relaxed)
                if exchanged {
                    cell.pointee.value = token.rawValue
                    cell.pointee.sequence.store(position &+ 1, ordering: .releasing)
                    return true
                }
                position = original
            } else if difference < 0 {
                return false
            } else {
                position = enqueuePosition.pointee.load(ordering: .relaxed)
            }
        }
    }

    /// Whether a token is waiting (the poller's last look before it sleeps). Only the poller thread.
    @inlinable
    public var hasTokens: Bool {
        let position = dequeuePosition.pointee.load(ordering: .relaxed)
        return (cells + Int(position & mask)).pointee.sequence.load(ordering: .acquiring) == position &+ 1
    }

    /// Pops the oldest token. Only the poller thread may call this.
    @inlinable
    @_noAllocation @_noLocks
    public func pop() -> CompletionToken? {
        let position = dequeuePosition.pointee.load(ordering: .relaxed)
        let cell = cells + Int(position & mask)
        let sequence = cell.pointee.sequence.load(ordering: .acquiring)
        guard sequence == position &+ 1 else { return nil }
        let value = cell.pointee.value
        cell.pointee.sequence.store(position &+ UInt64(capacity), ordering: .releasing)
        dequeuePosition.pointee.store(position &+ 1, ordering: .relaxed)
        return CompletionToken(rawValue: value)
    }
}
