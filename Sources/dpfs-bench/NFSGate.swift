import ArgumentParser
import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import LoopbackTransport
import MallocInterposerSwift
import NFSBackend
import NFSv4Wire

// The allocation gate's NFS part: the NFS backend against a real nfs-ganesha, GETATTR, LOOKUP (+
// FORGET), READ 4 KiB and WRITE 4 KiB, laid out as in PassthroughGate. libnfs allocates for every
// call it encodes and decodes (its PDU and the decoded result), which no caller can avoid; so the
// gate first counts libnfs alone — the same RPC, with the same arguments, from a bare rpc context
// of this process — and then the whole request through the engine. The engine's own share is the
// difference and must be 0; libnfs's is reported beside it.

final class NFSGate {
    let gate: GateRig<NFSBackend>
    let url: NFSURL
    let device: NFSDevice

    init(url: NFSURL) throws {
        self.url = url
        device = try NFSDevice(configuration: NFSConfiguration(url: url, validity: CacheValidity(seconds: 0)))
        gate = try GateRig(backend: NFSBackend(device: device))
    }

    func roundTrip(_ bytes: UnsafeRawBufferPointer, writable: Int, reply: UnsafeMutableRawBufferPointer) -> (Int32, UInt32) {
        gate.roundTrip(bytes, writable: writable, reply: reply)
    }

    struct ClassResult {
        let name: String
        let result: AllocationGateCommand.Result
        /// mallocs per request through the engine, libnfs's alone per call, and RPCs per request.
        let totalPerRequest: Double
        let libnfsPerCall: Double
        let callsPerRequest: Int
        var enginePerRequest: Double { totalPerRequest - libnfsPerCall * Double(callsPerRequest) }

        var json: String {
            "{\"class\":\"\(name)\",\"requests\":\(result.requests),\"completed\":\(result.completed),"
                + "\"mallocs_per_request_total\":\(totalPerRequest),\"libnfs_mallocs_per_call\":\(libnfsPerCall),"
                + "\"rpcs_per_request\":\(callsPerRequest),\"engine_mallocs_per_request\":\(enginePerRequest),"
                + "\"unexpected_replies\":\(result.unexpectedReplies)}"
        }

        /// The engine allocated nothing of its own and every request succeeded.
        var passed: Bool { enginePerRequest == 0 && result.unexpectedReplies == 0 && result.completed == result.requests }
    }

    func measure(requests: Int, warmup: Int) throws -> [ClassResult] {
        let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 16)
        defer { reply.deallocate() }
        let fileName = "nfs-gate.dat"
        let name = Array(fileName.utf8) + [0]
        let (node, handle) = try makeFile(name: name, reply: reply)
        return try measureClasses(requests: requests, warmup: warmup, name: name, node: node, handle: handle, reply: reply)
    }

    /// The file: CREATE (size 0, O_TRUNC), filled by WRITEs; its node and FUSE file handle.
    func makeFile(name: [UInt8], reply: UnsafeMutableRawBufferPointer) throws -> (UInt64, UInt64) {
        let fileName = String(decoding: name.dropLast(), as: UTF8.self)
        var create = fuse_create_in()
        create.flags = UInt32(O_RDWR | O_CREAT | O_TRUNC)
        create.mode = 0o100644
        var (error, _) = PassthroughGate.request(.create, node: 1, args: PassthroughGate.bytes(create) + name)
            .withUnsafeBytes { roundTrip($0, writable: 16 + 144, reply: reply) }
        guard error == 0 else { throw SystemCallError(call: "CREATE \(fileName)", errno: -error) }
        let node = reply.load(fromByteOffset: 16 + EntryOutLayout.nodeID, as: UInt64.self)
        let handle = reply.load(fromByteOffset: 16 + EntryOutLayout.size, as: UInt64.self)
        var write = fuse_write_in()
        write.fh = handle
        write.size = 4096
        for block in 0..<256 {
            write.offset = UInt64(block * 4096)
            let bytes = PassthroughGate.request(.write, node: node, args: PassthroughGate.bytes(write) + [UInt8](repeating: 0x5A, count: 4096))
            (error, _) = bytes.withUnsafeBytes { roundTrip($0, writable: 16 + 8, reply: reply) }
            guard error == 0 else { throw SystemCallError(call: "WRITE \(fileName)", errno: -error) }
        }
        return (node, handle)
    }

    func measureClasses(requests: Int, warmup: Int, name: [UInt8], node: UInt64, handle: UInt64,
                        reply: UnsafeMutableRawBufferPointer) throws -> [ClassResult] {
        let fileName = String(decoding: name.dropLast(), as: UTF8.self)
        var write = fuse_write_in()
        write.fh = handle
        write.size = 4096
        write.offset = 0
        var read = fuse_read_in()
        read.fh = handle
        read.size = 4096
        var forget = fuse_forget_in()
        forget.nlookup = 1
        let getattr = PassthroughGate.request(.getattr, node: node, args: PassthroughGate.bytes(fuse_getattr_in()))
        let lookup = PassthroughGate.request(.lookup, node: 1, args: name)
        let forgetLookup = PassthroughGate.request(.forget, node: node, args: PassthroughGate.bytes(forget))
        let readRequest = PassthroughGate.request(.read, node: node, args: PassthroughGate.bytes(read))
        let writeRequest = PassthroughGate.request(.write, node: node, args: PassthroughGate.bytes(write) + [UInt8](repeating: 0x5A, count: 4096))

        let root = Array(device.nodes.handle(FileHandleTable.rootIndex))
        let raw: any RawLibnfsCalls = url.version == 4 ? try RawCalls4(url: url, root: root, name: fileName)
                                                       : try RawCalls(url: url, root: root, name: fileName)
        defer { raw.close() }

        var results: [ClassResult] = []
        for kind in RawCalls.Kind.allCases {
            var completed = 0
            var unexpected = 0
            func one() {
                let result: (Int32, UInt32)
                switch kind {
                case .getattr:
                    result = getattr.withUnsafeBytes { roundTrip($0, writable: 16 + 104, reply: reply) }
                    if result.1 != 16 + 104 { unexpected += 1 }
                case .lookup:
                    result = lookup.withUnsafeBytes { roundTrip($0, writable: 16 + 128, reply: reply) }
                    _ = forgetLookup.withUnsafeBytes { roundTrip($0, writable: 0, reply: UnsafeMutableRawBufferPointer(start: nil, count: 0)) }
                case .read:
                    result = readRequest.withUnsafeBytes { roundTrip($0, writable: 16 + 4096, reply: UnsafeMutableRawBufferPointer(start: nil, count: 0)) }
                    if result.1 != 16 + 4096 { unexpected += 1 }
                case .write:
                    result = writeRequest.withUnsafeBytes { roundTrip($0, writable: 16 + 8, reply: reply) }
                }
                if result.0 == 0 { completed += 1 } else { unexpected += 1 }
            }
            for _ in 0..<warmup { one() }
            completed = 0
            unexpected = 0
            MallocInterposerSwift.reset()
            MallocInterposerSwift.hook()
            for _ in 0..<requests { one() }
            MallocInterposerSwift.unhook()
            let total = MallocInterposerSwift.getStatistics().mallocCount
            let libnfs = try raw.mallocsPerCall(kind, calls: requests, warmup: warmup)
            results.append(ClassResult(
                name: "nfs-\(kind)", result: AllocationGateCommand.Result(requests: requests, completed: completed, mallocs: total,
                                                                        unexpectedReplies: unexpected),
                totalPerRequest: Double(total) / Double(requests), libnfsPerCall: libnfs, callsPerRequest: 1))
        }
        return results
    }
}

/// A bare loop of the calls the engine makes for one kind of request, counting libnfs's mallocs.
protocol RawLibnfsCalls {
    func mallocsPerCall(_ kind: RawCalls.Kind, calls: Int, warmup: Int) throws -> Double
    func close()
}

/// The same NFSv4.1 COMPOUNDs the engine sends, from a session of this process's own: our XDR
/// through the shim, replies not copied, so what is counted is libnfs's (its PDU, its encode
/// buffer, its receive buffer).
final class RawCalls4: RawLibnfsCalls {
    let client: NFSv4ControlClient
    let session: NFSv4ControlSession
    let root: [UInt8]
    let file: [UInt8]
    let name: [UInt8]
    let data = [UInt8](repeating: 0x5A, count: 4096)

    init(url: NFSURL, root: [UInt8], name fileName: String) throws {
        client = try NFSv4ControlClient(url: url, timeoutMilliseconds: 10_000)
        session = try NFSv4ControlSession(client: client, owner: Array("dpfs-gate-raw/\(getpid())".utf8),
                                          verifier: UInt64.random(in: 1...UInt64.max), slots: 1, transferBytesMax: 1 << 20)
        self.root = root
        name = Array(fileName.utf8)
        let name = self.name
        file = try session.call("LOOKUP \(fileName)", operations: 3) { writer in
            root.withUnsafeBytes { writer.putfh($0) }
            name.withUnsafeBytes { writer.lookup($0) }
            writer.getfh()
        } read: { reader, _ throws(XDRError) -> [UInt8] in
            guard try reader.next(.putfh) == .ok, try reader.next(.lookup) == .ok, try reader.next(.getfh) == .ok else { return [] }
            return Array(try reader.handle())
        }
        guard !file.isEmpty else { throw ValidationError("NFSv4: LOOKUP \(fileName) failed") }
    }

    func close() {
        try? session.destroy()
        client.close()
    }

    func one(_ kind: RawCalls.Kind) throws -> Bool {
        try root.withUnsafeBytes { root in
            try file.withUnsafeBytes { file in
                try name.withUnsafeBytes { name in
                    try data.withUnsafeBytes { data in
                        try session.sendUnread("gate", roomBytes: kind == .write ? 4096 + 512 : 0) { writer in
                            switch kind {
                            case .getattr:
                                writer.putfh(file)
                                writer.getattr(.standard)
                            case .lookup:
                                writer.putfh(root)
                                writer.lookup(name)
                                writer.getfh()
                                writer.getattr(.standard)
                            case .read:
                                writer.putfh(file)
                                writer.read(.anonymous, offset: 0, count: 4096)
                            case .write:
                                writer.putfh(file)
                                writer.write(.anonymous, offset: 0, stability: .unstable, byteCount: 4096)?.copyMemory(from: data)
                            }
                        }
                    }
                }
            }
        }
    }

    func mallocsPerCall(_ kind: RawCalls.Kind, calls: Int, warmup: Int) throws -> Double {
        for _ in 0..<warmup where try !one(kind) { throw ValidationError("NFSv4: a \(kind) COMPOUND failed") }
        MallocInterposerSwift.reset()
        MallocInterposerSwift.hook()
        var failures = 0
        for _ in 0..<calls where (try? one(kind)) != true { failures += 1 }
        MallocInterposerSwift.unhook()
        guard failures == 0 else { throw ValidationError("NFSv4: \(failures) \(kind) COMPOUNDs failed") }
        return Double(MallocInterposerSwift.getStatistics().mallocCount) / Double(calls)
    }
}

/// The same NFSv3 calls from a bare libnfs context, one at a time, counting only libnfs's mallocs
/// (this loop allocates nothing of its own: fixed arguments, a static callback, one pollfd).
final class RawCalls: RawLibnfsCalls {
    enum Kind: CaseIterable { case getattr, lookup, read, write }

    let rpc: OpaquePointer
    let root: UnsafeMutableRawBufferPointer
    let file: UnsafeMutableRawBufferPointer
    var fileLength = 0
    let name: UnsafeMutablePointer<CChar>
    let data: UnsafeMutableRawPointer
    var done = false
    var succeeded = false

    init(url: NFSURL, root rootBytes: [UInt8], name fileName: String) throws {
        guard let context = rpc_init_context() else { throw ValidationError("rpc_init_context failed") }
        rpc = context
        root = .allocate(byteCount: rootBytes.count, alignment: 8)
        root.copyBytes(from: rootBytes)
        file = .allocate(byteCount: nfsFileHandleBytesMax, alignment: 8)
        name = strdup(fileName)!
        data = .allocate(byteCount: 4096, alignment: 4096)
        memset(data, 0x5A, 4096)
        let started = url.host.withCString { host in
            rpc_connect_port_async(rpc, host, Int32(url.nfsPort), Int32(NFS_PROGRAM), Int32(NFS_V3), Self.answered, tag)
        }
        guard started == 0, wait() else { throw ValidationError("libnfs: cannot connect to \(url.host)") }
        var arguments = LOOKUP3args(what: diropargs3(dir: rootHandle(), name: name))
        done = false
        guard rpc_nfs3_lookup_async(rpc, Self.looked, &arguments, tag) == 0, wait(), fileLength > 0 else {
            throw ValidationError("libnfs: LOOKUP \(fileName) failed")
        }
    }

    func close() {
        rpc_destroy_context(rpc)
        root.deallocate()
        file.deallocate()
        Glibc.free(name)
        data.deallocate()
    }

    var tag: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    func rootHandle() -> nfs_fh3 {
        nfs_fh3(data: .init(data_len: u_int(root.count), data_val: root.baseAddress!.assumingMemoryBound(to: CChar.self)))
    }

    func fileHandle() -> nfs_fh3 {
        nfs_fh3(data: .init(data_len: u_int(fileLength), data_val: file.baseAddress!.assumingMemoryBound(to: CChar.self)))
    }

    static let answered: rpc_cb = { _, status, data, tag in
        let calls = Unmanaged<RawCalls>.fromOpaque(tag!).takeUnretainedValue()
        calls.succeeded = status == RPC_STATUS_SUCCESS && (data == nil || data!.load(as: UInt32.self) == 0)
        calls.done = true
    }

    static let looked: rpc_cb = { _, status, data, tag in
        let calls = Unmanaged<RawCalls>.fromOpaque(tag!).takeUnretainedValue()
        if status == RPC_STATUS_SUCCESS, let data {
            let result = data.assumingMemoryBound(to: LOOKUP3res.self).pointee
            let handle = result.LOOKUP3res_u.resok.object
            if result.status.rawValue == 0, handle.data.data_len <= UInt32(nfsFileHandleBytesMax), let bytes = handle.data.data_val {
                calls.file.baseAddress!.copyMemory(from: bytes, byteCount: Int(handle.data.data_len))
                calls.fileLength = Int(handle.data.data_len)
            }
        }
        calls.done = true
    }

    /// Pumps the socket until the call in flight is answered (false: no answer in 10 s).
    func wait() -> Bool {
        let deadline = monotonicNanoseconds() + 10_000_000_000
        var entry = pollfd()
        while !done {
            entry.fd = rpc_get_fd(rpc)
            entry.events = Int16(truncatingIfNeeded: rpc_which_events(rpc))
            entry.revents = 0
            if Glibc.poll(&entry, 1, 100) > 0 { _ = rpc_service(rpc, Int32(entry.revents)) }
            if monotonicNanoseconds() > deadline { return false }
        }
        return true
    }

    func one(_ kind: Kind) -> Bool {
        done = false
        succeeded = false
        let started: Int32
        switch kind {
        case .getattr:
            var arguments = GETATTR3args(object: fileHandle())
            started = rpc_nfs3_getattr_async(rpc, Self.answered, &arguments, tag)
        case .lookup:
            var arguments = LOOKUP3args(what: diropargs3(dir: rootHandle(), name: name))
            started = rpc_nfs3_lookup_async(rpc, Self.answered, &arguments, tag)
        case .read:
            var arguments = READ3args(file: fileHandle(), offset: 0, count: 4096)
            started = rpc_nfs3_read_async(rpc, Self.answered, &arguments, tag)
        case .write:
            var arguments = WRITE3args(file: fileHandle(), offset: 0, count: 4096, stable: UNSTABLE,
                                       data: .init(data_len: 4096, data_val: data.assumingMemoryBound(to: CChar.self)))
            started = rpc_nfs3_write_async(rpc, Self.answered, &arguments, tag)
        }
        return started == 0 && wait() && succeeded
    }

    /// libnfs's mallocs per call of `kind`, counted over `calls` calls after `warmup`.
    func mallocsPerCall(_ kind: Kind, calls: Int, warmup: Int) throws -> Double {
        for _ in 0..<warmup where !one(kind) { throw ValidationError("libnfs: a \(kind) call failed") }
        MallocInterposerSwift.reset()
        MallocInterposerSwift.hook()
        var failures = 0
        for _ in 0..<calls where !one(kind) { failures += 1 }
        MallocInterposerSwift.unhook()
        guard failures == 0 else { throw ValidationError("libnfs: \(failures) \(kind) calls failed") }
        return Double(MallocInterposerSwift.getStatistics().mallocCount) / Double(calls)
    }
}
