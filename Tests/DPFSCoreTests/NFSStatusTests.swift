import CDPFS
import FUSEWire
import Glibc
import NFSBackend
import Testing

/// Specs/nfs-errno.md against NFSStatus.errno and against Linux's errno numbers.
@Suite struct NFSStatusTests {
    /// The errno names the table may use, with the values Glibc's headers give them.
    static let errnoValues: [String: Int32] = [
        "EPERM": EPERM, "ENOENT": ENOENT, "EIO": EIO, "ENXIO": ENXIO, "EACCES": EACCES, "EEXIST": EEXIST,
        "EXDEV": EXDEV, "ENODEV": ENODEV, "ENOTDIR": ENOTDIR, "EISDIR": EISDIR, "EINVAL": EINVAL, "EFBIG": EFBIG,
        "ENOSPC": ENOSPC, "EROFS": EROFS, "EMLINK": EMLINK, "ENAMETOOLONG": ENAMETOOLONG, "ENOTEMPTY": ENOTEMPTY,
        "EDQUOT": EDQUOT, "ESTALE": ESTALE, "EREMOTE": EREMOTE, "EOPNOTSUPP": EOPNOTSUPP, "EREMOTEIO": EREMOTEIO,
        "EAGAIN": EAGAIN,
    ]

    @Test("Specs/nfs-errno.md has one row per nfsstat3 failure, each matching the code and Linux's errno numbers")
    func tableMatchesCode() throws {
        let rows = try SpecCoverageTests.rows(of: "nfs-errno.md", between: "nfsstat3")
        let statuses = rows.compactMap { UInt32($0[1]) }
        #expect(statuses.count == rows.count, "every row's value is a number")
        #expect(Set(statuses) == Set(NFSStatus.allV3.filter { $0 != 0 }), "one row per failure status RFC 1813 defines")
        #expect(statuses.count == Set(statuses).count, "no status twice")
        for row in rows {
            let status = try #require(UInt32(row[1]))
            let errnoName = row[2]
            let errnoValue = try #require(Int32(row[3]), "row \(row[0]): errno value")
            let linux = try #require(Self.errnoValues[errnoName], "row \(row[0]): \(errnoName) is not a known errno name")
            #expect(linux == errnoValue, "row \(row[0]): \(errnoName) is \(linux) on Linux, the table says \(errnoValue)")
            #expect(NFSStatus.errno(v3: status).rawValue == errnoValue,
                    "row \(row[0]): the code answers \(NFSStatus.errno(v3: status).rawValue), the table \(errnoValue)")
        }
    }

    /// Every failure value of libnfs's `nfsstat4` (generated from RFC 7530's .x).
    static let libnfsV4: [(String, UInt32)] = [
        ("NFS4ERR_DELAY", NFS4ERR_DELAY.rawValue), ("NFS4ERR_SAME", NFS4ERR_SAME.rawValue), ("NFS4ERR_DENIED", NFS4ERR_DENIED.rawValue),
        ("NFS4ERR_EXPIRED", NFS4ERR_EXPIRED.rawValue), ("NFS4ERR_LOCKED", NFS4ERR_LOCKED.rawValue), ("NFS4ERR_GRACE", NFS4ERR_GRACE.rawValue),
        ("NFS4ERR_FHEXPIRED", NFS4ERR_FHEXPIRED.rawValue), ("NFS4ERR_SHARE_DENIED", NFS4ERR_SHARE_DENIED.rawValue),
        ("NFS4ERR_WRONGSEC", NFS4ERR_WRONGSEC.rawValue), ("NFS4ERR_CLID_INUSE", NFS4ERR_CLID_INUSE.rawValue),
        ("NFS4ERR_RESOURCE", NFS4ERR_RESOURCE.rawValue), ("NFS4ERR_MOVED", NFS4ERR_MOVED.rawValue),
        ("NFS4ERR_NOFILEHANDLE", NFS4ERR_NOFILEHANDLE.rawValue), ("NFS4ERR_MINOR_VERS_MISMATCH", NFS4ERR_MINOR_VERS_MISMATCH.rawValue),
        ("NFS4ERR_STALE_CLIENTID", NFS4ERR_STALE_CLIENTID.rawValue), ("NFS4ERR_STALE_STATEID", NFS4ERR_STALE_STATEID.rawValue),
        ("NFS4ERR_OLD_STATEID", NFS4ERR_OLD_STATEID.rawValue), ("NFS4ERR_BAD_STATEID", NFS4ERR_BAD_STATEID.rawValue),
        ("NFS4ERR_BAD_SEQID", NFS4ERR_BAD_SEQID.rawValue), ("NFS4ERR_NOT_SAME", NFS4ERR_NOT_SAME.rawValue),
        ("NFS4ERR_LOCK_RANGE", NFS4ERR_LOCK_RANGE.rawValue), ("NFS4ERR_SYMLINK", NFS4ERR_SYMLINK.rawValue),
        ("NFS4ERR_RESTOREFH", NFS4ERR_RESTOREFH.rawValue), ("NFS4ERR_LEASE_MOVED", NFS4ERR_LEASE_MOVED.rawValue),
        ("NFS4ERR_ATTRNOTSUPP", NFS4ERR_ATTRNOTSUPP.rawValue), ("NFS4ERR_NO_GRACE", NFS4ERR_NO_GRACE.rawValue),
        ("NFS4ERR_RECLAIM_BAD", NFS4ERR_RECLAIM_BAD.rawValue), ("NFS4ERR_RECLAIM_CONFLICT", NFS4ERR_RECLAIM_CONFLICT.rawValue),
        ("NFS4ERR_BADZDR", NFS4ERR_BADZDR.rawValue), ("NFS4ERR_LOCKS_HELD", NFS4ERR_LOCKS_HELD.rawValue),
        ("NFS4ERR_OPENMODE", NFS4ERR_OPENMODE.rawValue), ("NFS4ERR_BADOWNER", NFS4ERR_BADOWNER.rawValue),
        ("NFS4ERR_BADCHAR", NFS4ERR_BADCHAR.rawValue), ("NFS4ERR_BADNAME", NFS4ERR_BADNAME.rawValue),
        ("NFS4ERR_BAD_RANGE", NFS4ERR_BAD_RANGE.rawValue), ("NFS4ERR_LOCK_NOTSUPP", NFS4ERR_LOCK_NOTSUPP.rawValue),
        ("NFS4ERR_OP_ILLEGAL", NFS4ERR_OP_ILLEGAL.rawValue), ("NFS4ERR_DEADLOCK", NFS4ERR_DEADLOCK.rawValue),
        ("NFS4ERR_FILE_OPEN", NFS4ERR_FILE_OPEN.rawValue), ("NFS4ERR_ADMIN_REVOKED", NFS4ERR_ADMIN_REVOKED.rawValue),
        ("NFS4ERR_CB_PATH_DOWN", NFS4ERR_CB_PATH_DOWN.rawValue),
    ]

    @Test("Specs/nfs-errno.md's NFSv4 table matches the code and libnfs's numbers; every other v4 status is EIO, those below 10009 as NFSv3's")
    func v4TableMatchesCode() throws {
        let rows = try SpecCoverageTests.rows(of: "nfs-errno.md", between: "nfsstat4")
        #expect(!rows.isEmpty)
        let named = Dictionary(uniqueKeysWithValues: Self.libnfsV4)
        var listed = Set<UInt32>()
        for row in rows {
            let status = try #require(UInt32(row[1]))
            #expect(named[row[0]] == status, "row \(row[0]): libnfs numbers it \(String(describing: named[row[0]]))")
            let errnoValue = try #require(Int32(row[3]))
            #expect(Self.errnoValues[row[2]] == errnoValue, "row \(row[0]): \(row[2]) is not \(errnoValue) on Linux")
            #expect(NFSStatus.errno(v4: status).rawValue == errnoValue, "row \(row[0]): the code answers \(NFSStatus.errno(v4: status).rawValue)")
            listed.insert(status)
        }
        for (name, status) in Self.libnfsV4 where !listed.contains(status) {
            #expect(NFSStatus.errno(v4: status) == .io, "\(name) is in no row, so it must be EIO")
        }
        for status in NFSStatus.allV3 where status != 0 && status < 10009 {
            #expect(NFSStatus.errno(v4: status) == NFSStatus.errno(v3: status), "v4 status \(status) numbers as v3's")
        }
    }

    @Test("a status no RFC defines is EIO, never a number the FUSE protocol cannot carry")
    func unknownStatusIsEIO() {
        for status: UInt32 in [3, 4, 7, 64, 72, 9999, 10009, 20000, UInt32.max] {
            #expect(NFSStatus.errno(v3: status) == .io, "status \(status)")
        }
        // The negative space: no row maps to something outside 1...511.
        for status in NFSStatus.allV3 where status != 0 {
            let value = NFSStatus.errno(v3: status).rawValue
            #expect(value >= 1 && value < 512)
        }
    }
}
