import CDPFS
import DPFSCore
import FUSEWire
import Glibc

// The backend conformance suite: what every backend must do, checked through the typed FUSE client
// (the kernel's side of the protocol) over the real poller and decoder. Each backend's test runs
// it with a fresh file system and says what it can do; a backend that cannot store files (null)
// runs only the shared part. New backends add one test that calls `Conformance.run`.

public struct ConformanceFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public enum Conformance {
    /// What a backend can do, so the suite asks only what it promises.
    public struct Capabilities: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        /// CREATE, WRITE, UNLINK, RENAME and truncating SETATTR in the root directory.
        public static let storesFiles = Capabilities(rawValue: 1)
    }

    /// Runs every check that applies; returns the failures (empty: the backend conforms).
    public static func run<B: Backend>(_ client: FUSEClient<B>, _ capabilities: Capabilities) -> [String] {
        var failures: [String] = []
        func check(_ name: String, _ body: () throws -> Void) {
            do { try body() } catch { failures.append("\(name): \(error)") }
        }
        check("the root is a directory", { try rootIsADirectory(client) })
        check("a missing name is ENOENT", { try missingNameIsNoEntry(client) })
        check("every opcode gets one well-formed answer", { try everyOpcodeAnswered(client) })
        if capabilities.contains(.storesFiles) {
            check("written bytes read back, across a hole", { try writtenBytesReadBack(client) })
            check("truncate shortens and extends with zeros", { try truncateChangesSize(client) })
            check("rename moves a name; RENAME_NOREPLACE keeps an existing one", { try renameMovesNames(client) })
            check("a listing read in small pieces names every file once", { try listingIsComplete(client) })
            check("unlink removes the name", { try unlinkRemovesName(client) })
        }
        return failures
    }

    static func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
        if !condition { throw ConformanceFailure(message()) }
    }

    static func rootIsADirectory<B: Backend>(_ client: FUSEClient<B>) throws {
        let root = try client.getattr(1)
        try expect(root.mode & 0o170000 == 0o040000, "root mode \(String(root.mode, radix: 8)) is not a directory")
    }

    static func missingNameIsNoEntry<B: Backend>(_ client: FUSEClient<B>) throws {
        do {
            _ = try client.lookup(1, "no-such-name-\(getpid())")
            throw ConformanceFailure("LOOKUP of a missing name succeeded")
        } catch let failure as FUSEFailure {
            try expect(failure.errno == ENOENT, "LOOKUP of a missing name gave \(failure), not ENOENT")
        }
    }

    /// Each opcode's canonical request (as Linux sends it) that expects a reply gets one, with a
    /// negative errno or 0, and an error reply is the header alone. (INIT and DESTROY are the
    /// engine's; INTERRUPT and SETLKW may wait by design.)
    static func everyOpcodeAnswered<B: Backend>(_ client: FUSEClient<B>) throws {
        for opcode in FUSEOpcode.allCases where opcode.expectsReply && opcode != .`init` && opcode != .destroy
            && opcode != .interrupt && opcode != .setlkw {
            let request = TestRequest.valid(opcode)
            let (error, body) = client.call(opcode, node: request.nodeID, args: request.args)
            try expect(error <= 0 && error > -4096, "\(opcode) answered error \(error)")
            if error != 0 { try expect(body.isEmpty, "\(opcode)'s error reply carries \(body.count) body bytes") }
        }
    }

    static func writtenBytesReadBack<B: Backend>(_ client: FUSEClient<B>) throws {
        let (entry, handle) = try client.create(1, "conformance-data")
        let first = (0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try expect(try client.write(entry.nodeID, handle, offset: 0, first) == 3000, "short WRITE")
        // A hole between 3000 and 5000.
        try expect(try client.write(entry.nodeID, handle, offset: 5000, [1, 2, 3]) == 3, "short WRITE past the end")
        let back = try client.read(entry.nodeID, handle, offset: 0, size: 8192)
        try expect(back.count == 5003, "READ gave \(back.count) bytes, the file has 5003")
        try expect(Array(back[0..<3000]) == first, "READ gave other bytes than were written")
        try expect(back[3000..<5000].allSatisfy { $0 == 0 }, "the hole does not read as zeros")
        try expect(Array(back[5000...]) == [1, 2, 3], "the bytes after the hole differ")
        try expect(try client.getattr(entry.nodeID).size == 5003, "GETATTR size is not 5003")
        try client.release(entry.nodeID, handle)
        try expect(try client.lookup(1, "conformance-data").attributes.size == 5003, "LOOKUP after RELEASE lost the size")
        try client.unlink(1, "conformance-data")
    }

    static func truncateChangesSize<B: Backend>(_ client: FUSEClient<B>) throws {
        let (entry, handle) = try client.create(1, "conformance-truncate")
        _ = try client.write(entry.nodeID, handle, offset: 0, [UInt8](repeating: 7, count: 1000))
        let shorter = try client.setattr(entry.nodeID) { $0.valid = UInt32(FATTR_SIZE); $0.size = 10 }
        try expect(shorter.size == 10, "SETATTR size 10 answered size \(shorter.size)")
        _ = try client.setattr(entry.nodeID) { $0.valid = UInt32(FATTR_SIZE); $0.size = 20 }
        let back = try client.read(entry.nodeID, handle, offset: 0, size: 100)
        try expect(back == [UInt8](repeating: 7, count: 10) + [UInt8](repeating: 0, count: 10), "truncate then extend read back \(back)")
        try client.release(entry.nodeID, handle)
        try client.unlink(1, "conformance-truncate")
    }

    static func renameMovesNames<B: Backend>(_ client: FUSEClient<B>) throws {
        for name in ["conformance-a", "conformance-b"] {
            let (entry, handle) = try client.create(1, name)
            try client.release(entry.nodeID, handle)
        }
        do {
            try client.rename(1, "conformance-a", to: 1, "conformance-b", flags: 1)   // RENAME_NOREPLACE
            throw ConformanceFailure("RENAME_NOREPLACE replaced an existing name")
        } catch let failure as FUSEFailure {
            try expect(failure.errno == EEXIST, "RENAME_NOREPLACE gave \(failure), not EEXIST")
        }
        try client.rename(1, "conformance-a", to: 1, "conformance-c")
        try missing(client, "conformance-a")
        _ = try client.lookup(1, "conformance-c")
        try client.rename(1, "conformance-c", to: 1, "conformance-b")
        try missing(client, "conformance-c")
        try client.unlink(1, "conformance-b")
    }

    static func listingIsComplete<B: Backend>(_ client: FUSEClient<B>) throws {
        let names = (0..<12).map { "conformance-list-\($0)" }
        for name in names {
            let (entry, handle) = try client.create(1, name)
            try client.release(entry.nodeID, handle)
        }
        let directory = try client.opendir(1)
        var seen: [String] = []
        var offset: UInt64 = 0
        // 80 bytes hold one entry or two: the listing must continue exactly where each call stopped.
        for _ in 0..<1000 {
            let entries = try client.readdir(1, directory, offset: offset, size: 80)
            guard let last = entries.last else { break }
            seen += entries.map(\.name)
            offset = last.next
        }
        try client.release(1, directory, directory: true)
        for name in names {
            try expect(seen.filter { $0 == name }.count == 1, "\(name) listed \(seen.filter { $0 == name }.count) times")
        }
        for name in names { try client.unlink(1, name) }
    }

    static func unlinkRemovesName<B: Backend>(_ client: FUSEClient<B>) throws {
        let (entry, handle) = try client.create(1, "conformance-unlink")
        try client.release(entry.nodeID, handle)
        try client.unlink(1, "conformance-unlink")
        try missing(client, "conformance-unlink")
    }

    static func missing<B: Backend>(_ client: FUSEClient<B>, _ name: String) throws {
        do {
            _ = try client.lookup(1, name)
            throw ConformanceFailure("\(name) is still there")
        } catch let failure as FUSEFailure {
            try expect(failure.errno == ENOENT, "LOOKUP \(name) gave \(failure), not ENOENT")
        }
    }
}
