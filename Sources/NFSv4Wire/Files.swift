// The operations that make, open, change and list files (RFC 8881 §18.16 OPEN, §18.2 CLOSE, §18.4
// CREATE, §18.30 SETATTR, §18.23 READDIR, §18.26 RENAME, §18.9 LINK, §18.24 READLINK, §18.14
// LOOKUPP), and the attributes a client sets (`fattr4` written: size, mode, numeric owners, times).

/// Attributes to set (CREATE, OPEN's create, SETATTR); nil = leave as the server decides.
public struct NFSv4SetAttributes: Equatable, Sendable {
    public enum Time: Equatable, Sendable {
        case server
        case client(NFSv4Time)
    }

    public var size: UInt64?
    public var mode: UInt32?
    public var owner: UInt32?
    public var ownerGroup: UInt32?
    public var accessTime: Time?
    public var modifyTime: Time?

    public init(size: UInt64? = nil, mode: UInt32? = nil, owner: UInt32? = nil, ownerGroup: UInt32? = nil,
                accessTime: Time? = nil, modifyTime: Time? = nil) {
        self.size = size
        self.mode = mode
        self.owner = owner
        self.ownerGroup = ownerGroup
        self.accessTime = accessTime
        self.modifyTime = modifyTime
    }

    /// Attribute numbers of the settable attributes, in the order their values travel.
    public static let sizeBit = 4, modeBit = 33, ownerBit = 36, ownerGroupBit = 37, accessTimeSetBit = 48, modifyTimeSetBit = 54

    public var mask: NFSv4Bitmap {
        var bitmap = NFSv4Bitmap()
        if size != nil { bitmap.insert(Self.sizeBit) }
        if mode != nil { bitmap.insert(Self.modeBit) }
        if owner != nil { bitmap.insert(Self.ownerBit) }
        if ownerGroup != nil { bitmap.insert(Self.ownerGroupBit) }
        if accessTime != nil { bitmap.insert(Self.accessTimeSetBit) }
        if modifyTime != nil { bitmap.insert(Self.modifyTimeSetBit) }
        return bitmap
    }
}

/// How OPEN names its file (`open_claim4`).
public enum NFSv4OpenClaim {
    /// CLAIM_NULL: `name` in the current (directory) handle.
    case name(UnsafeRawBufferPointer)
    /// CLAIM_FH (4.1): the current handle is the file.
    case handle
    /// CLAIM_PREVIOUS: reclaim after a server restart, during grace (the current handle is the file).
    case previous
}

/// Whether and how OPEN creates (`openflag4`, `createhow4`).
public enum NFSv4OpenCreate: Equatable, Sendable {
    case none
    case unchecked(NFSv4SetAttributes)
    case guarded(NFSv4SetAttributes)
    /// EXCLUSIVE4_1: created once for this verifier, safe to send again.
    case exclusive(verifier: UInt64, NFSv4SetAttributes)
    /// NFSv4.0's EXCLUSIVE4: the verifier alone (the attributes are set after, by SETATTR).
    case exclusive40(verifier: UInt64)
}

public enum NFSv4ShareAccess {
    public static let read: UInt32 = 1
    public static let write: UInt32 = 2
    public static let both: UInt32 = 3
    /// OPEN4_SHARE_ACCESS_WANT_NO_DELEG (4.1): the engine has no back channel to recall one.
    public static let wantNoDelegation: UInt32 = 0x0400
}

/// OPEN's result.
public struct NFSv4OpenResult: Equatable, Sendable {
    public var stateid: NFSv4Stateid
    public var changeAfter: UInt64
    /// OPEN4_RESULT_CONFIRM (2, 4.0 only) and OPEN4_RESULT_LOCKTYPE_POSIX (4).
    public var flags: UInt32
    public var attributesSet: NFSv4Bitmap
    /// `open_delegation_type4` granted (0 or 3: none); the engine asks for none.
    public var delegation: UInt32

    public var needsConfirm: Bool { flags & 2 != 0 }
}

/// One READDIR entry: the bytes it names stay valid as long as the reply buffer does.
public struct NFSv4DirectoryEntry {
    public var cookie: UInt64
    public var name: UnsafeRawBufferPointer
    public var attributes: NFSv4Attributes
}

/// `nfs_ftype4` values CREATE makes.
public enum NFSv4CreateType {
    case directory
    case symlink(UnsafeRawBufferPointer)
    case block(major: UInt32, minor: UInt32)
    case character(major: UInt32, minor: UInt32)
    case socket
    case fifo
}

extension CompoundWriter {
    public static let nameBytesMax = 255
    public static let linkBytesMax = 4096

    public mutating func open(clientID: UInt64, owner: UnsafeRawBufferPointer, access: UInt32, deny: UInt32 = 0,
                              create: NFSv4OpenCreate, claim: NFSv4OpenClaim, seqid: UInt32 = 0) {
        precondition(!owner.isEmpty && owner.count <= Self.ownerBytesMax)
        operation(.open)
        xdr.u32(seqid)
        xdr.u32(access)
        xdr.u32(deny)
        xdr.u64(clientID)
        xdr.opaque(owner)
        switch create {
        case .none: xdr.u32(0)
        case .unchecked(let attributes): xdr.u32(1); xdr.u32(0); setAttributes(attributes)
        case .guarded(let attributes): xdr.u32(1); xdr.u32(1); setAttributes(attributes)
        case .exclusive(let verifier, let attributes): xdr.u32(1); xdr.u32(3); xdr.u64(verifier); setAttributes(attributes)
        case .exclusive40(let verifier): xdr.u32(1); xdr.u32(2); xdr.u64(verifier)
        }
        switch claim {
        case .name(let name): precondition(name.count <= Self.nameBytesMax); xdr.u32(0); xdr.opaque(name)
        case .previous: xdr.u32(1); xdr.u32(0)   // delegate_type: none held
        case .handle: xdr.u32(4)
        }
    }

    public mutating func close(_ stateid: NFSv4Stateid, seqid: UInt32 = 0) {
        operation(.close)
        xdr.u32(seqid)
        self.stateid(stateid)
    }

    public mutating func create(_ type: NFSv4CreateType, name: UnsafeRawBufferPointer, attributes: NFSv4SetAttributes) {
        precondition(name.count <= Self.nameBytesMax)
        operation(.create)
        switch type {
        case .directory: xdr.u32(2)
        case .symlink(let target): precondition(target.count <= Self.linkBytesMax); xdr.u32(5); xdr.opaque(target)
        case .block(let major, let minor): xdr.u32(3); xdr.u32(major); xdr.u32(minor)
        case .character(let major, let minor): xdr.u32(4); xdr.u32(major); xdr.u32(minor)
        case .socket: xdr.u32(6)
        case .fifo: xdr.u32(7)
        }
        xdr.opaque(name)
        setAttributes(attributes)
    }

    public mutating func setattr(_ stateid: NFSv4Stateid, _ attributes: NFSv4SetAttributes) {
        operation(.setattr)
        self.stateid(stateid)
        setAttributes(attributes)
    }

    public mutating func readdir(cookie: UInt64, verifier: UInt64, directoryBytes: UInt32, replyBytes: UInt32,
                                 _ mask: NFSv4Bitmap) {
        operation(.readdir)
        xdr.u64(cookie)
        xdr.u64(verifier)
        xdr.u32(directoryBytes)
        xdr.u32(replyBytes)
        bitmap(mask)
    }

    /// RENAME from the saved handle's directory to the current handle's.
    public mutating func rename(_ old: UnsafeRawBufferPointer, to new: UnsafeRawBufferPointer) {
        precondition(old.count <= Self.nameBytesMax && new.count <= Self.nameBytesMax)
        operation(.rename)
        xdr.opaque(old)
        xdr.opaque(new)
    }

    /// LINK the saved handle's file as `name` in the current handle's directory.
    public mutating func link(_ name: UnsafeRawBufferPointer) {
        precondition(name.count <= Self.nameBytesMax)
        operation(.link)
        xdr.opaque(name)
    }

    public mutating func readlink() { operation(.readlink) }
    public mutating func lookupp() { operation(.lookupp) }

    /// `fattr4` of what is to be set: the mask, then the values in one opaque.
    mutating func setAttributes(_ attributes: NFSv4SetAttributes) {
        bitmap(attributes.mask)
        guard let lengthAt = xdr.placeholder() else { return }
        let start = xdr.position
        if let size = attributes.size { xdr.u64(size) }
        if let mode = attributes.mode { xdr.u32(mode) }
        if let owner = attributes.owner { decimal(owner) }
        if let group = attributes.ownerGroup { decimal(group) }
        if let time = attributes.accessTime { setTime(time) }
        if let time = attributes.modifyTime { setTime(time) }
        guard !xdr.overflowed else { return }
        xdr.patch(lengthAt, UInt32(xdr.position - start))
    }

    /// A numeric owner as the string "1000" (the server is set to numeric owners).
    mutating func decimal(_ value: UInt32) {
        var digits: (UInt64, UInt64) = (0, 0)
        var count = 0
        withUnsafeMutableBytes(of: &digits) { raw in
            var rest = value
            repeat {
                raw[9 - count] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
                count += 1
            } while rest > 0
            xdr.opaque(UnsafeRawBufferPointer(rebasing: raw[(10 - count)..<10]))
        }
    }

    mutating func setTime(_ time: NFSv4SetAttributes.Time) {
        switch time {
        case .server: xdr.u32(0)
        case .client(let value): xdr.u32(1); xdr.u64(UInt64(bitPattern: value.seconds)); xdr.u32(value.nanoseconds)
        }
    }
}

extension CompoundReader {
    public mutating func openResult() throws(XDRError) -> NFSv4OpenResult {
        let stateid = try stateidResult()
        let change = try changeInfo()
        let flags = try xdr.u32()
        let set = try resultBitmap()
        let delegation = try delegationResult()
        return NFSv4OpenResult(stateid: stateid, changeAfter: change.after, flags: flags, attributesSet: set,
                               delegation: delegation)
    }

    /// `open_delegation4`, read whole; its type.
    mutating func delegationResult() throws(XDRError) -> UInt32 {
        let at = xdr.position
        let type = try xdr.u32()
        switch type {
        case 0: break
        case 1, 2:          // read / write delegation: stateid, recall, [space limit], permissions
            _ = try stateidResult()
            _ = try xdr.bool()
            if type == 2 {
                let limitAt = xdr.position
                let limit = try xdr.u32()
                switch limit {
                case 1: _ = try xdr.u64()
                case 2: _ = try xdr.u64()
                default: throw .invalid(at: limitAt, value: limit)
                }
            }
            _ = try xdr.u64()   // acetype, aceflag
            _ = try xdr.u32()   // acemask
            _ = try xdr.opaque(limit: Self.serverOwnerBytesMax)
        case 3:             // OPEN_DELEGATE_NONE_EXT: why, and for CONTENTION (1) and RESOURCE (2) a flag
            let why = try xdr.u32()
            if why == 1 || why == 2 { _ = try xdr.bool() }
        default: throw .invalid(at: at, value: type)
        }
        return type
    }

    /// A `stateid4` (CLOSE's result, and inside others).
    public mutating func stateidResult() throws(XDRError) -> NFSv4Stateid {
        NFSv4Stateid(sequence: try xdr.u32(), other: (try xdr.u64(), try xdr.u32()))
    }

    /// CREATE's result: the directory's change after, the attributes the server set.
    public mutating func createResult() throws(XDRError) -> (changeAfter: UInt64, attributesSet: NFSv4Bitmap) {
        let change = try changeInfo()
        return (change.after, try resultBitmap())
    }

    /// SETATTR's `attrsset`, which follows its status whether or not it is OK.
    public mutating func setattrResult() throws(XDRError) -> NFSv4Bitmap { try resultBitmap() }

    /// READDIR's cookie verifier (after an OK status); entries follow, read by `directoryEntry`.
    public mutating func readdirVerifier() throws(XDRError) -> UInt64 { try xdr.u64() }

    /// The next entry, or nil at the end of the list (then `readdirEnd` says whether the directory
    /// ended too).
    public mutating func directoryEntry() throws(XDRError) -> NFSv4DirectoryEntry? {
        guard try xdr.bool() else { return nil }
        let cookie = try xdr.u64()
        let name = try xdr.opaque(limit: CompoundWriter.nameBytesMax)
        return NFSv4DirectoryEntry(cookie: cookie, name: name, attributes: try NFSv4Attributes.read(&xdr, lenient: true))
    }

    public mutating func readdirEnd() throws(XDRError) -> Bool { try xdr.bool() }

    public mutating func renameResult() throws(XDRError) -> (sourceAfter: UInt64, targetAfter: UInt64) {
        (try changeInfo().after, try changeInfo().after)
    }

    /// READLINK's target: any length the reply holds (the caller refuses one over PATH_MAX with
    /// ENAMETOOLONG, as over NFSv3, rather than as a malformed reply).
    public mutating func readlinkResult() throws(XDRError) -> UnsafeRawBufferPointer {
        try xdr.opaque(limit: Self.readlinkBytesMax)
    }

    public static let readlinkBytesMax = 1 << 20
}
