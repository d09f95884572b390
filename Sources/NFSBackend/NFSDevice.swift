import CDPFS
import BackendKit
import DPFSPosix
import FUSEWire
import Glibc
import Synchronization

// One NFS export served as one device. Built once at start-up: the MOUNT call that yields the
// export's root file handle and FSINFO's transfer limits happen here, on the control plane, with a
// blocking pump of a throw-away RPC context. The queues' own connections are made by their pollers.

public struct NFSStartupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public final class NFSDevice: @unchecked Sendable {
    public let configuration: NFSConfiguration
    public let nodes: FileHandleTable
    public let files: OpenFileTable
    /// The server's limits for one READ / WRITE (FSINFO rtmax, wtmax).
    public let readBytesMax: Int
    public let writeBytesMax: Int
    /// The export's `.dpfs-hidden` directory (HiddenName), pinned for the device's lifetime.
    public let hiddenDirectory: UInt32
    /// This engine's number in hidden names (random per start, so engines sharing an export and
    /// successive sessions never pick the same name).
    public let instance: UInt64
    /// NFSv4.1: the client, its control session and the queues' sessions (nil over NFSv3).
    public let v4: NFSv4DeviceState?
    /// NFSv4.0: where each node was last found (its OPENs go by directory and name).
    let names: NFSv40NodeNames?
    /// Fault counters of all queues (rare events: a shared atomic each is cheap enough).
    let reconnectCount = Atomic<Int>(0)
    let timeoutCount = Atomic<Int>(0)
    let resentWriteCount = Atomic<Int>(0)
    let unjournaledWriteCount = Atomic<Int>(0)
    /// NFSv4.1: SEQUENCE-only renewals sent by idle queues.
    let renewalCount = Atomic<Int>(0)
    /// NFSv4.1: SEQUENCEs the server refused (a session or slot out of step, an expired client).
    let sequenceFailureCount = Atomic<Int>(0)
    /// NFSv4.1 lock owners whose state a guest session left, released when the next began (or not:
    /// left to the lease).
    public let locksReleasedAtSessionEnd = Atomic<Int>(0)
    let locksLeftToLease = Atomic<Int>(0)
    /// NFSv4.0: BAD_SEQID answers (the owner was replaced), and CREATE opens that could not be
    /// closed (left to the lease).
    let seqidRefusedCount = Atomic<Int>(0)
    let opensLeftToLease = Atomic<Int>(0)

    /// What went wrong with the server and what the backend did about it, for the engine's log.
    public var faultReport: String {
        "NFS server faults: \(reconnectCount.load(ordering: .relaxed)) reconnect(s), \(timeoutCount.load(ordering: .relaxed)) request(s) failed EIO by the timeout, "
            + "\(resentWriteCount.load(ordering: .relaxed)) uncommitted write(s) resent after a server restart, "
            + "\(unjournaledWriteCount.load(ordering: .relaxed)) write(s) not journaled for want of room (their opens' fsync fails EIO after a restart)"
            + (v4.map { $0.control.minorVersion == 0 ? "; NFSv4.0: \(renewalCount.load(ordering: .relaxed)) RENEW(s), \(sequenceFailureCount.load(ordering: .relaxed)) call(s) refused STALE_CLIENTID or EXPIRED, client made again \($0.reestablished) time(s), \(seqidRefusedCount.load(ordering: .relaxed)) BAD_SEQID(s), \(opensLeftToLease.load(ordering: .relaxed)) create open(s) left to the lease, \($0.reclaimedPairs) lock owner(s) reclaimed after a restart (\($0.reclaimFailures) refused)" : "" } ?? "")
            + (v4.flatMap { $0.control.minorVersion == 0 ? nil : $0 }.map { "; NFSv4.1: \(renewalCount.load(ordering: .relaxed)) lease renewal(s) by idle queues, \(sequenceFailureCount.load(ordering: .relaxed)) SEQUENCE(s) refused, client made again \($0.reestablished) time(s), \($0.reclaimedPairs) lock owner(s) reclaimed after a restart (\($0.reclaimFailures) refused), \(locksReleasedAtSessionEnd.load(ordering: .relaxed)) lock owner(s) of ended sessions released (\(locksLeftToLease.load(ordering: .relaxed)) left to the lease)" } ?? "")
    }

    /// The fault counters, for `/metrics`.
    public var metricsCounters: [BackendCounter] {
        [BackendCounter(name: "reconnects", help: "Connections to the server made again after one failed.", value: UInt64(reconnectCount.load(ordering: .relaxed))),
         BackendCounter(name: "timeouts", help: "Requests failed EIO because the server did not answer in time.", value: UInt64(timeoutCount.load(ordering: .relaxed))),
         BackendCounter(name: "resent_writes", help: "Uncommitted writes resent after a server restart.", value: UInt64(resentWriteCount.load(ordering: .relaxed)))]
    }

    /// Hands each queue its number (an open's sole writer is named by it).
    let queueNumbers = Atomic<Int32>(0)
    /// NUL-terminated server name for rpc_connect_port_async (kept for the device's lifetime).
    let hostName: UnsafeMutablePointer<CChar>

    public init(configuration: NFSConfiguration) throws(NFSStartupError) {
        self.configuration = configuration
        let url = configuration.url
        let instance = UInt64.random(in: 1...UInt64.max)
        self.instance = instance
        let timeout = configuration.requestTimeoutMilliseconds
        let root: [UInt8], hidden: [UInt8]
        if url.version == 4 {
            // The configuration check refuses this too; a device made another way must not start.
            guard configuration.connectionsPerQueue == 1 else {
                throw NFSStartupError("NFSv4 takes one connection per queue (a 4.1 session binds it): nfs_connections must be 1")
            }
            let started = try Self.startV4(url, timeoutMilliseconds: timeout, instance: instance)
            v4 = started.state
            (root, hidden) = (started.root, started.hidden)
            (readBytesMax, writeBytesMax) = (started.read, started.write)
        } else {
            v4 = nil
            root = try Self.mountRoot(url, timeoutMilliseconds: timeout)
            let limits = try Self.fileSystemInfo(url, root: root, timeoutMilliseconds: timeout)
            readBytesMax = limits.read
            writeBytesMax = limits.write
            hidden = try Self.hiddenDirectory(url, root: root, timeoutMilliseconds: timeout)
        }
        hostName = strdup(url.host)!
        names = url.version == 4 && url.minorVersion == 0 ? NFSv40NodeNames(capacity: configuration.nodesMax) : nil
        let nodes = root.withUnsafeBytes { FileHandleTable(capacity: configuration.nodesMax, rootHandle: $0, rootKind: FileType.directory) }
        // Its own pin keeps the record when a new session forgets every node.
        let hiddenID = hidden.withUnsafeBytes { nodes.lookup(handle: $0, kind: FileType.directory) }!
        hiddenDirectory = nodes.pin(hiddenID)!
        self.nodes = nodes
        // A pair's file stays in the table while the guest holds it open (and so its locks).
        v4?.handleOfNode = { [unowned nodes] node in Array(nodes.handle(node)) }
        files = OpenFileTable(capacity: configuration.openFilesMax)
    }

    deinit { Glibc.free(hostName) }

    /// POSIX locks go to the server (NFSv4.1); elsewhere the guest's kernel keeps them.
    public var locksOnServer: Bool { v4 != nil }

    /// The largest READ or WRITE the guest may send: both server limits and FUSE's own, in pages.
    public var transferBytesMax: Int {
        min(readBytesMax, writeBytesMax, FUSELimits.writeBytesMax) / 4096 * 4096
    }

    public var report: String {
        "nfs \(configuration.url) (read ≤ \(readBytesMax) B, write ≤ \(writeBytesMax) B per RPC; \(configuration.nodesMax) nodes, "
            + "\(configuration.openFilesMax) open files; per queue \(configuration.connectionsPerQueue) connection(s), "
            + "\(configuration.journalBytesPerQueue >> 20) MiB write journal; timeout \(configuration.requestTimeoutMilliseconds) ms); "
            + (v4 == nil ? "POSIX locks stay in the guest's kernel: NFSv3 without NLM cannot show them to other clients of the export"
                         : v4!.control.minorVersion == 0 ? "NFSv4.0 client \(String(v4!.clientID, radix: 16)), renewed by RENEW; POSIX locks through LOCK, LOCKT and LOCKU (opens by the name each file was last found under), seen by every client of the export"
                         : "NFSv4.1 client \(String(v4!.clientID, radix: 16)), a session per queue; POSIX locks through LOCK, LOCKT and LOCKU, seen by every client of the export")
    }

    /// At stop: the v4 sessions and client are destroyed (the server forgets them now, not a lease later).
    public func stopV4() -> String? {
        guard let v4 else { return nil }
        return v4.destroy().map { "NFSv4 clean-up: \($0)" }
    }

    /// The kernel of a new session knows none of the old inodes or opens.
    public func resetSession() {
        // NFSv4.1: the old session's locks go first, while the node table still names their files.
        if let v4 {
            let outcome = v4.releaseLocks { index in Array(nodes.handle(index)) }
            locksReleasedAtSessionEnd.add(outcome.released, ordering: .relaxed)
            locksLeftToLease.add(outcome.failed, ordering: .relaxed)
        }
        // Opens first: each holds a pin of its node. A hidden file of the old session stays on the
        // server under its hidden name (as an NFS client's .nfsXXXX after a crash).
        files.closeAll { node in
            _ = nodes.closed(node)
            nodes.unpin(node)
        }
        nodes.forgetAll()
    }

    // MARK: - Start-up calls (blocking, control plane only)

    /// MOUNT3 MNT of the export path: the root file handle.
    static func mountRoot(_ url: NFSURL, timeoutMilliseconds: Int) throws(NFSStartupError) -> [UInt8] {
        let call = ControlCall(url: url, timeoutMilliseconds: timeoutMilliseconds)
        defer { call.close() }
        try call.connect(port: url.mountPort, program: Int32(MOUNT_PROGRAM), version: Int32(MOUNT_V3), what: "MOUNT service")
        let path = strdup(url.exportPath)!
        defer { Glibc.free(path) }
        var handle: [UInt8] = []
        var failure: String? = nil
        try call.run("MOUNT \(url.exportPath)") { rpc, callback, tag in
            rpc_mount3_mnt_async(rpc, callback, path, tag)
        } result: { status, data in
            guard status == RPC_STATUS_SUCCESS, let data else { failure = "MOUNT failed"; return }
            let result = data.assumingMemoryBound(to: mountres3.self).pointee
            guard result.fhs_status.rawValue == 0 else {
                failure = "MOUNT of \(url.exportPath) refused by the server (mountstat3 \(result.fhs_status.rawValue))"
                return
            }
            let fh = result.mountres3_u.mountinfo.fhandle
            guard fh.fhandle3_len >= 1 && fh.fhandle3_len <= UInt32(nfsFileHandleBytesMax), let bytes = fh.fhandle3_val else {
                failure = "MOUNT returned a \(fh.fhandle3_len)-byte root handle"
                return
            }
            handle = Array(UnsafeRawBufferPointer(start: bytes, count: Int(fh.fhandle3_len)))
        }
        if let failure { throw NFSStartupError(failure) }
        return handle
    }

    /// The handle of the export's `.dpfs-hidden` directory, made (mode 1777: every uid hides its
    /// own files there, none removes another's) when it is not there yet. Several engines share an
    /// export and may start at once: a MKDIR answered EXIST means another made it first, so it is
    /// looked up again and used, once it is shown to be a directory.
    static func hiddenDirectory(_ url: NFSURL, root: [UInt8], timeoutMilliseconds: Int) throws(NFSStartupError) -> [UInt8] {
        let call = ControlCall(url: url, timeoutMilliseconds: timeoutMilliseconds)
        defer { call.close() }
        try call.connect(port: url.nfsPort, program: Int32(NFS_PROGRAM), version: Int32(NFS_V3), what: "NFS service")
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: root.count, alignment: 8)
        defer { raw.deallocate() }
        raw.copyBytes(from: root)
        let rootHandle = nfs_fh3(data: .init(data_len: u_int(raw.count), data_val: raw.baseAddress!.assumingMemoryBound(to: CChar.self)))
        let name = strdup(HiddenName.directory)!
        defer { Glibc.free(name) }
        if let found = try lookupHidden(call, root: rootHandle, name: name) { return found }
        var failure: String? = nil
        var handle: [UInt8] = []
        var exists = false
        var attributes = sattr3()
        attributes.mode = set_mode3(set_it: 1, set_mode3_u: .init(mode: 0o1777))
        var mkdir = MKDIR3args(where: diropargs3(dir: rootHandle, name: name), attributes: attributes)
        try call.run("MKDIR \(HiddenName.directory)") { rpc, callback, tag in
            rpc_nfs3_mkdir_async(rpc, callback, &mkdir, tag)
        } result: { rpcStatus, data in
            guard rpcStatus == RPC_STATUS_SUCCESS, let data else { failure = "MKDIR failed"; return }
            let result = data.assumingMemoryBound(to: MKDIR3res.self).pointee
            if result.status == NFS3ERR_EXIST { exists = true; return }
            guard result.status.rawValue == 0 else {
                failure = "cannot make \(HiddenName.directory) in the export (nfsstat3 \(result.status.rawValue)): the export must be writable"
                return
            }
            let ok = result.MKDIR3res_u.resok
            guard ok.obj.handle_follows != 0 else { failure = "MKDIR \(HiddenName.directory) returned no handle"; return }
            switch hiddenHandle(ok.obj.post_op_fh3_u.handle) {
            case .success(let bytes): handle = bytes
            case .failure(let error): failure = error.description
            }
        }
        if let failure { throw NFSStartupError(failure) }
        guard exists else { return handle }
        // Another engine made it between our LOOKUP and MKDIR.
        guard let found = try lookupHidden(call, root: rootHandle, name: name) else {
            throw NFSStartupError("MKDIR \(HiddenName.directory) answered EXIST, yet LOOKUP finds no such name")
        }
        return found
    }

    /// LOOKUP of `.dpfs-hidden` in the export's root: its handle, nil when there is no such name,
    /// an error when it is not a directory (the engine must not hide files in something else).
    static func lookupHidden(_ call: ControlCall, root: nfs_fh3, name: UnsafeMutablePointer<CChar>) throws(NFSStartupError) -> [UInt8]? {
        var failure: String? = nil
        var handle: [UInt8]? = nil
        var lookup = LOOKUP3args(what: diropargs3(dir: root, name: name))
        try call.run("LOOKUP \(HiddenName.directory)") { rpc, callback, tag in
            rpc_nfs3_lookup_async(rpc, callback, &lookup, tag)
        } result: { rpcStatus, data in
            guard rpcStatus == RPC_STATUS_SUCCESS, let data else { failure = "LOOKUP failed"; return }
            let result = data.assumingMemoryBound(to: LOOKUP3res.self).pointee
            if result.status == NFS3ERR_NOENT { return }
            guard result.status.rawValue == 0 else {
                failure = "LOOKUP \(HiddenName.directory) in the export: nfsstat3 \(result.status.rawValue)"
                return
            }
            let ok = result.LOOKUP3res_u.resok
            if ok.obj_attributes.attributes_follow != 0, ok.obj_attributes.post_op_attr_u.attributes.type != NF3DIR {
                failure = "\(HiddenName.directory) in the export is not a directory: remove it, the engine keeps unlinked open files there"
                return
            }
            switch hiddenHandle(ok.object) {
            case .success(let bytes): handle = bytes
            case .failure(let error): failure = error.description
            }
        }
        if let failure { throw NFSStartupError(failure) }
        return handle
    }

    static func hiddenHandle(_ fh: nfs_fh3) -> Result<[UInt8], NFSStartupError> {
        let length = Int(fh.data.data_len)
        guard length >= 1, length <= nfsFileHandleBytesMax, let bytes = fh.data.data_val else {
            return .failure(NFSStartupError("the server sent a \(length)-byte handle for \(HiddenName.directory)"))
        }
        return .success(Array(UnsafeRawBufferPointer(start: bytes, count: length)))
    }

    /// FSINFO of the root: the largest READ and WRITE the server takes.
    static func fileSystemInfo(_ url: NFSURL, root: [UInt8], timeoutMilliseconds: Int) throws(NFSStartupError) -> (read: Int, write: Int) {
        let call = ControlCall(url: url, timeoutMilliseconds: timeoutMilliseconds)
        defer { call.close() }
        try call.connect(port: url.nfsPort, program: Int32(NFS_PROGRAM), version: Int32(NFS_V3), what: "NFS service")
        var limits = (read: 0, write: 0)
        var failure: String? = nil
        // The handle must stay put while the call is encoded (typed throws and withUnsafeBytes's
        // rethrows do not mix, hence the explicit buffer).
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: root.count, alignment: 8)
        defer { raw.deallocate() }
        raw.copyBytes(from: root)
        var arguments = FSINFO3args()
        arguments.fsroot = nfs_fh3(data: .init(data_len: u_int(raw.count), data_val: raw.baseAddress!.assumingMemoryBound(to: CChar.self)))
        try call.run("FSINFO") { rpc, callback, tag in
            rpc_nfs3_fsinfo_async(rpc, callback, &arguments, tag)
        } result: { status, data in
            guard status == RPC_STATUS_SUCCESS, let data else { failure = "FSINFO failed"; return }
            let result = data.assumingMemoryBound(to: FSINFO3res.self).pointee
            guard result.status.rawValue == 0 else { failure = "FSINFO: nfsstat3 \(result.status.rawValue)"; return }
            limits = (Int(result.FSINFO3res_u.resok.rtmax), Int(result.FSINFO3res_u.resok.wtmax))
        }
        if let failure { throw NFSStartupError(failure) }
        guard limits.read >= 4096 && limits.write >= 4096 else {
            throw NFSStartupError("the server's transfer limits (read \(limits.read), write \(limits.write)) are below 4 KiB")
        }
        return limits
    }
}

/// One blocking RPC exchange for start-up: connect, send, pump the socket until the answer.
final class ControlCall {
    let url: NFSURL
    let rpc: OpaquePointer
    let deadlineNanoseconds: UInt64
    var done = false
    var handler: ((Int32, UnsafeMutableRawPointer?) -> Void)? = nil

    init(url: NFSURL, timeoutMilliseconds: Int) {
        self.url = url
        rpc = rpc_init_context()
        deadlineNanoseconds = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
    }

    func close() { rpc_destroy_context(rpc) }

    static let callback: rpc_cb = { _, status, data, tag in
        let call = Unmanaged<ControlCall>.fromOpaque(tag!).takeUnretainedValue()
        call.handler?(status, data)
        call.done = true
    }

    var tag: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    func connect(port: Int, program: Int32, version: Int32, what: String) throws(NFSStartupError) {
        var failed = false
        handler = { status, _ in failed = status != RPC_STATUS_SUCCESS }
        done = false
        let started = url.host.withCString { host -> Int32 in
            if port != 0 { return rpc_connect_port_async(rpc, host, Int32(port), program, version, Self.callback, tag) }
            return rpc_connect_program_async(rpc, host, program, version, Self.callback, tag)
        }
        guard started == 0 else { throw NFSStartupError("\(what) at \(url.host): \(String(cString: rpc_get_error(rpc)))") }
        try pump(what)
        if failed { throw NFSStartupError("cannot connect to the \(what) at \(url.host): \(String(cString: rpc_get_error(rpc)))") }
    }

    func run(_ what: String, start: (OpaquePointer, rpc_cb, UnsafeMutableRawPointer) -> Int32,
             result: @escaping (Int32, UnsafeMutableRawPointer?) -> Void) throws(NFSStartupError) {
        handler = result
        done = false
        guard start(rpc, Self.callback, tag) == 0 else { throw NFSStartupError("\(what): \(String(cString: rpc_get_error(rpc)))") }
        try pump(what)
    }

    func pump(_ what: String) throws(NFSStartupError) {
        while !done {
            let now = monotonicNanoseconds()
            guard now < deadlineNanoseconds else { throw NFSStartupError("\(what): no answer from \(url.host) in time") }
            var entry = pollfd(fd: rpc_get_fd(rpc), events: Int16(rpc_which_events(rpc)), revents: 0)
            let ready = Glibc.poll(&entry, 1, 100)
            if ready < 0 && errno != EINTR { throw NFSStartupError("\(what): poll: errno \(errno)") }
            if rpc_service(rpc, ready > 0 ? Int32(entry.revents) : 0) < 0 && !done {
                throw NFSStartupError("\(what): \(String(cString: rpc_get_error(rpc)))")
            }
        }
    }
}
