import ArgumentParser
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import Logging
import LoopbackTransport
import MallocInterposerSwift
import NullBackend
import Synchronization
import VhostUser
import VhostUserFrontend

/// `dpfs-bench vhost-user --socket PATH`: plays QEMU and the guest against any vhost-user-fs
/// back-end (dpfs-engine, the C virtiofsd): memfd guest memory, split queues, FUSE INIT, then
/// requests at each queue depth; prints latency percentiles and operations per second. The real-file
/// operations (`FileLoadGenerator`) work against any passthrough back-end; with `--daemon-pid` the
/// back-end's CPU time per operation is measured too.
struct VhostUserBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vhost-user",
        abstract: "Load generator playing QEMU + guest against a vhost-user-fs back-end.")

    @Option(help: "The back-end's vhost-user socket.")
    var socket: String?

    @Flag(name: .customLong("in-process-engine"), help: "Serve with a dpfs-engine device in this process (null backend) instead of --socket; mallocs then count the engine too.")
    var inProcessEngine = false

    @Option(help: "Label for the back-end in the output.")
    var label: String = "backend"

    @Option(parsing: .upToNextOption, help: ArgumentHelp(
        "Operations: getattr (root), statfs; on a real file any back-end serves: lookup-file, getattr-file, read-file, write-file, create-unlink, mkdir-rmdir; null backend only: getattr-null, lookup, read, write.",
        discussion: "The real-file operations first LOOKUP (or CREATE) --file in the root and fill it with WRITEs."))
    var operations: [String] = ["getattr", "statfs"]

    @Option(help: "The benchmark file the real-file operations use, in the back-end's root (the null backend's file is `null`).")
    var file: String = "dpfs-bench.dat"

    @Option(help: "Bytes the benchmark file is filled with at set-up (a multiple of 4096).")
    var fileSize: Int = 1 << 20

    @Flag(help: "Real-file operations: sleep on the call eventfd while nothing completes (as a guest waits for its interrupt) instead of spinning a CPU.")
    var sleepWhenIdle = false

    @Option(help: "The back-end's process id: report its CPU time (user + system, all threads) per operation.")
    var daemonPid: Int32?

    @Option(parsing: .upToNextOption, help: "Queue depths (1...128).")
    var depths: [Int] = [1, 16]

    @Option(help: "Requests measured per operation and depth.")
    var requests: Int = 20_000

    @Option(help: "Warm-up requests per operation and depth.")
    var warmup: Int = 2_000

    @Flag(name: .customLong("existing-file"), help: "The file exists with the contents the fill would write (block i all bytes i mod 256): open it read-only and write nothing (a read-only share).")
    var existingFile = false

    @Option(help: "Stop each measured point after this many seconds if its --requests are not done by then (the getattr, statfs, lookup, read and write operations).")
    var seconds: Double?

    @Option(name: .customLong("slow-ms"), help: "Note every round trip at least this long, with the wall-clock time it ended (JSON 'slow': [[end seconds since the epoch, ms], ...]; the first 256).")
    var slowMilliseconds: Double?

    @Flag(help: "One JSON object per measurement instead of a table.")
    var json = false

    func validate() throws {
        guard (socket != nil) != inProcessEngine else { throw ValidationError("give --socket PATH or --in-process-engine") }
        guard depths.allSatisfy({ (1...128).contains($0) }) else { throw ValidationError("queue depths must be 1...128") }
        guard requests > 0, warmup >= 0 else { throw ValidationError("--requests must be positive") }
        for operation in operations where Self.operation(named: operation) == nil && FileOperation(rawValue: operation) == nil {
            throw ValidationError("unknown operation \(operation)")
        }
        guard fileSize >= 4096, fileSize % 4096 == 0 else { throw ValidationError("--file-size must be a positive multiple of 4096") }
        guard !file.isEmpty, file.utf8.count <= 255, !file.contains("/") else { throw ValidationError("--file must be a name in the root") }
        if let daemonPid, daemonPid <= 0 { throw ValidationError("--daemon-pid must be a process id") }
    }

    static func operation(named name: String) -> LoadOperation? {
        switch name {
        case "getattr": return .getattrRoot
        case "statfs": return .statfs
        case "getattr-null": return .getattr
        case "lookup": return .lookup
        case "read": return .read4KiB
        case "write": return .write4KiB
        default: return nil
        }
    }

    /// One measured point.
    struct Measurement {
        let operation: String
        let depth: Int
        let requests: Int
        let completed: Int
        let opsPerSecond: Double
        let p50: Double, p99: Double, p999: Double
        /// The slowest round trip (the upper edge of its histogram bucket, so never under-reported).
        let max: Double
        /// Round trips of at least --slow-ms: when each ended (seconds since the epoch) and how long it took (ms).
        var slow: [(endSeconds: Double, milliseconds: Double)] = []
        var slowCount = 0
        let mallocs: Int
        let kicksPerOp: Double
        let unexpectedReplies: Int
        /// Back-end CPU (user + system) per operation, µs; nil without --daemon-pid.
        let daemonCPUMicrosecondsPerOp: Double?
    }

    static func format(_ value: Double?, decimals: Int) -> String {
        guard let value else { return "-" }
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let rounded = (value * scale).rounded() / scale
        var text = String(rounded)
        if let dot = text.firstIndex(of: ".") {
            let fraction = text.distance(from: dot, to: text.endIndex) - 1
            if fraction < decimals { text += String(repeating: "0", count: decimals - fraction) }
        } else if decimals > 0 {
            text += "." + String(repeating: "0", count: decimals)
        }
        return text
    }

    func run() throws {
        var printedHeader = false
        _ = try measure { description, measurement in
            if json && !printedHeader {
                // The set-up line on stderr, so stdout stays one JSON object per line.
                let line = Array((description + "\n").utf8)
                _ = line.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
                printedHeader = true
            }
            if !json && !printedHeader {
                print(description)
                print("operation     depth  ops/s        p50 ns    p99 ns    p99.9 ns  mallocs/op  kicks/op  cpu us/op  failures")
                printedHeader = true
            }
            let m = measurement
            if json {
                print("{\"benchmark\":\"vhost-user\",\"backend\":\"\(label)\",\"operation\":\"\(m.operation)\",\"queue_depth\":\(m.depth),"
                      + "\"requests\":\(m.requests),\"ops_per_second\":\(Int(m.opsPerSecond)),\"p50_ns\":\(Int(m.p50)),\"p99_ns\":\(Int(m.p99)),"
                      + "\"p999_ns\":\(Int(m.p999)),\"max_ns\":\(Int(m.max)),\"mallocs_per_request\":\(Double(m.mallocs) / Double(m.requests)),"
                      + "\"kicks_per_request\":\(m.kicksPerOp),\"unexpected_replies\":\(m.unexpectedReplies),"
                      + "\"daemon_cpu_us_per_op\":\(m.daemonCPUMicrosecondsPerOp.map { Self.format($0, decimals: 3) } ?? "null"),"
                      + "\"slow_count\":\(m.slowCount),\"slow\":[\(m.slow.map { "[\(Self.format($0.endSeconds, decimals: 6)),\(Self.format($0.milliseconds, decimals: 3))]" }.joined(separator: ","))]}")
            } else {
                print(m.operation.padding(13) + " " + String(m.depth).padding(6) + " " + String(Int(m.opsPerSecond)).padding(12) + " "
                      + String(Int(m.p50)).padding(9) + " " + String(Int(m.p99)).padding(9) + " " + String(Int(m.p999)).padding(9) + " "
                      + String(Double(m.mallocs) / Double(m.requests)).prefix(6).description.padding(11) + " "
                      + String(m.kicksPerOp).prefix(6).description.padding(9) + " "
                      + Self.format(m.daemonCPUMicrosecondsPerOp, decimals: 3).padding(10) + " " + String(m.unexpectedReplies))
            }
        }
    }

    /// Connects (or starts the in-process engine), sets the queues up and measures every operation
    /// at every depth, handing each point to `report` as it is measured.
    func measure(report: (String, Measurement) -> Void) throws -> [Measurement] {
        var measurements: [Measurement] = []
        let clock = CycleClock.calibrate()
        let wallClock = WallClockAnchor()
        var engine: (server: VhostUserServer<NullBackend>, thread: PinnedThread, stop: StopFlag)? = nil
        var socketPath = socket ?? ""
        if inProcessEngine {
            socketPath = "/tmp/dpfs-bench-\(getpid()).sock"
            let device = try VhostUserDevice(configuration: VhostUserDeviceConfiguration(name: "in-process"),
                                             logger: Logger(label: "dpfs-bench.engine"), cyclesPerNanosecond: clock.cyclesPerNanosecond) { _ in
                NullBackend()
            }
            let server = try VhostUserServer(socketPath: socketPath, device: device, logger: Logger(label: "dpfs-bench.engine"))
            let stop = StopFlag()
            let thread = try PinnedThread { server.run(until: stop.flag) }
            engine = (server, thread, stop)
        }
        defer {
            if let engine {
                engine.stop.set()
                engine.thread.join()
            }
        }

        let frontend = try VhostUserFrontend(socketPath: socketPath)
        let queueCount = try frontend.negotiate()
        guard queueCount >= 2 else { throw ValidationError("the back-end offers \(queueCount) queues; virtio-fs needs 2") }
        let hiprioConfiguration = LoopbackDriverConfiguration(queueSize: 16, requestSlots: 4, readableBufferBytes: 256,
                                                               writableBufferBytes: 64, descriptorsPerRequestMax: 4)
        let requestConfiguration = LoopbackDriverConfiguration(
            queueSize: 256, requestSlots: 128, readableBufferBytes: 8192, writableBufferBytes: 8192, descriptorsPerRequestMax: 8,
            eventIndex: frontend.features & VirtioFeatures.eventIndex != 0,
            indirectDescriptors: frontend.features & VirtioFeatures.indirectDescriptors != 0)
        let memory = try FrontendGuestMemory(sizeBytes: hiprioConfiguration.regionBytes + requestConfiguration.regionBytes + 8192)
        let bookkeeping = UnsafeMutableRawPointer.allocate(byteCount: hiprioConfiguration.bookkeepingBytes + requestConfiguration.bookkeepingBytes + 64, alignment: 64)
        defer { bookkeeping.deallocate() }
        let hiprio = memory.makeDriver(hiprioConfiguration, bookkeeping: bookkeeping)
        let requestDriver = memory.makeDriver(requestConfiguration, bookkeeping: bookkeeping + hiprioConfiguration.bookkeepingBytes + 8)
        try frontend.setMemoryTable(guestPhysicalAddress: memory.guestPhysicalBase, sizeBytes: UInt64(memory.sizeBytes),
                                    frontendVirtualAddress: memory.frontendVirtualAddress, memoryFD: memory.fd)
        let kicks = [try EventFD(), try EventFD()]
        let calls = [try EventFD(), try EventFD()]
        // The queues live in this memory and the back-end holds these eventfds: keep them to the end.
        defer { withExtendedLifetime((memory, kicks, calls)) {} }
        try frontend.startQueue(0, driver: hiprio, kickFD: kicks[0].fd, callFD: calls[0].fd)
        try frontend.startQueue(1, driver: requestDriver, kickFD: kicks[1].fd, callFD: calls[1].fd)

        var description = "dpfs-bench vhost-user: \(label) at \(inProcessEngine ? "(in-process dpfs-engine)" : socketPath); "
            + "features 0x\(String(frontend.features, radix: 16)), \(requests) requests per point after \(warmup) warm-up"
        var failures = 0
        var failureMessages: [String] = []
        // The driver's ring indexes live in the struct: each generator continues where the last left off.
        var driverState = requestDriver
        do {
            let session = LoadGenerator(driver: driverState, depth: 1, operations: [.getattrRoot])
            session.kickFD = kicks[1].fd
            session.establishSession {}
            driverState = session.driver
        }
        var files: FileLoadGenerator? = nil
        if operations.contains(where: { FileOperation(rawValue: $0) != nil }) {
            let generator = FileLoadGenerator(driver: driverState, kickFD: kicks[1].fd, fileName: file, fileSizeBytes: UInt64(fileSize))
            if sleepWhenIdle { generator.callFD = calls[1].fd }
            try generator.setUp(readOnly: existingFile)
            driverState = generator.driver
            description += "; " + generator.setupDescription
            files = generator
        }
        // After INIT, so a back-end that forks into a sandbox on connection (virtiofsd) has done so.
        let daemon = try daemonPid.map { try DaemonCPU(pid: $0) }
        if let daemon { description += "; daemon CPU from the " + daemon.source }
        for name in operations {
            for depth in depths {
                var kicksThisPoint: UInt64 = 0
                var completed = 0
                var unexpected = 0
                var histogram: LatencyHistogram
                // The histogram points into its generator's memory: the generator lives until the
                // point's percentiles are read (a local `load` could be freed at its block's end).
                var generatorKeptAlive: LoadGenerator? = nil
                defer { withExtendedLifetime(generatorKeptAlive) {} }
                var cpuBefore: UInt64? = nil, cpuAfter: UInt64? = nil
                var slow: [(endSeconds: Double, milliseconds: Double)] = []
                var slowCount = 0
                var wall: UInt64 = 0
                var mallocs = 0
                if let operation = FileOperation(rawValue: name), let files {
                    files.driver = driverState
                    defer { driverState = files.driver }
                    files.operation = operation
                    files.depth = depth
                    files.run(requests: warmup)
                    files.resetMeasurements()
                    let kicksBefore = files.kicks
                    cpuBefore = daemon?.sample()
                    let start = monotonicNanoseconds()
                    MallocInterposerSwift.reset()
                    MallocInterposerSwift.hook()
                    files.run(requests: requests)
                    MallocInterposerSwift.unhook()
                    wall = monotonicNanoseconds() - start
                    cpuAfter = daemon?.sample()
                    mallocs = MallocInterposerSwift.getStatistics().mallocCount
                    kicksThisPoint = files.kicks - kicksBefore
                    completed = files.completed
                    unexpected = files.failures
                    histogram = files.roundTrip
                    if let message = files.firstFailure, !failureMessages.contains(message) { failureMessages.append(message) }
                } else {
                    let load = LoadGenerator(driver: driverState, depth: depth, operations: [Self.operation(named: name)!])
                    defer { driverState = load.driver }
                    load.kickFD = kicks[1].fd
                    if let slowMilliseconds { load.slowThresholdCycles = UInt64(slowMilliseconds * 1e6 * clock.cyclesPerNanosecond) }
                    load.run(requests: warmup) {}
                    load.resetMeasurements()
                    let kicksBefore = load.kicks
                    cpuBefore = daemon?.sample()
                    let start = monotonicNanoseconds()
                    MallocInterposerSwift.reset()
                    MallocInterposerSwift.hook()
                    let deadline = seconds.map { cycleCounter() &+ UInt64($0 * 1e9 * clock.cyclesPerNanosecond) } ?? .max
                    load.run(requests: requests, deadlineCycles: deadline) {}
                    MallocInterposerSwift.unhook()
                    wall = monotonicNanoseconds() - start
                    cpuAfter = daemon?.sample()
                    mallocs = MallocInterposerSwift.getStatistics().mallocCount
                    kicksThisPoint = load.kicks - kicksBefore
                    completed = load.completed
                    unexpected = load.unexpectedReplies
                    histogram = load.roundTrip
                    generatorKeptAlive = load
                    slow = load.slowRequests.map { (wallClock.seconds(atCycles: $0.completedCycles, clock: clock), clock.nanoseconds(cycles: $0.roundTripCycles) / 1e6) }
                    slowCount = load.slowCount
                    if unexpected > 0 { failureMessages.append("\(name) at depth \(depth): \(unexpected) replies with an unexpected error or length") }
                }
                // With --seconds a point may stop early: what completed is what was measured.
                let measured = seconds == nil ? requests : max(1, completed)
                var cpuPerOp: Double? = nil
                if daemon != nil {
                    guard let cpuBefore, let cpuAfter else { throw BenchFailure(description: "could not read the CPU time of pid \(daemonPid!)") }
                    cpuPerOp = Double(cpuAfter &- cpuBefore) / 1000 / Double(measured)
                }
                var measurement = Measurement(
                    operation: name, depth: depth, requests: measured, completed: completed,
                    opsPerSecond: Double(measured) / (Double(wall) / 1e9),
                    p50: clock.nanoseconds(cycles: histogram.percentile(0.5)),
                    p99: clock.nanoseconds(cycles: histogram.percentile(0.99)),
                    p999: clock.nanoseconds(cycles: histogram.percentile(0.999)),
                    max: clock.nanoseconds(cycles: histogram.percentile(1.0)),
                    mallocs: mallocs, kicksPerOp: Double(kicksThisPoint) / Double(requests),
                    unexpectedReplies: unexpected, daemonCPUMicrosecondsPerOp: cpuPerOp)
                measurement.slow = slow
                measurement.slowCount = slowCount
                failures += unexpected
                measurements.append(measurement)
                report(description, measurement)
            }
        }
        if let files {
            files.driver = driverState
            do { try files.tearDown() } catch {
                failures += 1
                failureMessages.append("tear-down: \(error)")
            }
            driverState = files.driver
        }
        for index in 0..<2 { _ = try frontend.stopQueue(index) }
        if failures > 0 {
            throw BenchFailure(description: "\(failures) operations failed (a reply with an error or the wrong length); "
                               + failureMessages.joined(separator: "; "))
        }
        return measurements
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}

/// A wall-clock time and the cycle counter read together, to date events measured in cycles.
struct WallClockAnchor {
    let seconds: Double
    let cycles: UInt64

    init() {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        cycles = cycleCounter()
        seconds = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    func seconds(atCycles value: UInt64, clock: CycleClock) -> Double {
        seconds + clock.nanoseconds(cycles: value &- cycles) / 1e9
    }
}
