import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import LoopbackTransport
import MallocInterposerSwift
import PassthroughBackend

// The allocation gate's passthrough part: a real shared directory in /tmp, the passthrough backend
// with its io_uring, and request classes a guest sends most — GETATTR, LOOKUP of an existing name,
// READ 4 KiB, WRITE 4 KiB, and CREATE + RELEASE + UNLINK + FORGET. Requests are laid out once
// before the counters are hooked; during the measurement the driver only copies prepared bytes
// into its buffers (patching the file handle and node id a CREATE returned), so every malloc the
// counter sees is the engine's.

final class PassthroughGate {
    let directory: String
    let gate: GateRig<PassthroughBackend>

    let label: String

    init(dataPath: PassthroughDataPath = .inlineFirst) throws {
        label = dataPath == .inlineFirst ? "passthrough" : "passthrough-uring"
        var template = Array("/tmp/dpfs-alloc-gate-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SystemCallError(call: "mkdtemp", errno: errno)
        }
        directory = String(cString: made)
        let fd = open(directory + "/gate.dat", O_CREAT | O_RDWR, 0o644)
        guard fd >= 0, ftruncate(fd, 1 << 20) == 0 else { throw SystemCallError(call: "create gate.dat", errno: errno) }
        _ = close(fd)
        var configuration = PassthroughConfiguration(sharedDirectory: directory, cacheMode: .never, inodesMax: 1024, openFilesMax: 256)
        configuration.dataPath = dataPath
        let device = try PassthroughDevice(configuration: configuration)
        gate = try GateRig(backend: PassthroughBackend(device: device))
    }

    deinit {
        _ = unlink(directory + "/gate.dat")
        _ = unlink(directory + "/gate.tmp")
        _ = rmdir(directory)
    }

    /// A request's bytes: header + arguments, built before measuring.
    static func request(_ opcode: FUSEOpcode, node: UInt64, args: [UInt8]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: InHeaderLayout.size)
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt32(InHeaderLayout.size + args.count).littleEndian, toByteOffset: InHeaderLayout.len, as: UInt32.self)
            raw.storeBytes(of: opcode.rawValue.littleEndian, toByteOffset: InHeaderLayout.opcode, as: UInt32.self)
            raw.storeBytes(of: node.littleEndian, toByteOffset: InHeaderLayout.nodeID, as: UInt64.self)
        }
        return bytes + args
    }

    static func bytes<T>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    /// Sends one prepared request and steps until its reply is back; returns (error, used length)
    /// and leaves the reply in `reply` (at most `reply.count` bytes). Allocates nothing.
    func roundTrip(_ bytes: UnsafeRawBufferPointer, writable: Int, reply: UnsafeMutableRawBufferPointer) -> (Int32, UInt32) {
        gate.roundTrip(bytes, writable: writable, reply: reply)
    }

    /// The request classes measured, in order.
    enum Class: String, CaseIterable { case getattr, lookup, read, write, createUnlink }

    /// Every request of every class, laid out once (header + arguments) before anything is measured.
    struct Prepared {
        var getattr: [UInt8], lookup: [UInt8], forgetLookups: [UInt8], read: [UInt8], write: [UInt8]
        var create: [UInt8], release: [UInt8], unlink: [UInt8], forget: [UInt8]
    }

    /// Looks up and opens gate.dat and builds every class's requests against its node and handle.
    func prepare(reply: UnsafeMutableRawBufferPointer) throws -> Prepared {
        let name = Array("gate.dat".utf8) + [0]
        let temporary = Array("gate.tmp".utf8) + [0]
        let lookup = Self.request(.lookup, node: 1, args: name)
        var (error, _) = lookup.withUnsafeBytes { roundTrip($0, writable: 16 + 128, reply: reply) }
        guard error == 0 else { throw SystemCallError(call: "LOOKUP gate.dat", errno: -error) }
        let node = reply.load(fromByteOffset: 16 + EntryOutLayout.nodeID, as: UInt64.self)
        var open = fuse_open_in()
        open.flags = UInt32(O_RDWR)
        (error, _) = Self.request(.open, node: node, args: Self.bytes(open)).withUnsafeBytes { roundTrip($0, writable: 32, reply: reply) }
        guard error == 0 else { throw SystemCallError(call: "OPEN gate.dat", errno: -error) }
        let handle = reply.load(fromByteOffset: 16, as: UInt64.self)
        var read = fuse_read_in()
        read.fh = handle
        read.size = 4096
        var write = fuse_write_in()
        write.fh = handle
        write.size = 4096
        var create = fuse_create_in()
        create.flags = UInt32(O_RDWR | O_CREAT)
        create.mode = 0o100644
        var forget = fuse_forget_in()
        forget.nlookup = 1
        return Prepared(
            getattr: Self.request(.getattr, node: node, args: Self.bytes(fuse_getattr_in())), lookup: lookup,
            forgetLookups: Self.request(.forget, node: node, args: Self.bytes(forget)),
            read: Self.request(.read, node: node, args: Self.bytes(read)),
            write: Self.request(.write, node: node, args: Self.bytes(write) + [UInt8](repeating: 0x5A, count: 4096)),
            create: Self.request(.create, node: 1, args: Self.bytes(create) + temporary),
            release: Self.request(.release, node: 0, args: Self.bytes(fuse_release_in())),
            unlink: Self.request(.unlink, node: 1, args: temporary),
            forget: Self.request(.forget, node: 0, args: Self.bytes(forget)))
    }

    /// One operation of a class; true when its replies were the expected ones. Allocates nothing.
    func once(_ kind: Class, _ prepared: inout Prepared, reply: UnsafeMutableRawBufferPointer) -> Bool {
        let none = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        switch kind {
        case .getattr:
            let result = prepared.getattr.withUnsafeBytes { roundTrip($0, writable: 16 + 104, reply: reply) }
            return result.0 == 0 && result.1 == 16 + 104
        case .lookup:
            let result = prepared.lookup.withUnsafeBytes { roundTrip($0, writable: 16 + 128, reply: reply) }
            _ = prepared.forgetLookups.withUnsafeBytes { roundTrip($0, writable: 0, reply: none) }
            return result.0 == 0
        case .read:
            let result = prepared.read.withUnsafeBytes { roundTrip($0, writable: 16 + 4096, reply: none) }
            return result.0 == 0 && result.1 == 16 + 4096
        case .write:
            return prepared.write.withUnsafeBytes { roundTrip($0, writable: 16 + 8, reply: reply) }.0 == 0
        case .createUnlink:
            let created = prepared.create.withUnsafeBytes { roundTrip($0, writable: 16 + 144, reply: reply) }.0
            let createdNode = reply.load(fromByteOffset: 16 + EntryOutLayout.nodeID, as: UInt64.self)
            let createdHandle = reply.load(fromByteOffset: 16 + EntryOutLayout.size, as: UInt64.self)
            prepared.release.withUnsafeMutableBytes {
                $0.storeBytes(of: createdNode, toByteOffset: InHeaderLayout.nodeID, as: UInt64.self)
                $0.storeBytes(of: createdHandle, toByteOffset: InHeaderLayout.size, as: UInt64.self)
            }
            prepared.forget.withUnsafeMutableBytes { $0.storeBytes(of: createdNode, toByteOffset: InHeaderLayout.nodeID, as: UInt64.self) }
            let released = prepared.release.withUnsafeBytes { roundTrip($0, writable: 16, reply: reply) }.0
            let unlinked = prepared.unlink.withUnsafeBytes { roundTrip($0, writable: 16, reply: reply) }.0
            _ = prepared.forget.withUnsafeBytes { roundTrip($0, writable: 0, reply: none) }
            return created == 0 && released == 0 && unlinked == 0
        }
    }

    /// Measures each class: `requests` operations after `warmup`, mallocs counted in between.
    func measure(requests: Int, warmup: Int, onlyData: Bool = false) throws -> [(String, AllocationGateCommand.Result)] {
        let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 16)
        defer { reply.deallocate() }
        var prepared = try prepare(reply: reply)
        var results: [(String, AllocationGateCommand.Result)] = []
        for kind in Class.allCases where !onlyData || kind == .read || kind == .write {
            for _ in 0..<warmup { _ = once(kind, &prepared, reply: reply) }
            var completed = 0
            MallocInterposerSwift.reset()
            MallocInterposerSwift.hook()
            for _ in 0..<requests where once(kind, &prepared, reply: reply) { completed += 1 }
            MallocInterposerSwift.unhook()
            results.append(("\(label)-\(kind)", AllocationGateCommand.Result(
                requests: requests, completed: completed, mallocs: MallocInterposerSwift.getStatistics().mallocCount,
                unexpectedReplies: requests - completed)))
        }
        return results
    }
}
