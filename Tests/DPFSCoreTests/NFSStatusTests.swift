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
