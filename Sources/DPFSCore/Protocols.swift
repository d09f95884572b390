import FUSEWire

// The two narrow interfaces of the engine core (docs/architecture.md §2): a transport yields requests as
// segment lists and takes replies back; a backend answers decoded requests. The poller is generic
// over both, so every call is a direct, specialised call: no existential, no closure, no allocation.

/// A request the transport handed over: its segments are already in the slot's segment table,
/// readable ones first, then writable ones.
@frozen
public struct FetchedRequest: Equatable, Sendable {
    /// Opaque to the engine: what the transport needs to return the buffer (a descriptor head).
    public var handle: UInt32
    public var readableCount: UInt16
    public var writableCount: UInt16
    public var readableBytes: UInt32
    public var writableBytes: UInt32

    @inlinable
    public init(handle: UInt32, readableCount: UInt16, writableCount: UInt16, readableBytes: UInt32, writableBytes: UInt32) {
        self.handle = handle
        self.readableCount = readableCount
        self.writableCount = writableCount
        self.readableBytes = readableBytes
        self.writableBytes = writableBytes
    }
}

@frozen
public enum FetchResult: Equatable, Sendable {
    /// Nothing to serve right now.
    case empty
    /// One request, segments written into the table the poller passed.
    case request(FetchedRequest)
    /// The queue itself is broken (a chain loop, an address outside guest memory): the transport has
    /// put the device in a failed state and will yield nothing more until it is reset.
    case failed
}

/// The upper edge of a transport: vhost-user virtqueues, /dev/fuse, the in-process loopback.
public protocol Transport {
    /// Takes the next request, writing at most `capacity` segments into `segments`.
    mutating func fetch(into segments: UnsafeMutablePointer<Segment>, capacity: Int) -> FetchResult
    /// Returns a request's buffer with the number of reply bytes written (0 for no reply).
    /// Not yet visible to the other side: `flush` publishes.
    mutating func complete(handle: UInt32, replyBytes: UInt32)
    /// Publishes everything completed since the last flush and notifies the other side at most once.
    /// Returns whether a notification was sent.
    mutating func flush() -> Bool
    /// Before the poller sleeps: ask the other side to notify on new work, then look once more.
    /// Returns true when work is already there (the poller must not sleep).
    mutating func armNotifications() -> Bool
    /// After the poller woke: notifications are not needed while it polls.
    mutating func disarmNotifications()
    /// The queue is broken and yields nothing until a reset.
    var isFailed: Bool { get }
}

extension Transport {
    public mutating func armNotifications() -> Bool { false }
    public mutating func disarmNotifications() {}
    public var isFailed: Bool { false }
}

/// How a backend answered a request.
@frozen
public enum BackendAnswer: Equatable, Sendable {
    /// The reply (or `none()` for one-way opcodes) is written.
    case done
    /// The backend will write the reply later and then complete the token through its context
    /// (`BackendContext.complete`), from the poller's own `poll()` or from any other thread.
    case pending
}

/// The size and alignment of one request's backend state (as SPDK's fsdev modules declare
/// `get_ctx_size`): the poller's arena plan carves one such context beside each slot, zero-filled,
/// and the backend reaches it by slot index (`BackendContext.requestContext(slot:)`).
@frozen
public struct RequestContextLayout: Equatable, Sendable {
    public let bytes: Int
    public let alignment: Int

    @inlinable
    public init(bytes: Int, alignment: Int) {
        precondition(bytes >= 0 && bytes <= 1 << 20, "a request context is at most 1 MiB")
        precondition(alignment >= 1 && alignment <= 4096 && alignment & (alignment - 1) == 0)
        self.bytes = bytes
        self.alignment = alignment
    }

    /// No per-request state.
    public static let none = RequestContextLayout(bytes: 0, alignment: 1)

    /// Bytes from one slot's context to the next.
    @inlinable public var stride: Int { (bytes + alignment - 1) & ~(alignment - 1) }

    /// Adds the contexts of `slotCount` slots to an arena plan.
    public func plan(_ plan: inout ArenaPlan, slotCount: Int) {
        guard bytes > 0 else { return }
        plan.reserve(byteCount: stride * slotCount, alignment: max(alignment, 64))
    }
}

/// What a poller gives the backend it serves, once, before the first request (`Backend.attach`).
/// A handle: copies refer to the same ring and wake-up state, so worker threads may hold one.
@frozen
public struct BackendContext: @unchecked Sendable {
    /// The request queue this poller serves (0 is the hiprio queue on virtio-fs).
    public let queueIndex: Int
    /// Requests this poller can have in flight at most: the bound for any per-request backend table.
    public let slotCount: Int
    /// Where finished requests go; the poller drains it every step.
    public let completions: CompletionRing
    /// Wakes the poller when it sleeps.
    public let wake: PollerWake
    /// The backend's per-request contexts (`Backend.requestContextLayout`), one per slot, carved
    /// from the poller's arena; nil when the backend declared none.
    public let requestContexts: UnsafeMutableRawPointer?
    public let requestContextStride: Int

    @inlinable
    public init(queueIndex: Int, slotCount: Int, completions: CompletionRing, wake: PollerWake,
                requestContexts: UnsafeMutableRawPointer? = nil, requestContextStride: Int = 0) {
        precondition(queueIndex >= 0 && slotCount >= 1)
        precondition(requestContexts == nil || requestContextStride > 0)
        self.queueIndex = queueIndex
        self.slotCount = slotCount
        self.completions = completions
        self.wake = wake
        self.requestContexts = requestContexts
        self.requestContextStride = requestContextStride
    }

    /// The context of the request in `slot` (the slot of its completion token).
    @inlinable
    @_noAllocation @_noLocks
    public func requestContext(slot: Int) -> UnsafeMutableRawPointer {
        // The slot comes from the poller's own token: checked in debug builds, free on the data path.
        assert(slot >= 0 && slot < slotCount && requestContexts != nil, "slot out of range or no contexts declared")
        return requestContexts.unsafelyUnwrapped + slot &* requestContextStride
    }

    /// Completes a pending request from any thread and wakes the poller if it sleeps.
    @inlinable
    @_noAllocation @_noLocks
    public func complete(_ token: CompletionToken) {
        let pushed = completions.push(token)
        // The ring has twice the slots: a push can only fail for a doubled token, which the poller
        // would discard anyway.
        _ = pushed
        wake.signal()
    }
}

/// A file-system backend: one transition handler per opcode, run at `dispatched`, plus the hooks an
/// asynchronous backend needs. Every hook but `handle` has a default, so a synchronous backend
/// (null) implements only what it uses.
///
/// Sharing: one backend value serves one request queue. State that belongs to the device (inode and
/// open-file tables) lives in an object the device builds once and hands to every queue's backend.
public protocol Backend: SendableMetatype {
    /// The state one request needs while the backend works on it (none by default): the arena
    /// holds one per slot, so a backend keeps no per-slot tables of its own.
    static var requestContextLayout: RequestContextLayout { get }
    /// Called once by the poller, before any request: the completion ring, limits, wake-up.
    mutating func attach(_ context: BackendContext)
    /// The device's FUSE session started (INIT succeeded on some queue). Delivered to every queue's
    /// backend, at its poller's next step.
    mutating func sessionStarted(_ session: NegotiatedSession)
    /// The session ended (DESTROY, or a reset followed by a new INIT). Delivered to every queue.
    mutating func sessionEnded()
    /// Called on the one queue that answered INIT, before the INIT reply is published and so before
    /// any other request of the new session exists: the place to reset device-wide state (the
    /// kernel forgot every inode of the old session).
    mutating func deviceSessionBegins(_ session: NegotiatedSession)
    /// Answers one request (never INIT or DESTROY, which the engine handles).
    mutating func handle(_ request: FUSERequest, reply: FUSEReply, token: CompletionToken) -> BackendAnswer
    /// Services the backend's own event sources (an io_uring completion queue, sockets) with bounded
    /// work, completing finished requests through the context. Returns the amount of work done.
    mutating func poll() -> Int
    /// End of a fetch batch: start what `handle` queued (at most one submission syscall per step).
    mutating func submit()
    /// A descriptor the sleeping poller also waits on (readable = `poll()` has work); -1 for none.
    var eventFD: Int32 { get }
    /// What to wait for on `eventFD` (poll(2) events): POLLIN for a completion queue; a socket
    /// also needs POLLOUT while it connects or has requests the kernel would not take yet.
    var eventFDEvents: Int16 { get }
    /// The poller stops (memory change, reset, shutdown): cancel what can be cancelled. Every
    /// pending request must still be completed; the poller keeps stepping until none is left, and
    /// only then may guest memory change.
    mutating func quiesce()
}

extension Backend {
    public static var requestContextLayout: RequestContextLayout { .none }
    public mutating func attach(_ context: BackendContext) {}
    public mutating func sessionStarted(_ session: NegotiatedSession) {}
    public mutating func sessionEnded() {}
    public mutating func deviceSessionBegins(_ session: NegotiatedSession) {}
    @inlinable public mutating func poll() -> Int { 0 }
    @inlinable public mutating func submit() {}
    public var eventFD: Int32 { -1 }
    public var eventFDEvents: Int16 { 1 }   // POLLIN
    public mutating func quiesce() {}
}
