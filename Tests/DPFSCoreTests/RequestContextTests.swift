import DPFSCore
import DPFSTestSupport
import FUSEWire
import NullBackend
import Testing

// Per-request backend state from the arena: a backend declares the size and alignment of one
// request's context, the poller's arena plan makes room for one per slot, and the backend finds
// its own, zero-filled and aligned, by slot index.

/// Declares 100-byte contexts aligned to 32 and keeps what the poller handed it.
struct ContextRecordingBackend: Backend {
    static var requestContextLayout: RequestContextLayout { RequestContextLayout(bytes: 100, alignment: 32) }
    let seen: ContextSeen

    mutating func attach(_ context: BackendContext) { seen.context = context }

    /// Every request writes its unique into its slot's context and answers with that slot's index.
    mutating func handle(_ request: FUSERequest, reply: FUSEReply, token: CompletionToken) -> BackendAnswer {
        let slot = Int(token.slotIndex)
        seen.context!.requestContext(slot: slot).storeBytes(of: request.unique, as: UInt64.self)
        seen.slots.append(slot)
        reply.fail(.noEntry)
        return .done
    }
}

final class ContextSeen: @unchecked Sendable {
    var context: BackendContext?
    var slots: [Int] = []
}

@Suite struct RequestContextTests {
    @Test("each slot gets its own zero-filled, aligned context of the declared size")
    func contextsAreCarvedPerSlot() throws {
        let seen = ContextSeen()
        let rig = TestRig(backend: ContextRecordingBackend(seen: seen))
        let context = try #require(seen.context)
        let layout = ContextRecordingBackend.requestContextLayout
        #expect(context.requestContextStride == 128, "100 bytes rounded up to the 32-byte alignment")
        var previousEnd = 0
        for slot in 0..<context.slotCount {
            let start = Int(bitPattern: context.requestContext(slot: slot))
            #expect(start % layout.alignment == 0)
            #expect(start >= previousEnd, "contexts must not overlap")
            previousEnd = start + layout.bytes
            let bytes = UnsafeRawBufferPointer(start: context.requestContext(slot: slot), count: layout.bytes)
            #expect(bytes.allSatisfy { $0 == 0 })
        }
        // A request reaches the context of the slot it occupies.
        rig.establishSession()
        var request = TestRequest.valid(.getattr)
        request.unique = 0xABCDEF
        _ = rig.roundTrip(request.bytes, writableBytes: 16 + 104)
        let slot = try #require(seen.slots.last)
        #expect(context.requestContext(slot: slot).load(as: UInt64.self) == 0xABCDEF)
    }

    @Test("the arena plan counts the contexts: none for a backend that declares none")
    func arenaPlanCountsContexts() {
        let poller = PollerConfiguration(slotCount: 16, segmentsPerSlot: 16, batchMax: 16)
        let withContexts = poller.arenaBytes(for: ContextRecordingBackend.self)
        let without = poller.arenaBytes(for: NullBackend.self)
        #expect(withContexts - without >= 16 * 128)
        #expect(withContexts - without < 16 * 128 + 64, "at most the alignment of the region on top")
    }
}
