import ArgumentParser
import DPFSCore
import DPFSPosix
import FUSEDevice
import FUSEWire
import LoopbackTransport
import MallocInterposerSwift
import NFSBackend
import NullBackend
import Synchronization

/// `dpfs-bench alloc-gate`: counts mallocs over N requests of each request class after warm-up, in
/// a process of its own (malloc counters are process-wide, so nothing else may run beside it).
/// Prints one JSON object per class and exits non-zero if any class allocated or the canary saw
/// nothing. The test suite's allocation gate runs this and checks the output.
struct AllocationGateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "alloc-gate",
        abstract: "Zero-allocation gate: mallocs per request class through loopback + null and passthrough backends.")

    @Option(help: "Requests per class after warm-up.")
    var requests: Int = 100_000

    @Option(help: "Warm-up requests per class.")
    var warmup: Int = 2_000

    @Option(help: "Also gate the NFS backend against this export (nfs://HOST/PATH?version=3...): the engine's mallocs per request beside libnfs's own per call.")
    var nfsURL: String?

    @Flag(help: "Only the NFS part (needs --nfs-url).")
    var nfsOnly = false

    @Option(help: "Gate the key-value backend against this redis-server (redis://IPv4:PORT/0 or unix:///PATH): every request class must allocate nothing.")
    var kvURL: String?

    @Flag(help: "Only the key-value part (needs --kv-url).")
    var kvOnly = false

    func validate() throws {
        guard requests > 0, warmup > 0 else { throw ValidationError("--requests and --warmup must be positive") }
        if nfsOnly && nfsURL == nil { throw ValidationError("--nfs-only needs --nfs-url") }
        if kvOnly && kvURL == nil { throw ValidationError("--kv-only needs --kv-url") }
    }

    func run() throws {
        MallocInterposerSwift.initialize()
        // Canary: something that must allocate, measured the same way, so a silently inactive
        // interposer cannot make the gate pass.
        MallocInterposerSwift.reset()
        MallocInterposerSwift.hook()
        var grown: [Int] = []
        for index in 0..<100 { grown.append(index) }
        MallocInterposerSwift.unhook()
        let canary = MallocInterposerSwift.getStatistics().mallocCount
        print("{\"class\":\"canary\",\"mallocs\":\(canary),\"elements\":\(grown.count)}")
        // The same on a thread of the kind pollers run on: the counter must see other threads'
        // allocations too, or a threaded class could pass vacuously.
        let threadCanary = try Self.canaryOnPollerThread()
        print("{\"class\":\"canary-poller-thread\",\"mallocs\":\(threadCanary)}")
        var failed = canary == 0 || threadCanary == 0
        if nfsOnly || kvOnly {
            if nfsOnly { failed = try gateNFS() || failed }
            if kvOnly { failed = try gateKV() || failed }
            if failed { throw ExitCode.failure }
            return
        }

        for operation in LoadOperation.allCases {
            let result = try measure(operations: [operation], threaded: false)
            print(result.json(name: "\(operation)"))
            failed = failed || !result.passed
        }
        // Every class again at once, with the poller on its own thread as in the engine.
        let threaded = try measure(operations: LoadOperation.allCases, threaded: true)
        print(threaded.json(name: "allClassesThreaded"))
        failed = failed || !threaded.passed

        // The vhost-user data path: an in-process dpfs-engine device (poller threads, call eventfd,
        // split queues in memfd guest memory) driven through a real vhost-user socket.
        var vhostUser = try VhostUserBenchmark.parse(["--in-process-engine", "--requests", String(requests),
                                                      "--warmup", String(warmup), "--operations", "getattr", "statfs", "read",
                                                      "write", "--depths", "1", "16"])
        vhostUser.json = true
        for point in try vhostUser.measure(report: { _, _ in }) {
            let result = Result(requests: point.requests, completed: point.completed, mallocs: point.mallocs,
                                unexpectedReplies: point.unexpectedReplies)
            print(result.json(name: "vhostUser-\(point.operation)-depth\(point.depth)"))
            failed = failed || !result.passed
        }
        // The passthrough backend over a real directory, with its io_uring data path.
        let gate = try PassthroughGate()
        for (name, result) in try gate.measure(requests: requests, warmup: warmup) {
            print(result.json(name: name))
            failed = failed || !result.passed
        }
        // READ and WRITE once more through the io_uring data path (submit, reap, complete).
        let uringGate = try PassthroughGate(dataPath: .uring)
        for (name, result) in try uringGate.measure(requests: requests, warmup: warmup, onlyData: true) {
            print(result.json(name: name))
            failed = failed || !result.passed
        }
        // A host mount through /dev/fuse: classic read/writev, then FUSE-over-io_uring.
        for mode in [FUSETransportChoice.classic, .uring] {
            let fuseGate = try FUSEMountGate(mode: mode)
            for (name, result) in try fuseGate.measure(requests: requests, warmup: warmup) {
                print(result.json(name: name))
                failed = failed || !result.passed
            }
        }
        if nfsURL != nil { failed = try gateNFS() || failed }
        if kvURL != nil { failed = try gateKV() || failed }
        if failed { throw ExitCode.failure }
    }

    /// The NFS backend against a real server; true when it failed.
    func gateNFS() throws -> Bool {
        let url: NFSURL
        do { url = try NFSURL.parse(nfsURL!) } catch { throw ValidationError("\(error)") }
        let gate = try NFSGate(url: url)
        var failed = false
        for result in try gate.measure(requests: requests, warmup: warmup) {
            print(result.json)
            failed = failed || !result.passed
        }
        return failed
    }

    /// The key-value backend against a real redis-server; true when it failed.
    func gateKV() throws -> Bool {
        let gate = try KVGate(url: kvURL!)
        var failed = false
        for (name, result) in try gate.measure(requests: requests, warmup: warmup) {
            print(result.json(name: name))
            failed = failed || !result.passed
        }
        return failed
    }

    struct Result {
        let requests: Int
        let completed: Int
        let mallocs: Int
        let unexpectedReplies: Int

        var passed: Bool { mallocs == 0 && unexpectedReplies == 0 && completed == requests }

        func json(name: String) -> String {
            "{\"class\":\"\(name)\",\"requests\":\(requests),\"completed\":\(completed),\"mallocs\":\(mallocs),"
                + "\"mallocs_per_request\":\(Double(mallocs) / Double(requests)),\"unexpected_replies\":\(unexpectedReplies)}"
        }
    }

    /// Mallocs the interposer counts while a pinned thread grows an array.
    /// The thread is made (which allocates here) before counting starts; only its own growing
    /// array can be counted.
    static func canaryOnPollerThread() throws -> Int {
        let go = StopFlag()
        let thread = try PinnedThread {
            while !go.isSet {}
            var grown: [Int] = []
            for index in 0..<100 { grown.append(index) }
            precondition(grown.count == 100)
        }
        MallocInterposerSwift.reset()
        MallocInterposerSwift.hook()
        go.set()
        thread.join()
        MallocInterposerSwift.unhook()
        return MallocInterposerSwift.getStatistics().mallocCount
    }

    func measure(operations: [LoadOperation], threaded: Bool) throws -> Result {
        let pollerConfiguration = PollerConfiguration(slotCount: 64, segmentsPerSlot: 16, batchMax: 16)
        let driverConfiguration = LoopbackDriverConfiguration(queueSize: 128, requestSlots: 32, readableBufferBytes: 8192,
                                                              writableBufferBytes: 8192, descriptorsPerRequestMax: 8)
        let arena = try HugepageArena(bytes: LoopbackRig<NullBackend>.arenaBytes(poller: pollerConfiguration, driver: driverConfiguration))
        // The rig points into the arena: keep the mapping alive to the end of the run.
        defer { withExtendedLifetime(arena) {} }
        var allocator = arena.allocator()
        let rig = LoopbackRig(poller: pollerConfiguration, driver: driverConfiguration, backend: NullBackend(), arena: &allocator)
        let load = LoadGenerator(driver: rig.driver, depth: 16, operations: operations)
        let box = PollerBox(rig.poller)
        if !threaded {
            load.establishSession { _ = box.poller.step() }
            load.run(requests: warmup) { _ = box.poller.step() }
            load.resetMeasurements()
            MallocInterposerSwift.reset()
            MallocInterposerSwift.hook()
            load.run(requests: requests) { _ = box.poller.step() }
            MallocInterposerSwift.unhook()
        } else {
            let stop = StopFlag()
            let poller = try PinnedThread(cpu: PinnedThread.onlineCPUs > 1 ? 1 : 0) {
                while !stop.isSet { box.stepMeasured() }
            }
            load.establishSession {}
            load.run(requests: warmup) {}
            load.resetMeasurements()
            MallocInterposerSwift.reset()
            MallocInterposerSwift.hook()
            load.run(requests: requests) {}
            MallocInterposerSwift.unhook()
            stop.set()
            poller.join()
        }
        return Result(requests: requests, completed: load.completed,
                      mallocs: MallocInterposerSwift.getStatistics().mallocCount, unexpectedReplies: load.unexpectedReplies)
    }
}
