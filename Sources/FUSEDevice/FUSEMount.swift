import CDPFS
import DPFSPosix
import Glibc

// Mounting a FUSE file system on the host without fusermount: open /dev/fuse, mount(2) with the
// descriptor in the options, and unmount on the way out. Needs CAP_SYS_ADMIN (the engine runs as
// root on the machines it serves). A mount left behind by an engine that was killed answers every
// access with ENOTCONN; the next start finds it by that errno and detaches it before mounting again.

/// A start-up or control-plane failure of the /dev/fuse transport, said in one line.
public struct FUSEDeviceError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// How the host mount is made.
public struct FUSEMountOptions: Sendable {
    public var mountPoint: String
    /// Let every user of the host use the mount (root only; the kernel's `allow_other`). Off by
    /// default: only the user who mounted it reaches it. A multi-user mount (a share every host
    /// user works in under their own permissions) turns it on, always with `defaultPermissions`.
    public var allowOther: Bool
    /// Permission checks by the host kernel against the mode bits it caches (`default_permissions`),
    /// as a local file system does them: the exact EACCES/EPERM of the caller's credentials, checked
    /// on every path component. The backend still acts under the caller's fsuid/fsgid, so a check the
    /// kernel cannot make from cached attributes is made again by the host file system.
    public var defaultPermissions: Bool
    /// Largest READ the kernel sends (`max_read`), bytes.
    public var readBytesMax: Int
    /// What `mount` and /proc/mounts show as the source.
    public var sourceName: String

    public init(mountPoint: String, allowOther: Bool = false, defaultPermissions: Bool = true,
                readBytesMax: Int = 1 << 20, sourceName: String = "dpfs") {
        precondition(readBytesMax >= 4096 && readBytesMax <= 1 << 20)
        // Without default_permissions the kernel checks nothing and every user allow_other lets in
        // would depend on each backend's own checks (the null backend makes none).
        precondition(!allowOther || defaultPermissions, "allow_other needs default_permissions")
        self.mountPoint = mountPoint
        self.allowOther = allowOther
        self.defaultPermissions = defaultPermissions
        self.readBytesMax = readBytesMax
        self.sourceName = sourceName
    }

    /// The file-system type the mount shows (`fuse.dpfs`).
    public static let fileSystemType = "fuse.dpfs"
}

public enum FUSEMount {
    /// What the start-up check found at the mount point.
    public enum StaleCheck: Equatable, Sendable {
        case clean
        /// A dead FUSE mount (ENOTCONN) was there and is now detached.
        case detachedStale
    }

    /// Detaches a dead FUSE mount at `mountPoint` (left by a killed engine: every access answers
    /// ENOTCONN); refuses a live dpfs mount (an engine still serves it) and anything that is not
    /// a directory.
    public static func clearStale(at mountPoint: String) throws(FUSEDeviceError) -> StaleCheck {
        var status = stat()
        if stat(mountPoint, &status) == 0 {
            guard status.st_mode & S_IFMT == S_IFDIR else { throw FUSEDeviceError("mount point \(mountPoint) is not a directory") }
            if isDPFSMount(mountPoint) {
                throw FUSEDeviceError("\(mountPoint) is already a live dpfs mount (another engine serves it); unmount it first")
            }
            return .clean
        }
        let error = errno
        guard error == ENOTCONN else {
            throw FUSEDeviceError("mount point \(mountPoint): \(String(cString: strerror(error)))")
        }
        guard umount2(mountPoint, Int32(MNT_DETACH)) == 0 else {
            throw FUSEDeviceError("\(mountPoint) is a dead FUSE mount (ENOTCONN) and could not be detached: \(String(cString: strerror(errno)))")
        }
        return .detachedStale
    }

    /// Whether /proc/self/mountinfo lists a `fuse.dpfs` mount at `mountPoint`.
    static func isDPFSMount(_ mountPoint: String) -> Bool {
        guard let file = fopen("/proc/self/mountinfo", "r") else { return false }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0, let line {
            let text = String(cString: line)
            // "<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <type> <source> <super options>"
            let halves = text.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2 else { continue }
            let fields = halves[0].split(separator: " ")
            guard fields.count >= 5, halves[1].hasPrefix(FUSEMountOptions.fileSystemType + " ") else { continue }
            if unescapeMountInfo(String(fields[4])) == mountPoint { return true }
        }
        return false
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    static func unescapeMountInfo(_ field: String) -> String {
        var bytes: [UInt8] = []
        let source = Array(field.utf8)
        var index = 0
        while index < source.count {
            if source[index] == UInt8(ascii: "\\"), index + 4 <= source.count,
               let value = UInt8(String(decoding: source[(index + 1)..<(index + 4)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                index += 4
            } else {
                bytes.append(source[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Opens /dev/fuse and mounts it at the mount point. Returns the session descriptor,
    /// non-blocking (both queue modes read /dev/fuse only when it is ready); the kernel has queued
    /// FUSE_INIT on it when this returns.
    public static func mount(_ options: FUSEMountOptions) throws(FUSEDeviceError) -> Int32 {
        let fd = open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            throw FUSEDeviceError("cannot open /dev/fuse: \(String(cString: strerror(errno))) (is the fuse module loaded, are we root?)")
        }
        var root = stat()
        guard stat(options.mountPoint, &root) == 0 else {
            let error = errno
            _ = close(fd)
            throw FUSEDeviceError("mount point \(options.mountPoint): \(String(cString: strerror(error)))")
        }
        var data = "fd=\(fd),rootmode=\(String(root.st_mode & S_IFMT, radix: 8)),user_id=\(getuid()),group_id=\(getgid())"
        data += ",max_read=\(options.readBytesMax)"
        if options.defaultPermissions { data += ",default_permissions" }
        if options.allowOther { data += ",allow_other" }
        // MS_NOSUID | MS_NODEV (the constants are ambiguous between Glibc's enum and macro).
        let flags: UInt = 2 | 4
        guard Glibc.mount(options.sourceName, options.mountPoint, FUSEMountOptions.fileSystemType, flags, data) == 0 else {
            let error = errno
            _ = close(fd)
            throw FUSEDeviceError("mount(\(options.mountPoint), \(FUSEMountOptions.fileSystemType), \(data)): \(String(cString: strerror(error)))")
        }
        return fd
    }

    /// Unmounts: a plain unmount when nothing holds the file system (the kernel then ends the
    /// connection, and every queue reads ENODEV), else a lazy detach (the connection ends when the
    /// engine closes its descriptors). Returns how it went, for the stop report.
    public static func unmount(_ mountPoint: String) -> String {
        if umount2(mountPoint, 0) == 0 { return "unmounted \(mountPoint)" }
        let error = errno
        if error == EBUSY, umount2(mountPoint, Int32(MNT_DETACH)) == 0 {
            return "\(mountPoint) was busy: detached (open files see ENOTCONN once the engine's descriptors close)"
        }
        return "unmount of \(mountPoint) failed: \(String(cString: strerror(error)))"
    }

    /// Opens a clone of the session descriptor (FUSE_DEV_IOC_CLONE): one per queue, so each queue
    /// reads requests and writes replies on its own descriptor (replies must go back on the
    /// descriptor their request was read from).
    public static func clone(session: Int32) throws(FUSEDeviceError) -> Int32 {
        let fd = open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw FUSEDeviceError("cannot open /dev/fuse for a queue: \(String(cString: strerror(errno)))") }
        let result = CDPFS_fuse_dev_clone(fd, session)
        guard result >= 0 else {
            _ = close(fd)
            throw FUSEDeviceError("FUSE_DEV_IOC_CLONE: \(String(cString: strerror(-result)))")
        }
        return fd
    }
}
