import ArgumentParser
import DPFSCore
import DPFSPosix
import FUSEWire
import Foundation
import LoopbackTransport
import MallocInterposerSwift
import NullBackend
import Synchronization

/// `dpfs-bench core`: the null backend over the in-process loopback virtqueue. The driver (playing
/// the guest) runs on one thread and the poller on another, each pinned, so the figures are the
/// engine's own cost per request plus the round trip through a real split virtqueue.
struct CoreBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "core",
        abstract: "Null backend over the loopback transport: ns per request, throughput, latency percentiles.")

    @Option(help: "Requests measured per configuration (after warm-up).")
    var requests: Int = 200_000

    @Option(help: "Warm-up requests per configuration.")
    var warmup: Int = 20_000

    @Option(parsing: .upToNextOption, help: "Batch sizes (requests fetched per poller step).")
    var batches: [Int] = [1, 16, 32]

    @Option(parsing: .upToNextOption, help: "Queue depths (requests the driver keeps in flight).")
    var depths: [Int] = [1, 2, 4, 8, 16, 32, 64, 128]

    @Option(help: "Where the driver runs: 'thread' (its own pinned thread) or 'inline' (same thread as the poller).")
    var driver: DriverPlacement = .thread

    @Flag(help: "Print one JSON object per configuration instead of a table.")
    var json = false

    @Flag(help: "With --driver thread, pin the poller to CPU 1 and the driver to CPU 0. Off by default: on the 2-vCPU VM this project runs on, pinning made cross-core round trips 2-4x slower.")
    var pin = false

    enum DriverPlacement: String, ExpressibleByArgument {
        case thread, inline
    }

    func validate() throws {
        guard requests > 0, warmup >= 0 else { throw ValidationError("--requests must be > 0 and --warmup >= 0") }
        guard batches.allSatisfy({ $0 >= 1 && $0 <= 256 }) else { throw ValidationError("batch sizes must be 1...256") }
        guard depths.allSatisfy({ $0 >= 1 && $0 <= 128 }) else { throw ValidationError("queue depths must be 1...128") }
    }

    func run() throws {
        let clock = CycleClock.calibrate()
        let cpus = PinnedThread.onlineCPUs
        if !json {
            print("dpfs-bench core: null backend, loopback split virtqueue (EVENT_IDX), driver: \(driver.rawValue), \(driver == .inline ? "one thread, pinned" : (pin ? "threads pinned" : "threads not pinned"))")
            print("mix: READ 4 KiB, WRITE 4 KiB, GETATTR, LOOKUP; \(requests) requests per configuration after \(warmup) warm-up")
            print("cycle counter: \(String(format: "%.3f", clock.cyclesPerNanosecond)) cycles/ns; \(cpus) CPUs online")
        }
        var printedReport = false
        var results: [CoreResult] = []
        for batch in batches {
            for depth in depths {
                let result = try runConfiguration(batch: batch, depth: depth, clock: clock, cpus: cpus) { report in
                    if !json && !printedReport { print(report); printedReport = true }
                }
                results.append(result)
                if json {
                    print(result.json)
                } else {
                    if results.count == 1 { print(CoreResult.tableHeader) }
                    print(result.tableRow)
                }
                guard result.errorReplies == 0 else {
                    throw ValidationError("\(result.errorReplies) requests got an error reply: the run is not valid")
                }
            }
        }
    }

    func runConfiguration(batch: Int, depth: Int, clock: CycleClock, cpus: Int,
                          report: (String) -> Void) throws -> CoreResult {
        let pollerConfiguration = PollerConfiguration(slotCount: 256, segmentsPerSlot: 16, batchMax: batch)
        let driverConfiguration = LoopbackDriverConfiguration(
            queueSize: 256, requestSlots: 128, readableBufferBytes: 8192, writableBufferBytes: 8192,
            descriptorsPerRequestMax: 8)
        // Inline runs are one thread: pinning it only keeps it from migrating. Threaded runs pin only
        // with --pin (see its help).
        let pollerCPU: Int? = (pin || driver == .inline) ? (cpus > 1 ? 1 : 0) : nil
        // The arena is mapped on the poller's CPU, so its memory is on the poller's NUMA node.
        if let pollerCPU { _ = PinnedThread.pinCurrent(to: pollerCPU) }
        let arena = try HugepageArena(bytes: LoopbackRig<NullBackend>.arenaBytes(poller: pollerConfiguration, driver: driverConfiguration))
        // The rig points into the arena: keep the mapping alive to the end of the run.
        defer { withExtendedLifetime(arena) {} }
        report(arena.report)
        var allocator = arena.allocator()
        let rig = LoopbackRig(poller: pollerConfiguration, driver: driverConfiguration, backend: NullBackend(), arena: &allocator)
        let load = LoadGenerator(driver: rig.driver, depth: depth)
        let box = PollerBox(rig.poller)

        switch driver {
        case .inline:
            load.establishSession { _ = box.poller.step() }
            load.run(requests: warmup) { _ = box.poller.step() }
            box.poller.resetMeasurements()
            load.resetMeasurements()
            let start = monotonicNanoseconds()
            MallocInterposerSwift.reset()
            MallocInterposerSwift.hook()
            load.run(requests: requests) { box.stepMeasured() }
            MallocInterposerSwift.unhook()
            let wall = monotonicNanoseconds() - start
            return CoreResult(batch: batch, depth: depth, requests: requests, wallNanos: wall, box: box, load: load,
                              clock: clock, mallocs: MallocInterposerSwift.getStatistics().mallocCount)
        case .thread:
            let stop = StopFlag()
            let poller = try PinnedThread(cpu: pollerCPU) {
                while !stop.isSet { box.stepMeasured() }
            }
            if pin { _ = PinnedThread.pinCurrent(to: 0) }
            load.establishSession {}
            load.run(requests: warmup) {}
            // Let the poller finish the warm-up batch before its counters are zeroed.
            usleep(1000)
            box.resetRequested.store(true, ordering: .releasing)
            while box.resetRequested.load(ordering: .acquiring) { spinHint() }
            load.resetMeasurements()
            let start = monotonicNanoseconds()
            MallocInterposerSwift.reset()
            MallocInterposerSwift.hook()
            load.run(requests: requests) {}
            MallocInterposerSwift.unhook()
            let wall = monotonicNanoseconds() - start
            stop.set()
            poller.join()
            return CoreResult(batch: batch, depth: depth, requests: requests, wallNanos: wall, box: box, load: load,
                              clock: clock, mallocs: MallocInterposerSwift.getStatistics().mallocCount)
        }
    }
}

/// Holds the poller for the thread that steps it, and the cycles it spent doing work.
final class PollerBox: @unchecked Sendable {
    var poller: Poller<LoopbackDevice, NullBackend>
    /// Cycles spent in steps that moved at least one request: the engine's CPU cost.
    var busyCycles: UInt64 = 0
    let resetRequested = Atomic<Bool>(false)

    init(_ poller: Poller<LoopbackDevice, NullBackend>) {
        self.poller = poller
    }

    @inline(__always)
    func stepMeasured() {
        if resetRequested.load(ordering: .relaxed) {
            poller.resetMeasurements()
            busyCycles = 0
            resetRequested.store(false, ordering: .releasing)
        }
        let start = cycleCounter()
        let work = poller.step()
        if work > 0 { busyCycles &+= cycleCounter() &- start } else { spinHint() }
    }
}

final class StopFlag: Sendable {
    let flag = Atomic<Bool>(false)
    var isSet: Bool { flag.load(ordering: .acquiring) }
    func set() { flag.store(true, ordering: .releasing) }
}

struct CoreResult {
    let batch: Int
    let depth: Int
    let requests: Int
    let nsPerRequest: Double
    let requestsPerSecond: Double
    let engineRequestsPerSecond: Double
    let p50: Double, p99: Double, p999: Double
    let engineP50: Double, engineP99: Double, engineP999: Double
    let mallocsPerRequest: Double
    let errorReplies: Int
    let notificationsPerRequest: Double

    init(batch: Int, depth: Int, requests: Int, wallNanos: UInt64, box: PollerBox, load: LoadGenerator,
         clock: CycleClock, mallocs: Int) {
        self.batch = batch
        self.depth = depth
        self.requests = requests
        let metrics = box.poller.metrics.pointee
        nsPerRequest = clock.nanoseconds(cycles: box.busyCycles) / Double(requests)
        requestsPerSecond = Double(requests) / (Double(wallNanos) / 1e9)
        engineRequestsPerSecond = 1e9 / nsPerRequest
        p50 = clock.nanoseconds(cycles: load.roundTrip.percentile(0.5))
        p99 = clock.nanoseconds(cycles: load.roundTrip.percentile(0.99))
        p999 = clock.nanoseconds(cycles: load.roundTrip.percentile(0.999))
        let residenceCounts = UnsafeMutablePointer<UInt64>.allocate(capacity: LatencyHistogram.bucketCount)
        defer { residenceCounts.deallocate() }
        residenceCounts.initialize(repeating: 0, count: LatencyHistogram.bucketCount)
        let residence = LatencyHistogram(counts: residenceCounts)
        box.poller.counters.addResidence(into: residence)
        engineP50 = clock.nanoseconds(cycles: residence.percentile(0.5))
        engineP99 = clock.nanoseconds(cycles: residence.percentile(0.99))
        engineP999 = clock.nanoseconds(cycles: residence.percentile(0.999))
        mallocsPerRequest = Double(mallocs) / Double(requests)
        errorReplies = load.errorReplies
        notificationsPerRequest = Double(metrics.notifications) / Double(max(1, metrics.repliesSent))
    }

    static let tableHeader = "batch  depth  ns/req(engine CPU)  Mreq/s(engine/core)  Mreq/s(achieved)  p50 ns  p99 ns  p99.9 ns  engine p50/p99 ns  notify/req  mallocs/req"

    var tableRow: String {
        String(format: "%5d  %5d  %18.1f  %19.2f  %16.2f  %6.0f  %6.0f  %8.0f  %8.0f/%-8.0f  %10.3f  %11.3f",
               batch, depth, nsPerRequest, engineRequestsPerSecond / 1e6, requestsPerSecond / 1e6, p50, p99, p999,
               engineP50, engineP99, notificationsPerRequest, mallocsPerRequest)
    }

    var json: String {
        String(format: "{\"benchmark\":\"core\",\"batch\":%d,\"queue_depth\":%d,\"requests\":%d,\"ns_per_request\":%.1f,"
               + "\"requests_per_second\":%.0f,\"engine_requests_per_second_per_core\":%.0f,"
               + "\"p50_ns\":%.0f,\"p99_ns\":%.0f,\"p999_ns\":%.0f,"
               + "\"engine_p50_ns\":%.0f,\"engine_p99_ns\":%.0f,\"engine_p999_ns\":%.0f,"
               + "\"notifications_per_request\":%.4f,\"mallocs_per_request\":%.4f,\"error_replies\":%d}",
               batch, depth, requests, nsPerRequest, requestsPerSecond, engineRequestsPerSecond, p50, p99, p999,
               engineP50, engineP99, engineP999, notificationsPerRequest, mallocsPerRequest, errorReplies)
    }
}
