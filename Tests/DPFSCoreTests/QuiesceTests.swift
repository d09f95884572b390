import DPFSCore
import DPFSPosix
import DPFSTestSupport
import FUSEWire
import Glibc
import Logging
import LoopbackTransport
import Synchronization
import Testing
import VhostUser
import VhostUserFrontend

// Quiesce over the real vhost-user transport: a deliberately slow backend completes GETATTR from a
// worker thread 300 ms later, writing its reply into guest memory through the device's mapping.
// A device reset or a new memory table arriving meanwhile must wait for that completion before it
// unmaps anything — if it did not, the worker's write would land in unmapped (or re-mapped) memory
// and crash this process (AddressSanitizer runs this suite too).

/// Answers GETATTR late, from its own thread; everything else at once as "no such opcode".
struct SlowBackend: Backend {
    final class Log: @unchecked Sendable {
        let completedNanoseconds = Atomic<UInt64>(0)
        let started = Atomic<Int>(0)
        var context: BackendContext? = nil
    }
    let log: Log
    let delayMicroseconds: UInt32

    mutating func attach(_ context: BackendContext) { if context.queueIndex == 1 { log.context = context } }

    mutating func handle(_ request: FUSERequest, reply: FUSEReply, token: CompletionToken) -> BackendAnswer {
        guard request.opcodeRaw == FUSEOpcode.getattr.rawValue, let context = log.context else {
            reply.fail(.notImplemented)
            return .done
        }
        let unique = request.unique
        let log = self.log
        let delay = delayMicroseconds
        log.started.add(1, ordering: .releasing)
        let worker = try! PinnedThread {
            usleep(delay)
            // The reply goes into guest memory through the device's mapping.
            ScriptedBackend.writeSuccess(reply, unique: unique)
            log.completedNanoseconds.store(monotonicNanoseconds(), ordering: .releasing)
            context.complete(token)
        }
        _ = worker
        return .pending
    }
}

final class SlowEngine: @unchecked Sendable {
    let socketPath = "/tmp/dpfs-test-\(getpid())-slow-\(UInt32.random(in: 0...UInt32.max)).sock"
    let server: VhostUserServer<SlowBackend>
    let log = SlowBackend.Log()
    let stop = Atomic<Bool>(false)
    var thread: PinnedThread!

    init() throws {
        var logger = Logger(label: "quiesce-test")
        logger.logLevel = .critical
        let log = self.log
        let device = try VhostUserDevice(
            configuration: VhostUserDeviceConfiguration(name: "slow", poller: PollerConfiguration(slotCount: 32, segmentsPerSlot: 16, batchMax: 16)),
            logger: logger, cyclesPerNanosecond: 1) { _ in SlowBackend(log: log, delayMicroseconds: 300_000) }
        server = try VhostUserServer(socketPath: socketPath, device: device, logger: logger)
        let server = self.server
        thread = try PinnedThread { [unowned self] in server.run(until: self.stop) }
    }

    func shutDown() {
        stop.store(true, ordering: .releasing)
        thread.join()
    }
}

@Suite(.serialized) struct QuiesceTests {
    /// INIT, then one GETATTR left in flight in the slow backend.
    func connectWithPendingRequest(_ engine: SlowEngine) throws -> ConnectedFrontend {
        let connection = try ConnectedFrontend(socketPath: engine.socketPath)
        let load = LoadGenerator(driver: connection.requestDriver, depth: 1, operations: [.getattrRoot])
        load.kickFD = connection.kicks[1].fd
        load.establishSession {}
        connection.requestDriver = load.driver
        var request = TestRequest(.getattr, nodeID: 1, args: [UInt8](repeating: 0, count: 16))
        request.unique = 900
        let bytes = request.bytes
        let acquired = connection.requestDriver.acquireSlot()
        let slot = try #require(acquired)
        bytes.withUnsafeBytes { connection.requestDriver.readableBuffer(slot).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        let submitted = connection.requestDriver.submit(slot: slot, readableBytes: bytes.count, writableBytes: 16 + 104,
                                                        segmentation: .single, indirect: false)
        #expect(submitted)
        connection.kicks[1].signal()
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while engine.log.started.load(ordering: .acquiring) == 0 && monotonicNanoseconds() < deadline { usleep(1000) }
        #expect(engine.log.started.load(ordering: .acquiring) == 1, "the GETATTR did not reach the backend")
        return connection
    }

    @Test("a device reset waits for backend I/O in flight before it unmaps guest memory")
    func resetWaitsForPendingIO() throws {
        let engine = try SlowEngine()
        defer { engine.shutDown() }
        let connection = try connectWithPendingRequest(engine)
        #expect(engine.log.completedNanoseconds.load(ordering: .acquiring) == 0)
        let reply = try connection.frontend.call(.resetDevice, needReply: true)
        let answered = monotonicNanoseconds()
        #expect(VhostUserFrontend.u64(reply) == 0)
        let completed = engine.log.completedNanoseconds.load(ordering: .acquiring)
        #expect(completed != 0 && completed <= answered, "the reset finished before the backend's write into guest memory")
        // The request was answered before the queue stopped: its reply is in the used ring.
        let reaped = connection.requestDriver.reap()
        #expect(reaped?.usedLength == UInt32(16 + 104))
    }

    @Test("a new memory table waits for backend I/O in flight, and the device serves on afterwards")
    func memoryTableWaitsForPendingIO() throws {
        let engine = try SlowEngine()
        defer { engine.shutDown() }
        let connection = try connectWithPendingRequest(engine)
        try connection.frontend.setMemoryTable(guestPhysicalAddress: connection.memory.guestPhysicalBase,
                                               sizeBytes: UInt64(connection.memory.sizeBytes),
                                               frontendVirtualAddress: connection.memory.frontendVirtualAddress,
                                               memoryFD: connection.memory.fd)
        _ = try connection.frontend.call(.getFeatures, expectsReply: true)   // the table has been handled
        let handled = monotonicNanoseconds()
        let completed = engine.log.completedNanoseconds.load(ordering: .acquiring)
        #expect(completed != 0 && completed <= handled, "the memory table changed under the backend's write")
        let reaped = connection.requestDriver.reap()
        #expect(reaped?.usedLength == UInt32(16 + 104))
    }
}
