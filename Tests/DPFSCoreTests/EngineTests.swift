import DPFSCore
import DPFSPosix
import DPFSTestSupport
import FUSEWire
import LoopbackTransport
import NullBackend
import Testing

/// The whole engine through the loopback virtqueue: poller, codec and backends together.
@Suite struct EngineTests {
    static let name = Array("null".utf8)

    @Test("nothing but INIT is served before INIT")
    func requestsBeforeInit() {
        let rig = TestRig(backend: NullBackend())
        var request = TestRequest.valid(.getattr)
        request.unique = 77
        let reply = rig.roundTrip(request.bytes, writableBytes: 120)
        #expect(reply.usedLength == 16 && reply.error == -5 && reply.unique == 77)
    }

    @Test("INIT, then the null file system answers like a file system")
    func nullFileSystem() {
        let rig = TestRig(backend: NullBackend(configuration: NullBackendConfiguration(fileSizeBytes: 10_000)))
        rig.establishSession()

        var lookup = TestRequest(.lookup, nodeID: 1, args: Self.name + [0])
        lookup.unique = 10
        let found = rig.roundTrip(lookup.bytes, writableBytes: 16 + 128)
        #expect(found.error == 0 && found.usedLength == 144 && found.outLength == 144 && found.unique == 10)
        #expect(found.body.loadLE(UInt64.self, at: EntryOutLayout.nodeID) == NullBackend.fileNodeID)
        #expect(found.body.loadLE(UInt64.self, at: EntryOutLayout.attr + AttrLayout.fileSize) == 10_000)

        let missing = rig.roundTrip(TestRequest(.lookup, nodeID: 1, args: Array("nope".utf8) + [0]).bytes, writableBytes: 144)
        #expect(missing.error == -2 && missing.usedLength == 16)

        let read = rig.roundTrip(TestRequest.valid(.read).bytes, writableBytes: 16 + 4096, segmentation: .linux(payloadOffset: 80))
        #expect(read.error == 0 && read.usedLength == 16 + 4096, "error \(read.error)")

        // Reading across the end of the 10 000-byte file returns only what is left.
        var tail = TestRequest.valid(.read)
        tail.args.replaceSubrange(8..<16, with: le(UInt64(9_000)))
        let tailReply = rig.roundTrip(tail.bytes, writableBytes: 16 + 4096)
        #expect(tailReply.usedLength == 16 + 1000)

        let write = rig.roundTrip(TestRequest.valid(.write).bytes, writableBytes: 24, segmentation: .linux(payloadOffset: 80))
        #expect(write.error == 0 && write.body.loadLE(UInt32.self, at: 0) == UInt32(TestRequest.writePayload.count))

        var readdir = TestRequest(.readdir, nodeID: 1, args: le(UInt64(1)) + le(UInt64(0)) + le(UInt32(4096)) + [UInt8](repeating: 0, count: 20))
        readdir.unique = 11
        let listing = rig.roundTrip(readdir.bytes, writableBytes: 16 + 4096)
        #expect(listing.usedLength == 16 + 96, "error \(listing.error)")
        if listing.body.count == 96 {
            #expect(Array(listing.body[(64 + 24)..<(64 + 28)]) == Self.name)
        }
        // Continuing from offset 2 yields only the file; from 3, nothing (end of directory).
        readdir.args.replaceSubrange(8..<16, with: le(UInt64(2)))
        #expect(rig.roundTrip(readdir.bytes, writableBytes: 16 + 4096).usedLength == 16 + 32)
        readdir.args.replaceSubrange(8..<16, with: le(UInt64(3)))
        #expect(rig.roundTrip(readdir.bytes, writableBytes: 16 + 4096).usedLength == 16)

        let forget = rig.roundTrip(TestRequest.valid(.forget).bytes, writableBytes: 0)
        #expect(forget.usedLength == 0)
        let batchForget = rig.roundTrip(TestRequest.valid(.batchForget).bytes, writableBytes: 0)
        #expect(batchForget.usedLength == 0)

        let destroy = rig.roundTrip(TestRequest.valid(.destroy).bytes, writableBytes: 16)
        #expect(destroy.usedLength == 16 && destroy.error == 0)
        // After DESTROY the session is over: back to EIO until the next INIT.
        #expect(rig.roundTrip(TestRequest.valid(.getattr).bytes, writableBytes: 120).error == -5)
        rig.establishSession()
        #expect(rig.roundTrip(TestRequest.valid(.getattr).bytes, writableBytes: 120).error == 0)
        #expect(rig.metrics.backendsWithoutReply == 0)
    }

    @Test("every opcode gets a well-formed answer from the null backend", arguments: FUSEOpcode.allCases)
    func everyOpcodeAnswered(opcode: FUSEOpcode) throws {
        // The exact answer Specs/fuse-coverage.md's "standard request" column records.
        let row = try #require(try SpecCoverageTests.rows(of: "fuse-coverage.md", between: "opcodes").first { $0[0] == opcode.wireName })
        let expected = row[6]
        let rig = TestRig(backend: NullBackend())
        rig.establishSession()
        var request = TestRequest.valid(opcode)
        request.unique = 0xABCD
        if opcode == .`init` { request.unique = 0xABCD }
        let reply = rig.roundTrip(request.bytes, writableBytes: opcode.expectsReply ? 16 + 4096 : 0)
        if !opcode.expectsReply {
            #expect(expected == "none")
            #expect(reply.usedLength == 0)
        } else {
            let got = reply.error == 0 ? "ok" : SpecCoverageTests.errnoName(-reply.error)
            #expect(got == expected, "\(opcode.wireName): the null backend answered \(got), the spec says \(expected)")
            #expect(reply.usedLength >= 16)
            #expect(reply.outLength == reply.usedLength, "out.len must equal the used length")
            #expect(reply.unique == 0xABCD)
            #expect(reply.error <= 0 && reply.error > -512)
            if reply.error != 0 { #expect(reply.usedLength == 16, "error replies are exactly 16 bytes") }
        }
        #expect(rig.metrics.backendsWithoutReply == 0)
    }

    @Test("malformed requests get clear errors, with the request's unique")
    func malformedRequests() {
        let rig = TestRig(backend: NullBackend())
        rig.establishSession()
        var lying = TestRequest.valid(.getattr)
        lying.unique = 501
        lying.lengthOverride = UInt32(40 + 16 + 64)
        let lie = rig.roundTrip(lying.bytes, writableBytes: 120)
        #expect(lie.error == -22 && lie.usedLength == 16 && lie.unique == 501)

        var unknown = TestRequest(opcodeRaw: 200, args: [1, 2, 3, 4])
        unknown.unique = 502
        let unknownReply = rig.roundTrip(unknown.bytes, writableBytes: 64)
        #expect(unknownReply.error == -38 && unknownReply.unique == 502)

        let slash = rig.roundTrip(TestRequest(.lookup, nodeID: 1, args: Array("../etc".utf8) + [0]).bytes, writableBytes: 144)
        #expect(slash.error == -22)

        // A reply area too small for GETATTR's answer: refused before the backend runs.
        let small = rig.roundTrip(TestRequest.valid(.getattr).bytes, writableBytes: 50)
        #expect(small.error == -22 && small.usedLength == 16)

        // No room even for an error: the chain comes back with nothing written.
        let before = rig.metrics.unanswerableRequests
        let mute = rig.roundTrip(TestRequest.valid(.getattr).bytes, writableBytes: 8)
        #expect(mute.usedLength == 0)
        // Not even a header: nothing to answer to.
        let headless = rig.roundTrip([UInt8](repeating: 7, count: 20), writableBytes: 64)
        #expect(headless.usedLength == 0)
        #expect(rig.metrics.unanswerableRequests == before + 2)
        // The engine carries on.
        #expect(rig.roundTrip(TestRequest.valid(.getattr).bytes, writableBytes: 120).error == 0)
    }

    @Test("odd segmentations and indirect tables give the same replies")
    func segmentationDoesNotMatter() {
        let rig = TestRig(backend: NullBackend())
        rig.establishSession()
        var write = TestRequest.valid(.write)
        write.unique = 9
        let bytes = write.bytes
        let plain = rig.roundTrip(bytes, writableBytes: 24)
        for cuts in [[1], [3, 40, 41], [39, 79, 81, 200], Array(stride(from: 5, to: bytes.count, by: 23))] {
            let writableCuts = [1, 9]
            let reply = cuts.withUnsafeBufferPointer { readable in
                writableCuts.withUnsafeBufferPointer { writable in
                    rig.roundTrip(bytes, writableBytes: 24, segmentation: .cuts(readable: readable, writable: writable), indirect: cuts.count > 2)
                }
            }
            #expect(reply.bytes == plain.bytes, "cuts \(cuts)")
        }
    }

    @Test("pending requests complete from another thread; stale and doubled tokens are caught")
    func asynchronousCompletion() throws {
        let state = ScriptedBackend.State()
        let rig = TestRig(backend: ScriptedBackend(state: state))
        rig.establishSession()
        var request = TestRequest.valid(.getattr)
        request.unique = 4242
        state.plans[4242] = .pending
        rig.submit(request.bytes, writableBytes: 120)
        #expect(rig.stepAndReap().isEmpty)
        #expect(rig.rig.poller.slotsInUse == 1)
        let pending = try #require(state.pending.first)
        let ring = rig.rig.poller.completions
        let worker = try PinnedThread {
            ScriptedBackend.writeSuccess(pending.reply, unique: pending.unique)
            _ = ring.push(pending.token)
            // A buggy backend completing twice: the second token must not be applied.
            _ = ring.push(pending.token)
        }
        worker.join()
        let replies = rig.stepAndReap()
        #expect(replies.count == 1)
        #expect(replies.first?.unique == 4242)
        #expect(replies.first?.body.loadLE(UInt64.self, at: AttrOutLayout.attr + AttrLayout.ino) == 4242)
        #expect(rig.metrics.staleCompletions == 1)
        #expect(rig.rig.poller.slotsInUse == 0)
        // A token from a finished request (old generation) arriving late: ignored too.
        _ = ring.push(pending.token)
        #expect(rig.stepAndReap().isEmpty)
        #expect(rig.metrics.staleCompletions == 2)
        // A token naming a slot that does not exist.
        _ = ring.push(CompletionToken(slotIndex: 9999, generation: 0))
        _ = rig.stepAndReap()
        #expect(rig.metrics.staleCompletions == 3)
    }

    @Test("a broken queue fails its device only; another engine keeps serving")
    func brokenQueueIsolated() {
        let broken = TestRig(backend: NullBackend())
        let healthy = TestRig(backend: NullBackend())
        broken.establishSession()
        healthy.establishSession()
        // Point the next avail entry at a head beyond the table: a malicious driver.
        let avail = broken.rig.driver.queueAddresses.avail
        let index = avail.load(fromByteOffset: 2, as: UInt16.self)
        avail.storeBytes(of: UInt16(5000), toByteOffset: 4 + 2 * Int(index % 64), as: UInt16.self)
        avail.storeBytes(of: index &+ 1, toByteOffset: 2, as: UInt16.self)
        #expect(broken.stepAndReap().isEmpty)
        #expect(broken.metrics.transportFailures >= 1)
        #expect(broken.rig.poller.transport.queue.failure == .headOutOfRange)
        #expect(healthy.roundTrip(TestRequest.valid(.getattr).bytes, writableBytes: 120).error == 0)
    }
}
