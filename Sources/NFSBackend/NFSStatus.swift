import FUSEWire

// NFSv3 status → the errno the guest sees. The table is Specs/nfs-errno.md; NFSStatusTests reads
// that file and checks every row against this function, so the two cannot drift apart. Statuses
// numbered like Linux errnos below 64 map to themselves; the others are renumbered, and the
// protocol-internal ones (which Linux's own client turns into errnos above 511 the FUSE protocol
// cannot carry) are mapped to the nearest errno an application can act on.

public enum NFSStatus {
    /// NFS3ERR_XDEV: a RENAME or LINK across file systems of the server.
    public static let crossDevice: UInt32 = 18

    /// Every nfsstat3 value RFC 1813 defines (§2.6), for the table test.
    public static let allV3: [UInt32] = [
        0, 1, 2, 5, 6, 13, 17, 18, 19, 20, 21, 22, 27, 28, 30, 31, 63, 66, 69, 70, 71,
        10001, 10002, 10003, 10004, 10005, 10006, 10007, 10008,
    ]

    /// An NFSv4 status as the NFSv3 one of the nearest meaning: the stage plan and the table
    /// above take NFSv3's. Below 10009 the two protocols number alike (RFC 7530 §13.1, RFC 1813
    /// §2.6); v4's own are the rows of Specs/nfs-errno.md's second table; the rest are EIO.
    @inlinable
    public static func v3Equivalent(v4 status: UInt32) -> UInt32 {
        if status < 10009 { return status }
        switch status {
        case 10010, 10012, 10018: return 10008    // DENIED, LOCKED, RESOURCE → try again (EAGAIN)
        case 10014: return 70                     // FHEXPIRED → STALE (ESTALE)
        case 10015, 10038: return 13              // SHARE_DENIED, OPENMODE → ACCES (EACCES)
        case 10016: return 1                      // WRONGSEC → PERM (EPERM)
        case 10029: return 20                     // SYMLINK where a directory was needed → NOTDIR
        case 10039, 10040, 10041: return 22       // BADOWNER, BADCHAR, BADNAME → INVAL (EINVAL)
        default: return 5                         // GRACE past its deadline, state and session errors → IO
        }
    }

    /// The errno for a failed NFSv4 status.
    @inlinable
    public static func errno(v4 status: UInt32) -> FUSEErrno { errno(v3: v3Equivalent(v4: status)) }

    /// The errno for a failed NFSv3 status (never called with NFS3_OK). Unknown statuses are EIO.
    @inlinable
    public static func errno(v3 status: UInt32) -> FUSEErrno {
        switch status {
        case 1: return .notPermitted                 // NFS3ERR_PERM
        case 2: return .noEntry                      // NFS3ERR_NOENT
        case 5: return .io                           // NFS3ERR_IO
        case 6: return .noDeviceOrAddress            // NFS3ERR_NXIO
        case 13: return .accessDenied                // NFS3ERR_ACCES
        case 17: return .exists                      // NFS3ERR_EXIST
        case 18: return FUSEErrno(18)                // NFS3ERR_XDEV → EXDEV
        case 19: return FUSEErrno(19)                // NFS3ERR_NODEV → ENODEV
        case 20: return .notDirectory                // NFS3ERR_NOTDIR
        case 21: return .isDirectory                 // NFS3ERR_ISDIR
        case 22: return .invalid                     // NFS3ERR_INVAL
        case 27: return .fileTooLarge                // NFS3ERR_FBIG
        case 28: return .noSpace                     // NFS3ERR_NOSPC
        case 30: return .readOnlyFileSystem          // NFS3ERR_ROFS
        case 31: return FUSEErrno(31)                // NFS3ERR_MLINK → EMLINK
        case 63: return .nameTooLong                 // NFS3ERR_NAMETOOLONG → ENAMETOOLONG (36)
        case 66: return .notEmpty                    // NFS3ERR_NOTEMPTY → ENOTEMPTY (39)
        case 69: return FUSEErrno(122)               // NFS3ERR_DQUOT → EDQUOT
        case 70: return FUSEErrno(116)               // NFS3ERR_STALE → ESTALE
        case 71: return FUSEErrno(66)                // NFS3ERR_REMOTE → EREMOTE
        case 10001: return FUSEErrno(116)            // NFS3ERR_BADHANDLE → ESTALE: the handle names nothing
        case 10002: return .io                       // NFS3ERR_NOT_SYNC (a guarded SETATTR lost a race)
        case 10003: return .invalid                  // NFS3ERR_BAD_COOKIE: the listing changed under the offset
        case 10004: return .notSupported             // NFS3ERR_NOTSUPP → EOPNOTSUPP
        case 10005: return .invalid                  // NFS3ERR_TOOSMALL (a buffer the engine sized)
        case 10006: return FUSEErrno(121)            // NFS3ERR_SERVERFAULT → EREMOTEIO
        case 10007: return .invalid                  // NFS3ERR_BADTYPE (MKNOD of a type the server refuses)
        case 10008: return .tryAgain                 // NFS3ERR_JUKEBOX: the data is not there yet
        default: return .io
        }
    }
}
