// XDR (RFC 4506), the encoding NFSv4 COMPOUNDs travel in: big-endian 4-byte units, opaque data
// padded to 4. Written into and read from caller memory (a request's preallocated buffer), every
// length checked against the room there is: a writer that runs out says so instead of writing
// past its buffer, a reader of a lying reply throws instead of reading past it.

/// Why a reply could not be read.
public enum XDRError: Error, Equatable, Sendable {
    /// The reply ends before the item.
    case truncated(at: Int)
    /// A length larger than the caller allows (a name, a handle, a count of items).
    case tooLong(at: Int, length: Int, limit: Int)
    /// A value outside what the protocol allows here (an enum, a bool that is not 0 or 1).
    case invalid(at: Int, value: UInt32)
}

/// Writes XDR into a fixed buffer. When an item does not fit, nothing of it is written,
/// `overflowed` becomes true and every later write is refused too: the caller checks once at the
/// end, and a too-large COMPOUND is never sent half-written.
public struct XDRWriter {
    public let buffer: UnsafeMutableRawBufferPointer
    public private(set) var position = 0
    public private(set) var overflowed = false

    public init(buffer: UnsafeMutableRawBufferPointer) {
        self.buffer = buffer
    }

    /// Room for `byteCount` more bytes, or marks the writer overflowed.
    mutating func reserve(_ byteCount: Int) -> Bool {
        guard !overflowed, byteCount >= 0, byteCount <= buffer.count - position else {
            overflowed = true
            return false
        }
        return true
    }

    public mutating func u32(_ value: UInt32) {
        guard reserve(4) else { return }
        buffer.storeBytes(of: value.bigEndian, toByteOffset: position, as: UInt32.self)
        position += 4
    }

    public mutating func u64(_ value: UInt64) {
        guard reserve(8) else { return }
        buffer.storeBytes(of: value.bigEndian, toByteOffset: position, as: UInt64.self)
        position += 8
    }

    public mutating func bool(_ value: Bool) { u32(value ? 1 : 0) }

    /// Fixed-length opaque (`opaque x[N]`): the bytes, then zeros to a multiple of 4.
    public mutating func fixedOpaque(_ bytes: UnsafeRawBufferPointer) {
        let padded = (bytes.count + 3) & ~3
        guard reserve(padded) else { return }
        if let base = bytes.baseAddress, !bytes.isEmpty {
            (buffer.baseAddress! + position).copyMemory(from: base, byteCount: bytes.count)
        }
        for index in bytes.count..<padded { buffer[position + index] = 0 }
        position += padded
    }

    /// Variable-length opaque or string (`opaque x<>`, `string x<>`): the length, then the bytes.
    public mutating func opaque(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count <= Int(UInt32.max), reserve(4 + ((bytes.count + 3) & ~3)) else {
            overflowed = true
            return
        }
        u32(UInt32(bytes.count))
        fixedOpaque(bytes)
    }

    public mutating func opaque(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { opaque($0) }
    }

    /// A length-prefixed area the caller fills afterwards (a WRITE's data copied straight in):
    /// returns where the bytes go, or nil when they do not fit.
    public mutating func opaqueArea(byteCount: Int) -> UnsafeMutableRawBufferPointer? {
        guard byteCount >= 0, byteCount <= Int(UInt32.max), reserve(4 + ((byteCount + 3) & ~3)) else {
            overflowed = true
            return nil
        }
        u32(UInt32(byteCount))
        let area = UnsafeMutableRawBufferPointer(rebasing: buffer[position..<(position + byteCount)])
        let padded = (byteCount + 3) & ~3
        for index in byteCount..<padded { buffer[position + index] = 0 }
        position += padded
        return area
    }

    /// A 4-byte slot to fill in later (a count known only at the end).
    public mutating func placeholder() -> Int? {
        guard reserve(4) else { return nil }
        let at = position
        u32(0)
        return at
    }

    public func patch(_ at: Int, _ value: UInt32) {
        precondition(at >= 0 && at + 4 <= position, "patching outside what was written")
        buffer.storeBytes(of: value.bigEndian, toByteOffset: at, as: UInt32.self)
    }
}

/// Reads XDR from a buffer, every item bounds-checked. Opaque items are returned as positions in
/// the buffer (no copy); the caller copies what it keeps.
public struct XDRReader {
    public let buffer: UnsafeRawBufferPointer
    public private(set) var position: Int

    public init(buffer: UnsafeRawBufferPointer, position: Int = 0) {
        precondition(position >= 0 && position <= buffer.count)
        self.buffer = buffer
        self.position = position
    }

    public var remaining: Int { buffer.count - position }

    mutating func need(_ byteCount: Int) throws(XDRError) {
        guard byteCount >= 0, byteCount <= buffer.count - position else { throw .truncated(at: position) }
    }

    public mutating func u32() throws(XDRError) -> UInt32 {
        try need(4)
        let value = UInt32(bigEndian: buffer.loadUnaligned(fromByteOffset: position, as: UInt32.self))
        position += 4
        return value
    }

    public mutating func u64() throws(XDRError) -> UInt64 {
        try need(8)
        let value = UInt64(bigEndian: buffer.loadUnaligned(fromByteOffset: position, as: UInt64.self))
        position += 8
        return value
    }

    public mutating func i64() throws(XDRError) -> Int64 { Int64(bitPattern: try u64()) }

    public mutating func bool() throws(XDRError) -> Bool {
        let at = position
        switch try u32() {
        case 0: return false
        case 1: return true
        case let other: throw .invalid(at: at, value: other)
        }
    }

    /// `opaque x[byteCount]`: its bytes, skipping the padding.
    public mutating func fixedOpaque(_ byteCount: Int) throws(XDRError) -> UnsafeRawBufferPointer {
        let padded = (byteCount + 3) & ~3
        try need(padded)
        let bytes = UnsafeRawBufferPointer(rebasing: buffer[position..<(position + byteCount)])
        position += padded
        return bytes
    }

    /// `opaque x<limit>` or `string x<limit>`: its bytes (at most `limit`).
    public mutating func opaque(limit: Int) throws(XDRError) -> UnsafeRawBufferPointer {
        let at = position
        let length = Int(try u32())
        guard length <= limit else { throw .tooLong(at: at, length: length, limit: limit) }
        return try fixedOpaque(length)
    }

    /// An array's element count (at most `limit`).
    public mutating func count(limit: Int) throws(XDRError) -> Int {
        let at = position
        let count = Int(try u32())
        guard count <= limit else { throw .tooLong(at: at, length: count, limit: limit) }
        return count
    }

    public mutating func skip(_ byteCount: Int) throws(XDRError) {
        let padded = (byteCount + 3) & ~3
        try need(padded)
        position += padded
    }
}
