import Testing
import VhostUserProtocol

/// The vhost-user protocol without a device: every message field checked by the decoder, and the
/// control plane's rules (what stops, starts, closes and replies) as the actions it returns. The
/// real device runs the same plane in VhostUserTests.
@Suite struct VhostUserControlPlaneTests {
    static let limits = VhostUserLimits(queueCount: 2, queueSizeMax: 32768)

    static func message(_ request: VhostUserRequest, _ payload: [UInt8] = [], fds: [Int32] = []) -> VhostUserMessage {
        VhostUserMessage(requestRaw: request.rawValue, flags: VhostUserWire.version, payload: payload, fds: fds)
    }

    static func ringState(_ index: UInt32, _ number: UInt32) -> [UInt8] { VhostUserPayload.vringState(index: index, number: number) }

    static func region(gpa: UInt64, size: UInt64) -> [UInt8] {
        [gpa, size, 0x7000_0000 + gpa, 0].flatMap { VhostUserPayload.u64($0) }
    }

    static func decode(_ message: VhostUserMessage) throws(VhostUserError) -> VhostUserCommand {
        var descriptors = message.fds
        return try VhostUserCommand.decode(message, descriptors: &descriptors, limits: limits)
    }

    @Test("malformed messages are refused by the decoder, and the descriptors stay the caller's")
    func refusals() {
        let cases: [(VhostUserMessage, String)] = [
            (Self.message(.setFeatures, [1, 2, 3]), "payload is 3 bytes"),
            (Self.message(.setFeatures, VhostUserPayload.u64(1 << 40)), "include bits never offered"),
            (Self.message(.setProtocolFeatures, VhostUserPayload.u64(1 << 1)), "include bits never offered"),
            (Self.message(.setVringNum, Self.ringState(2, 256)), "queue 2 does not exist"),
            (Self.message(.setVringNum, Self.ringState(0, 100)), "not a power of two"),
            (Self.message(.setVringNum, Self.ringState(0, 65536)), "not a power of two"),
            (Self.message(.setVringBase, Self.ringState(0, 70000)), "exceeds 65535"),
            (Self.message(.setVringEnable, Self.ringState(1, 2)), "SET_VRING_ENABLE 2"),
            (Self.message(.setVringAddr, [UInt8](repeating: 0, count: 32)), "not 40"),
            (Self.message(.setVringKick, VhostUserPayload.u64(0)), "carries 0 descriptors"),
            (Self.message(.setVringCall, VhostUserPayload.u64(0x100), fds: [90]), "carries 1 descriptors"),
            (Self.message(.setVringErr, VhostUserPayload.u64(0x200), fds: [90]), "unknown bits"),
            (Self.message(.setMemTable, VhostUserPayload.u64(0)), "with 0 regions"),
            (Self.message(.setMemTable, VhostUserPayload.u64(9)), "with 9 regions"),
            (Self.message(.setMemTable, VhostUserPayload.u64(1) + Self.region(gpa: 0, size: 4096)), "but 0 descriptors"),
            (Self.message(.setMemTable, VhostUserPayload.u64(2) + Self.region(gpa: 0, size: 8192) + Self.region(gpa: 4096, size: 4096), fds: [90, 91]),
             "overlap"),
            (Self.message(.addMemReg, VhostUserPayload.u64(0) + Self.region(gpa: 0, size: 0), fds: [90]), "empty or overflowing"),
            (Self.message(.addMemReg, VhostUserPayload.u64(0) + Self.region(gpa: 0, size: 4096)), "carries 0 descriptors"),
            (Self.message(.setLogBase, VhostUserPayload.u64(0)), "not supported"),
            (VhostUserMessage(requestRaw: 999, flags: 1, payload: [], fds: []), "unknown request id 999"),
        ]
        for (message, expected) in cases {
            var descriptors = message.fds
            do {
                let command = try VhostUserCommand.decode(message, descriptors: &descriptors, limits: Self.limits)
                Issue.record("\(message.requestRaw) accepted as \(command)")
            } catch {
                #expect(error.message.contains(expected), "\(error.message) does not mention '\(expected)'")
                #expect(descriptors == message.fds, "a refused message's descriptors are left for the caller to close")
            }
        }
    }

    @Test("well-formed messages decode to their commands, taking the descriptors they keep")
    func decoding() throws {
        #expect(try Self.decode(Self.message(.setVringNum, Self.ringState(1, 1024))) == .setVringNum(queue: 1, size: 1024))
        #expect(try Self.decode(Self.message(.getVringBase, Self.ringState(0, 0))) == .getVringBase(queue: 0))
        var descriptors: [Int32] = [42]
        let kick = try VhostUserCommand.decode(Self.message(.setVringKick, VhostUserPayload.u64(1), fds: [42]), descriptors: &descriptors, limits: Self.limits)
        #expect(kick == .setVringDescriptor(.kick, queue: 1, descriptor: 42))
        #expect(descriptors.isEmpty, "the command owns the descriptor now")
        #expect(try Self.decode(Self.message(.setVringCall, VhostUserPayload.u64(0x100))) == .setVringDescriptor(.call, queue: 0, descriptor: nil))
        var table: [Int32] = [7, 8]
        let memory = try VhostUserCommand.decode(
            Self.message(.setMemTable, VhostUserPayload.u64(2) + Self.region(gpa: 0, size: 4096) + Self.region(gpa: 8192, size: 4096), fds: [7, 8]),
            descriptors: &table, limits: Self.limits)
        guard case .setMemoryTable(let regions, let fds) = memory else { Issue.record("\(memory)"); return }
        #expect(regions.map(\.guestPhysicalAddress) == [0, 8192] && fds == [7, 8] && table.isEmpty)
    }

    /// A plane whose queue 0 has everything but a kick eventfd, with memory mapped.
    static func configured(protocolFeatures: Bool = false) throws -> VhostUserControlPlane {
        var plane = VhostUserControlPlane(limits: limits, memoryRegionsMax: 64)
        plane.memoryRegionCount = 1
        if protocolFeatures {
            _ = try plane.apply(.setFeatures(VirtioFeatures.protocolFeatures | VirtioFeatures.version1))
        }
        _ = try plane.apply(.setVringNum(queue: 0, size: 256))
        _ = try plane.apply(.setVringAddr(queue: 0, descriptors: 0x1000, used: 0x3000, avail: 0x2000))
        _ = try plane.apply(.setVringBase(queue: 0, base: 7))
        return plane
    }

    @Test("a ring starts once it has size, addresses, memory, a kick and is enabled; protocol features defer the enabling")
    func starting() throws {
        var plain = try Self.configured()
        #expect(!plain.readyToStart(0))
        let kick = try plain.apply(.setVringDescriptor(.kick, queue: 0, descriptor: 40))
        #expect(kick.actions == [.stopQueue(0), .startIfReady(0)])
        #expect(plain.readyToStart(0), "without protocol features the kick enables the ring")

        var negotiated = try Self.configured(protocolFeatures: true)
        _ = try negotiated.apply(.setVringDescriptor(.kick, queue: 0, descriptor: 40))
        #expect(!negotiated.readyToStart(0), "SET_VRING_ENABLE decides")
        #expect(try negotiated.apply(.setVringEnable(queue: 0, enabled: true)).actions == [.startIfReady(0)])
        #expect(negotiated.readyToStart(0))
        negotiated.memoryRegionCount = 0
        #expect(!negotiated.readyToStart(0), "no guest memory, no ring")
        negotiated.memoryRegionCount = 1
        negotiated.queueStarted(0)
        #expect(!negotiated.readyToStart(0), "already running")
        #expect(try negotiated.apply(.setVringEnable(queue: 0, enabled: false)).actions == [.stopQueue(0)])
    }

    @Test("a running ring's layout cannot change; GET_VRING_BASE stops it, closes its kick and answers its base")
    func runningRing() throws {
        var plane = try Self.configured()
        _ = try plane.apply(.setVringDescriptor(.kick, queue: 0, descriptor: 40))
        plane.queueStarted(0)
        for command in [VhostUserCommand.setVringNum(queue: 0, size: 128), .setVringBase(queue: 0, base: 0),
                        .setVringAddr(queue: 0, descriptors: 0, used: 0, avail: 0)] {
            #expect(throws: VhostUserError.self) { _ = try plane.apply(command) }
        }
        #expect(plane.queues[0].size == 256 && plane.queues[0].nextAvailIndex == 7, "nothing changed")
        #expect(try plane.apply(.setVringNum(queue: 1, size: 128)).actions.isEmpty, "the other ring is stopped")
        let stop = try plane.apply(.getVringBase(queue: 0))
        #expect(stop.actions == [.stopQueue(0), .forgetRing(0), .closeDescriptor(40)])
        #expect(stop.reply == .ringBase(0))
        plane.queueStopped(0, lastAvailIndex: 99)
        #expect(plane.queues[0].nextAvailIndex == 99, "the base the front-end gets is where the ring got to")
        #expect(plane.queues[0].kickFD == -1 && !plane.readyToStart(0), "a later start comes with a new kick")
    }

    @Test("replaced eventfds are closed; a new call eventfd restarts only a ring that ran")
    func descriptors() throws {
        var plane = try Self.configured()
        #expect(try plane.apply(.setVringDescriptor(.call, queue: 0, descriptor: 50)).actions == [.stopQueue(0), .installCall(queue: 0, descriptor: 50)])
        plane.queueStarted(0)
        #expect(try plane.apply(.setVringDescriptor(.call, queue: 0, descriptor: 51)).actions
                == [.stopQueue(0), .closeDescriptor(50), .installCall(queue: 0, descriptor: 51), .startIfReady(0)])
        #expect(try plane.apply(.setVringDescriptor(.error, queue: 1, descriptor: 60)).actions.isEmpty)
        #expect(try plane.apply(.setVringDescriptor(.error, queue: 1, descriptor: nil)).actions == [.closeDescriptor(60)])
        _ = try plane.apply(.setVringDescriptor(.kick, queue: 1, descriptor: 70))
        #expect(try plane.apply(.setVringDescriptor(.kick, queue: 1, descriptor: nil)).actions == [.stopQueue(1), .closeDescriptor(70), .startIfReady(1)])
        #expect(plane.queues[1].kickPolled, "no kick descriptor: the ring is polled")
    }

    @Test("reset hands back every descriptor and forgets features and rings")
    func reset() throws {
        var plane = try Self.configured(protocolFeatures: true)
        _ = try plane.apply(.setProtocolFeatures(VhostUserProtocolFeatures.replyAck))
        _ = try plane.apply(.setVringDescriptor(.kick, queue: 0, descriptor: 40))
        _ = try plane.apply(.setVringDescriptor(.call, queue: 0, descriptor: 41))
        _ = try plane.apply(.setVringDescriptor(.error, queue: 1, descriptor: 42))
        plane.queueStarted(0)
        #expect(plane.replyAck)
        #expect(try plane.apply(.reset).actions == [.resetDevice])
        #expect(Set(plane.reset()) == [40, 41, 42])
        #expect(plane.queues == Array(repeating: VhostUserQueueSetup(), count: 2))
        #expect(plane.running == [false, false] && plane.ackedFeatures == 0 && !plane.replyAck)
    }

    @Test("queries answer from the device's limits and the features offered")
    func queries() throws {
        var plane = VhostUserControlPlane(limits: Self.limits, memoryRegionsMax: 64)
        #expect(try plane.apply(.getQueueNum).reply == .payload(VhostUserPayload.u64(2)))
        #expect(try plane.apply(.getMaxMemSlots).reply == .payload(VhostUserPayload.u64(64)))
        #expect(try plane.apply(.getFeatures).reply == .payload(VhostUserPayload.u64(VirtioFeatures.offered)))
        #expect(try plane.apply(.getProtocolFeatures).reply == .payload(VhostUserPayload.u64(VhostUserProtocolFeatures.offered)))
    }
}
