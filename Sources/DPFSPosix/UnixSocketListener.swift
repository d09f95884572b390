import CDPFS
import Glibc

// The vhost-user socket is the device's front door: whoever connects supplies the guest memory and
// the FUSE headers, uid and gid included, and the engine (root) acts on the share as that uid. So
// the socket admits its owner only (0600), or its owner and one group (0660) for a VMM running as
// another user — whatever the process umask — and is never bound over another live listener.

/// Who may connect to a socket the engine listens on.
public struct SocketAccess: Equatable, Sendable {
    /// The group that may connect besides the owner; nil: the owner only.
    public var groupID: gid_t?

    public init(groupID: gid_t? = nil) { self.groupID = groupID }

    /// 0600 for the owner only, 0660 with a group: nobody else, ever.
    public var mode: mode_t { groupID == nil ? 0o600 : 0o660 }
}

/// A socket path that cannot be listened on, said in one line that names the path and what to do.
public struct SocketPathError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A listening socket and the file it was bound to, so that the engine removes that file when it
/// stops and never one another process put at the same path since.
public struct ListeningSocket: Sendable {
    public let fd: Int32
    public let path: String
    let device: UInt64
    let inode: UInt64

    /// Closes the socket and removes its file if the path still names it (an adopted socket has
    /// no path of ours).
    public func close() {
        var status = stat()
        if !path.isEmpty, lstat(path, &status) == 0, UInt64(status.st_dev) == device, UInt64(status.st_ino) == inode {
            _ = unlink(path)
        }
        _ = Glibc.close(fd)
    }
}

public enum UnixSocketListener {
    /// Takes a socket another process bound and listens on (a launcher's `--fd`): it must be a
    /// listening Unix stream socket, so a wrong number is refused instead of served. Its file,
    /// if any, is the launcher's and is never removed here.
    public static func adopt(descriptor fd: Int32) throws(SocketPathError) -> ListeningSocket {
        func option(_ name: Int32) -> Int32? {
            var value: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            return getsockopt(fd, SOL_SOCKET, name, &value, &length) == 0 ? value : nil
        }
        guard let domain = option(SO_DOMAIN), let type = option(SO_TYPE), let listening = option(SO_ACCEPTCONN) else {
            throw SocketPathError("descriptor \(fd) is not a socket: \(describe(errno))")
        }
        guard domain == AF_UNIX, type == Int32(SOCK_STREAM.rawValue), listening == 1 else {
            throw SocketPathError("descriptor \(fd) is not a listening Unix stream socket")
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return ListeningSocket(fd: fd, path: "", device: 0, inode: 0)
    }

    /// How long a start-up waits for another engine that is binding in the same directory.
    static let directoryLockWaitMilliseconds = 5_000

    /// Binds and listens on `path` with exactly `access.mode`, owned by this process's user (and
    /// `access.groupID`). The socket is made owner-only before `bind(2)`, so it never exists with a
    /// wider mode, and nobody can connect before `listen(2)`, which comes after the final mode. An
    /// existing path is replaced only when it is a stale socket (connection refused); a live one,
    /// a symbolic link or anything that is not a socket is refused. Engines binding in one directory
    /// take turns (a lock on the directory), so two starting at once cannot both replace one stale
    /// socket and leave one of them listening on nothing.
    public static func listen(path: String, access: SocketAccess, backlog: Int32) throws(SocketPathError) -> ListeningSocket {
        precondition(backlog > 0)
        var address = try socketAddress(path)
        let directoryFD = open(parentDirectory(of: path), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directoryFD >= 0 else { throw SocketPathError("socket \(path): its directory: \(describe(errno))") }
        defer { _ = close(directoryFD) }
        try lockDirectory(directoryFD, path: path)
        defer { _ = flock(directoryFD, LOCK_UN) }
        try removeStaleSocket(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketPathError("socket \(path): socket(2): \(describe(errno))") }
        do throws(SocketPathError) {
            // The mode bind(2) gives the new file is this inode's mode less the umask: owner-only
            // from birth, whatever the umask is.
            guard fchmod(fd, 0o600) == 0 else { throw SocketPathError("socket \(path): fchmod: \(describe(errno))") }
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard bound == 0 else { throw SocketPathError("socket \(path): bind: \(describe(errno))") }
            let identity = try setAccess(path, access)
            guard Glibc.listen(fd, backlog) == 0 else {
                let error = errno
                _ = unlink(path)
                throw SocketPathError("socket \(path): listen: \(describe(error))")
            }
            return ListeningSocket(fd: fd, path: path, device: identity.device, inode: identity.inode)
        } catch {
            _ = close(fd)
            throw error
        }
    }

    /// The owner and group `access` names, then its mode (a group gets in only once it is the
    /// right group), then a check that the path is this socket with exactly that.
    static func setAccess(_ path: String, _ access: SocketAccess) throws(SocketPathError) -> (device: UInt64, inode: UInt64) {
        if let group = access.groupID {
            guard fchownat(AT_FDCWD, path, uid_t.max, group, AT_SYMLINK_NOFOLLOW) == 0 else {
                let error = errno
                _ = unlink(path)
                throw SocketPathError("socket \(path): cannot give it to group \(group): \(describe(error))")
            }
        }
        guard fchmodat(AT_FDCWD, path, access.mode, AT_SYMLINK_NOFOLLOW) == 0 else {
            let error = errno
            _ = unlink(path)
            throw SocketPathError("socket \(path): chmod \(String(access.mode, radix: 8)): \(describe(error))")
        }
        var status = stat()
        guard lstat(path, &status) == 0, status.st_mode & S_IFMT == S_IFSOCK, status.st_uid == geteuid(),
              status.st_mode & 0o7777 == access.mode, access.groupID.map({ $0 == status.st_gid }) ?? true
        else {
            throw SocketPathError("socket \(path) changed under the engine while it was made (another process writes that directory)")
        }
        return (UInt64(status.st_dev), UInt64(status.st_ino))
    }

    /// Leaves `path` free: nothing there, or a stale socket removed. Refuses everything else.
    static func removeStaleSocket(_ path: String) throws(SocketPathError) {
        var status = stat()
        guard lstat(path, &status) == 0 else {
            if errno == ENOENT { return }
            throw SocketPathError("socket \(path): \(describe(errno))")
        }
        switch status.st_mode & S_IFMT {
        case S_IFSOCK: break
        case S_IFLNK: throw SocketPathError("socket \(path) is a symbolic link: not followed; remove it or pick another path")
        default: throw SocketPathError("\(path) exists and is not a socket: not replaced; remove it or pick another path")
        }
        switch probe(path) {
        case .refused:
            guard unlink(path) == 0 || errno == ENOENT else { throw SocketPathError("stale socket \(path): unlink: \(describe(errno))") }
        case .gone:
            return
        case .live:
            throw SocketPathError("socket \(path) is in use: a process (another engine?) accepts connections on it; stop it or pick another path")
        case .failed(let error):
            throw SocketPathError("socket \(path) exists and cannot be checked (connect: \(describe(error))): not replaced")
        }
    }

    enum ProbeResult: Equatable { case live, refused, gone, failed(Int32) }

    /// Whether some process listens on the socket at `path`. Non-blocking: a listener whose
    /// backlog is full answers EAGAIN, and it is live all the same.
    static func probe(_ path: String) -> ProbeResult {
        guard var address = try? socketAddress(path) else { return .failed(ENAMETOOLONG) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return .failed(errno) }
        defer { _ = close(fd) }
        let result = Retry.onInterrupt {
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
        if result == 0 { return .live }
        switch errno {
        case EAGAIN, EINPROGRESS: return .live
        case ECONNREFUSED: return .refused
        case ENOENT: return .gone
        default: return .failed(errno)
        }
    }

    /// Waits (bounded) for the directory's lock: engines that bind in one directory take turns.
    static func lockDirectory(_ directoryFD: Int32, path: String) throws(SocketPathError) {
        var waitedMilliseconds = 0
        while flock(directoryFD, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else { throw SocketPathError("socket \(path): lock its directory: \(describe(errno))") }
            guard waitedMilliseconds < directoryLockWaitMilliseconds else {
                throw SocketPathError("socket \(path): its directory stayed locked by another process for \(directoryLockWaitMilliseconds) ms")
            }
            _ = usleep(10_000)
            waitedMilliseconds += 10
        }
    }

    public static func socketAddress(_ path: String) throws(SocketPathError) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !pathBytes.isEmpty, pathBytes.count < capacity else {
            throw SocketPathError("socket path \(path) must be 1...\(capacity - 1) bytes")
        }
        guard !pathBytes.contains(0) else { throw SocketPathError("socket path contains a NUL byte") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in pathBytes.enumerated() { raw[index] = byte }
        }
        return address
    }

    /// The directory a path names its entry in: "." for a bare name.
    public static func parentDirectory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let parent = path[..<slash]
        return parent.isEmpty ? "/" : String(parent)
    }

    /// A group by name or number, as `--socket-group` gives it.
    public static func groupID(named name: String) throws(SocketPathError) -> gid_t {
        if let number = UInt32(name), number != UInt32.max { return number }
        var group = group()
        var result: UnsafeMutablePointer<group>? = nil
        var buffer = [CChar](repeating: 0, count: 16_384)
        let status = getgrnam_r(name, &group, &buffer, buffer.count, &result)
        guard status == 0, let found = result else {
            throw SocketPathError("socket group \(name): no such group\(status == 0 ? "" : " (\(describe(status)))")")
        }
        return found.pointee.gr_gid
    }

    static func describe(_ error: Int32) -> String {
        "\(String(cString: strerror(error))) (errno \(error))"
    }
}
