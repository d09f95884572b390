import ArgumentParser
import CDPFS
import DPFSCore
import DPFSPosix
import Glibc
import NFSBackend

/// `dpfs-bench nfs-floor`: the floor the NFS backend is measured against — a raw libnfs loop on
/// one RPC context per connection, issuing the same NFSv3 calls the engine makes for GETATTR,
/// LOOKUP, READ 4 KiB and WRITE 4 KiB (UNSTABLE) of one file, with `depth` calls outstanding. At
/// depth 1 it spins on its socket, deeper it sleeps in poll(2); nothing of the engine runs. The
/// difference between this and `dpfs-bench vhost-user` against an engine with `--backend nfs` on
/// the same export is what the engine adds (tools/bench-nfs.sh runs both).
struct NFSFloorBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nfs-floor",
        abstract: "Raw libnfs loop (no engine): GETATTR, LOOKUP, READ 4 KiB, WRITE 4 KiB at a queue depth, on one export.")

    @Option(help: "The export, as the engine takes it: nfs://HOST/PATH?version=3[&nfsport=N&mountport=N].")
    var url: String

    @Option(help: "The file in the export's root (made and filled with --file-size bytes when missing).")
    var file: String = "dpfs-bench.dat"

    @Option(help: "Bytes of the file (a multiple of 4096).")
    var fileSize: Int = 1 << 20

    @Option(parsing: .upToNextOption, help: "Operations: getattr, lookup, read, write.")
    var operations: [String] = ["getattr", "lookup", "read", "write"]

    @Option(parsing: .upToNextOption, help: "Queue depths (calls outstanding, 1...256).")
    var depths: [Int] = [1, 16]

    @Option(help: "TCP connections the calls are spread over (round robin).")
    var connections: Int = 1

    @Option(help: "Calls measured per operation and depth.")
    var requests: Int = 20_000

    @Option(help: "Warm-up calls per operation and depth.")
    var warmup: Int = 2_000

    @Option(help: "Label in the output.")
    var label: String = "libnfs-raw"

    @Flag(help: "One JSON object per measurement instead of a table.")
    var json = false

    func validate() throws {
        guard depths.allSatisfy({ (1...256).contains($0) }) else { throw ValidationError("queue depths must be 1...256") }
        guard (1...16).contains(connections) else { throw ValidationError("--connections must be 1...16") }
        guard requests > 0, warmup >= 0 else { throw ValidationError("--requests must be positive") }
        for operation in operations where FloorOperation(rawValue: operation) == nil {
            throw ValidationError("unknown operation \(operation) (getattr, lookup, read, write)")
        }
        guard fileSize >= 4096, fileSize % 4096 == 0 else { throw ValidationError("--file-size must be a positive multiple of 4096") }
    }

    func run() throws {
        let parsed: NFSURL
        do { parsed = try NFSURL.parse(url) } catch { throw ValidationError("\(error)") }
        // The device's start-up calls (MOUNT, FSINFO) give the root handle, as the engine gets it.
        let device: NFSDevice
        do { device = try NFSDevice(configuration: NFSConfiguration(url: parsed)) } catch { throw ValidationError("\(error)") }
        let root = Array(device.nodes.handle(FileHandleTable.rootIndex))
        let loop = try FloorLoop(url: parsed, connections: connections, root: root, fileName: file, fileSize: fileSize)
        defer { loop.close() }
        if !json {
            print("dpfs-bench nfs-floor: \(label), \(parsed), \(connections) connection(s), file \(file) (\(fileSize) B), "
                  + "\(requests) calls per point after \(warmup) warm-up")
            print("operation  depth  ops/s        p50 ns    p99 ns    p99.9 ns  cpu us/call  failures")
        }
        for name in operations {
            let operation = FloorOperation(rawValue: name)!
            for depth in depths {
                let result = try loop.measure(operation, depth: depth, requests: requests, warmup: warmup)
                if json {
                    print("{\"benchmark\":\"nfs-floor\",\"backend\":\"\(label)\",\"operation\":\"\(name)\",\"queue_depth\":\(depth),"
                          + "\"connections\":\(connections),\"requests\":\(requests),\"ops_per_second\":\(Int(result.opsPerSecond)),"
                          + "\"p50_ns\":\(result.p50),\"p99_ns\":\(result.p99),\"p999_ns\":\(result.p999),\"failures\":\(result.failures),"
                          + "\"cpu_us_per_call\":\(VhostUserBenchmark.format(result.cpuMicrosecondsPerCall, decimals: 3))}")
                } else {
                    print(name.padding(10) + " " + String(depth).padding(6) + " " + String(Int(result.opsPerSecond)).padding(12) + " "
                          + String(result.p50).padding(9) + " " + String(result.p99).padding(9) + " " + String(result.p999).padding(9)
                          + " " + VhostUserBenchmark.format(result.cpuMicrosecondsPerCall, decimals: 3).padding(12) + " " + String(result.failures))
                }
            }
        }
    }
}

enum FloorOperation: String {
    case getattr, lookup, read, write
}

/// The calls and their clock. A class: libnfs calls back into it from rpc_service.
final class FloorLoop {
    let contexts: [OpaquePointer]
    let root: UnsafeMutableRawBufferPointer
    let fileHandle: UnsafeMutableRawBufferPointer
    let name: UnsafeMutablePointer<CChar>
    let data: UnsafeMutableRawPointer
    let fileBlocks: Int
    var startedNanoseconds: [UInt64] = []
    /// The load generator's histogram, so both sides report percentiles the same way (the upper
    /// edge of the bucket, ≤ 1/32 above the value).
    let histogram: LatencyHistogram
    var outstanding = 0
    var issued = 0
    var failures = 0
    var recording = false
    var next = 0
    /// The calls each slot waits for: tags point here.
    var tags: UnsafeMutablePointer<FloorTag>
    static let tagsMax = 256

    struct FloorTag {
        var loop: UnsafeMutableRawPointer
        var slot: Int
    }

    init(url: NFSURL, connections: Int, root rootBytes: [UInt8], fileName: String, fileSize: Int) throws {
        root = .allocate(byteCount: rootBytes.count, alignment: 8)
        root.copyBytes(from: rootBytes)
        fileHandle = .allocate(byteCount: nfsFileHandleBytesMax, alignment: 8)
        name = strdup(fileName)!
        data = .allocate(byteCount: 4096, alignment: 4096)
        memset(data, 0x5A, 4096)
        fileBlocks = fileSize / 4096
        tags = .allocate(capacity: Self.tagsMax)
        let counts = UnsafeMutablePointer<UInt64>.allocate(capacity: LatencyHistogram.bucketCount)
        counts.initialize(repeating: 0, count: LatencyHistogram.bucketCount)
        histogram = LatencyHistogram(counts: counts)
        var made: [OpaquePointer] = []
        for _ in 0..<connections {
            guard let rpc = rpc_init_context() else { throw ValidationError("rpc_init_context failed") }
            made.append(rpc)
        }
        contexts = made
        let me = Unmanaged.passUnretained(self).toOpaque()
        for slot in 0..<Self.tagsMax { (tags + slot).initialize(to: FloorTag(loop: me, slot: slot)) }
        for rpc in contexts {
            try blocking("connect", { done in
                url.host.withCString { host in
                    rpc_connect_port_async(rpc, host, Int32(url.nfsPort), Int32(NFS_PROGRAM), Int32(NFS_V3), Self.plain, done)
                }
            }, on: [rpc])
        }
        try prepareFile(size: fileSize)
    }

    func close() {
        for rpc in contexts { rpc_destroy_context(rpc) }
        root.deallocate()
        fileHandle.deallocate()
        Glibc.free(name)
        data.deallocate()
        tags.deallocate()
        histogram.counts.deallocate()
    }

    var fileHandleLength = 0

    func rootHandle() -> nfs_fh3 {
        nfs_fh3(data: .init(data_len: u_int(root.count), data_val: root.baseAddress!.assumingMemoryBound(to: CChar.self)))
    }

    func file() -> nfs_fh3 {
        nfs_fh3(data: .init(data_len: u_int(fileHandleLength), data_val: fileHandle.baseAddress!.assumingMemoryBound(to: CChar.self)))
    }

    // MARK: - Set-up (blocking)

    /// A completion flag for set-up calls.
    final class Done {
        var finished = false
        var status: Int32 = 0
        var handler: ((UnsafeMutableRawPointer?) -> Void)?
    }

    static let plain: rpc_cb = { _, status, data, tag in
        let done = Unmanaged<Done>.fromOpaque(tag!).takeUnretainedValue()
        done.status = status
        if status == RPC_STATUS_SUCCESS { done.handler?(data) }
        done.finished = true
    }

    func blocking(_ what: String, _ start: (UnsafeMutableRawPointer) -> Int32, on rpcs: [OpaquePointer],
                  handler: ((UnsafeMutableRawPointer?) -> Void)? = nil) throws {
        let done = Done()
        done.handler = handler
        let tag = Unmanaged.passRetained(done).toOpaque()
        defer { Unmanaged<Done>.fromOpaque(tag).release() }
        guard start(tag) == 0 else { throw ValidationError("\(what): \(String(cString: rpc_get_error(rpcs[0])))") }
        let deadline = monotonicNanoseconds() + 10_000_000_000
        while !done.finished {
            guard monotonicNanoseconds() < deadline else { throw ValidationError("\(what): no answer in 10 s") }
            pump(rpcs, timeoutMilliseconds: 100)
        }
        guard done.status == RPC_STATUS_SUCCESS else { throw ValidationError("\(what) failed: \(String(cString: rpc_get_error(rpcs[0])))") }
    }

    /// Looks the file up, making and filling it when it is missing or short.
    func prepareFile(size: Int) throws {
        let rpc = contexts[0]
        var status: UInt32 = 0
        var arguments = LOOKUP3args(what: diropargs3(dir: rootHandle(), name: name))
        try blocking("LOOKUP", { rpc_nfs3_lookup_async(rpc, Self.plain, &arguments, $0) }, on: [rpc]) { data in
            let result = data!.assumingMemoryBound(to: LOOKUP3res.self).pointee
            status = result.status.rawValue
            if status == 0 { self.keep(result.LOOKUP3res_u.resok.object) }
        }
        if status != 0 {
            var attributes = sattr3()
            attributes.mode = set_mode3(set_it: 1, set_mode3_u: .init(mode: 0o644))
            var how = createhow3()
            how.mode = UNCHECKED
            how.createhow3_u.obj_attributes = attributes
            var create = CREATE3args(where: diropargs3(dir: rootHandle(), name: name), how: how)
            try blocking("CREATE", { rpc_nfs3_create_async(rpc, Self.plain, &create, $0) }, on: [rpc]) { data in
                let result = data!.assumingMemoryBound(to: CREATE3res.self).pointee
                status = result.status.rawValue
                if status == 0, result.CREATE3res_u.resok.obj.handle_follows != 0 { self.keep(result.CREATE3res_u.resok.obj.post_op_fh3_u.handle) }
            }
            guard status == 0, fileHandleLength > 0 else { throw ValidationError("CREATE \(String(cString: name)): nfsstat3 \(status)") }
        }
        for block in 0..<size / 4096 {
            var write = WRITE3args(file: file(), offset: UInt64(block * 4096), count: 4096, stable: FILE_SYNC,
                                   data: .init(data_len: 4096, data_val: data.assumingMemoryBound(to: CChar.self)))
            try blocking("WRITE", { rpc_nfs3_write_async(rpc, Self.plain, &write, $0) }, on: [rpc])
        }
    }

    func keep(_ handle: nfs_fh3) {
        let length = Int(handle.data.data_len)
        guard length >= 1, length <= nfsFileHandleBytesMax, let bytes = handle.data.data_val else { return }
        fileHandle.baseAddress!.copyMemory(from: bytes, byteCount: length)
        fileHandleLength = length
    }

    func pump(_ rpcs: [OpaquePointer], timeoutMilliseconds: Int32) {
        var entries = rpcs.map { pollfd(fd: rpc_get_fd($0), events: Int16(truncatingIfNeeded: rpc_which_events($0)), revents: 0) }
        let ready = Glibc.poll(&entries, nfds_t(entries.count), timeoutMilliseconds)
        guard ready > 0 else { return }
        for (index, rpc) in rpcs.enumerated() where entries[index].revents != 0 {
            _ = rpc_service(rpc, Int32(entries[index].revents))
        }
    }

    // MARK: - The measured loop

    static let answered: rpc_cb = { _, status, data, tag in
        let tag = tag!.assumingMemoryBound(to: FloorTag.self).pointee
        let loop = Unmanaged<FloorLoop>.fromOpaque(tag.loop).takeUnretainedValue()
        loop.finished(slot: tag.slot, success: status == RPC_STATUS_SUCCESS && FloorLoop.succeeded(data))
    }

    /// Every result type starts with its nfsstat3.
    static func succeeded(_ data: UnsafeMutableRawPointer?) -> Bool {
        guard let data else { return false }
        return data.load(as: UInt32.self) == 0
    }

    var operation: FloorOperation = .getattr
    var target = 0

    func finished(slot: Int, success: Bool) {
        let now = monotonicNanoseconds()
        outstanding -= 1
        if !success { failures += 1 }
        if recording { histogram.record(now - startedNanoseconds[slot]) }
        if issued < target { issue(slot: slot) }
    }

    func issue(slot: Int) {
        let rpc = contexts[next % contexts.count]
        next += 1
        let tag = UnsafeMutableRawPointer(tags + slot)
        startedNanoseconds[slot] = monotonicNanoseconds()
        let started: Int32
        switch operation {
        case .getattr:
            var arguments = GETATTR3args(object: file())
            started = rpc_nfs3_getattr_async(rpc, Self.answered, &arguments, tag)
        case .lookup:
            var arguments = LOOKUP3args(what: diropargs3(dir: rootHandle(), name: name))
            started = rpc_nfs3_lookup_async(rpc, Self.answered, &arguments, tag)
        case .read:
            var arguments = READ3args(file: file(), offset: UInt64((issued % fileBlocks) * 4096), count: 4096)
            started = rpc_nfs3_read_async(rpc, Self.answered, &arguments, tag)
        case .write:
            var arguments = WRITE3args(file: file(), offset: UInt64((issued % fileBlocks) * 4096), count: 4096, stable: UNSTABLE,
                                       data: .init(data_len: 4096, data_val: data.assumingMemoryBound(to: CChar.self)))
            started = rpc_nfs3_write_async(rpc, Self.answered, &arguments, tag)
        }
        precondition(started == 0, "libnfs could not queue a call")
        issued += 1
        outstanding += 1
    }

    struct Result {
        let opsPerSecond: Double
        let p50: UInt64, p99: UInt64, p999: UInt64
        let failures: Int
        /// This process's CPU time (user + system) per call, µs.
        let cpuMicrosecondsPerCall: Double
    }

    static func cpuMicroseconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6 + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
    }

    func run(_ operation: FloorOperation, depth: Int, count: Int) {
        self.operation = operation
        issued = 0
        target = count
        startedNanoseconds = Array(repeating: 0, count: depth)
        for slot in 0..<min(depth, count) { issue(slot: slot) }
        // Depth 1 spins for each answer (as the engine's poller busy-polls between requests);
        // deeper sleeps in poll(2), leaving the CPUs to the server.
        let timeout: Int32 = depth == 1 ? 0 : 1000
        while outstanding > 0 { pump(contexts, timeoutMilliseconds: timeout) }
    }

    func measure(_ operation: FloorOperation, depth: Int, requests: Int, warmup: Int) throws -> Result {
        precondition(depth <= Self.tagsMax)
        recording = false
        failures = 0
        if warmup > 0 { run(operation, depth: depth, count: warmup) }
        histogram.reset()
        recording = true
        failures = 0
        let cpuBefore = Self.cpuMicroseconds()
        let began = monotonicNanoseconds()
        run(operation, depth: depth, count: requests)
        let elapsed = monotonicNanoseconds() - began
        let cpu = Self.cpuMicroseconds() - cpuBefore
        recording = false
        return Result(opsPerSecond: Double(requests) / (Double(elapsed) / 1e9), p50: histogram.percentile(0.5),
                      p99: histogram.percentile(0.99), p999: histogram.percentile(0.999), failures: failures,
                      cpuMicrosecondsPerCall: cpu / Double(requests))
    }
}
