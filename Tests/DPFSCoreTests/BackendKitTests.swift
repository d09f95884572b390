import BackendKit
import DPFSCore
import DPFSTestSupport
import FUSEWire
import Testing

// The typed contract's adapter, walked opcode by opcode through the real poller and decoder: each
// request reaches the one method it belongs to with the argument values the kernel put in it (and
// in debug builds every view asserts its C struct is the size the opcode table copied), the
// opcodes no backend answers get ENOSYS, and a file system that implements nothing answers with
// the documented defaults.

/// What the recording file system saw, shared with the test (the backend lives in the poller).
final class CallLog: @unchecked Sendable {
    var calls: [String] = []
}

/// Answers every operation with success (or the smallest valid reply) and writes down what it got.
struct RecordingFileSystem: FileSystem {
    let log: CallLog

    func note(_ name: String, _ operation: Operation<some Any>, _ details: String) {
        log.calls.append("\(name) node=\(operation.nodeID) uid=\(operation.caller.uid) \(details)")
    }

    static func text(_ name: Name) -> String { String(decoding: name.bytes, as: UTF8.self) }

    mutating func forget(nodeID: UInt64, lookups: UInt64) { log.calls.append("forget node=\(nodeID) lookups=\(lookups)") }
    mutating func lookup(_ o: Operation<NameArguments>, reply: EntryReply) -> BackendAnswer { note("lookup", o, Self.text(o.arguments.name)); return reply.fail(.noEntry) }
    mutating func getattr(_ o: Operation<GetattrArguments>, reply: AttributesReply) -> BackendAnswer { note("getattr", o, "handle=\(String(describing: o.arguments.handle))"); return reply.fail(.noEntry) }
    mutating func setattr(_ o: Operation<SetattrArguments>, reply: AttributesReply) -> BackendAnswer { note("setattr", o, "valid=\(o.arguments.valid)"); return reply.fail(.noEntry) }
    mutating func statx(_ o: Operation<StatxArguments>, reply: StatxReply) -> BackendAnswer { note("statx", o, "mask=\(o.arguments.mask)"); return reply.fail(.noEntry) }
    mutating func readlink(_ o: Operation<NoArguments>, reply: DataReply) -> BackendAnswer { note("readlink", o, ""); return reply.send(bodyBytes: 0) }
    mutating func symlink(_ o: Operation<SymlinkArguments>, reply: EntryReply) -> BackendAnswer { note("symlink", o, "\(Self.text(o.arguments.name)) -> \(Self.text(o.arguments.target))"); return reply.fail(.exists) }
    mutating func mknod(_ o: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer { note("mknod", o, "\(Self.text(o.arguments.name)) mode=\(String(o.arguments.mode, radix: 8))"); return reply.fail(.exists) }
    mutating func mkdir(_ o: Operation<MakeNodeArguments>, reply: EntryReply) -> BackendAnswer { note("mkdir", o, "\(Self.text(o.arguments.name)) mode=\(String(o.arguments.mode, radix: 8))"); return reply.fail(.exists) }
    mutating func unlink(_ o: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer { note("unlink", o, Self.text(o.arguments.name)); return reply.ok() }
    mutating func rmdir(_ o: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer { note("rmdir", o, Self.text(o.arguments.name)); return reply.ok() }
    mutating func rename(_ o: Operation<RenameArguments>, reply: StatusReply) -> BackendAnswer {
        note("rename", o, "\(Self.text(o.arguments.name)) -> \(o.arguments.newParent)/\(Self.text(o.arguments.newName)) flags=\(o.arguments.flags)")
        return reply.ok()
    }
    mutating func link(_ o: Operation<LinkArguments>, reply: EntryReply) -> BackendAnswer { note("link", o, "target=\(o.arguments.target) \(Self.text(o.arguments.name))"); return reply.fail(.exists) }
    mutating func open(_ o: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer { note("open", o, "flags=\(o.arguments.flags)"); return reply.open(fileHandle: 7, openFlags: 0) }
    mutating func create(_ o: Operation<CreateArguments>, reply: CreatedReply) -> BackendAnswer { note("create", o, "\(Self.text(o.arguments.name)) flags=\(String(o.arguments.flags, radix: 8)) mode=\(String(o.arguments.mode, radix: 8))"); return reply.fail(.exists) }
    mutating func tmpfile(_ o: Operation<CreateArguments>, reply: CreatedReply) -> BackendAnswer { note("tmpfile", o, "mode=\(String(o.arguments.mode, radix: 8))"); return reply.fail(.exists) }
    mutating func read(_ o: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer { note("read", o, "handle=\(o.arguments.handle) offset=\(o.arguments.offset) size=\(o.arguments.size)"); return reply.sendInPlace(dataBytes: 0) }
    mutating func write(_ o: Operation<WriteArguments>, reply: WrittenReply) -> BackendAnswer {
        var payload = o.arguments.payload
        var bytes = [UInt8](repeating: 0, count: Int(o.arguments.size))
        let copied = bytes.withUnsafeMutableBytes { payload.read(into: $0.baseAddress!, byteCount: $0.count) }
        note("write", o, "handle=\(o.arguments.handle) size=\(o.arguments.size) payload=\(copied == bytes.count && bytes == TestRequest.writePayload)")
        return reply.written(bytes: o.arguments.size)
    }
    mutating func flush(_ o: Operation<FlushArguments>, reply: StatusReply) -> BackendAnswer { note("flush", o, "handle=\(o.arguments.handle)"); return reply.ok() }
    mutating func release(_ o: Operation<ReleaseArguments>, reply: StatusReply) -> BackendAnswer { note("release", o, "handle=\(o.arguments.handle)"); return reply.ok() }
    mutating func fsync(_ o: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer { note("fsync", o, "dataOnly=\(o.arguments.dataOnly)"); return reply.ok() }
    mutating func opendir(_ o: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer { note("opendir", o, "flags=\(o.arguments.flags)"); return reply.open(fileHandle: 8, openFlags: 0) }
    mutating func readdir(_ o: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer { note("readdir", o, "offset=\(o.arguments.offset) size=\(o.arguments.size)"); return reply.send(bodyBytes: 0) }
    mutating func readdirplus(_ o: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer { note("readdirplus", o, "offset=\(o.arguments.offset) size=\(o.arguments.size)"); return reply.send(bodyBytes: 0) }
    mutating func releasedir(_ o: Operation<ReleaseArguments>, reply: StatusReply) -> BackendAnswer { note("releasedir", o, "handle=\(o.arguments.handle)"); return reply.ok() }
    mutating func fsyncdir(_ o: Operation<FsyncArguments>, reply: StatusReply) -> BackendAnswer { note("fsyncdir", o, "dataOnly=\(o.arguments.dataOnly)"); return reply.ok() }
    mutating func statfs(_ o: Operation<NoArguments>, reply: StatisticsReply) -> BackendAnswer { note("statfs", o, ""); return reply.fail(.noEntry) }
    mutating func setxattr(_ o: Operation<SetxattrArguments>, reply: StatusReply) -> BackendAnswer { note("setxattr", o, "\(Self.text(o.arguments.name)) size=\(o.arguments.size)"); return reply.ok() }
    mutating func getxattr(_ o: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer { note("getxattr", o, "\(o.arguments.name.map(Self.text) ?? "-") size=\(o.arguments.size)"); return reply.fail(.noData) }
    mutating func listxattr(_ o: Operation<XattrQueryArguments>, reply: DataReply) -> BackendAnswer { note("listxattr", o, "\(o.arguments.name.map(Self.text) ?? "-") size=\(o.arguments.size)"); return reply.xattrSize(0) }
    mutating func removexattr(_ o: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer { note("removexattr", o, Self.text(o.arguments.name)); return reply.ok() }
    mutating func access(_ o: Operation<AccessArguments>, reply: StatusReply) -> BackendAnswer { note("access", o, "mask=\(o.arguments.mask)"); return reply.ok() }
    mutating func getlk(_ o: Operation<LockArguments>, reply: LockReply) -> BackendAnswer { note("getlk", o, "type=\(o.arguments.type)"); return reply.lock(start: 0, end: 0, type: 2, pid: 0) }
    mutating func setlk(_ o: Operation<LockArguments>, wait: Bool, reply: StatusReply) -> BackendAnswer { note("setlk", o, "wait=\(wait)"); return reply.ok() }
    mutating func interrupt(_ o: Operation<InterruptArguments>, reply: StatusReply) -> BackendAnswer { note("interrupt", o, "target=\(o.arguments.target)"); return reply.ok() }
    mutating func fallocate(_ o: Operation<FallocateArguments>, reply: StatusReply) -> BackendAnswer { note("fallocate", o, "length=\(o.arguments.length)"); return reply.ok() }
    mutating func lseek(_ o: Operation<LseekArguments>, reply: OffsetReply) -> BackendAnswer { note("lseek", o, "whence=\(o.arguments.whence)"); return reply.offset(4096) }
    mutating func copyFileRange(_ o: Operation<CopyFileRangeArguments>, reply: CopiedReply) -> BackendAnswer { note("copyFileRange", o, "length=\(o.arguments.length)"); return reply.copied(bytes: 5) }
    mutating func syncfs(_ o: Operation<NoArguments>, reply: StatusReply) -> BackendAnswer { note("syncfs", o, ""); return reply.ok() }
}

/// Implements nothing: every answer is the contract's default.
struct EmptyFileSystem: FileSystem {}

@Suite struct BackendKitTests {
    /// What each opcode's canonical request (TestRequest.valid) must arrive as; nil: no method.
    static func expectedCall(_ opcode: FUSEOpcode) -> [String]? {
        switch opcode {
        case .lookup: return ["lookup node=1 uid=0 hello.txt"]
        case .forget: return ["forget node=5 lookups=3"]
        case .batchForget: return ["forget node=5 lookups=1", "forget node=6 lookups=2"]
        case .getattr: return ["getattr node=1 uid=0 handle=nil"]
        case .setattr: return ["setattr node=1 uid=0 valid=0"]
        case .statx: return ["statx node=1 uid=0 mask=0"]
        case .readlink: return ["readlink node=1 uid=0 "]
        case .symlink: return ["symlink node=1 uid=0 hello.txt -> ../some/where/else"]
        case .mknod: return ["mknod node=1 uid=0 hello.txt mode=100644"]
        case .mkdir: return ["mkdir node=1 uid=0 hello.txt mode=755"]
        case .unlink: return ["unlink node=1 uid=0 hello.txt"]
        case .rmdir: return ["rmdir node=1 uid=0 hello.txt"]
        case .rename: return ["rename node=1 uid=0 hello.txt -> 1/renamed.txt flags=0"]
        case .rename2: return ["rename node=1 uid=0 hello.txt -> 1/renamed.txt flags=1"]
        case .link: return ["link node=1 uid=0 target=2 hello.txt"]
        case .open: return ["open node=1 uid=0 flags=0"]
        case .create: return ["create node=1 uid=0 hello.txt flags=100 mode=644"]
        case .tmpfile: return ["tmpfile node=1 uid=0 mode=644"]
        case .read: return ["read node=2 uid=0 handle=2 offset=4096 size=4096"]
        case .write: return ["write node=2 uid=0 handle=2 size=300 payload=true"]
        case .flush: return ["flush node=1 uid=0 handle=0"]
        case .release: return ["release node=1 uid=0 handle=0"]
        case .fsync: return ["fsync node=1 uid=0 dataOnly=false"]
        case .opendir: return ["opendir node=1 uid=0 flags=0"]
        case .readdir: return ["readdir node=2 uid=0 offset=4096 size=4096"]
        case .readdirplus: return ["readdirplus node=2 uid=0 offset=4096 size=4096"]
        case .releasedir: return ["releasedir node=1 uid=0 handle=0"]
        case .fsyncdir: return ["fsyncdir node=1 uid=0 dataOnly=false"]
        case .statfs: return ["statfs node=1 uid=0 "]
        case .setxattr: return ["setxattr node=1 uid=0 user.comment size=7"]
        case .getxattr: return ["getxattr node=1 uid=0 user.comment size=64"]
        case .listxattr: return ["listxattr node=1 uid=0 - size=0"]
        case .removexattr: return ["removexattr node=1 uid=0 user.comment"]
        case .access: return ["access node=1 uid=0 mask=4"]
        case .getlk: return ["getlk node=1 uid=0 type=0"]
        case .setlk: return ["setlk node=1 uid=0 wait=false"]
        case .setlkw: return ["setlk node=1 uid=0 wait=true"]
        case .interrupt: return ["interrupt node=1 uid=0 target=99"]
        case .fallocate: return ["fallocate node=1 uid=0 length=0"]
        case .lseek: return ["lseek node=1 uid=0 whence=3"]
        case .copyFileRange, .copyFileRange64: return ["copyFileRange node=1 uid=0 length=0"]
        case .syncfs: return ["syncfs node=1 uid=0 "]
        case .bmap, .ioctl, .poll, .setupMapping, .removeMapping, .notifyReply: return nil
        case .`init`, .destroy: return nil
        }
    }

    static let routed = FUSEOpcode.allCases.filter { $0 != .`init` && $0 != .destroy }

    @Test("every opcode reaches its own method with the values the request carried", arguments: routed)
    func everyOpcodeReachesItsMethod(_ opcode: FUSEOpcode) {
        let log = CallLog()
        let client = FUSEClient(backend: RecordingFileSystem(log: log))
        let request = TestRequest.valid(opcode)
        let (error, body) = client.call(opcode, node: request.nodeID, args: request.args)
        if let expected = Self.expectedCall(opcode) {
            #expect(log.calls == expected)
        } else {
            #expect(log.calls.isEmpty, "\(opcode) reached a method")
            if opcode.expectsReply { #expect(error == -38, "\(opcode) is answered by no backend: ENOSYS") }
        }
        // The two forms of COPY_FILE_RANGE answer in their own layout: 32 bits, or 64.
        if opcode == .copyFileRange { #expect(body.count == 8 && body.loadLE(UInt32.self, at: 0) == 5) }
        if opcode == .copyFileRange64 { #expect(body.count == 8 && body.loadLE(UInt64.self, at: 0) == 5) }
    }

    @Test("a file system that implements nothing answers with the documented defaults", arguments: routed)
    func defaults(_ opcode: FUSEOpcode) {
        let client = FUSEClient(backend: EmptyFileSystem())
        let request = TestRequest.valid(opcode)
        let (error, body) = client.call(opcode, node: request.nodeID, args: request.args)
        switch opcode {
        case .forget, .batchForget, .notifyReply:
            #expect(error == 0 && body.isEmpty)   // one-way: the chain came back with no reply
        case .release, .releasedir:
            #expect(error == 0 && body.isEmpty)   // nothing was opened: success
        default:
            #expect(error == -38, "\(opcode): ENOSYS by default")
        }
    }
}
