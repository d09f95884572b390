import DPFSCore
import FUSEWire

// Test-side helpers that play the kernel: build requests byte by byte (valid or deliberately
// broken), cut them into arbitrary segments, and decode them the way the engine does.

/// A FUSE request as bytes: header fields plus argument bytes (everything after the header).
public struct TestRequest: Sendable {
    public var opcodeRaw: UInt32
    public var unique: UInt64 = 0x1234_5678_9ABC
    public var nodeID: UInt64 = 1
    public var uid: UInt32 = 1000
    public var gid: UInt32 = 1000
    public var pid: UInt32 = 42
    public var totalExtLen: UInt16 = 0
    public var args: [UInt8]
    /// Header `len` to write instead of the true length (to lie about it).
    public var lengthOverride: UInt32? = nil

    public init(_ opcode: FUSEOpcode, nodeID: UInt64 = 1, args: [UInt8] = []) {
        self.opcodeRaw = opcode.rawValue
        self.nodeID = nodeID
        self.args = args
    }

    public init(opcodeRaw: UInt32, args: [UInt8] = []) {
        self.opcodeRaw = opcodeRaw
        self.args = args
    }

    public var bytes: [UInt8] {
        var out = [UInt8]()
        let length = lengthOverride ?? UInt32(InHeaderLayout.size + args.count)
        out.appendLE(length)
        out.appendLE(opcodeRaw)
        out.appendLE(unique)
        out.appendLE(nodeID)
        out.appendLE(uid)
        out.appendLE(gid)
        out.appendLE(pid)
        out.appendLE(totalExtLen)
        out.appendLE(UInt16(0))
        out += args
        return out
    }

    // MARK: - Canonical valid requests, one per opcode

    public static let entryName: [UInt8] = Array("hello.txt".utf8)
    public static let secondName: [UInt8] = Array("renamed.txt".utf8)
    public static let symlinkTarget: [UInt8] = Array("../some/where/else".utf8)
    public static let xattrName: [UInt8] = Array("user.comment".utf8)
    public static let xattrValue: [UInt8] = Array("a value".utf8)
    public static let writePayload: [UInt8] = (0..<300).map { UInt8(truncatingIfNeeded: $0 &* 7) }

    /// A well-formed example of `opcode` as Linux would send it.
    public static func valid(_ opcode: FUSEOpcode) -> TestRequest {
        func zeros(_ n: Int) -> [UInt8] { [UInt8](repeating: 0, count: n) }
        func name(_ bytes: [UInt8]) -> [UInt8] { bytes + [0] }
        switch opcode {
        case .lookup, .unlink, .rmdir, .removexattr:
            return TestRequest(opcode, args: name(opcode == .removexattr ? xattrName : entryName))
        case .forget: return TestRequest(opcode, nodeID: 5, args: le(UInt64(3)))
        case .getattr: return TestRequest(opcode, args: zeros(16))
        case .setattr: return TestRequest(opcode, args: zeros(88))
        case .readlink, .statfs, .destroy: return TestRequest(opcode)
        case .symlink: return TestRequest(opcode, args: name(entryName) + name(symlinkTarget))
        case .mknod: return TestRequest(opcode, args: le(UInt32(0o100644)) + zeros(12) + name(entryName))
        case .mkdir: return TestRequest(opcode, args: le(UInt32(0o755)) + zeros(4) + name(entryName))
        case .rename: return TestRequest(opcode, args: le(UInt64(1)) + name(entryName) + name(secondName))
        case .link: return TestRequest(opcode, args: le(UInt64(2)) + name(entryName))
        case .open, .opendir: return TestRequest(opcode, args: zeros(8))
        case .read, .readdir, .readdirplus:
            return TestRequest(opcode, nodeID: 2, args: le(UInt64(2)) + le(UInt64(4096)) + le(UInt32(4096)) + zeros(20))
        case .write:
            return TestRequest(opcode, nodeID: 2, args: le(UInt64(2)) + le(UInt64(0)) + le(UInt32(writePayload.count)) + zeros(20) + writePayload)
        case .release, .releasedir, .flush: return TestRequest(opcode, args: zeros(24))
        case .fsync, .fsyncdir: return TestRequest(opcode, args: zeros(16))
        case .setxattr: return TestRequest(opcode, args: le(UInt32(xattrValue.count)) + zeros(4) + name(xattrName) + xattrValue)
        case .getxattr: return TestRequest(opcode, args: le(UInt32(64)) + zeros(4) + name(xattrName))
        case .listxattr: return TestRequest(opcode, args: le(UInt32(0)) + zeros(4))
        case .`init`:
            return TestRequest(opcode, args: le(UInt32(7)) + le(UInt32(38)) + le(UInt32(131072)) + le(UInt32(0x7FFF_FFFF)) + zeros(48))
        case .getlk, .setlk, .setlkw: return TestRequest(opcode, args: zeros(48))
        case .access: return TestRequest(opcode, args: le(UInt32(4)) + zeros(4))
        case .create, .tmpfile: return TestRequest(opcode, args: le(UInt32(0o100)) + le(UInt32(0o644)) + zeros(8) + name(entryName))
        case .interrupt: return TestRequest(opcode, args: le(UInt64(99)))
        case .bmap: return TestRequest(opcode, args: zeros(16))
        case .ioctl: return TestRequest(opcode, args: zeros(24) + le(UInt32(4)) + zeros(4) + [1, 2, 3, 4])
        case .poll: return TestRequest(opcode, args: zeros(24))
        case .notifyReply: return TestRequest(opcode, args: zeros(16) + le(UInt32(3)) + zeros(20) + [9, 9, 9])
        case .batchForget:
            return TestRequest(opcode, args: le(UInt32(2)) + zeros(4) + le(UInt64(5)) + le(UInt64(1)) + le(UInt64(6)) + le(UInt64(2)))
        case .fallocate: return TestRequest(opcode, args: zeros(32))
        case .rename2: return TestRequest(opcode, args: le(UInt64(1)) + le(UInt32(1)) + zeros(4) + name(entryName) + name(secondName))
        case .lseek: return TestRequest(opcode, args: zeros(16) + le(UInt32(3)) + zeros(4))
        case .copyFileRange, .copyFileRange64: return TestRequest(opcode, args: zeros(56))
        case .setupMapping: return TestRequest(opcode, args: zeros(40))
        case .removeMapping: return TestRequest(opcode, args: le(UInt32(1)) + zeros(16))
        case .syncfs: return TestRequest(opcode, args: zeros(8))
        case .statx: return TestRequest(opcode, args: zeros(24))
        }
    }
}

public func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}

extension Array where Element == UInt8 {
    public mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        self += le(value)
    }

    public func loadLE<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        precondition(offset + MemoryLayout<T>.size <= count)
        var value: T = 0
        Swift.withUnsafeMutableBytes(of: &value) { raw in
            for index in 0..<MemoryLayout<T>.size { raw[index] = self[offset + index] }
        }
        return T(littleEndian: value)
    }
}

/// Bytes cut into separately allocated segments, as a guest's scattered buffers would be.
public final class SegmentedBuffer {
    public let segments: UnsafeMutablePointer<Segment>
    public let count: Int
    public let totalBytes: Int
    private var allocations: [UnsafeMutableRawPointer] = []

    /// Cuts `bytes` at the given offsets (ignoring duplicates and out-of-range cuts).
    public init(_ bytes: [UInt8], cuts: [Int] = []) {
        let boundaries = ([0] + cuts.filter { $0 > 0 && $0 < bytes.count }.sorted() + [bytes.count])
            .reduce(into: [Int]()) { if $0.last != $1 { $0.append($1) } }
        let pieces = max(1, boundaries.count - 1)
        segments = .allocate(capacity: pieces)
        var count = 0
        for index in 0..<(boundaries.count - 1) {
            let length = boundaries[index + 1] - boundaries[index]
            // Each piece gets its own allocation (with a guard byte after it), so a read past a
            // segment's end would touch the wrong memory and show up under AddressSanitizer.
            let memory = UnsafeMutableRawPointer.allocate(byteCount: max(length, 1), alignment: 8)
            allocations.append(memory)
            bytes.withUnsafeBytes { raw in
                memory.copyMemory(from: raw.baseAddress! + boundaries[index], byteCount: length)
            }
            segments[count] = Segment(base: memory, length: UInt32(length))
            count += 1
        }
        if count == 0 {
            let memory = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 8)
            allocations.append(memory)
            segments[0] = Segment(base: memory, length: 0)
            count = 1
        }
        self.count = count
        totalBytes = bytes.count
    }

    /// All bytes, reassembled.
    public var bytes: [UInt8] {
        var out = [UInt8]()
        for index in 0..<count {
            let segment = segments[index]
            out += UnsafeRawBufferPointer(start: segment.base, count: Int(segment.length))
        }
        return out
    }

    deinit {
        allocations.forEach { $0.deallocate() }
        segments.deallocate()
    }
}

/// What decoding a request produced, in plain values.
public struct DecodeResult: Equatable {
    public var status: DecodeStatus
    public var request: DecodedRequest
    public var args: [UInt8]
    public var name: [UInt8]
    public var secondName: [UInt8]
    public var payload: [UInt8]

    public static func == (a: DecodeResult, b: DecodeResult) -> Bool {
        a.status == b.status && a.args == b.args && a.name == b.name && a.secondName == b.secondName
            && a.payload == b.payload && a.request.unique == b.request.unique && a.request.nodeID == b.request.nodeID
            && a.request.opcodeRaw == b.request.opcodeRaw && a.request.length == b.request.length
            && a.request.uid == b.request.uid && a.request.gid == b.request.gid && a.request.pid == b.request.pid
    }
}

/// Decodes `bytes` cut at `cuts`, as the poller would.
public func decode(_ bytes: [UInt8], cuts: [Int] = [], options: DecoderOptions = DecoderOptions(),
                   readableBytes: Int? = nil) -> DecodeResult {
    let buffer = SegmentedBuffer(bytes, cuts: cuts)
    let args = UnsafeMutableRawPointer.allocate(byteCount: FUSELimits.argsBytesMax, alignment: 64)
    defer { args.deallocate() }
    args.initializeMemory(as: UInt8.self, repeating: 0xEE, count: FUSELimits.argsBytesMax)
    let request = UnsafeMutablePointer<DecodedRequest>.allocate(capacity: 1)
    defer { request.deallocate() }
    request.initialize(to: DecodedRequest())
    let status = decodeRequest(readable: UnsafePointer(buffer.segments), readableCount: buffer.count,
                               readableBytes: readableBytes ?? bytes.count, options: options,
                               into: request, args: args)
    var result = DecodeResult(status: status, request: request.pointee, args: [], name: [], secondName: [], payload: [])
    guard case .valid = status else { return result }
    let view = FUSERequest(header: UnsafePointer(request), args: UnsafeRawPointer(args),
                           readable: UnsafePointer(buffer.segments), readableCount: buffer.count)
    result.args = Array(UnsafeRawBufferPointer(start: args, count: Int(request.pointee.argsLength)))
    result.name = Array(view.name)
    result.secondName = Array(view.secondName)
    if view.payloadLength > 0 {
        var payload = [UInt8](repeating: 0, count: view.payloadLength)
        var cursor = view.payload
        let read = payload.withUnsafeMutableBytes { cursor.read(into: $0.baseAddress!, byteCount: $0.count) }
        precondition(read == view.payloadLength, "payload must be fully readable")
        result.payload = payload
    }
    return result
}
