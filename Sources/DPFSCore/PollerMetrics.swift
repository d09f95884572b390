// Plain counters in the poller's own memory: the poller is their only writer, so no atomics and no
// shared cache lines on the data path. Readers look after the poller stopped, or scrape them while
// it runs with relaxed loads (PollerCounters.load).

@frozen
public struct PollerMetrics {
    public var steps: UInt64 = 0
    public var requestsFetched: UInt64 = 0
    public var repliesSent: UInt64 = 0
    public var errorReplies: UInt64 = 0
    /// One-way requests (FORGET, BATCH_FORGET, NOTIFY_REPLY) returned with no reply.
    public var oneWayRequests: UInt64 = 0
    /// Requests refused before dispatch (bad lengths, names, unknown opcodes).
    public var decodeFailures: UInt64 = 0
    /// Requests with no readable header or no room for even an error reply: returned unanswered.
    public var unanswerableRequests: UInt64 = 0
    public var pendingRequests: UInt64 = 0
    /// Tokens whose slot had moved on (wrong generation or not awaiting the backend): ignored.
    public var staleCompletions: UInt64 = 0
    /// Fetch passes that stopped because every slot was busy.
    public var slotsExhausted: UInt64 = 0
    public var transportFailures: UInt64 = 0
    public var notifications: UInt64 = 0
    /// Backends that said `done` without writing a reply: answered with EIO (a backend bug).
    public var backendsWithoutReply: UInt64 = 0
    /// Data bytes of successful READ replies and of successful WRITEs (what the backend said it wrote).
    public var bytesRead: UInt64 = 0
    public var bytesWritten: UInt64 = 0
    /// Slots fetched and not yet published, as of the end of the last step (a gauge).
    public var slotsInUse: UInt64 = 0

    public init() {}

    /// Per-opcode request counters: FUSE opcodes are below 64 (CUSE_INIT, 4096, and anything
    /// else shares the last counter).
    public static let opcodeCountSlots = 64

    @inlinable
    public static func opcodeCountSlot(_ opcodeRaw: UInt32) -> Int {
        Int(min(opcodeRaw, UInt32(opcodeCountSlots - 1)))
    }
}
