// fattr4 (RFC 7530 §5): a bitmap of the attributes present, then their values in bit order inside
// one opaque. The backend asks for a fixed set (NFSv4Bitmap.standard); a reply that claims an
// attribute outside it cannot be skipped (its size is unknown here) and is refused, as is one whose
// values run past their opaque or leave bytes over.

/// `nfstime4`: seconds and nanoseconds (checked to be below 10^9).
public struct NFSv4Time: Equatable, Sendable {
    public var seconds: Int64
    public var nanoseconds: UInt32

    public init(seconds: Int64, nanoseconds: UInt32) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
}

/// The attributes of one GETATTR (or READDIR entry), those the server sent.
public struct NFSv4Attributes: Equatable, Sendable {
    public static let valuesBytesMax = 4096
    public static let ownerBytesMax = 256

    public var present = NFSv4Bitmap()
    /// `nfs_ftype4`: 1 regular, 2 directory, 3 block, 4 character, 5 link, 6 socket, 7 fifo.
    public var type: UInt32 = 0
    public var change: UInt64 = 0
    public var size: UInt64 = 0
    public var fsid: (major: UInt64, minor: UInt64) = (0, 0)
    public var fileid: UInt64 = 0
    public var mode: UInt32 = 0
    public var numlinks: UInt32 = 0
    /// Numeric owners ("1000"); nil when the server sent a name the engine cannot map.
    public var owner: UInt32?
    public var ownerGroup: UInt32?
    public var rawdev: (major: UInt32, minor: UInt32) = (0, 0)
    public var spaceUsed: UInt64 = 0
    public var accessTime = NFSv4Time(seconds: 0, nanoseconds: 0)
    public var metadataTime = NFSv4Time(seconds: 0, nanoseconds: 0)
    public var modifyTime = NFSv4Time(seconds: 0, nanoseconds: 0)
    /// Where the entry's handle lies in the reply buffer (READDIR), -1 when not sent.
    public var handleOffset = -1
    public var handleLength = 0
    public var files: (available: UInt64, free: UInt64, total: UInt64) = (0, 0, 0)
    public var space: (available: UInt64, free: UInt64, total: UInt64) = (0, 0, 0)
    public var maxread: UInt64 = 0
    public var maxwrite: UInt64 = 0
    /// READDIR's per-entry `rdattr_error` (0: the entry's attributes came).
    public var rdattrError: UInt32 = 0
    /// `lease_time`: seconds a client's state lives without a renewal.
    public var leaseSeconds: UInt32 = 0

    public init() {}

    public static func == (a: NFSv4Attributes, b: NFSv4Attributes) -> Bool {
        a.present == b.present && a.type == b.type && a.change == b.change && a.size == b.size && a.fsid == b.fsid
            && a.fileid == b.fileid && a.mode == b.mode && a.numlinks == b.numlinks && a.owner == b.owner
            && a.ownerGroup == b.ownerGroup && a.rawdev == b.rawdev && a.spaceUsed == b.spaceUsed
            && a.accessTime == b.accessTime && a.metadataTime == b.metadataTime && a.modifyTime == b.modifyTime
            && a.handleOffset == b.handleOffset && a.handleLength == b.handleLength && a.files == b.files && a.space == b.space
            && a.maxread == b.maxread && a.maxwrite == b.maxwrite && a.rdattrError == b.rdattrError && a.leaseSeconds == b.leaseSeconds
    }

    /// Reads a `fattr4` at the reader's position. `lenient`: values that lie (a time past a second,
    /// an attribute not asked for, a length inside that runs over) leave the attributes empty
    /// instead of failing the reply, as long as the fattr4's own frame holds: READDIR then keeps
    /// the other entries, and this one is listed by name alone.
    static func read(_ xdr: inout XDRReader, lenient: Bool = false) throws(XDRError) -> NFSv4Attributes {
        guard lenient else { return try readStrict(&xdr) }
        let start = xdr.position
        do throws(XDRError) {
            return try readStrict(&xdr)
        } catch {
            // The frame: the bitmap's words, then the values' opaque. Skip both or fail.
            xdr = XDRReader(buffer: xdr.buffer, position: start)
            let words = try xdr.count(limit: 8)
            try xdr.skip(words * 4)
            _ = try xdr.opaque(limit: valuesBytesMax)
            return NFSv4Attributes()
        }
    }

    static func readStrict(_ xdr: inout XDRReader) throws(XDRError) -> NFSv4Attributes {
        var attributes = NFSv4Attributes()
        let words = try xdr.count(limit: 8)
        for word in 0..<words {
            let at = xdr.position
            let bits = try xdr.u32()
            for bit in 0..<32 where bits & (1 << UInt32(bit)) != 0 {
                let number = word * 32 + bit
                guard NFSv4Bitmap.known.contains(number) else { throw .invalid(at: at, value: UInt32(number)) }
                attributes.present.insert(number)
            }
        }
        // The values are read where they lie in the reply, so an error names its place there.
        let start = xdr.position + 4
        let values = try xdr.opaque(limit: valuesBytesMax)
        var inner = XDRReader(buffer: UnsafeRawBufferPointer(rebasing: xdr.buffer[..<(start + values.count)]), position: start)
        // In ascending attribute number: the order they travel in.
        // (By bit number, not over a sorted list of cases: that would allocate on every reply.)
        for bit in 0..<64 where attributes.present.contains(bit) {
            try attributes.readValue(NFSv4Attribute(rawValue: bit)!, &inner)
        }
        guard inner.remaining == 0 else { throw .tooLong(at: inner.position, length: inner.remaining, limit: 0) }
        return attributes
    }

    mutating func readValue(_ attribute: NFSv4Attribute, _ xdr: inout XDRReader) throws(XDRError) {
        switch attribute {
        case .type: type = try xdr.u32()
        case .change: change = try xdr.u64()
        case .size: size = try xdr.u64()
        case .fsid: fsid = (try xdr.u64(), try xdr.u64())
        case .fileid: fileid = try xdr.u64()
        case .mode: mode = try xdr.u32()
        case .numlinks: numlinks = try xdr.u32()
        case .owner: owner = Self.numeric(try xdr.opaque(limit: Self.ownerBytesMax))
        case .ownerGroup: ownerGroup = Self.numeric(try xdr.opaque(limit: Self.ownerBytesMax))
        case .rawdev: rawdev = (try xdr.u32(), try xdr.u32())
        case .spaceUsed: spaceUsed = try xdr.u64()
        case .timeAccess: accessTime = try Self.time(&xdr)
        case .timeMetadata: metadataTime = try Self.time(&xdr)
        case .timeModify: modifyTime = try Self.time(&xdr)
        case .rdattrError: rdattrError = try xdr.u32()
        case .leaseTime: leaseSeconds = try xdr.u32()
        case .filehandle:
            let handle = try xdr.opaque(limit: CompoundWriter.handleBytesMax)
            handleOffset = handle.baseAddress.map { $0 - xdr.buffer.baseAddress! } ?? xdr.position
            handleLength = handle.count
        case .filesAvailable: files.available = try xdr.u64()
        case .filesFree: files.free = try xdr.u64()
        case .filesTotal: files.total = try xdr.u64()
        case .maxread: maxread = try xdr.u64()
        case .maxwrite: maxwrite = try xdr.u64()
        case .spaceAvailable: space.available = try xdr.u64()
        case .spaceFree: space.free = try xdr.u64()
        case .spaceTotal: space.total = try xdr.u64()
        }
    }

    static func time(_ xdr: inout XDRReader) throws(XDRError) -> NFSv4Time {
        let seconds = try xdr.i64()
        let at = xdr.position
        let nanoseconds = try xdr.u32()
        guard nanoseconds < 1_000_000_000 else { throw .invalid(at: at, value: nanoseconds) }
        return NFSv4Time(seconds: seconds, nanoseconds: nanoseconds)
    }

    /// "1000" → 1000; anything else (a name, a sign, more than 32 bits) → nil.
    static func numeric(_ bytes: UnsafeRawBufferPointer) -> UInt32? {
        guard !bytes.isEmpty, bytes.count <= 10 else { return nil }
        var value: UInt64 = 0
        for byte in bytes {
            guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + UInt64(byte - UInt8(ascii: "0"))
        }
        return value <= UInt64(UInt32.max) ? UInt32(value) : nil
    }
}
