import DPFSCore
import DPFSPosix
import FUSEWire
import LoopbackTransport

/// What every backend's allocation gate stands on: one poller of 16 slots and a loopback queue in
/// an arena of their own, a session established, and one prepared request at a time sent and
/// stepped until its reply is back.
final class GateRig<B: Backend> {
    let arena: HugepageArena
    var rig: LoopbackRig<B>
    var unique: UInt64 = 1000
    /// A backend that does not answer in this time has stopped serving (a gate never waits for ever).
    static var answerNanosecondsMax: UInt64 { 30_000_000_000 }

    init(backend: B) throws {
        let poller = PollerConfiguration(slotCount: 16, segmentsPerSlot: 16, batchMax: 16)
        let driver = LoopbackDriverConfiguration(queueSize: 64, requestSlots: 16, readableBufferBytes: 8192,
                                                 writableBufferBytes: 8192, descriptorsPerRequestMax: 8)
        arena = try HugepageArena(bytes: LoopbackRig<B>.arenaBytes(poller: poller, driver: driver), allowHugepages: false)
        var allocator = arena.allocator()
        rig = LoopbackRig(poller: poller, driver: driver, backend: backend, arena: &allocator)
        let load = LoadGenerator(driver: rig.driver, depth: 1, operations: [.getattrRoot])
        load.establishSession { _ = rig.poller.step() }
        rig.driver = load.driver
    }

    /// Sends one prepared request and steps until its reply is back; returns (error, used length)
    /// and leaves the reply in `reply` (at most `reply.count` bytes). Allocates nothing.
    func roundTrip(_ bytes: UnsafeRawBufferPointer, writable: Int, reply: UnsafeMutableRawBufferPointer) -> (Int32, UInt32) {
        guard let slot = rig.driver.acquireSlot() else { preconditionFailure("no driver slot") }
        unique &+= 1
        let buffer = rig.driver.readableBuffer(slot)
        buffer.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        buffer.storeBytes(of: unique.littleEndian, toByteOffset: InHeaderLayout.unique, as: UInt64.self)
        let submitted = rig.driver.submit(slot: slot, readableBytes: bytes.count, writableBytes: writable,
                                          segmentation: .single, indirect: false)
        precondition(submitted)
        let deadline = monotonicNanoseconds() + Self.answerNanosecondsMax
        while true {
            _ = rig.poller.step()
            if let (reaped, used) = rig.driver.reap() {
                precondition(reaped == slot)
                let written = rig.driver.writableBuffer(slot)
                let error = used >= 16 ? written.loadUnaligned(fromByteOffset: OutHeaderLayout.error, as: Int32.self) : 0
                if reply.count > 0 { reply.baseAddress!.copyMemory(from: written, byteCount: min(reply.count, Int(used))) }
                rig.driver.releaseSlot(slot)
                return (error, used)
            }
            precondition(monotonicNanoseconds() < deadline, "the backend did not answer in 30 s")
        }
    }
}
