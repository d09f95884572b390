import CDPFS
import DPFSCore
import DPFSPosix
import DPFSTestSupport
import FUSEWire
import Foundation
import Glibc
import PassthroughBackend
import Testing

// One device, two queues: each queue has its own poller and backend value, and both act on the
// device's one inode and open-file table (Specs/passthrough-tables.md). A multi-queue guest sends
// FORGET on the hiprio queue and LOOKUP/READ on request queues for the same inode.

@Suite struct PassthroughSharedTableTests {
    func twoQueues(_ directory: SharedDirectory) throws -> (FUSEClient<PassthroughBackend>, FUSEClient<PassthroughBackend>, PassthroughDevice) {
        let device = try PassthroughDevice(configuration: PassthroughConfiguration(sharedDirectory: directory.path, cacheMode: .never,
                                                                                   inodesMax: 256, openFilesMax: 64))
        // Both sessions start before any lookup (INIT resets the device's tables).
        return (FUSEClient(backend: PassthroughBackend(device: device)), FUSEClient(backend: PassthroughBackend(device: device)), device)
    }

    @Test("LOOKUP, READ and FORGET of one inode on different queues act on one table")
    func oneTable() throws {
        let directory = SharedDirectory()
        try "shared bytes".write(toFile: directory.host("f"), atomically: false, encoding: .utf8)
        let (a, b, device) = try twoQueues(directory)
        let fromA = try a.lookup(1, "f")
        let fromB = try b.lookup(1, "f")
        #expect(fromA.nodeID == fromB.nodeID, "one inode, one node id, whichever queue looked it up")
        #expect(device.inodes.inUse == 1)
        let handle = try a.open(fromA.nodeID, flags: O_RDONLY)
        #expect(String(decoding: try b.read(fromA.nodeID, handle, offset: 0, size: 100), as: UTF8.self) == "shared bytes")
        b.forget(fromA.nodeID)
        #expect(try a.getattr(fromA.nodeID).size == 12, "one lookup is still outstanding")
        a.forget(fromA.nodeID)
        expectErrno(ENOENT) { _ = try a.getattr(fromA.nodeID) }
        expectErrno(ENOENT) { _ = try b.getattr(fromA.nodeID) }
        #expect(device.inodes.inUse == 0)
        // The open file outlives its inode's node id, as on a local file system.
        #expect(try a.read(fromA.nodeID, handle, offset: 7, size: 100) == Array("bytes".utf8))
        try b.release(fromA.nodeID, handle)
        expectErrno(EBADF) { try a.release(fromA.nodeID, handle) }
        #expect(device.handles.inUse == 0)
    }

    @Test("two queues racing LOOKUP, GETATTR, READ and FORGET of the same inodes on two threads")
    func racingQueues() throws {
        let directory = SharedDirectory()
        for index in 0..<4 { try "file \(index)".write(toFile: directory.host("f\(index)"), atomically: false, encoding: .utf8) }
        let (a, b, device) = try twoQueues(directory)
        let failures = ManagedCounter()
        @Sendable func hammer(_ client: FUSEClient<PassthroughBackend>, seed: Int) {
            for round in 0..<2000 {
                let name = "f\((round + seed) % 4)"
                guard let entry = try? client.lookup(1, name) else { failures.add(); continue }
                // Another queue may forget its own lookups at any time; ours keeps the id alive.
                guard (try? client.getattr(entry.nodeID)) != nil else { failures.add(); continue }
                if let handle = try? client.open(entry.nodeID, flags: O_RDONLY) {
                    if (try? client.read(entry.nodeID, handle, offset: 0, size: 16)) != Array(name.replacingOccurrences(of: "f", with: "file ").utf8) {
                        failures.add()
                    }
                    try? client.release(entry.nodeID, handle)
                } else {
                    failures.add()
                }
                client.forget(entry.nodeID)
            }
        }
        nonisolated(unsafe) let second = b   // owned by the thread below until it is joined
        let thread = try PinnedThread { hammer(second, seed: 1) }
        hammer(a, seed: 0)
        thread.join()
        #expect(failures.value == 0)
        #expect(device.inodes.inUse == 0, "every lookup was forgotten: no inode may remain")
        #expect(device.handles.inUse == 0)
    }
}

final class ManagedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}
