/// Limits a reply is parsed under; anything beyond them is a broken (or hostile) server.
public struct RESPLimits: Equatable, Sendable {
    /// A bulk string's bytes at most (file data comes in chunks no larger).
    public var bulkBytesMax: Int
    /// An array's elements at most.
    public var arrayElementsMax: Int
    /// Arrays nested at most (the replies the backend asks for nest two deep).
    public var depthMax: Int
    /// A simple string's or error's line at most, and any length or integer line.
    public var lineBytesMax: Int

    public init(bulkBytesMax: Int = 1 << 20, arrayElementsMax: Int = 1 << 16, depthMax: Int = 4, lineBytesMax: Int = 4096) {
        precondition(bulkBytesMax >= 0 && bulkBytesMax <= 512 << 20)
        precondition(arrayElementsMax >= 0 && arrayElementsMax <= Int(Int32.max))
        precondition(depthMax >= 1 && depthMax <= RESPReader.depthCapacity)
        precondition(lineBytesMax >= 32)
        self.bulkBytesMax = bulkBytesMax
        self.arrayElementsMax = arrayElementsMax
        self.depthMax = depthMax
        self.lineBytesMax = lineBytesMax
    }
}

/// One element of a reply. Strings are ranges of the caller's buffer (valid until it is compacted).
public enum RESPToken: Equatable, Sendable {
    case simpleString(Range<Int>)
    case error(Range<Int>)
    case integer(Int64)
    case bulkString(Range<Int>)
    /// `$-1` or `*-1`.
    case null
    /// An array header; its elements follow as tokens of their own.
    case array(count: Int)
}

/// Why a stream cannot be read any further (the connection is to be dropped).
public enum RESPMalformation: Equatable, Sendable {
    case unknownType(UInt8)
    case lineTooLong
    case badNumber
    case bulkTooLong
    case arrayTooLong
    case tooDeep
    case missingLineEnd
}

public enum RESPParse: Equatable, Sendable {
    /// The next token is not all there yet: read more into the buffer after `bytes`' end.
    case needMore
    /// A token; `replyComplete`: it ends a whole reply (the next token starts the next reply).
    case token(RESPToken, replyComplete: Bool)
    case malformed(RESPMalformation)
}

/// Reads replies token by token from a buffer the caller fills, never copying and never
/// allocating: each token is parsed only once it is wholly in the buffer. The caller keeps the
/// bytes from `position` on, and calls `shift(by:)` when it moves them to the buffer's start. A
/// malformed stream stays malformed.
public struct RESPReader {
    public static let depthCapacity = 8
    public let limits: RESPLimits
    /// The first byte not yet consumed.
    public private(set) var position = 0
    /// Elements still to come in each open array, innermost last.
    var remaining: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)
    public private(set) var depth = 0
    public private(set) var failure: RESPMalformation? = nil

    public init(limits: RESPLimits = RESPLimits()) { self.limits = limits }

    /// The caller dropped the first `count` consumed bytes from its buffer.
    public mutating func shift(by count: Int) {
        precondition(count >= 0 && count <= position, "only consumed bytes may be dropped")
        position -= count
    }

    /// The next token of `bytes` (the caller's whole buffer of received bytes).
    @_noAllocation @_noLocks
    public mutating func next(in bytes: UnsafeRawBufferPointer) -> RESPParse {
        if let failure { return .malformed(failure) }
        guard position < bytes.count else { return .needMore }
        guard let lineEnd = lineEnd(in: bytes) else {
            return bytes.count - position > limits.lineBytesMax + 2 ? fail(.lineTooLong) : .needMore
        }
        let type = bytes[position]
        let line = (position + 1)..<lineEnd
        switch type {
        case UInt8(ascii: "+"), UInt8(ascii: "-"):
            position = lineEnd + 2
            return element(type == UInt8(ascii: "+") ? .simpleString(line) : .error(line))
        case UInt8(ascii: ":"):
            guard let value = Self.number(bytes, line) else { return fail(.badNumber) }
            position = lineEnd + 2
            return element(.integer(value))
        case UInt8(ascii: "$"):
            return bulk(bytes, line: line, lineEnd: lineEnd)
        case UInt8(ascii: "*"):
            return array(bytes, line: line, lineEnd: lineEnd)
        default:
            return fail(.unknownType(type))
        }
    }

    mutating func bulk(_ bytes: UnsafeRawBufferPointer, line: Range<Int>, lineEnd: Int) -> RESPParse {
        guard let length = Self.number(bytes, line), length >= -1 else { return fail(.badNumber) }
        if length == -1 {
            position = lineEnd + 2
            return element(.null)
        }
        guard length <= Int64(limits.bulkBytesMax) else { return fail(.bulkTooLong) }
        let start = lineEnd + 2
        let end = start + Int(length)
        guard bytes.count >= end + 2 else { return .needMore }
        guard bytes[end] == 13, bytes[end + 1] == 10 else { return fail(.missingLineEnd) }
        position = end + 2
        return element(.bulkString(start..<end))
    }

    mutating func array(_ bytes: UnsafeRawBufferPointer, line: Range<Int>, lineEnd: Int) -> RESPParse {
        guard let count = Self.number(bytes, line), count >= -1 else { return fail(.badNumber) }
        position = lineEnd + 2
        if count == -1 { return element(.null) }
        guard count <= Int64(limits.arrayElementsMax) else { return fail(.arrayTooLong) }
        if count == 0 { return element(.array(count: 0)) }
        guard depth < limits.depthMax else { return fail(.tooDeep) }
        withUnsafeMutableBytes(of: &remaining) { $0.storeBytes(of: Int(count), toByteOffset: depth * 8, as: Int.self) }
        depth += 1
        return .token(.array(count: Int(count)), replyComplete: false)
    }

    /// A complete element: it counts against the arrays it closes; at depth 0 the reply is whole.
    mutating func element(_ token: RESPToken) -> RESPParse {
        while depth > 0 {
            let left = withUnsafeBytes(of: remaining) { $0.load(fromByteOffset: (depth - 1) * 8, as: Int.self) } - 1
            withUnsafeMutableBytes(of: &remaining) { $0.storeBytes(of: left, toByteOffset: (depth - 1) * 8, as: Int.self) }
            guard left == 0 else { return .token(token, replyComplete: false) }
            depth -= 1
        }
        return .token(token, replyComplete: true)
    }

    mutating func fail(_ reason: RESPMalformation) -> RESPParse {
        failure = reason
        return .malformed(reason)
    }

    /// Where the line starting at `position` ends (its CR), within the line limit.
    func lineEnd(in bytes: UnsafeRawBufferPointer) -> Int? {
        let searchEnd = min(bytes.count - 1, position + limits.lineBytesMax + 1)
        var index = position + 1
        while index < searchEnd {
            if bytes[index] == 13 && bytes[index + 1] == 10 { return index }
            index += 1
        }
        return nil
    }

    /// A decimal integer filling `range` exactly: an optional '-' and 1...19 digits, no overflow.
    static func number(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int64? {
        var index = range.lowerBound
        let negative = index < range.upperBound && bytes[index] == UInt8(ascii: "-")
        if negative { index += 1 }
        let digits = range.upperBound - index
        guard digits >= 1 && digits <= 19 else { return nil }
        var value: Int64 = 0
        while index < range.upperBound {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit <= 9 else { return nil }
            let (times, overflowTimes) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflowSum) = times.addingReportingOverflow(Int64(digit))
            guard !overflowTimes && !overflowSum else { return nil }
            value = sum
            index += 1
        }
        return negative ? -value : value
    }
}
