// NFSv4 numbers (RFC 7530 for 4.0, RFC 8881 for 4.1): operations, statuses, the attribute
// numbers the backend asks for. Tests compare each with libnfs's generated header, so a typo here
// cannot reach the wire.

/// COMPOUND operation numbers (`nfs_opnum4`).
public enum NFSv4Operation: UInt32, Sendable, CaseIterable {
    case access = 3, close = 4, commit = 5, create = 6, getattr = 9, getfh = 10, link = 11
    case lock = 12, lockt = 13, locku = 14, lookup = 15, lookupp = 16, open = 18, openConfirm = 20
    case putfh = 22, putrootfh = 24, read = 25, readdir = 26, readlink = 27, remove = 28, rename = 29
    case renew = 30, restorefh = 31, savefh = 32, setattr = 34, setclientid = 35, setclientidConfirm = 36
    case verify = 37, write = 38, releaseLockowner = 39
    // NFSv4.1
    case exchangeID = 42, createSession = 43, destroySession = 44, freeStateid = 45
    case sequence = 53, destroyClientID = 57, reclaimComplete = 58
}

/// `nfsstat4`: the statuses the backend tells apart (anything else is carried as its number).
public struct NFSv4Status: RawRepresentable, Equatable, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let ok = NFSv4Status(rawValue: 0)
    public static let perm = NFSv4Status(rawValue: 1)
    public static let noent = NFSv4Status(rawValue: 2)
    public static let io = NFSv4Status(rawValue: 5)
    public static let access = NFSv4Status(rawValue: 13)
    public static let exist = NFSv4Status(rawValue: 17)
    public static let notdir = NFSv4Status(rawValue: 20)
    public static let isdir = NFSv4Status(rawValue: 21)
    public static let inval = NFSv4Status(rawValue: 22)
    public static let fbig = NFSv4Status(rawValue: 27)
    public static let nospc = NFSv4Status(rawValue: 28)
    public static let rofs = NFSv4Status(rawValue: 30)
    public static let nametoolong = NFSv4Status(rawValue: 63)
    public static let notempty = NFSv4Status(rawValue: 66)
    public static let stale = NFSv4Status(rawValue: 70)
    public static let badhandle = NFSv4Status(rawValue: 10001)
    public static let notsupp = NFSv4Status(rawValue: 10004)
    public static let serverfault = NFSv4Status(rawValue: 10006)
    public static let delay = NFSv4Status(rawValue: 10008)
    public static let denied = NFSv4Status(rawValue: 10010)
    public static let expired = NFSv4Status(rawValue: 10011)
    public static let grace = NFSv4Status(rawValue: 10013)
    public static let clidInuse = NFSv4Status(rawValue: 10017)
    public static let staleClientid = NFSv4Status(rawValue: 10022)
    public static let staleStateid = NFSv4Status(rawValue: 10023)
    public static let oldStateid = NFSv4Status(rawValue: 10024)
    public static let badStateid = NFSv4Status(rawValue: 10025)
    public static let badSeqid = NFSv4Status(rawValue: 10026)
    public static let locksHeld = NFSv4Status(rawValue: 10037)
    public static let badsession = NFSv4Status(rawValue: 10052)
    public static let seqMisordered = NFSv4Status(rawValue: 10063)
    public static let deadsession = NFSv4Status(rawValue: 10078)
    /// RENEW (4.0): the lease is renewed, but the server cannot call the client back (the engine
    /// offers no callback service: ganesha says so once the client holds state).
    public static let cbPathDown = NFSv4Status(rawValue: 10048)
    /// VERIFY: the attributes differ.
    public static let notSame = NFSv4Status(rawValue: 10027)
}

/// Attribute numbers (`fattr4` bits) the backend reads, in the order they travel.
public enum NFSv4Attribute: Int, Sendable, CaseIterable {
    case type = 1, change = 3, size = 4, fsid = 8, fileid = 20, mode = 33, numlinks = 35
    case owner = 36, ownerGroup = 37, rawdev = 41, spaceUsed = 45, timeAccess = 47
    case timeMetadata = 52, timeModify = 53
    // Asked for by READDIR (the handle), STATFS (space, files) and at start-up (transfer limits).
    case leaseTime = 10, rdattrError = 11, filehandle = 19, filesAvailable = 21, filesFree = 22, filesTotal = 23, maxread = 30, maxwrite = 31
    case spaceAvailable = 42, spaceFree = 43, spaceTotal = 44
}

/// An attribute bitmap (`bitmap4`): words of 32 bits, bit n of word n / 32.
public struct NFSv4Bitmap: Equatable, Sendable {
    /// Two words cover every attribute the backend uses (all below 64).
    public var words: (UInt32, UInt32) = (0, 0)

    public init() {}

    public init(_ attributes: [NFSv4Attribute]) {
        for attribute in attributes { insert(attribute.rawValue) }
    }

    public mutating func insert(_ bit: Int) {
        precondition(bit >= 0 && bit < 64)
        if bit < 32 { words.0 |= 1 << UInt32(bit) } else { words.1 |= 1 << UInt32(bit - 32) }
    }

    public func contains(_ bit: Int) -> Bool {
        guard bit >= 0 && bit < 64 else { return false }
        return bit < 32 ? words.0 & (1 << UInt32(bit)) != 0 : words.1 & (1 << UInt32(bit - 32)) != 0
    }

    public static func == (a: NFSv4Bitmap, b: NFSv4Bitmap) -> Bool { a.words == b.words }

    /// The attributes the backend asks for on every GETATTR and LOOKUP.
    public static let standard = NFSv4Bitmap([.type, .change, .size, .fsid, .fileid, .mode, .numlinks, .owner, .ownerGroup,
                                              .rawdev, .spaceUsed, .timeAccess, .timeMetadata, .timeModify])
    /// READDIR's: the standard ones and each entry's handle.
    public static let listing = standard.union(NFSv4Bitmap([.filehandle]))
    /// A names-only listing: what a directory the caller may read but not search allows.
    public static let namesOnly = NFSv4Bitmap([.rdattrError])
    /// STATFS's.
    public static let statistics = NFSv4Bitmap([.filesAvailable, .filesFree, .filesTotal, .spaceAvailable, .spaceFree, .spaceTotal])
    /// Every attribute the reader knows the size of: a reply may carry only these.
    public static let known = NFSv4Bitmap(NFSv4Attribute.allCases)

    public func union(_ other: NFSv4Bitmap) -> NFSv4Bitmap {
        var result = self
        result.words = (words.0 | other.words.0, words.1 | other.words.1)
        return result
    }
}
