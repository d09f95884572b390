import Synchronization

// How a sleeping poller is woken by anyone who completes one of its requests from another thread
// (a worker pool thread, a test). The poller announces that it is about to sleep, looks at its
// completion ring once more, and only then blocks on its wake eventfd; a completer pushes its token
// first and signals only when the poller announced sleep. Both sides use sequentially consistent
// operations with a fence in between, so one of them always sees the other (Dekker's pattern): a
// completion can never wait for the poller's next timeout, and a busy poller costs completers no
// syscall at all. The wake-up itself is a function the owner of the descriptor provides
// (DPFSPosix's eventfd write): this module makes no system call.

/// Wakes whoever sleeps on `fd`.
public typealias WakeNotifier = @convention(c) (Int32) -> Void

@frozen
public struct PollerWake: @unchecked Sendable {
    @usableFromInline let sleepingFlag: UnsafeMutablePointer<Atomic<Bool>>
    /// The descriptor the poller sleeps on; -1 while no transport loop owns one (tests step inline).
    @usableFromInline let descriptor: UnsafeMutablePointer<Atomic<Int32>>
    /// How to wake it: written before the descriptor is published, read after it is seen.
    @usableFromInline let notifier: UnsafeMutablePointer<WakeNotifier?>

    public static func plan(_ plan: inout ArenaPlan) {
        plan.reserve(byteCount: 64)
        plan.reserve(byteCount: 64)
        plan.reserve(byteCount: 64)
    }

    public init(arena: inout ArenaAllocator) {
        sleepingFlag = arena.allocate(byteCount: 64).bindMemory(to: Atomic<Bool>.self, capacity: 1)
        sleepingFlag.initialize(to: Atomic(false))
        descriptor = arena.allocate(byteCount: 64).bindMemory(to: Atomic<Int32>.self, capacity: 1)
        descriptor.initialize(to: Atomic(-1))
        notifier = arena.allocate(byteCount: 64).bindMemory(to: WakeNotifier?.self, capacity: 1)
        notifier.initialize(to: nil)
    }

    /// The descriptor the poller's loop sleeps on (-1: none yet).
    public var fd: Int32 { descriptor.pointee.load(ordering: .acquiring) }

    /// Called by the loop that owns the descriptor, before it starts: from then on `signal` wakes
    /// the poller by calling `notifier` with `fd`.
    public func attach(fd: Int32, notifier: WakeNotifier) {
        precondition(fd >= 0)
        self.notifier.pointee = notifier
        descriptor.pointee.store(fd, ordering: .releasing)
    }

    /// Whether the poller has announced that it sleeps (tests wait on this instead of sleeping).
    public var isSleeping: Bool { sleepingFlag.pointee.load(ordering: .acquiring) }

    /// Poller side, before its last look at the completion ring.
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
        if fd >= 0, let notify = notifier.pointee { notify(fd) }
    }

    /// Completer side, after its token is in the ring: wakes the poller if it sleeps.
    @inlinable
    @_noAllocation @_noLocks
    public func signal() {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        guard sleepingFlag.pointee.load(ordering: .sequentiallyConsistent) else { return }
        let fd = descriptor.pointee.load(ordering: .acquiring)
        guard fd >= 0, let notify = notifier.pointee else { return }
        _unsafePerformance { notify(fd) }
    }
}
