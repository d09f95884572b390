// RESP2, the protocol Redis speaks (https://redis.io/docs/latest/develop/reference/protocol-spec/),
// for the key-value backend: commands written into memory the caller owns, replies parsed in place
// with a limit on everything. Pure: no allocation, no system call, no Foundation. Debian 12's
// hiredis (0.14.1) allocates per command and per reply, so the backend speaks RESP itself.

/// Writes commands — arrays of bulk strings, the only form a client sends — into a buffer the
/// caller owns. A command that does not fit leaves the buffer as it was (`begin` marks, a failed
/// part rolls back), so a full buffer is a clean "send what you have first".
public struct RESPCommandWriter {
    public let base: UnsafeMutableRawPointer
    public let capacity: Int
    /// Bytes written so far (complete commands, plus the one being written).
    public private(set) var count = 0
    /// Where the command being written began, and its parts still to come.
    var commandStart = 0
    var partsLeft = 0

    public init(into buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.baseAddress != nil && buffer.count >= 16, "a command buffer of at least 16 bytes")
        base = buffer.baseAddress!
        capacity = buffer.count
    }

    /// Bytes of complete commands (what may be sent).
    public var completeBytes: Int { partsLeft == 0 ? count : commandStart }

    /// Starts a command of `parts` arguments (the command name counts). False: no room.
    @_noAllocation @_noLocks
    public mutating func begin(parts: Int) -> Bool {
        precondition(partsLeft == 0, "the previous command has \(partsLeft) parts missing")
        precondition(parts >= 1 && parts <= 1 << 20)
        commandStart = count
        guard put(UInt8(ascii: "*")), put(decimal: Int64(parts)), putLineEnd() else { return rollback() }
        partsLeft = parts
        return true
    }

    /// One argument's bytes (binary safe). False: no room, and the command is gone.
    @_noAllocation @_noLocks
    public mutating func part(_ bytes: UnsafeRawBufferPointer) -> Bool {
        precondition(partsLeft > 0, "more parts than the command announced")
        guard put(UInt8(ascii: "$")), put(decimal: Int64(bytes.count)), putLineEnd(), put(bytes), putLineEnd() else {
            return rollback()
        }
        partsLeft -= 1
        return true
    }

    /// An integer argument, in decimal (how Redis takes numbers).
    @_noAllocation @_noLocks
    public mutating func part(_ value: Int64) -> Bool {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        return withUnsafeMutableBytes(of: &digits) { scratch in
            let length = RESPCommandWriter.decimal(value, into: scratch)
            return part(UnsafeRawBufferPointer(rebasing: scratch[0..<length]))
        }
    }

    /// Room for one argument of `byteCount` bytes that the caller fills (file data gathered from
    /// guest memory straight into the command): its header and line end are written, and the
    /// returned address is where the bytes go. Nil: no room, and the command is gone.
    @_noAllocation @_noLocks
    public mutating func partSpace(byteCount: Int) -> UnsafeMutableRawPointer? {
        precondition(partsLeft > 0, "more parts than the command announced")
        precondition(byteCount >= 0)
        guard put(UInt8(ascii: "$")), put(decimal: Int64(byteCount)), putLineEnd(), byteCount + 2 <= capacity - count else {
            _ = rollback()
            return nil
        }
        let space = base + count
        count += byteCount
        _ = putLineEnd()
        partsLeft -= 1
        return space
    }

    /// A literal argument (a command name, a key prefix written in the source).
    public mutating func part(_ text: StaticString) -> Bool {
        part(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    /// Forgets everything written (after it was sent).
    public mutating func reset() {
        precondition(partsLeft == 0, "reset inside a command")
        count = 0
        commandStart = 0
    }

    mutating func rollback() -> Bool {
        count = commandStart
        partsLeft = 0
        return false
    }

    mutating func put(_ byte: UInt8) -> Bool {
        guard count < capacity else { return false }
        base.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
        count += 1
        return true
    }

    mutating func put(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count <= capacity - count else { return false }
        if let source = bytes.baseAddress, bytes.count > 0 { (base + count).copyMemory(from: source, byteCount: bytes.count) }
        count += bytes.count
        return true
    }

    mutating func putLineEnd() -> Bool { put(13) && put(10) }

    mutating func put(decimal value: Int64) -> Bool {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        return withUnsafeMutableBytes(of: &digits) { scratch in
            put(UnsafeRawBufferPointer(rebasing: scratch[0..<RESPCommandWriter.decimal(value, into: scratch)]))
        }
    }

    /// `value` in decimal at the start of `scratch` (at least 20 bytes); its length.
    static func decimal(_ value: Int64, into scratch: UnsafeMutableRawBufferPointer) -> Int {
        precondition(scratch.count >= 20)
        var magnitude = value.magnitude
        var length = 0
        repeat {
            scratch[length] = UInt8(ascii: "0") + UInt8(magnitude % 10)
            magnitude /= 10
            length += 1
        } while magnitude > 0
        if value < 0 {
            scratch[length] = UInt8(ascii: "-")
            length += 1
        }
        // Written backwards: turn it round.
        var (low, high) = (0, length - 1)
        while low < high {
            scratch.swapAt(low, high)
            low += 1
            high -= 1
        }
        return length
    }
}
