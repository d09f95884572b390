import CDPFS
import Glibc

/// A failed system call: which call, and the errno it left.
public struct SystemCallError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Int32

    public init(call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String {
        "\(call) failed: \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// The one place the EINTR retry loop is written: system calls that a signal can interrupt before
/// they did anything are simply made again.
public enum Retry {
    /// Runs `call` again while it fails with EINTR (-1 and errno EINTR); returns its last result,
    /// with errno set when that is -1. Inlined: the closure costs nothing and allocates nothing.
    @inlinable @inline(__always)
    public static func onInterrupt<R: FixedWidthInteger & SignedInteger>(_ call: () -> R) -> R {
        var result: R
        repeat { result = call() } while result == -1 && errno == EINTR
        return result
    }

    /// The same, throwing the errno as a `SystemCallError` named `name` when the call fails.
    @inlinable
    public static func checked<R: FixedWidthInteger & SignedInteger>(_ name: String, _ call: () -> R) throws(SystemCallError) -> R {
        let result = onInterrupt(call)
        if result == -1 { throw SystemCallError(call: name, errno: errno) }
        return result
    }
}
