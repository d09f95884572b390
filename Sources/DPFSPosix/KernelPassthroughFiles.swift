import CDPFS
import Glibc

/// FUSE kernel passthrough (Linux 6.9+, FUSE_PASSTHROUGH): a backend registers the descriptor of
/// an open host file with the connection and answers OPEN with the id it got, and the kernel then
/// reads and writes that file itself — no request reaches the engine for the file's data. A handle
/// to the connection's /dev/fuse descriptor, shared by every queue's backend (the ioctls are safe
/// from any thread).
public final class KernelPassthroughFiles: @unchecked Sendable {
    public let fuseFD: Int32

    public init(fuseFD: Int32) {
        precondition(fuseFD >= 0)
        self.fuseFD = fuseFD
    }

    /// Registers `fd` (FUSE_DEV_IOC_BACKING_OPEN): the backing id (> 0), or -errno (EPERM without
    /// CAP_SYS_ADMIN, EOPNOTSUPP when passthrough was not agreed, ELOOP when the file system stacks
    /// too deep).
    public func register(_ fd: Int32) -> Int32 {
        CDPFS_fuse_backing_open(fuseFD, fd)
    }

    /// Drops the connection's reference (FUSE_DEV_IOC_BACKING_CLOSE); files the kernel opened
    /// with the id keep their own. Returns 0 or -errno.
    @discardableResult
    public func release(_ id: Int32) -> Int32 {
        precondition(id > 0)
        return CDPFS_fuse_backing_close(fuseFD, id)
    }
}
