// COMPOUND4args written and COMPOUND4res read (RFC 7530 §16.2, RFC 8881 §18.46): one writer
// method per operation the backend sends, one reader method per result body it reads. The writer
// patches the operation count at the end; the reader checks that each result is the operation the
// caller sent, in order, so a reply for another request cannot be taken for this one's.

/// `stateid4`: a sequence number and 12 opaque bytes.
public struct NFSv4Stateid: Equatable, Sendable {
    public var sequence: UInt32
    public var other: (UInt64, UInt32)

    public init(sequence: UInt32 = 0, other: (UInt64, UInt32) = (0, 0)) {
        self.sequence = sequence
        self.other = other
    }

    /// The anonymous stateid (all zeros): I/O without an open, as NFSv3 does.
    public static let anonymous = NFSv4Stateid()

    public static func == (a: NFSv4Stateid, b: NFSv4Stateid) -> Bool {
        a.sequence == b.sequence && a.other == b.other
    }
}

/// WRITE's `stable_how4`.
public enum NFSv4Stability: UInt32, Sendable {
    case unstable = 0, dataSync = 1, fileSync = 2
}

/// Writes one COMPOUND4args: `begin`, the operations, `finish`.
public struct CompoundWriter {
    public static let handleBytesMax = 128
    public static let operationsMax = 16

    public var xdr: XDRWriter
    var countAt = 0
    public private(set) var operations = 0

    /// Starts a COMPOUND with an empty tag.
    public init(buffer: UnsafeMutableRawBufferPointer, minorVersion: UInt32) {
        precondition(minorVersion <= 2)
        xdr = XDRWriter(buffer: buffer)
        xdr.u32(0)                      // tag: empty
        xdr.u32(minorVersion)
        countAt = xdr.placeholder() ?? 0
    }

    mutating func operation(_ operation: NFSv4Operation) {
        precondition(operations < Self.operationsMax, "a COMPOUND of more than \(Self.operationsMax) operations")
        operations += 1
        xdr.u32(operation.rawValue)
    }

    /// The COMPOUND's length in bytes, or nil if it did not fit its buffer.
    public mutating func finish() -> Int? {
        guard !xdr.overflowed else { return nil }
        xdr.patch(countAt, UInt32(operations))
        return xdr.position
    }

    public mutating func putfh(_ handle: UnsafeRawBufferPointer) {
        precondition(handle.count <= Self.handleBytesMax)
        operation(.putfh)
        xdr.opaque(handle)
    }

    public mutating func putrootfh() { operation(.putrootfh) }
    public mutating func getfh() { operation(.getfh) }
    public mutating func savefh() { operation(.savefh) }
    public mutating func restorefh() { operation(.restorefh) }

    public mutating func getattr(_ mask: NFSv4Bitmap) {
        operation(.getattr)
        bitmap(mask)
    }

    public mutating func lookup(_ name: UnsafeRawBufferPointer) {
        operation(.lookup)
        xdr.opaque(name)
    }

    public mutating func access(_ bits: UInt32) {
        operation(.access)
        xdr.u32(bits)
    }

    public mutating func read(_ stateid: NFSv4Stateid, offset: UInt64, count: UInt32) {
        operation(.read)
        self.stateid(stateid)
        xdr.u64(offset)
        xdr.u32(count)
    }

    /// WRITE's arguments up to its data; returns where `byteCount` data bytes go (nil: no room).
    public mutating func write(_ stateid: NFSv4Stateid, offset: UInt64, stability: NFSv4Stability,
                               byteCount: Int) -> UnsafeMutableRawBufferPointer? {
        operation(.write)
        self.stateid(stateid)
        xdr.u64(offset)
        xdr.u32(stability.rawValue)
        return xdr.opaqueArea(byteCount: byteCount)
    }

    public mutating func commit(offset: UInt64, count: UInt32) {
        operation(.commit)
        xdr.u64(offset)
        xdr.u32(count)
    }

    public mutating func remove(_ name: UnsafeRawBufferPointer) {
        operation(.remove)
        xdr.opaque(name)
    }

    /// NFSv4.1's first operation of every COMPOUND on a session.
    public mutating func sequence(session: UnsafeRawBufferPointer, sequenceID: UInt32, slot: UInt32,
                                  highestSlot: UInt32, cacheThis: Bool) {
        precondition(session.count == 16, "a session id is 16 bytes")
        operation(.sequence)
        xdr.fixedOpaque(session)
        xdr.u32(sequenceID)
        xdr.u32(slot)
        xdr.u32(highestSlot)
        xdr.bool(cacheThis)
    }

    mutating func stateid(_ stateid: NFSv4Stateid) {
        xdr.u32(stateid.sequence)
        xdr.u64(stateid.other.0)
        xdr.u32(stateid.other.1)
    }

    mutating func bitmap(_ mask: NFSv4Bitmap) {
        if mask.words.1 == 0 {
            xdr.u32(1)
            xdr.u32(mask.words.0)
        } else {
            xdr.u32(2)
            xdr.u32(mask.words.0)
            xdr.u32(mask.words.1)
        }
    }
}

/// WRITE's result.
public struct NFSv4WriteResult: Equatable, Sendable {
    public var count: UInt32
    public var committed: NFSv4Stability
    public var verifier: UInt64
}

/// SEQUENCE's result.
public struct NFSv4SequenceResult: Equatable, Sendable {
    public var sequenceID: UInt32
    public var slot: UInt32
    public var highestSlot: UInt32
    public var targetHighestSlot: UInt32
    public var statusFlags: UInt32
}

/// Reads one COMPOUND4res: the overall status, then each operation's result in the order sent.
public struct CompoundReader {
    public static let tagBytesMax = 1024

    public var xdr: XDRReader
    /// The COMPOUND's status: that of its last operation (RFC 7530 §15.2).
    public let status: NFSv4Status
    /// Results in the reply (the server stops at the first that fails).
    public let results: Int
    public private(set) var resultsRead = 0

    /// - Parameter operationsSent: results beyond these are a lie (the server answers each
    ///   operation at most once, and stops at the first that fails).
    public init(buffer: UnsafeRawBufferPointer, operationsSent: Int = CompoundWriter.operationsMax) throws(XDRError) {
        precondition(operationsSent >= 1 && operationsSent <= CompoundWriter.operationsMax)
        xdr = XDRReader(buffer: buffer)
        status = NFSv4Status(rawValue: try xdr.u32())
        _ = try xdr.opaque(limit: Self.tagBytesMax)
        results = try xdr.count(limit: operationsSent)
    }

    /// Every result read and nothing left over: the reply was exactly what was asked.
    public func finish() throws(XDRError) {
        guard resultsRead == results else { throw .tooLong(at: xdr.position, length: results, limit: resultsRead) }
        guard xdr.remaining == 0 else { throw .tooLong(at: xdr.position, length: xdr.remaining, limit: 0) }
    }

    /// REMOVE's, RENAME's, CREATE's and LINK's `change_info4`.
    public mutating func changeInfo() throws(XDRError) -> (atomic: Bool, before: UInt64, after: UInt64) {
        (try xdr.bool(), try xdr.u64(), try xdr.u64())
    }

    /// The next result's status; it must be for `operation`.
    public mutating func next(_ operation: NFSv4Operation) throws(XDRError) -> NFSv4Status {
        guard resultsRead < results else { throw .truncated(at: xdr.position) }
        let at = xdr.position
        let number = try xdr.u32()
        guard number == operation.rawValue else { throw .invalid(at: at, value: number) }
        resultsRead += 1
        return NFSv4Status(rawValue: try xdr.u32())
    }

    /// GETFH's handle (after an OK status).
    public mutating func handle() throws(XDRError) -> UnsafeRawBufferPointer {
        try xdr.opaque(limit: CompoundWriter.handleBytesMax)
    }

    /// READ's end-of-file flag and data (after an OK status); at most `limit` bytes.
    public mutating func readData(limit: Int) throws(XDRError) -> (eof: Bool, data: UnsafeRawBufferPointer) {
        let eof = try xdr.bool()
        return (eof, try xdr.opaque(limit: limit))
    }

    public mutating func writeResult() throws(XDRError) -> NFSv4WriteResult {
        let count = try xdr.u32()
        let at = xdr.position
        let raw = try xdr.u32()
        guard let committed = NFSv4Stability(rawValue: raw) else { throw .invalid(at: at, value: raw) }
        let verifier = try xdr.u64()
        return NFSv4WriteResult(count: count, committed: committed, verifier: verifier)
    }

    public mutating func accessResult() throws(XDRError) -> (supported: UInt32, granted: UInt32) {
        (try xdr.u32(), try xdr.u32())
    }

    /// COMMIT's verifier.
    public mutating func commitVerifier() throws(XDRError) -> UInt64 { try xdr.u64() }

    /// SEQUENCE's result; the session must be `session`.
    public mutating func sequenceResult(session: UnsafeRawBufferPointer) throws(XDRError) -> NFSv4SequenceResult {
        let at = xdr.position
        let echoed = try xdr.fixedOpaque(16)
        // The value reported is the first 4 bytes of the session id the server named.
        guard echoed.elementsEqual(session) else { throw .invalid(at: at, value: echoed.loadUnaligned(as: UInt32.self).bigEndian) }
        return NFSv4SequenceResult(sequenceID: try xdr.u32(), slot: try xdr.u32(), highestSlot: try xdr.u32(),
                                   targetHighestSlot: try xdr.u32(), statusFlags: try xdr.u32())
    }

    /// SEQUENCE's result; the session must be `session`.
    public mutating func sequenceResult(session: NFSv4SessionID) throws(XDRError) -> NFSv4SequenceResult {
        let at = xdr.position
        let echoed = NFSv4SessionID(try xdr.fixedOpaque(16))
        guard echoed == session else { throw .invalid(at: at, value: UInt32(truncatingIfNeeded: echoed.bytes.0).bigEndian) }
        return NFSv4SequenceResult(sequenceID: try xdr.u32(), slot: try xdr.u32(), highestSlot: try xdr.u32(),
                                   targetHighestSlot: try xdr.u32(), statusFlags: try xdr.u32())
    }

    /// GETATTR's attributes (after an OK status).
    public mutating func attributes() throws(XDRError) -> NFSv4Attributes {
        try NFSv4Attributes.read(&xdr)
    }
}
