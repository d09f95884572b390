// The slot state machine (docs/architecture.md §3). A slot holds one in-flight request; only the transition
// table moves it between states, and the same table is kept readable in Specs/slot-lifecycle.md.
// A test parses that file and compares it with this table pair by pair, so the two cannot drift.

/// Where a request slot is in its life.
public enum SlotState: UInt8, CaseIterable, Sendable {
    /// On the poller's free list.
    case free = 0
    /// A descriptor chain (or /dev/fuse buffer) is attached; nothing parsed.
    case fetched = 1
    /// Header and arguments are validated copies in the slot.
    case decoded = 2
    /// The handler for the opcode is running.
    case dispatched = 3
    /// The backend completes it later, from any thread.
    case awaitingBackend = 4
    /// The reply is written in place; waiting to be published to the queue.
    case completed = 5

    public static let count = 6
}

/// What happens to a slot.
public enum SlotEvent: UInt8, CaseIterable, Sendable {
    case fetch = 0
    case decode = 1
    case decodeFailed = 2
    case dispatch = 3
    case backendDone = 4
    case backendPending = 5
    case publish = 6

    public static let count = 7
}

/// `state × event → next state`, as data: one load per transition. 0xFF marks a transition that is
/// not in the protocol; taking one is a programmer error and traps.
public enum SlotTransitions {
    @usableFromInline
    static let invalid: UInt8 = 0xFF

    // Row = current state, column = event (fetch, decode, decodeFailed, dispatch, backendDone,
    // backendPending, publish).
    @usableFromInline
    static let table: InlineArray<42, UInt8> = [
        1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,   // free
        0xFF, 2, 5, 0xFF, 0xFF, 0xFF, 0xFF,      // fetched
        0xFF, 0xFF, 0xFF, 3, 0xFF, 0xFF, 0xFF,   // decoded
        0xFF, 0xFF, 0xFF, 0xFF, 5, 4, 0xFF,      // dispatched
        0xFF, 0xFF, 0xFF, 0xFF, 5, 0xFF, 0xFF,   // awaitingBackend
        0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0,   // completed
    ]

    /// The next state, or nil when the pair is not a transition of the protocol.
    @inlinable
    @_noAllocation @_noLocks
    public static func next(from state: SlotState, on event: SlotEvent) -> SlotState? {
        // Read-only data at -O; the wrapper only tells the checker a debug build may initialise it lazily.
        let raw = _unsafePerformance { table[Int(state.rawValue) &* SlotEvent.count &+ Int(event.rawValue)] }
        return raw == invalid ? nil : SlotState(rawValue: raw)
    }
}
