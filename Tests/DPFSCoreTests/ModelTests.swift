import DPFSCore
import DPFSPosix
import DPFSTestSupport
import FUSEWire
import PropertyBased
import Testing

// Model-based test of the engine (docs/architecture.md §9): random sequences of submissions (good,
// failing, pending, one-way and malformed requests), poller steps, completions in any order from
// several threads, and doubled tokens, applied to the real engine and to a small reference model.
// After every operation the two must agree on which requests are waiting, which replies came back
// (byte for byte where it matters) and how many stale completions were caught. A failure is shrunk
// to a short sequence and reported with a `.fixedSeed(...)` to replay it.

/// One step of a generated scenario.
enum ModelOperation: Equatable, CustomStringConvertible, Sendable {
    case step
    case submit(RequestKind)
    case complete(pick: Int, thread: Int, succeed: Bool)
    case duplicate(pick: Int)

    enum RequestKind: Int, CaseIterable, Sendable {
        case succeed, failNoEntry, pending, forget, lyingLength, noReplyRoom, failAccess
    }

    /// Small integers shrink towards `step` and the simplest submissions.
    init(code: Int, argument: Int) {
        switch code {
        case 0..<20: self = .step
        case 20..<55: self = .submit(RequestKind(rawValue: argument % RequestKind.allCases.count)!)
        case 55..<85: self = .complete(pick: argument, thread: argument % 3, succeed: argument % 4 != 3)
        default: self = .duplicate(pick: argument)
        }
    }

    var description: String {
        switch self {
        case .step: return "step"
        case .submit(let kind): return "submit(\(kind))"
        case .complete(let pick, let thread, let succeed): return "complete(#\(pick) on thread \(thread), \(succeed ? "ok" : "EIO"))"
        case .duplicate(let pick): return "duplicate(#\(pick))"
        }
    }
}

/// What the reference model expects for one request.
struct ExpectedReply: Equatable {
    var usedLength: UInt32
    var error: Int32
    /// For successful GETATTRs: the inode must be the request's unique.
    var inodeIsUnique: Bool
}

/// The reference model: plain dictionaries and arrays, no engine code.
struct ReferenceModel {
    var queued: [(unique: UInt64, kind: ModelOperation.RequestKind)] = []
    var awaiting: [UInt64] = []                     // pending in the backend, in the order they went pending
    var completedNotDrained: [UInt64: ExpectedReply] = [:]
    var finishedTokens: [UInt64] = []               // uniques whose token was pushed (for duplicates)
    var staleCompletions: UInt64 = 0
    /// Doubled tokens pushed since the last step: the poller sees them when it next drains.
    var staleInRing: UInt64 = 0
    var outstandingReplies: [UInt64: ExpectedReply] = [:]

    static func immediateReply(_ kind: ModelOperation.RequestKind) -> ExpectedReply? {
        switch kind {
        case .succeed: return ExpectedReply(usedLength: 16 + 104, error: 0, inodeIsUnique: true)
        case .failNoEntry: return ExpectedReply(usedLength: 16, error: -2, inodeIsUnique: false)
        case .failAccess: return ExpectedReply(usedLength: 16, error: -13, inodeIsUnique: false)
        case .forget, .noReplyRoom: return ExpectedReply(usedLength: 0, error: 0, inodeIsUnique: false)
        case .lyingLength: return ExpectedReply(usedLength: 16, error: -22, inodeIsUnique: false)
        case .pending: return nil
        }
    }

    /// What one poller step must deliver: drained completions, then the queued requests in order.
    mutating func step() -> [UInt64: ExpectedReply] {
        staleCompletions += staleInRing
        staleInRing = 0
        var delivered = completedNotDrained
        completedNotDrained = [:]
        for (unique, kind) in queued {
            if let reply = Self.immediateReply(kind) { delivered[unique] = reply } else { awaiting.append(unique) }
        }
        queued = []
        return delivered
    }
}

@Suite struct ModelTests {
    static let slots = 8
    static let operations = zip(Gen.int(in: 0...99), Gen.int(in: 0...15))
        .map { ModelOperation(code: $0, argument: $1) }
        .array(of: 1...120)

    @Test("engine and reference model agree on every generated sequence")
    func engineMatchesModel() async {
        await propertyCheck(count: 150, input: Self.operations) { operations in
            Self.run(operations)
        }
    }

    static func run(_ operations: [ModelOperation]) {
        let state = ScriptedBackend.State()
        let rig = TestRig(
            backend: ScriptedBackend(state: state),
            poller: PollerConfiguration(slotCount: slots, segmentsPerSlot: 16, batchMax: slots),
            driver: .init(queueSize: 32, requestSlots: slots, readableBufferBytes: 4096, writableBufferBytes: 4096,
                          descriptorsPerRequestMax: 8))
        rig.establishSession()
        var model = ReferenceModel()
        var nextUnique: UInt64 = 1000
        var tokens: [UInt64: (CompletionToken, FUSEReply)] = [:]

        for (position, operation) in operations.enumerated() {
            let context = "after operation \(position) (\(operation)) of \(operations)"
            switch operation {
            case .submit(let kind):
                guard rig.rig.driver.inFlight < slots else { continue }
                let unique = nextUnique
                nextUnique += 1
                var request = TestRequest.valid(kind == .forget ? .forget : .getattr)
                request.unique = unique
                var writable = 16 + 104
                switch kind {
                case .succeed: state.plans[unique] = .succeed
                case .failNoEntry: state.plans[unique] = .fail(.noEntry)
                case .failAccess: state.plans[unique] = .fail(.accessDenied)
                case .pending: state.plans[unique] = .pending
                case .forget: writable = 0
                case .lyingLength: request.lengthOverride = UInt32(request.bytes.count + 8)
                case .noReplyRoom: writable = 8
                }
                rig.submit(request.bytes, writableBytes: writable, segmentation: .linux(payloadOffset: request.bytes.count))
                model.queued.append((unique, kind))
                model.outstandingReplies[unique] = nil

            case .step:
                let expected = model.step()
                let reaped = rig.stepAndReap()
                var got: [UInt64: Reaped] = [:]
                for reply in reaped {
                    // One-way and unanswerable requests come back with nothing written: identify them
                    // by the driver slot's request bytes instead of the reply.
                    let unique = UnsafeRawPointer(rig.rig.driver.readableBuffer(reply.slot))
                        .loadUnaligned(fromByteOffset: InHeaderLayout.unique, as: UInt64.self)
                    #expect(got[unique] == nil, "two replies for \(unique) \(context)")
                    got[unique] = reply
                }
                #expect(Set(got.keys) == Set(expected.keys), "replies for \(got.keys.sorted()), model expected \(expected.keys.sorted()) \(context)")
                for (unique, want) in expected {
                    guard let reply = got[unique] else { continue }
                    #expect(reply.usedLength == want.usedLength, "used length of \(unique) \(context)")
                    if want.usedLength > 0 {
                        #expect(reply.outLength == reply.usedLength && reply.unique == unique && reply.error == want.error,
                                "reply header of \(unique) \(context)")
                    }
                    if want.inodeIsUnique {
                        #expect(reply.body.loadLE(UInt64.self, at: AttrOutLayout.attr + AttrLayout.ino) == unique,
                                "reply of \(unique) carries another request's answer \(context)")
                    }
                }
                // The backend's pending list and the model's agree, in order.
                #expect(state.pending.map(\.unique) == model.awaiting, "pending requests \(context)")
                for entry in state.pending { tokens[entry.unique] = (entry.token, entry.reply) }

            case .complete(let pick, let thread, let succeed):
                guard !model.awaiting.isEmpty else { continue }
                let unique = model.awaiting.remove(at: pick % model.awaiting.count)
                let index = state.pending.firstIndex { $0.unique == unique }!
                let entry = state.pending.remove(at: index)
                let ring = rig.rig.poller.completions
                // Complete from one of several threads, as backend completion threads would.
                let worker = try! PinnedThread(cpu: thread % PinnedThread.onlineCPUs) {
                    if succeed { ScriptedBackend.writeSuccess(entry.reply, unique: unique) } else { entry.reply.fail(.io) }
                    let pushed = ring.push(entry.token)
                    precondition(pushed, "a legitimate completion found the ring full")
                }
                worker.join()
                model.completedNotDrained[unique] = succeed
                    ? ExpectedReply(usedLength: 16 + 104, error: 0, inodeIsUnique: true)
                    : ExpectedReply(usedLength: 16, error: -5, inodeIsUnique: false)
                model.finishedTokens.append(unique)

            case .duplicate(let pick):
                guard !model.finishedTokens.isEmpty else { continue }
                let unique = model.finishedTokens[pick % model.finishedTokens.count]
                if rig.rig.poller.completions.push(tokens[unique]!.0) { model.staleInRing += 1 }
            }

            // After every operation: same stale count, same number of busy slots, and every request
            // the model says is with the backend sits in an awaitingBackend slot.
            #expect(rig.metrics.staleCompletions == model.staleCompletions, "stale completions \(context)")
            let busy = model.awaiting.count + model.completedNotDrained.count
            #expect(rig.rig.poller.slotsInUse == busy, "slots in use \(context)")
            for unique in model.awaiting + Array(model.completedNotDrained.keys) {
                let slots = rig.rig.poller.slots
                let states = (0..<slots.count).map { slots.record($0).pointee }
                    .filter { $0.state != .free && $0.request.unique == unique }.map(\.state)
                #expect(states == [.awaitingBackend], "slot of \(unique) is \(states) \(context)")
            }
        }
    }

    /// A hand-written sequence that exercises every operation kind, so a regression shows up
    /// even before the random search finds it.
    @Test("a fixed scenario: out-of-order completions, a doubled token, malformed requests")
    func fixedScenario() {
        Self.run([
            .submit(.pending), .submit(.succeed), .submit(.pending), .submit(.lyingLength), .submit(.forget), .step,
            .complete(pick: 1, thread: 1, succeed: true), .duplicate(pick: 0), .step,
            .submit(.noReplyRoom), .submit(.failAccess), .complete(pick: 0, thread: 2, succeed: false), .step,
            .duplicate(pick: 1), .step,
        ])
    }

    /// A token that arrives after its slot was reused by another pending request must not complete
    /// that other request: only the generation tells them apart.
    @Test("a late token from a slot's previous life is not applied to its new request")
    func lateTokenAfterReuse() {
        Self.run([
            .submit(.pending), .step, .complete(pick: 0, thread: 1, succeed: true), .step,
            .submit(.pending), .step, .duplicate(pick: 0), .step, .step,
            .complete(pick: 0, thread: 0, succeed: true), .step,
        ])
    }
}
