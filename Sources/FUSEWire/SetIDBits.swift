// The set-user-ID and set-group-ID rules both backends apply when a kernel drops privileges after
// a write: one definition, so they cannot drift apart.

public enum SetIDBits {
    /// S_ISUID | S_ISGID.
    public static let mask: UInt32 = 0o6000

    /// Whether `wanted` is `current` (permission bits) with set-user-ID and/or set-group-ID taken
    /// away and nothing else changed: what a kernel without handle_killpriv_v2 sends, as the writer,
    /// to drop privileges after a write.
    @inlinable
    public static func onlyDrops(from current: UInt32, to wanted: UInt32) -> Bool {
        let current = current & 0o7777, wanted = wanted & 0o7777
        return wanted != current && wanted & ~mask == current & ~mask && wanted & mask & ~current == 0
    }
}
