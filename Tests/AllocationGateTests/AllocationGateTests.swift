import Foundation
import LoopbackTransport
import Testing

/// The zero-allocation gate (docs/architecture.md §4, §9). Malloc counters are process-wide, so the
/// measurement runs in a process of its own — `dpfs-bench alloc-gate`, built with the tests — where
/// no other suite can allocate beside it. After warm-up, 100 000 requests of each request class go
/// through the loopback virtqueue, the poller and the null backend, inline and with the poller on
/// its own thread, and then through an in-process vhost-user device driven over a real socket
/// (poller threads, call eventfd, split queues in memfd guest memory), and through the passthrough
/// backend over a real directory (GETATTR, LOOKUP, READ, WRITE, CREATE+UNLINK, io_uring data path),
/// and through a real host mount of it via /dev/fuse (fstat, pread, pwrite; classic and io_uring);
/// every class must make zero mallocs, and a canary must see its allocations.
@Suite(.serialized) struct AllocationGateTests {
    struct Line: Decodable {
        let `class`: String
        let mallocs: Int
        let requests: Int?
        let completed: Int?
        let unexpected_replies: Int?
    }

    static func benchBinary() throws -> URL {
        // The test bundle and the executables share one build directory.
        let testBinary = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
        let candidate = testBinary.deletingLastPathComponent().appendingPathComponent("dpfs-bench")
        guard FileManager.default.isExecutableFile(atPath: candidate.path) else {
            throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: candidate.path])
        }
        return candidate
    }

    @Test("zero mallocs per request for every request class, and a live canary")
    func zeroAllocations() throws {
        let process = Process()
        process.executableURL = try Self.benchBinary()
        process.arguments = ["alloc-gate", "--requests", "100000"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        let lines = try text.split(separator: "\n").map { try JSONDecoder().decode(Line.self, from: Data($0.utf8)) }

        for name in ["canary", "canary-poller-thread"] {
            let canary = try #require(lines.first { $0.class == name })
            #expect(canary.mallocs > 0, "\(name): the malloc counter saw nothing: the gate would pass vacuously")
        }
        let classes = lines.filter { !$0.class.hasPrefix("canary") }
        // Every loopback class once alone, and all of them together with the poller on a thread.
        let loopback = classes.filter { !["vhostUser-", "passthrough-", "fuse-"].contains(where: $0.class.hasPrefix) }
        #expect(loopback.map(\.class).sorted() == (LoadOperation.allCases.map { "\($0)" } + ["allClassesThreaded"]).sorted(),
                "every loopback request class must be measured, alone and threaded:\n\(text)")
        #expect(classes.filter { $0.class.hasPrefix("vhostUser-") }.count == 8, "the vhost-user data path must be measured:\n\(text)")
        #expect(classes.filter { $0.class.hasPrefix("passthrough-") }.count == 7,
                "the passthrough backend must be measured, READ and WRITE on both data paths:\n\(text)")
        #expect(classes.filter { $0.class.hasPrefix("fuse-classic-") }.count == 3 && classes.filter { $0.class.hasPrefix("fuse-uring-") }.count == 3,
                "the host mount's data path must be measured, classic and io_uring:\n\(text)")
        for line in classes {
            #expect(line.mallocs == 0, "\(line.class) allocated \(line.mallocs) times in \(line.requests ?? 0) requests")
            #expect(line.completed == 100_000 && line.requests == 100_000, "\(line.class) did not complete every request")
            #expect(line.unexpected_replies == 0, "\(line.class) got replies of the wrong shape")
        }
        #expect(process.terminationStatus == 0, "dpfs-bench alloc-gate failed:\n\(text)")
    }
}
