import DPFSCore
import DPFSTestSupport
import ExampleBackend
import FUSEWire
import Foundation
import KeyValueBackend
import NFSBackend
import NullBackend
import PassthroughBackend
import Testing

// Every backend through the conformance suite (DPFSTestSupport/Conformance.swift). The NFS backend
// needs a real server: tools/test-conformance-nfs.sh starts nfs-ganesha on loopback and runs this
// suite with DPFS_CONFORMANCE_NFS_URL set (a step of tools/test.sh, so CI always runs it).

@Suite struct ConformanceTests {
    @Test("the null backend conforms (a fixed namespace: the shared checks)")
    func null() {
        #expect(Conformance.run(FUSEClient(backend: NullBackend()), []) == [])
    }

    @Test("the passthrough backend conforms")
    func passthrough() throws {
        let directory = SharedDirectory()
        #expect(Conformance.run(try makeClient(directory), [.storesFiles]) == [])
    }

    @Test("the NFS backend conforms, against a real nfs-ganesha",
          .enabled(if: ProcessInfo.processInfo.environment["DPFS_CONFORMANCE_NFS_URL"] != nil,
                   "needs the server tools/test-conformance-nfs.sh starts"))
    func nfs() throws {
        let url = try NFSURL.parse(ProcessInfo.processInfo.environment["DPFS_CONFORMANCE_NFS_URL"]!)
        let device = try NFSDevice(configuration: NFSConfiguration(url: url, validity: CacheValidity(seconds: 0)))
        #expect(Conformance.run(FUSEClient(backend: NFSBackend(device: device)), [.storesFiles]) == [])
        if url.version == 4 {
            #expect(device.locksOnServer && NFSBackend.initPolicy(device).flagsWanted & InitFlags.posixLocks != 0)
            try locksOfAnEndedSession(url)
        }
    }

    /// NFSv4 (the script's second and third passes): a lock held by a process of a guest session that ended
    /// (a reboot) is released on the server when the next session begins; before, another client
    /// is refused the range.
    func locksOfAnEndedSession(_ url: NFSURL) throws {
        let configuration = NFSConfiguration(url: url, validity: CacheValidity(seconds: 0))
        let a = FUSEClient(backend: NFSBackend(device: try NFSDevice(configuration: configuration)))
        let deviceB = try NFSDevice(configuration: configuration)
        let b = FUSEClient(backend: NFSBackend(device: deviceB))
        let name = "locked-\(getpid())"
        let (entry, handle) = try a.create(1, name)
        try a.setlk(entry.nodeID, handle, owner: 7, type: Int32(F_WRLCK), start: 0, end: 99)
        let other = try b.lookup(1, name)
        let otherHandle = try b.open(other.nodeID)
        #expect(throws: FUSEFailure(errno: EAGAIN), "the range is held by the other client") {
            try b.setlk(other.nodeID, otherHandle, owner: 8, type: Int32(F_WRLCK), start: 10, end: 20)
        }
        a.rig.establishSession()
        // The new session's INIT released the old one's locks before any request of it ran.
        try b.setlk(other.nodeID, otherHandle, owner: 8, type: Int32(F_WRLCK), start: 10, end: 20)
        try b.setlk(other.nodeID, otherHandle, owner: 8, type: Int32(F_UNLCK), start: 10, end: 20)
        try b.flush(other.nodeID, otherHandle, owner: 8)
        try b.release(other.nodeID, otherHandle)
        try b.unlink(1, name)
        _ = deviceB
    }

    @Test("the key-value backend conforms, against a real redis-server",
          .enabled(if: ProcessInfo.processInfo.environment["DPFS_REDIS_SOCKET"] != nil,
                   "needs the server tools/test-kv-redis.sh starts"))
    func keyValue() throws {
        let socket = ProcessInfo.processInfo.environment["DPFS_REDIS_SOCKET"]!
        let configuration = KVConfiguration(
            endpoint: .unix(path: socket), prefix: "conformance-\(getpid())", chunkBytes: 4096, capacityBytes: 1 << 30,
            fileBytesMax: 1 << 30, validity: CacheValidity(seconds: 0), openFlags: 0, openFilesMax: 64, requestTimeoutMilliseconds: 10_000)
        let device = try KVDevice(configuration: configuration)
        #expect(Conformance.run(FUSEClient(backend: KVBackend(device: device)), [.storesFiles]) == [])
    }

    @Test("the guide's example backend conforms")
    func example() {
        #expect(Conformance.run(FUSEClient(backend: MemoryFileSystem()), [.storesFiles]) == [])
    }

    @Test("the suite can fail: a backend that answers nothing does not conform")
    func control() {
        let failures = Conformance.run(FUSEClient(backend: AnswersNothing()), [.storesFiles])
        #expect(failures.count >= 6, "\(failures)")
    }
}

/// Replies ENOSYS to everything: every check of the suite must catch it.
struct AnswersNothing: Backend {
    mutating func handle(_ request: FUSERequest, reply: FUSEReply, token: CompletionToken) -> BackendAnswer {
        reply.fail(.notImplemented)
        return .done
    }
}
