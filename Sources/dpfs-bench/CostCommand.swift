import ArgumentParser
import DPFSCore
import DPFSPosix
import LoopbackTransport
import NullBackend

/// `dpfs-bench cost`: runs N requests of one class on one thread and nothing else, so an instruction
/// counter sees the engine's cost per request. `tools/callgrind-cost.sh` runs it twice under
/// callgrind with different N and divides the difference, which cancels start-up and set-up.
struct CostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cost",
        abstract: "N requests of one class, single-threaded, for instruction counting (tools/callgrind-cost.sh).")

    enum RequestClass: String, ExpressibleByArgument, CaseIterable {
        /// The core benchmark's mix (READ 4 KiB, WRITE 4 KiB, GETATTR, LOOKUP) on the null backend.
        case coreMix = "core-mix"
        case passthroughGetattr = "passthrough-getattr"
        case passthroughRead = "passthrough-read-4k"
    }

    @Option(name: .customLong("class"), help: "core-mix, passthrough-getattr or passthrough-read-4k.")
    var requestClass: RequestClass

    @Option(help: "Requests after warm-up.")
    var requests: Int = 10_000

    @Option(help: "Warm-up requests.")
    var warmup: Int = 1_000

    func validate() throws {
        guard requests > 0 && requests <= 10_000_000, warmup >= 0 else {
            throw ValidationError("--requests must be 1...10000000 and --warmup >= 0")
        }
    }

    func run() throws {
        switch requestClass {
        case .coreMix:
            let poller = PollerConfiguration(slotCount: 16, segmentsPerSlot: 16, batchMax: 1)
            let driver = LoopbackDriverConfiguration(queueSize: 64, requestSlots: 16, readableBufferBytes: 8192,
                                                     writableBufferBytes: 8192, descriptorsPerRequestMax: 8)
            let arena = try HugepageArena(bytes: LoopbackRig<NullBackend>.arenaBytes(poller: poller, driver: driver), allowHugepages: false)
            defer { withExtendedLifetime(arena) {} }
            var allocator = arena.allocator()
            var rig = LoopbackRig(poller: poller, driver: driver, backend: NullBackend(), arena: &allocator)
            let load = LoadGenerator(driver: rig.driver, depth: 1)
            load.establishSession { _ = rig.poller.step() }
            load.run(requests: warmup) { _ = rig.poller.step() }
            load.resetMeasurements()
            load.run(requests: requests) { _ = rig.poller.step() }
            guard load.errorReplies == 0 else { throw ValidationError("\(load.errorReplies) error replies") }
        case .passthroughGetattr, .passthroughRead:
            let gate = try PassthroughGate()
            let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 16)
            defer { reply.deallocate() }
            var prepared = try gate.prepare(reply: reply)
            let kind: PassthroughGate.Class = requestClass == .passthroughGetattr ? .getattr : .read
            for _ in 0..<warmup { _ = gate.once(kind, &prepared, reply: reply) }
            var failed = 0
            for _ in 0..<requests where !gate.once(kind, &prepared, reply: reply) { failed += 1 }
            guard failed == 0 else { throw ValidationError("\(failed) requests got an unexpected reply") }
        }
        print("{\"class\":\"\(requestClass.rawValue)\",\"requests\":\(requests)}")
    }
}
