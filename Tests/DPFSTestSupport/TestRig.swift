import DPFSCore
import DPFSPosix
import FUSEWire
import LoopbackTransport
import Synchronization

/// A loopback rig in its own arena, stepped inline by the test.
public final class TestRig<B: Backend> {
    public let arena: HugepageArena
    public var rig: LoopbackRig<B>

    public init(backend: B, poller: PollerConfiguration = PollerConfiguration(slotCount: 16, segmentsPerSlot: 32, batchMax: 16),
                driver: LoopbackDriverConfiguration = LoopbackDriverConfiguration(queueSize: 64, requestSlots: 16, readableBufferBytes: 16384,
                                                                                    writableBufferBytes: 16384, descriptorsPerRequestMax: 24)) {
        arena = try! HugepageArena(bytes: LoopbackRig<B>.arenaBytes(poller: poller, driver: driver), allowHugepages: false)
        var allocator = arena.allocator()
        rig = LoopbackRig(poller: poller, driver: driver, backend: backend, arena: &allocator)
    }

    public var metrics: PollerMetrics { rig.poller.metrics.pointee }

    /// Submits raw request bytes with `writableBytes` of reply space; returns the driver slot.
    @discardableResult
    public func submit(_ bytes: [UInt8], writableBytes: Int, segmentation: Segmentation = .single, indirect: Bool = false) -> Int {
        guard let slot = rig.driver.acquireSlot() else { preconditionFailure("driver has no free slot") }
        bytes.withUnsafeBytes { rig.driver.readableBuffer(slot).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        rig.driver.writableBuffer(slot).initializeMemory(as: UInt8.self, repeating: 0xA5, count: writableBytes)
        let submitted = rig.driver.submit(slot: slot, readableBytes: bytes.count, writableBytes: writableBytes,
                                          segmentation: segmentation, indirect: indirect)
        precondition(submitted, "queue full")
        return slot
    }

    /// Steps the poller once and collects every reply the driver can reap.
    public func stepAndReap() -> [Reaped] {
        _ = rig.poller.step()
        var out: [Reaped] = []
        while let (slot, used) = rig.driver.reap() {
            let bytes = Array(UnsafeRawBufferPointer(start: rig.driver.writableBuffer(slot), count: Int(used)))
            out.append(Reaped(slot: slot, usedLength: used, bytes: bytes))
            rig.driver.releaseSlot(slot)
        }
        return out
    }

    /// One request through the engine: submit, step, reap. Traps if no reply comes back.
    public func roundTrip(_ bytes: [UInt8], writableBytes: Int, segmentation: Segmentation = .single,
                          indirect: Bool = false) -> Reaped {
        submit(bytes, writableBytes: writableBytes, segmentation: segmentation, indirect: indirect)
        let reaped = stepAndReap()
        precondition(reaped.count == 1, "expected exactly one completion, got \(reaped.count)")
        return reaped[0]
    }

    /// Sends FUSE_INIT (7.38) and checks it was accepted.
    public func establishSession() {
        let reply = roundTrip(TestRequest.valid(.`init`).bytes, writableBytes: 16 + 64)
        precondition(reply.error == 0 && reply.usedLength == 80, "INIT refused")
    }
}

/// A reply the driver reaped.
public struct Reaped: Equatable, Sendable {
    public var slot: Int
    public var usedLength: UInt32
    public var bytes: [UInt8]

    public var outLength: UInt32 { bytes.count >= 4 ? bytes.loadLE(UInt32.self, at: 0) : 0 }
    public var error: Int32 { bytes.count >= 8 ? bytes.loadLE(Int32.self, at: 4) : 0 }
    public var unique: UInt64 { bytes.count >= 16 ? bytes.loadLE(UInt64.self, at: 8) : 0 }
    public var body: [UInt8] { Array(bytes.dropFirst(16)) }
}

/// A backend whose answers the test decides: now (success or an errno) or later, completed by
/// the test from whichever thread it likes. Success replies carry the request's unique as the
/// inode, so a reply delivered to the wrong request is caught.
public struct ScriptedBackend: Backend {
    public enum Plan: Sendable, Equatable {
        case succeed
        case fail(FUSEErrno)
        case pending
    }

    public final class State: @unchecked Sendable {
        public var plans: [UInt64: Plan] = [:]
        public var pending: [(token: CompletionToken, reply: FUSEReply, unique: UInt64)] = []
        public var sessions = 0
        /// What the poller gave the backend: completes pending requests from any thread.
        public var context: BackendContext? = nil
        /// Written by the poller thread, read by the test: atomic.
        public let quiesceCalls = Atomic<Int>(0)
        public init() {}
    }

    public let state: State
    public init(state: State = State()) { self.state = state }

    public mutating func attach(_ context: BackendContext) { state.context = context }
    public mutating func sessionStarted(_ session: NegotiatedSession) { state.sessions += 1 }
    public mutating func quiesce() { state.quiesceCalls.add(1, ordering: .releasing) }

    public mutating func handle(_ request: FUSERequest, reply: FUSEReply, token: CompletionToken) -> BackendAnswer {
        if request.opcodeRaw == FUSEOpcode.forget.rawValue || request.opcodeRaw == FUSEOpcode.batchForget.rawValue {
            reply.none()
            return .done
        }
        switch state.plans[request.unique] ?? .succeed {
        case .succeed:
            Self.writeSuccess(reply, unique: request.unique)
            return .done
        case .fail(let errno):
            reply.fail(errno)
            return .done
        case .pending:
            state.pending.append((token, reply, request.unique))
            return .pending
        }
    }

    /// A GETATTR answer whose inode is the request's unique.
    public static func writeSuccess(_ reply: FUSEReply, unique: UInt64) {
        let time = FUSETime(seconds: 1)
        reply.attributes(FileAttributes(inode: unique, sizeBytes: 0, blocks: 0, accessTime: time, modificationTime: time,
                                        changeTime: time, mode: 0o100644, linkCount: 1, uid: 0, gid: 0, rdev: 0,
                                        blockSizeBytes: 4096),
                         valid: CacheValidity(seconds: 0))
    }
}
