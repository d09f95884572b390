// A completion token names one request: (slot index, generation). The generation changes every time
// the slot is reused, so a late, stale or doubled completion is recognised and never applied.

@frozen
public struct CompletionToken: Equatable, Sendable {
    public let rawValue: UInt64

    @inlinable
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    @inlinable
    public init(slotIndex: UInt32, generation: UInt32) {
        rawValue = UInt64(generation) << 32 | UInt64(slotIndex)
    }

    @inlinable public var slotIndex: UInt32 { UInt32(truncatingIfNeeded: rawValue) }
    @inlinable public var generation: UInt32 { UInt32(truncatingIfNeeded: rawValue >> 32) }
}
