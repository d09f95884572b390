import FUSEWire
import Foundation
import Testing
import VhostUser
import VhostUserFrontend

/// The coverage tables in Specs/ against the code, row by row, so neither can drift.
@Suite(.serialized) struct SpecCoverageTests {
    static func rows(of file: String, between marker: String) throws -> [[String]] {
        let url = TransitionTableTests.repositoryRoot.appendingPathComponent("Specs/\(file)")
        let text = try String(contentsOf: url, encoding: .utf8)
        let begin = try #require(text.range(of: "<!-- \(marker):begin -->"))
        let end = try #require(text.range(of: "<!-- \(marker):end -->"))
        return text[begin.upperBound..<end.lowerBound].split(separator: "\n").compactMap { line in
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 4, !cells[0].hasPrefix("---"), Int(cells[1]) != nil || Int(cells[0]) != nil else { return nil }
            return cells
        }
    }

    /// The errno names the coverage tables use.
    static let errnoNames: [Int32: String] = [
        1: "EPERM", 2: "ENOENT", 5: "EIO", 9: "EBADF", 17: "EEXIST", 20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL",
        38: "ENOSYS", 61: "ENODATA", 95: "EOPNOTSUPP",
    ]
    static func errnoName(_ value: Int32) -> String { errnoNames[value] ?? "errno \(value)" }

    static func shapeName(_ shape: ArgumentShape) -> String {
        switch shape {
        case .empty: return "empty"
        case .fixed: return "fixed"
        case .name: return "name"
        case .twoNames: return "twoNames"
        case .nameAndTarget: return "nameAndTarget"
        case .payload: return "payload"
        case .nameAndValue: return "nameAndValue"
        case .entries: return "entries"
        case .initArgs: return "initArgs"
        case .unknown: return "unknown"
        }
    }

    @Test("Specs/fuse-coverage.md lists every opcode with the decoder's shape, sizes and reply minimum")
    func fuseCoverage() throws {
        let rows = try Self.rows(of: "fuse-coverage.md", between: "opcodes")
        #expect(rows.count == FUSEOpcode.allCases.count, "one row per opcode")
        for row in rows {
            let number = try #require(UInt32(row[1]), "row \(row)")
            let opcode = try #require(FUSEOpcode(rawValue: number), "\(row[0]) is not an opcode the code knows")
            #expect(opcode.wireName == row[0])
            #expect(Self.shapeName(OpcodeTable.shape(of: number)) == row[2], "\(row[0]) argument shape")
            #expect(String(OpcodeTable.fixedSize(of: number)) == row[3], "\(row[0]) fixed size")
            let replyMin = opcode.expectsReply ? String(OpcodeTable.replyBytesMin(of: number) - OutHeaderLayout.size) : "none"
            #expect(replyMin == row[4], "\(row[0]) reply body minimum")
            // The standard request's answer is `none` exactly for one-way opcodes, else ok or an
            // errno name, and the prose of the null backend column names that errno.
            let standard = row[6]
            if opcode.expectsReply {
                #expect(standard == "ok" || Self.errnoNames.values.contains(standard), "\(row[0]) standard request '\(standard)'")
                if standard != "ok" { #expect(row[5].contains(standard), "\(row[0]): the prose '\(row[5])' does not name \(standard)") }
            } else {
                #expect(standard == "none", "\(row[0]) is one-way: its standard request has no answer")
            }
        }
        // Numbers that are not opcodes are refused with ENOSYS.
        for number: UInt32 in [0, 7, 19, 54, 4096] {
            #expect(OpcodeTable.shape(of: number) == .unknown)
        }
    }

    @Test("Specs/vhost-user-coverage.md: handled ids are the code's, every refused id is refused by a running device")
    func vhostUserCoverage() throws {
        let rows = try Self.rows(of: "vhost-user-coverage.md", between: "messages")
        #expect(rows.count == 44, "ids 1...44")
        let engine = try InProcessEngine(name: "coverage")
        defer { engine.shutDown() }
        let frontend = try VhostUserFrontend(socketPath: engine.socketPath)
        try frontend.negotiate()   // REPLY_ACK negotiated: refusals are answered
        for row in rows {
            let id = try #require(UInt32(row[0]))
            let request = VhostUserRequest(rawValue: id)
            switch row[2] {
            case "handled":
                #expect(request?.description == row[1], "id \(id) must be handled as \(row[1])")
            case "refused":
                if let request { #expect(request.description == row[1], "id \(id) name") }
                // A small well-formed-looking payload: the refusal must come from the message, not its size.
                try frontend.sendRaw(request: id, flags: VhostUserWire.version | VhostUserWire.flagNeedReply,
                                     payload: [UInt8](repeating: 0, count: 8))
                let reply = try #require(try frontend.receiveReply(), "no answer to refused id \(id)")
                #expect(reply.request == id)
                #expect(VhostUserFrontend.u64(reply.payload) != 0, "id \(id) (\(row[1])) must be refused")
            default:
                Issue.record("row \(row) has handling '\(row[2])'")
            }
        }
        // Every id the code knows is in the table.
        let listed = Set(rows.compactMap { UInt32($0[0]) })
        for id in UInt32(1)...64 where VhostUserRequest(rawValue: id) != nil {
            #expect(listed.contains(id), "id \(id) missing from the spec")
        }
        #expect(VhostUserFrontend.u64(try frontend.call(.getFeatures, expectsReply: true)) == VirtioFeatures.offered)
    }
}
