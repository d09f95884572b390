import CDPFS
import Synchronization

// How a sleeping poller is woken by anyone who completes one of its requests from another thread
// (a worker pool thread, a test). The poller announces that it is about to sleep, looks at its
// completion ring once more, and only then blocks on its wake eventfd; a completer pushes its token
// first and signals only when the poller announced sleep. Both sides use sequentially consistent
// operations with a fence in between, so one of them always sees the other (Dekker's pattern): a
// completion can never wait for the poller's next timeout, and a busy poller costs completers no
// syscall at all.

@frozen
public struct PollerWake: @unchecked Sendable {
    @usableFromInline let sleepingFlag: UnsafeMutablePointer<Atomic<Bool>>
    /// The eventfd the poller sleeps on; -1 while no transport loop owns one (tests step inline).
    @usableFromInline let descriptor: UnsafeMutablePointer<Atomic<Int32>>

    public static func plan(_ plan: inout ArenaPlan) {
        plan.reserve(byteCount: 64)
        plan.reserve(byteCount: 64)
    }

    public init(arena: inout ArenaAllocator) {
        sleepingFlag = arena.allocate(byteCount: 64).bindMemory(to: Atomic<Bool>.self, capacity: 1)
        sleepingFlag.initialize(to: Atomic(false))
        descriptor = arena.allocate(byteCount: 64).bindMemory(to: Atomic<Int32>.self, capacity: 1)
        descriptor.initialize(to: Atomic(-1))
    }

    /// The eventfd the poller's loop sleeps on (set by the loop that owns it, before it starts).
    public var fd: Int32 {
        get { descriptor.pointee.load(ordering: .acquiring) }
        nonmutating set { descriptor.pointee.store(newValue, ordering: .releasing) }
    }

    /// Poller side, before its last look at the completion ring.
    @inlinable
    /// Whether the poller has announced that it sleeps (tests wait on this instead of sleeping).
    public var isSleeping: Bool { sleepingFlag.pointee.load(ordering: .acquiring) }

    public func announceSleep() {
        sleepingFlag.pointee.store(true, ordering: .sequentiallyConsistent)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    /// Poller side, once awake.
    @inlinable
    public func announceAwake() {
        sleepingFlag.pointee.store(false, ordering: .relaxed)
    }

    /// Wakes the poller whether or not it announced sleep (the control plane's stop request).
    public func signalUnconditionally() {
        let fd = descriptor.pointee.load(ordering: .acquiring)
        if fd >= 0 { _ = eventfd_write(fd, 1) }
    }

    /// Completer side, after its token is in the ring: wakes the poller if it sleeps.
    @inlinable
    @_noAllocation @_noLocks
    public func signal() {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        guard sleepingFlag.pointee.load(ordering: .sequentiallyConsistent) else { return }
        let fd = descriptor.pointee.load(ordering: .acquiring)
        guard fd >= 0 else { return }
        _ = _unsafePerformance { eventfd_write(fd, 1) }
    }
}
