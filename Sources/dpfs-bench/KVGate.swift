import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import KeyValueBackend
import LoopbackTransport
import MallocInterposerSwift

// The allocation gate's key-value part: the KV backend against a real redis-server, laid out as
// NFSGate. The backend speaks RESP itself (no client library), so every request class must
// allocate nothing at all: GETATTR, LOOKUP (+ FORGET), READ 4 KiB, WRITE 4 KiB, OPEN + RELEASE,
// READDIRPLUS, and CREATE + UNLINK of one name (the open table's insert and removal included).

final class KVGate {
    let gate: GateRig<KVBackend>
    let device: KVDevice

    init(url: String) throws {
        let configuration = KVConfiguration(
            endpoint: try KVEndpoint.parse(url), prefix: "alloc-gate-\(getpid())", chunkBytes: 65536, capacityBytes: 1 << 30,
            fileBytesMax: 1 << 30, validity: CacheValidity(seconds: 0), openFlags: 0, openFilesMax: 64, requestTimeoutMilliseconds: 30_000)
        device = try KVDevice(configuration: configuration)
        gate = try GateRig(backend: KVBackend(device: device))
    }

    func roundTrip(_ bytes: UnsafeRawBufferPointer, writable: Int, reply: UnsafeMutableRawBufferPointer) -> (Int32, UInt32) {
        gate.roundTrip(bytes, writable: writable, reply: reply)
    }

    enum Kind: String, CaseIterable { case getattr, lookup, read, write, openRelease = "open-release", readdirplus, createUnlink = "create-unlink" }

    /// Waits for the queue's connection (made by its poller), then makes the gate's file of 16
    /// blocks; its node id.
    func createFile(reply: UnsafeMutableRawBufferPointer) throws -> UInt64 {
        let root = PassthroughGate.request(.getattr, node: 1, args: PassthroughGate.bytes(fuse_getattr_in()))
        var error: Int32 = -1
        for _ in 0..<1000 where error != 0 { (error, _) = root.withUnsafeBytes { roundTrip($0, writable: 16 + 104, reply: reply) } }
        var create = fuse_create_in()
        create.flags = UInt32(O_RDWR | O_CREAT)
        create.mode = 0o100644
        (error, _) = PassthroughGate.request(.create, node: 1, args: PassthroughGate.bytes(create) + Self.fileName)
            .withUnsafeBytes { roundTrip($0, writable: 16 + 144, reply: reply) }
        guard error == 0 else { throw SystemCallError(call: "CREATE kv-gate.dat", errno: -error) }
        let node = reply.load(fromByteOffset: 16 + EntryOutLayout.nodeID, as: UInt64.self)
        var write = fuse_write_in()
        write.fh = node
        write.size = 4096
        for block in 0..<16 {
            write.offset = UInt64(block * 4096)
            let bytes = PassthroughGate.request(.write, node: node, args: PassthroughGate.bytes(write) + [UInt8](repeating: 0x5A, count: 4096))
            (error, _) = bytes.withUnsafeBytes { roundTrip($0, writable: 16 + 8, reply: reply) }
            guard error == 0 else { throw SystemCallError(call: "WRITE kv-gate.dat", errno: -error) }
        }
        return node
    }

    static let fileName = Array("kv-gate.dat".utf8) + [0]

    /// Each class's requests, in order (built before counting: building allocates).
    static func requests(node: UInt64) -> [Kind: [[UInt8]]] {
        var write = fuse_write_in()
        write.fh = node
        write.size = 4096
        var read = fuse_read_in()
        read.fh = node
        read.size = 4096
        var forget = fuse_forget_in()
        forget.nlookup = 1
        var open = fuse_open_in()
        open.flags = UInt32(O_RDONLY)
        var release = fuse_release_in()
        release.fh = node
        var listing = fuse_read_in()
        listing.fh = 1
        listing.size = 4096
        var exclusive = fuse_create_in()
        exclusive.flags = UInt32(O_RDWR | O_CREAT | O_EXCL)
        exclusive.mode = 0o100644
        let scratch = Array("kv-gate.tmp".utf8) + [0]
        return [
            .getattr: [PassthroughGate.request(.getattr, node: node, args: PassthroughGate.bytes(fuse_getattr_in()))],
            .lookup: [PassthroughGate.request(.lookup, node: 1, args: fileName), PassthroughGate.request(.forget, node: node, args: PassthroughGate.bytes(forget))],
            .read: [PassthroughGate.request(.read, node: node, args: PassthroughGate.bytes(read))],
            .write: [PassthroughGate.request(.write, node: node, args: PassthroughGate.bytes(write) + [UInt8](repeating: 0x5A, count: 4096))],
            .openRelease: [PassthroughGate.request(.open, node: node, args: PassthroughGate.bytes(open)),
                           PassthroughGate.request(.release, node: node, args: PassthroughGate.bytes(release))],
            .readdirplus: [PassthroughGate.request(.readdirplus, node: 1, args: PassthroughGate.bytes(listing))],
            .createUnlink: [PassthroughGate.request(.create, node: 1, args: PassthroughGate.bytes(exclusive) + scratch),
                            PassthroughGate.request(.release, node: node, args: PassthroughGate.bytes(release)),
                            PassthroughGate.request(.unlink, node: 1, args: scratch)],
        ]
    }

    func measure(requests: Int, warmup: Int) throws -> [(String, AllocationGateCommand.Result)] {
        let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 16)
        defer { reply.deallocate() }
        let none = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        let patched = UnsafeMutableRawPointer.allocate(byteCount: 256, alignment: 16)
        defer { patched.deallocate() }
        let requestsOf = Self.requests(node: try createFile(reply: reply))
        var results: [(String, AllocationGateCommand.Result)] = []
        for kind in Kind.allCases {
            let steps = requestsOf[kind]!
            var completed = 0
            var unexpected = 0
            func one() {
                var failed = false
                for (index, step) in steps.enumerated() {
                    let opcode = step.withUnsafeBytes { $0.load(fromByteOffset: 4, as: UInt32.self) }
                    let writable = opcode == FUSEOpcode.forget.rawValue ? 0 : 8192
                    let (error, used): (Int32, UInt32)
                    if kind == .createUnlink && index == 1 {
                        // RELEASE the node and handle CREATE gave (the new file's inode), patched
                        // into memory of the gate's own (a copy of the array would allocate).
                        let created = reply.load(fromByteOffset: 16 + EntryOutLayout.nodeID, as: UInt64.self)
                        step.withUnsafeBytes { patched.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                        patched.storeBytes(of: created.littleEndian, toByteOffset: InHeaderLayout.nodeID, as: UInt64.self)
                        patched.storeBytes(of: created.littleEndian, toByteOffset: InHeaderLayout.size, as: UInt64.self)
                        (error, used) = roundTrip(UnsafeRawBufferPointer(start: patched, count: step.count), writable: writable, reply: none)
                    } else {
                        (error, used) = step.withUnsafeBytes { roundTrip($0, writable: writable, reply: index == 0 ? reply : none) }
                    }
                    if error != 0 || (writable > 0 && used < 16) {
                        if !failed && unexpected == 0 && completed == 0 { print("kv gate: \(kind) step \(index): error \(error), \(used) bytes") }
                        failed = true
                    }
                }
                if failed { unexpected += 1 } else { completed += 1 }
            }
            for _ in 0..<warmup { one() }
            completed = 0
            unexpected = 0
            MallocInterposerSwift.reset()
            MallocInterposerSwift.hook()
            for _ in 0..<requests { one() }
            MallocInterposerSwift.unhook()
            let mallocs = MallocInterposerSwift.getStatistics().mallocCount
            results.append(("kv-\(kind.rawValue)", AllocationGateCommand.Result(requests: requests, completed: completed, mallocs: mallocs,
                                                                              unexpectedReplies: unexpected)))
        }
        return results
    }
}
