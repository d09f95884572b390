import DPFSCore
import FUSEWire

// What every operation of the file-system contract receives: who asks, about which node, the
// request's identity for completing it later, and typed arguments that only the adapter builds,
// under the opcode they belong to.

/// The credentials of the process in the guest that made the request (fuse_in_header).
@frozen
public struct Caller: Equatable, Sendable {
    public var uid: UInt32
    public var gid: UInt32
    /// The thread group id in the guest; 0 for requests the kernel makes on its own.
    public var pid: UInt32

    @inlinable
    public init(uid: UInt32, gid: UInt32, pid: UInt32) {
        self.uid = uid
        self.gid = gid
        self.pid = pid
    }
}

/// One request as the file-system contract hands it over. The header fields are read from the
/// decoded request (engine memory) when asked for, so what a method does not use costs nothing.
@frozen
public struct Operation<Arguments> {
    /// How a backend that answers later completes this request (`BackendContext.complete`).
    public let token: CompletionToken
    public let arguments: Arguments
    /// The decoded header, in the request's slot.
    @usableFromInline let header: UnsafePointer<DecodedRequest>

    @inlinable
    init(_ request: FUSERequest, token: CompletionToken, arguments: Arguments) {
        self.token = token
        self.arguments = arguments
        header = request.header
    }

    /// The node the request is about (the parent directory for name operations).
    @inlinable public var nodeID: UInt64 { header.pointee.nodeID }
    /// Who asks.
    @inlinable public var caller: Caller { Caller(uid: header.pointee.uid, gid: header.pointee.gid, pid: header.pointee.pid) }
    /// The kernel's request id: what INTERRUPT names.
    @inlinable public var unique: UInt64 { header.pointee.unique }
    /// Which slot of the poller this request occupies: the index of per-request backend state.
    @inlinable public var slotIndex: Int { Int(token.slotIndex) }
}

/// A name from a request (entry name, xattr name, symlink target): 1...255 bytes (a target up to
/// 4095) with no NUL, and no '/' in an entry name; the decoder checked all of it and copied it, with
/// its terminating NUL, into engine memory. Only the adapter makes one, from a decoded request.
@frozen
public struct Name {
    public let bytes: UnsafeRawBufferPointer

    @inlinable
    init(_ bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count > 0 && bytes.count <= FUSELimits.symlinkTargetBytesMax)
        self.bytes = bytes
    }

    @inlinable public var count: Int { bytes.count }

    /// The name as a C string, for system calls: the NUL the decoder copied follows it.
    @inlinable
    public var cString: UnsafePointer<CChar> { bytes.baseAddress!.assumingMemoryBound(to: CChar.self) }

    /// "." or "..": never a real entry for a backend to create, remove or rename.
    @inlinable
    public var isDotOrDotDot: Bool {
        let dot = UInt8(ascii: ".")
        return (bytes.count == 1 && bytes[0] == dot) || (bytes.count == 2 && bytes[0] == dot && bytes[1] == dot)
    }

    /// Equal to `other` byte for byte.
    @inlinable
    public func equals(_ other: UnsafeRawBufferPointer) -> Bool {
        guard other.count == bytes.count else { return false }
        for index in 0..<bytes.count where bytes[index] != other[index] { return false }
        return true
    }
}
