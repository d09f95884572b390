import FUSEWire

// The two narrow interfaces of the engine core (ARCHITECTURE §2): a transport yields requests as
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
}

/// How a backend answered a request.
@frozen
public enum BackendAnswer: Equatable, Sendable {
    /// The reply (or `none()` for one-way opcodes) is written.
    case done
    /// The backend will write the reply later, from any thread, and then push the token to the
    /// completion ring it was given.
    case pending
}

/// A file-system backend: one transition handler per opcode, run at `dispatched`.
public protocol Backend: SendableMetatype {
    /// FUSE_INIT succeeded; the session's limits apply from now on.
    mutating func sessionStarted(_ session: NegotiatedSession)
    /// FUSE_DESTROY arrived (unmount): drop per-session state.
    mutating func sessionEnded()
    /// Answers one request (never INIT or DESTROY, which the engine handles).
    mutating func handle(_ request: FUSERequest, reply: FUSEReply, token: CompletionToken) -> BackendAnswer
}
