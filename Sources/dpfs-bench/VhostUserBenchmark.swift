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
/// requests at each queue depth; prints latency percentiles and operations per second.
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

    @Option(parsing: .upToNextOption, help: "Operations: getattr (root), statfs, getattr-file, lookup, read, write (the last four need the null backend's file).")
    var operations: [String] = ["getattr", "statfs"]

    @Option(parsing: .upToNextOption, help: "Queue depths (1...128).")
    var depths: [Int] = [1, 16]

    @Option(help: "Requests measured per operation and depth.")
    var requests: Int = 20_000

    @Option(help: "Warm-up requests per operation and depth.")
    var warmup: Int = 2_000

    @Flag(help: "One JSON object per measurement instead of a table.")
    var json = false

    func validate() throws {
        guard (socket != nil) != inProcessEngine else { throw ValidationError("give --socket PATH or --in-process-engine") }
        guard depths.allSatisfy({ (1...128).contains($0) }) else { throw ValidationError("queue depths must be 1...128") }
        guard requests > 0, warmup >= 0 else { throw ValidationError("--requests must be positive") }
        for operation in operations where Self.operation(named: operation) == nil {
            throw ValidationError("unknown operation \(operation)")
        }
    }

    static func operation(named name: String) -> LoadOperation? {
        switch name {
        case "getattr": return .getattrRoot
        case "statfs": return .statfs
        case "getattr-file": return .getattr
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
        let mallocs: Int
        let kicksPerOp: Double
        let unexpectedReplies: Int
    }

    func run() throws {
        var printedHeader = false
        _ = try measure { description, measurement in
            if !json && !printedHeader {
                print(description)
                print("operation     depth  ops/s        p50 ns    p99 ns    p99.9 ns  mallocs/op  kicks/op")
                printedHeader = true
            }
            let m = measurement
            if json {
                print("{\"benchmark\":\"vhost-user\",\"backend\":\"\(label)\",\"operation\":\"\(m.operation)\",\"queue_depth\":\(m.depth),"
                      + "\"requests\":\(m.requests),\"ops_per_second\":\(Int(m.opsPerSecond)),\"p50_ns\":\(Int(m.p50)),\"p99_ns\":\(Int(m.p99)),"
                      + "\"p999_ns\":\(Int(m.p999)),\"mallocs_per_request\":\(Double(m.mallocs) / Double(m.requests)),"
                      + "\"kicks_per_request\":\(m.kicksPerOp),\"unexpected_replies\":\(m.unexpectedReplies)}")
            } else {
                print(m.operation.padding(13) + " " + String(m.depth).padding(6) + " " + String(Int(m.opsPerSecond)).padding(12) + " "
                      + String(Int(m.p50)).padding(9) + " " + String(Int(m.p99)).padding(9) + " " + String(Int(m.p999)).padding(9) + " "
                      + String(Double(m.mallocs) / Double(m.requests)).prefix(6).description.padding(11) + " "
                      + String(m.kicksPerOp).prefix(6).description)
            }
        }
    }

    /// Connects (or starts the in-process engine), sets the queues up and measures every operation
    /// at every depth, handing each point to `report` as it is measured.
    func measure(report: (String, Measurement) -> Void) throws -> [Measurement] {
        var measurements: [Measurement] = []
        let clock = CycleClock.calibrate()
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

        let description = "dpfs-bench vhost-user: \(label) at \(inProcessEngine ? "(in-process dpfs-engine)" : socketPath); "
            + "features 0x\(String(frontend.features, radix: 16)), \(requests) requests per point after \(warmup) warm-up"
        var failures = 0
        // The driver's ring indexes live in the struct: each generator continues where the last left off.
        var driverState = requestDriver
        for name in operations {
            for depth in depths {
                let load = LoadGenerator(driver: driverState, depth: depth, operations: [Self.operation(named: name)!])
                defer { driverState = load.driver }
                load.kickFD = kicks[1].fd
                if name == operations.first && depth == depths.first { load.establishSession {} }
                load.run(requests: warmup) {}
                load.resetMeasurements()
                let kicksBefore = load.kicks
                let start = monotonicNanoseconds()
                MallocInterposerSwift.reset()
                MallocInterposerSwift.hook()
                load.run(requests: requests) {}
                MallocInterposerSwift.unhook()
                let wall = monotonicNanoseconds() - start
                let mallocs = MallocInterposerSwift.getStatistics().mallocCount
                let measurement = Measurement(
                    operation: name, depth: depth, requests: requests, completed: load.completed,
                    opsPerSecond: Double(requests) / (Double(wall) / 1e9),
                    p50: clock.nanoseconds(cycles: load.roundTrip.percentile(0.5)),
                    p99: clock.nanoseconds(cycles: load.roundTrip.percentile(0.99)),
                    p999: clock.nanoseconds(cycles: load.roundTrip.percentile(0.999)),
                    mallocs: mallocs, kicksPerOp: Double(load.kicks - kicksBefore) / Double(requests),
                    unexpectedReplies: load.unexpectedReplies)
                failures += load.unexpectedReplies
                measurements.append(measurement)
                report(description, measurement)
            }
        }
        for index in 0..<2 { _ = try frontend.stopQueue(index) }
        if failures > 0 { throw ValidationError("\(failures) replies had an unexpected shape or error") }
        return measurements
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
