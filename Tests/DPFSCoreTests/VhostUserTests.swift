import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import Logging
import LoopbackTransport
import NullBackend
import Synchronization
import Testing
import VhostUser
import VhostUserFrontend

/// A dpfs-engine device served in this process on a temporary socket.
final class InProcessEngine: @unchecked Sendable {
    let socketPath: String
    let server: VhostUserServer<NullBackend>
    let stop = Atomic<Bool>(false)
    var thread: PinnedThread!

    init(name: String = "test") throws {
        socketPath = "/tmp/dpfs-test-\(getpid())-\(name)-\(UInt32.random(in: 0...UInt32.max)).sock"
        var logger = Logger(label: "vhost-user-test.\(name)")
        logger.logLevel = .critical
        let device = try VhostUserDevice(configuration: VhostUserDeviceConfiguration(name: name, poller: PollerConfiguration(slotCount: 32, segmentsPerSlot: 16, batchMax: 16)),
                                         logger: logger, cyclesPerNanosecond: 1) { _ in NullBackend() }
        server = try VhostUserServer(socketPath: socketPath, device: device, logger: logger)
        let server = self.server
        thread = try PinnedThread { [unowned self] in server.run(until: self.stop) }
    }

    func shutDown() {
        stop.store(true, ordering: .releasing)
        thread.join()
    }
}

/// A front-end with guest memory and its two queues set up, as QEMU would leave them.
final class ConnectedFrontend: @unchecked Sendable {
    let frontend: VhostUserFrontend
    let memory: FrontendGuestMemory
    let bookkeeping: UnsafeMutableRawPointer
    var requestDriver: LoopbackDriver
    let hiprio: LoopbackDriver
    let kicks: [EventFD]
    let calls: [EventFD]

    init(socketPath: String, startQueues: Bool = true) throws {
        frontend = try VhostUserFrontend(socketPath: socketPath)
        try frontend.negotiate()
        let hiprioConfiguration = LoopbackDriverConfiguration(queueSize: 16, requestSlots: 4, readableBufferBytes: 256, writableBufferBytes: 64, descriptorsPerRequestMax: 4)
        let requestConfiguration = LoopbackDriverConfiguration(queueSize: 64, requestSlots: 16, readableBufferBytes: 8192, writableBufferBytes: 8192, descriptorsPerRequestMax: 8)
        memory = try FrontendGuestMemory(sizeBytes: hiprioConfiguration.regionBytes + requestConfiguration.regionBytes + 8192)
        bookkeeping = .allocate(byteCount: 1 << 16, alignment: 64)
        hiprio = memory.makeDriver(hiprioConfiguration, bookkeeping: bookkeeping)
        requestDriver = memory.makeDriver(requestConfiguration, bookkeeping: bookkeeping + (1 << 15))
        kicks = [try EventFD(), try EventFD()]
        calls = [try EventFD(), try EventFD()]
        try frontend.setMemoryTable(guestPhysicalAddress: memory.guestPhysicalBase, sizeBytes: UInt64(memory.sizeBytes),
                                    frontendVirtualAddress: memory.frontendVirtualAddress, memoryFD: memory.fd)
        if startQueues {
            try frontend.startQueue(0, driver: hiprio, kickFD: kicks[0].fd, callFD: calls[0].fd)
            try frontend.startQueue(1, driver: requestDriver, kickFD: kicks[1].fd, callFD: calls[1].fd)
        }
    }

    deinit { bookkeeping.deallocate() }

    /// INIT and `count` GETATTRs through the request queue; returns how many came back well-formed.
    func serveRequests(_ count: Int) -> Int {
        let load = LoadGenerator(driver: requestDriver, depth: 4, operations: [.getattrRoot, .statfs])
        load.kickFD = kicks[1].fd
        load.establishSession {}
        load.run(requests: count) {}
        requestDriver = load.driver
        return load.completed - load.unexpectedReplies
    }

    /// A message that must be refused: with REPLY_ACK negotiated the back-end answers non-zero.
    func expectRefused(_ request: UInt32, payload: [UInt8], fds: [Int32] = [], _ comment: Comment) throws {
        try frontend.sendRaw(request: request, flags: VhostUserWire.version | VhostUserWire.flagNeedReply, payload: payload, fds: fds)
        let reply = try #require(try frontend.receiveReply(), comment)
        #expect(reply.request == request, comment)
        #expect(VhostUserFrontend.u64(reply.payload) != 0, comment)
    }

    /// The connection still answers.
    func expectAlive() throws {
        let features = VhostUserFrontend.u64(try frontend.call(.getFeatures, expectsReply: true))
        #expect(features == VirtioFeatures.offered)
    }
}

@Suite(.serialized) struct VhostUserTests {
    func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> UInt32(8 * $0)) } }

    @Test("a front-end that plays QEMU gets FUSE requests served")
    func servesRequests() throws {
        let engine = try InProcessEngine(name: "serve")
        defer { engine.shutDown() }
        let connection = try ConnectedFrontend(socketPath: engine.socketPath)
        #expect(connection.serveRequests(2000) == 2000)
        // GET_VRING_BASE stops the ring and reports where the back-end got to: INIT + 2000 requests.
        #expect(try connection.frontend.stopQueue(1) == 2001)
        #expect(engine.server.device.metrics(queue: 1).repliesSent == 2001)
    }

    @Test("malformed messages are refused one by one and the connection carries on")
    func malformedMessages() throws {
        let engine = try InProcessEngine(name: "malformed")
        defer { engine.shutDown() }
        let connection = try ConnectedFrontend(socketPath: engine.socketPath, startQueues: false)
        let setVringNum = VhostUserRequest.setVringNum.rawValue
        try connection.expectRefused(setVringNum, payload: le32(1), "vring state of 4 bytes instead of 8")
        try connection.expectRefused(setVringNum, payload: le32(1) + le32(3), "queue size not a power of two")
        try connection.expectRefused(setVringNum, payload: le32(1) + le32(65536), "queue size above 32768")
        try connection.expectRefused(setVringNum, payload: le32(99) + le32(64), "queue that does not exist")
        try connection.expectRefused(999, payload: [], "unknown request id")
        try connection.expectRefused(VhostUserRequest.setConfig.rawValue, payload: [UInt8](repeating: 0, count: 12), "CONFIG was never offered")
        try connection.expectRefused(VhostUserRequest.setFeatures.rawValue, payload: Array(repeating: 0xFF, count: 8), "features never offered")
        try connection.expectRefused(VhostUserRequest.setVringAddr.rawValue, payload: [UInt8](repeating: 0, count: 39), "SET_VRING_ADDR one byte short")
        // Memory tables that lie about their regions or their descriptors.
        let region = VhostUserPayload.u64(0x1_0000_0000) + VhostUserPayload.u64(1 << 20) + VhostUserPayload.u64(0x7000_0000) + VhostUserPayload.u64(0)
        try connection.expectRefused(VhostUserRequest.setMemTable.rawValue, payload: le32(2) + le32(0) + region + region,
                                     fds: [connection.memory.fd], "two regions, one descriptor")
        try connection.expectRefused(VhostUserRequest.setMemTable.rawValue, payload: le32(1) + le32(0) + region,
                                     fds: [], "a region without a descriptor")
        try connection.expectRefused(VhostUserRequest.setMemTable.rawValue, payload: le32(9) + le32(0), fds: [], "nine regions")
        let huge = VhostUserPayload.u64(0x1_0000_0000) + VhostUserPayload.u64(1 << 40) + VhostUserPayload.u64(0x7000_0000) + VhostUserPayload.u64(0)
        try connection.expectRefused(VhostUserRequest.setMemTable.rawValue, payload: le32(1) + le32(0) + huge,
                                     fds: [connection.memory.fd], "a region larger than its file")
        var pipeFDs: [Int32] = [0, 0]
        #expect(pipe(&pipeFDs) == 0)
        Glibc.close(pipeFDs[1])
        try connection.expectRefused(VhostUserRequest.setMemTable.rawValue, payload: le32(1) + le32(0) + region,
                                     fds: [pipeFDs[0]], "a pipe as guest memory")
        let wrapping = VhostUserPayload.u64(UInt64.max - 100) + VhostUserPayload.u64(4096) + VhostUserPayload.u64(0) + VhostUserPayload.u64(0)
        try connection.expectRefused(VhostUserRequest.setMemTable.rawValue, payload: le32(1) + le32(0) + wrapping,
                                     fds: [connection.memory.fd], "a region wrapping the address space")
        try connection.expectRefused(VhostUserRequest.setVringKick.rawValue, payload: VhostUserPayload.u64(1), fds: [],
                                     "a kick without its descriptor")
        try connection.expectRefused(VhostUserRequest.setVringCall.rawValue, payload: VhostUserPayload.u64(1 | 0x100),
                                     fds: [connection.kicks[1].fd], "a descriptor despite the no-fd flag")
        try connection.expectAlive()
        // The real memory table was kept through all of this: queues still start and serve.
        try connection.frontend.startQueue(0, driver: connection.hiprio, kickFD: connection.kicks[0].fd, callFD: connection.calls[0].fd)
        try connection.frontend.startQueue(1, driver: connection.requestDriver, kickFD: connection.kicks[1].fd, callFD: connection.calls[1].fd)
        #expect(connection.serveRequests(200) == 200)
    }

    @Test("ring addresses outside guest memory: the queue is not started, the connection lives")
    func ringOutsideMemory() throws {
        let engine = try InProcessEngine(name: "rings")
        defer { engine.shutDown() }
        let connection = try ConnectedFrontend(socketPath: engine.socketPath, startQueues: false)
        let frontend = connection.frontend
        try frontend.call(.setVringNum, payload: VhostUserPayload.vringState(index: 1, number: 64))
        let outside = connection.memory.frontendVirtualAddress + UInt64(connection.memory.sizeBytes)
        let address = le32(1) + le32(0) + VhostUserPayload.u64(outside) + VhostUserPayload.u64(outside + 4096)
            + VhostUserPayload.u64(outside + 8192) + VhostUserPayload.u64(0)
        try frontend.call(.setVringAddr, payload: address)
        try frontend.call(.setVringEnable, payload: VhostUserPayload.vringState(index: 1, number: 1))
        try connection.expectRefused(VhostUserRequest.setVringKick.rawValue, payload: VhostUserPayload.u64(1),
                                     fds: [connection.kicks[1].fd], "rings outside guest memory")
        #expect(engine.server.device.metrics(queue: 1).requestsFetched == 0)
        try connection.expectAlive()
    }

    @Test("a broken stream closes the connection; the next front-end is served")
    func fatalStreamErrors() throws {
        let engine = try InProcessEngine(name: "fatal")
        defer { engine.shutDown() }
        do {
            let frontend = try VhostUserFrontend(socketPath: engine.socketPath)
            try frontend.sendRaw(request: VhostUserRequest.getFeatures.rawValue, payload: [], declaredSize: 1 << 20)
            #expect(try frontend.receiveReply() == nil, "an oversized payload must close the connection")
        }
        do {
            let frontend = try VhostUserFrontend(socketPath: engine.socketPath)
            try frontend.sendRaw(request: VhostUserRequest.getFeatures.rawValue, flags: 2, payload: [])
            #expect(try frontend.receiveReply() == nil, "a wrong protocol version must close the connection")
        }
        let connection = try ConnectedFrontend(socketPath: engine.socketPath)
        #expect(connection.serveRequests(100) == 100)
        #expect(engine.server.connectionsServed == 3)
    }

    @Test("a malicious ring fails its device only; a second device keeps serving")
    func maliciousRingIsolated() throws {
        let bad = try InProcessEngine(name: "bad")
        let good = try InProcessEngine(name: "good")
        defer { bad.shutDown(); good.shutDown() }
        let attacker = try ConnectedFrontend(socketPath: bad.socketPath)
        let tenant = try ConnectedFrontend(socketPath: good.socketPath)
        #expect(attacker.serveRequests(10) == 10)
        // A descriptor pointing far outside guest memory, made available and kicked.
        let addresses = attacker.requestDriver.queueAddresses
        let d = addresses.descriptors
        d.storeBytes(of: UInt64(0xDEAD_0000_0000).littleEndian, toByteOffset: 0, as: UInt64.self)
        d.storeBytes(of: UInt32(4096).littleEndian, toByteOffset: 8, as: UInt32.self)
        d.storeBytes(of: UInt16(0), toByteOffset: 12, as: UInt16.self)
        let index = addresses.avail.load(fromByteOffset: 2, as: UInt16.self)
        addresses.avail.storeBytes(of: UInt16(0), toByteOffset: 4 + 2 * Int(index % 64), as: UInt16.self)
        addresses.avail.storeBytes(of: index &+ 1, toByteOffset: 2, as: UInt16.self)
        attacker.kicks[1].signal()
        var failed = false
        for _ in 0..<200 where !failed {
            usleep(10_000)
            failed = bad.server.device.metrics(queue: 1).transportFailures > 0
        }
        #expect(failed, "the malicious chain must fail the queue")
        #expect(tenant.serveRequests(500) == 500)
    }
}
