import CDPFS
import DPFSCore
import DPFSPosix
import FUSEDevice
import FUSEWire
import Glibc
import Logging
import MallocInterposerSwift
import PassthroughBackend

// The allocation gate's host-mount part: a real mount of the passthrough backend on this host
// through /dev/fuse (classic, then FUSE-over-io_uring), served by the engine's queue threads in
// this process, while this thread makes the system calls an application makes. cache = never, so
// every fstat is a GETATTR and every pread/pwrite a READ/WRITE that reaches the engine. The client
// side of each call (a syscall on preallocated memory) allocates nothing, so every malloc the
// process-wide counter sees is the engine's: its queue threads, decoder, backend and transport.

final class FUSEMountGate {
    let directory: String
    let mountPoint: String
    let device: FUSEHostDevice<PassthroughBackend>
    let label: String

    init(mode: FUSETransportChoice) throws {
        label = "fuse-\(mode.rawValue)"
        directory = try Self.temporaryDirectory("/tmp/dpfs-fuse-gate-share-XXXXXX")
        mountPoint = try Self.temporaryDirectory("/tmp/dpfs-fuse-gate-mnt-XXXXXX")
        let fd = open(directory + "/gate.dat", O_CREAT | O_RDWR, 0o644)
        guard fd >= 0, ftruncate(fd, 1 << 20) == 0 else { throw SystemCallError(call: "create gate.dat", errno: errno) }
        _ = close(fd)
        let shared = try PassthroughDevice(configuration: PassthroughConfiguration(
            sharedDirectory: directory, cacheMode: .never, inodesMax: 1024, openFilesMax: 256))
        var policy = InitPolicy()
        policy.flagsWanted |= InitFlags.posixLocks
        let configuration = FUSEHostConfiguration(
            name: label, mount: FUSEMountOptions(mountPoint: mountPoint), transport: mode, queues: 1,
            poller: PollerConfiguration(slotCount: 16, batchMax: 16, initPolicy: policy), ringDepth: 8)
        var logger = Logger(label: "alloc-gate")
        logger.logLevel = .error
        device = try FUSEHostDevice(configuration: configuration, logger: logger, cyclesPerNanosecond: 1) { _ in
            PassthroughBackend(device: shared)
        }
        try device.start()
    }

    deinit {
        _ = device.stop()
        _ = unlink(directory + "/gate.dat")
        _ = rmdir(directory)
        _ = rmdir(mountPoint)
    }

    static func temporaryDirectory(_ pattern: String) throws -> String {
        var template = Array(pattern.utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SystemCallError(call: "mkdtemp", errno: errno)
        }
        return String(cString: made)
    }

    /// Requests the engine has taken off /dev/fuse and its ring entries so far.
    var served: UInt64 {
        var total: UInt64 = 0
        for queue in 0..<device.queueCount {
            let counters = device.counters(queue: queue)
            total &+= counters.requestsRead &+ counters.ringRequests
        }
        return total
    }

    enum Call: String, CaseIterable { case getattr, read, write }

    /// Measures `requests` calls of each kind after `warmup`. Each result's `completed` counts
    /// calls that succeeded; `unexpectedReplies` counts calls that failed or requests the engine
    /// did not see (a call the kernel answered from a cache would not test the engine at all).
    func measure(requests: Int, warmup: Int) throws -> [(String, AllocationGateCommand.Result)] {
        let fd = open(mountPoint + "/gate.dat", O_RDWR)
        guard fd >= 0 else { throw SystemCallError(call: "open \(mountPoint)/gate.dat", errno: errno) }
        defer { _ = close(fd) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0x5A, count: 4096)
        let status = UnsafeMutablePointer<stat>.allocate(capacity: 1)
        defer { status.deallocate() }
        var results: [(String, AllocationGateCommand.Result)] = []
        for call in Call.allCases {
            for index in 0..<warmup { _ = Self.perform(call, fd: fd, buffer: buffer, status: status, index: index) }
            let servedBefore = served
            var completed = 0
            MallocInterposerSwift.reset()
            MallocInterposerSwift.hook()
            for index in 0..<requests where Self.perform(call, fd: fd, buffer: buffer, status: status, index: index) { completed += 1 }
            MallocInterposerSwift.unhook()
            let seen = Int(served &- servedBefore)
            let missing = max(0, requests - seen)
            results.append(("\(label)-\(call.rawValue)", AllocationGateCommand.Result(
                requests: requests, completed: completed, mallocs: MallocInterposerSwift.getStatistics().mallocCount,
                unexpectedReplies: (requests - completed) + missing)))
        }
        return results
    }

    /// One application call on preallocated memory (a syscall, nothing that allocates).
    static func perform(_ call: Call, fd: Int32, buffer: UnsafeMutableRawPointer, status: UnsafeMutablePointer<stat>, index: Int) -> Bool {
        let offset = off_t((index % 256) * 4096)
        switch call {
        case .getattr: return fstat(fd, status) == 0
        case .read: return pread(fd, buffer, 4096, offset) == 4096
        case .write: return pwrite(fd, buffer, 4096, offset) == 4096
        }
    }
}
