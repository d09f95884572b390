import CDPFS
import DPFSCore
import DPFSTestSupport
import FUSEWire
import Foundation
import Glibc
import PassthroughBackend
import Testing

// Data integrity: random create / write / read / truncate / fallocate / rename / unlink sequences
// through the engine's passthrough backend, the same operations applied with plain system calls to
// a reference directory, and the two compared after every step (sizes and the bytes each operation
// touched; every file in full every 500 steps and at the end). A failure names its seed and step:
// DPFS_INTEGRITY_SEED=<seed> DPFS_INTEGRITY_STEPS=<n> swift test --filter PassthroughIntegrityTests
// replays it. docs/numbers.md reports a 10^6-step run.

/// xorshift64*: a seeded generator, so a failing sequence replays exactly.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
}

final class IntegrityRun {
    let engine = SharedDirectory()
    let reference = SharedDirectory()
    let client: FUSEClient<PassthroughBackend>
    var random: SeededGenerator
    let names = (0..<6).map { "file-\($0)" }
    /// Open file per name: (node, handle) in the engine, fd in the reference.
    var open: [String: (node: UInt64, handle: UInt64, fd: Int32)] = [:]
    let sizeMax = 300_000
    var step = 0
    let seed: UInt64

    init(seed: UInt64) throws {
        self.seed = seed
        random = SeededGenerator(seed: seed)
        client = try makeClient(engine, inodesMax: 4096)
    }

    deinit {
        for entry in open.values { _ = close(entry.fd) }
    }

    func fail(_ what: String) -> Never {
        preconditionFailure("integrity: \(what) at step \(step) — replay with DPFS_INTEGRITY_SEED=\(seed) DPFS_INTEGRITY_STEPS=\(step + 1)")
    }

    func referenceSize(_ name: String) -> Int? {
        var status = stat()
        return lstat(reference.host(name), &status) == 0 ? Int(status.st_size) : nil
    }

    func referenceRead(_ fd: Int32, offset: Int, count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        if got < count { bytes.removeLast(count - max(0, got)) }
        return bytes
    }

    func engineRead(_ name: String, offset: Int, count: Int) -> [UInt8] {
        guard let entry = open[name] else { fail("read of \(name), not open") }
        var result: [UInt8] = []
        while result.count < count {
            let chunk = (try? client.read(entry.node, entry.handle, offset: UInt64(offset + result.count), size: min(65536, count - result.count))) ?? []
            if chunk.isEmpty { break }
            result += chunk
        }
        return result
    }

    /// Opens (creating if needed) `name` on both sides.
    func ensureOpen(_ name: String) throws {
        guard open[name] == nil else { return }
        let fd = Glibc.open(reference.host(name), O_RDWR | O_CREAT, 0o644)
        guard fd >= 0 else { fail("reference open \(name): errno \(errno)") }
        let (entry, handle) = try client.create(1, name)
        open[name] = (entry.nodeID, handle, fd)
    }

    func closeFile(_ name: String) throws {
        guard let entry = open.removeValue(forKey: name) else { return }
        _ = close(entry.fd)
        try client.release(entry.node, entry.handle)
        client.forget(entry.node)
    }

    func compare(_ name: String, offset: Int, count: Int) {
        let referenceExists = referenceSize(name) != nil
        let engineEntry = try? client.lookup(1, name)
        if let engineEntry { client.forget(engineEntry.nodeID) }
        guard referenceExists == (engineEntry != nil) else { fail("\(name) exists on one side only") }
        guard let size = referenceSize(name), let engineEntry else { return }
        guard engineEntry.attributes.size == UInt64(size) else { fail("\(name) size \(engineEntry.attributes.size), reference \(size)") }
        guard let entry = open[name] else { return }
        let start = min(offset, size)
        let length = min(count, size - start)
        guard same(engineRead(name, offset: start, count: length), referenceRead(entry.fd, offset: start, count: length)) else {
            fail("\(name) bytes \(start)..<\(start + length) differ")
        }
    }

    func same(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.count == b.count && (a.isEmpty || a.withUnsafeBytes { x in b.withUnsafeBytes { y in memcmp(x.baseAddress!, y.baseAddress!, a.count) == 0 } })
    }

    func compareAll() {
        for name in names {
            guard let size = referenceSize(name) else { continue }
            guard let entry = open[name] else { continue }
            guard same(engineRead(name, offset: 0, count: size), referenceRead(entry.fd, offset: 0, count: size)) else {
                fail("\(name) differs in full")
            }
        }
    }

    func run(steps: Int) throws {
        for current in 0..<steps {
            step = current
            let name = names[Int.random(in: 0..<names.count, using: &random)]
            let choice = Int.random(in: 0..<100, using: &random)
            var touched = (offset: 0, count: 0)
            switch choice {
            case 0..<35:   // write
                try ensureOpen(name)
                let offset = Int.random(in: 0..<sizeMax, using: &random)
                let count = Int.random(in: 1...min(65536, sizeMax - offset + 1), using: &random)
                let fill = UInt8.random(in: 0...255, using: &random)
                // A fill byte, with the absolute offset stamped every 512 bytes, so data landing at a
                // wrong offset is caught (built with memset and a few stores: debug builds are slow
                // per element).
                var data = [UInt8](repeating: fill, count: count)
                data.withUnsafeMutableBytes { raw in
                    var position = (512 - offset % 512) % 512
                    while position + 8 <= count {
                        raw.storeBytes(of: UInt64(offset + position), toByteOffset: position, as: UInt64.self)
                        position += 512
                    }
                }
                let entry = open[name]!
                let written = try client.write(entry.node, entry.handle, offset: UInt64(offset), data)
                let referenceWritten = data.withUnsafeBytes { pwrite(entry.fd, $0.baseAddress, count, off_t(offset)) }
                guard Int(written) == referenceWritten else { fail("write of \(count) returned \(written), reference \(referenceWritten)") }
                touched = (offset, count)
            case 35..<60:  // read a range
                try ensureOpen(name)
                touched = (Int.random(in: 0..<sizeMax, using: &random), Int.random(in: 1...65536, using: &random))
            case 60..<70:  // truncate
                try ensureOpen(name)
                let size = Int.random(in: 0..<sizeMax, using: &random)
                let entry = open[name]!
                _ = try client.setattr(entry.node) { $0.valid = UInt32(FATTR_SIZE | FATTR_FH); $0.fh = entry.handle; $0.size = UInt64(size) }
                guard ftruncate(entry.fd, off_t(size)) == 0 else { fail("reference truncate") }
                touched = (max(0, size - 4096), 8192)
            case 70..<78:  // fallocate: allocate, or punch a hole keeping the size
                try ensureOpen(name)
                let offset = Int.random(in: 0..<sizeMax, using: &random)
                let length = Int.random(in: 1...65536, using: &random)
                let mode: Int32 = Bool.random(using: &random) ? 0 : (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
                let entry = open[name]!
                try client.fallocate(entry.node, entry.handle, offset: UInt64(offset), length: UInt64(length), mode: mode)
                guard CDPFS.fallocate(entry.fd, mode, off_t(offset), off_t(length)) == 0 else { fail("reference fallocate") }
                touched = (offset, length)
            case 78..<86:  // rename over another name (closing both first keeps the bookkeeping simple)
                let target = names[Int.random(in: 0..<names.count, using: &random)]
                guard target != name, referenceSize(name) != nil else { continue }
                try closeFile(name)
                try closeFile(target)
                try client.rename(1, name, to: 1, target)
                guard Glibc.rename(reference.host(name), reference.host(target)) == 0 else { fail("reference rename") }
                compare(name, offset: 0, count: 0)
                try ensureOpen(target)
                compare(target, offset: 0, count: 65536)
                continue
            case 86..<92:  // unlink
                guard referenceSize(name) != nil else { continue }
                try closeFile(name)
                try client.unlink(1, name)
                guard Glibc.unlink(reference.host(name)) == 0 else { fail("reference unlink") }
            default:       // close and reopen
                try closeFile(name)
                if referenceSize(name) != nil { try ensureOpen(name) }
            }
            compare(name, offset: touched.offset, count: touched.count)
            if current % 500 == 499 { compareAll() }
        }
        compareAll()
    }
}

@Suite struct PassthroughIntegrityTests {
    @Test("random file operations match a reference directory after every step")
    func randomOperations() throws {
        let environment = ProcessInfo.processInfo.environment
        let seed = environment["DPFS_INTEGRITY_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64.max)
        let steps = environment["DPFS_INTEGRITY_STEPS"].flatMap { Int($0) } ?? 100_000
        print("passthrough integrity: seed \(seed), \(steps) steps")
        let run = try IntegrityRun(seed: seed)
        try run.run(steps: steps)
    }
}
