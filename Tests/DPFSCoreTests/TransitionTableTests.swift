import DPFSCore
import Foundation
import Testing

/// The transition table in code against the one in Specs/slot-lifecycle.md, pair by pair.
@Suite struct TransitionTableTests {
    static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    /// Parses the rows between the transitions markers: `| state | event | next | why |`.
    static func specifiedTransitions() throws -> [String: String] {
        let text = try String(contentsOf: repositoryRoot.appendingPathComponent("Specs/slot-lifecycle.md"), encoding: .utf8)
        let begin = try #require(text.range(of: "<!-- transitions:begin -->"))
        let end = try #require(text.range(of: "<!-- transitions:end -->"))
        var table: [String: String] = [:]
        for line in text[begin.upperBound..<end.lowerBound].split(separator: "\n") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 3, cells[0] != "state", !cells[0].hasPrefix("---") else { continue }
            let key = "\(cells[0]) × \(cells[1])"
            #expect(table[key] == nil, "duplicate row for \(key)")
            table[key] = cells[2]
        }
        return table
    }

    static func name(_ state: SlotState) -> String {
        switch state {
        case .free: return "free"
        case .fetched: return "fetched"
        case .decoded: return "decoded"
        case .dispatched: return "dispatched"
        case .awaitingBackend: return "awaitingBackend"
        case .completed: return "completed"
        }
    }

    static func name(_ event: SlotEvent) -> String {
        switch event {
        case .fetch: return "fetch"
        case .decode: return "decode"
        case .decodeFailed: return "decodeFailed"
        case .dispatch: return "dispatch"
        case .backendDone: return "backendDone"
        case .backendPending: return "backendPending"
        case .publish: return "publish"
        }
    }

    @Test("the spec lists the protocol's eight transitions and names only known states and events")
    func specIsWellFormed() throws {
        let spec = try Self.specifiedTransitions()
        #expect(spec.count == 8)
        let states = Set(SlotState.allCases.map(Self.name))
        let events = Set(SlotEvent.allCases.map(Self.name))
        for (key, next) in spec {
            let parts = key.components(separatedBy: " × ")
            #expect(states.contains(parts[0]), "unknown state \(parts[0])")
            #expect(events.contains(parts[1]), "unknown event \(parts[1])")
            #expect(states.contains(next), "unknown next state \(next)")
        }
    }

    @Test("every state × event pair matches the spec", arguments: SlotState.allCases)
    func everyPairMatches(state: SlotState) throws {
        let spec = try Self.specifiedTransitions()
        for event in SlotEvent.allCases {
            let expected = spec["\(Self.name(state)) × \(Self.name(event))"]
            let actual = SlotTransitions.next(from: state, on: event).map(Self.name)
            #expect(actual == expected, "\(Self.name(state)) × \(Self.name(event)): code says \(actual ?? "refused"), spec says \(expected ?? "refused")")
        }
    }

    @Test("every state is reachable from free and leads back to free")
    func lifecycleIsClosed() {
        var reachable: Set<SlotState> = [.free]
        var frontier: [SlotState] = [.free]
        while let state = frontier.popLast() {
            for event in SlotEvent.allCases {
                if let next = SlotTransitions.next(from: state, on: event), reachable.insert(next).inserted {
                    frontier.append(next)
                }
            }
        }
        #expect(reachable == Set(SlotState.allCases))
        // From every state some path returns to free (no state traps a slot forever).
        for start in SlotState.allCases where start != .free {
            var seen: Set<SlotState> = [start]
            var stack = [start]
            var returns = false
            while let state = stack.popLast() {
                for event in SlotEvent.allCases {
                    guard let next = SlotTransitions.next(from: state, on: event) else { continue }
                    if next == .free { returns = true }
                    if seen.insert(next).inserted { stack.append(next) }
                }
            }
            #expect(returns, "\(start) never returns to free")
        }
    }

    @Test("completion tokens round-trip slot index and generation")
    func tokens() {
        let token = CompletionToken(slotIndex: 0xDEAD_BEEF, generation: 0x0123_4567)
        #expect(token.slotIndex == 0xDEAD_BEEF)
        #expect(token.generation == 0x0123_4567)
        #expect(CompletionToken(slotIndex: 1, generation: 2) != CompletionToken(slotIndex: 1, generation: 3))
    }
}
