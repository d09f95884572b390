import BackendKit
import DPFSPosix
import FUSEWire
import Glibc
import KeyValueStore
import RESP
import Synchronization

// One key-value file system served as one device: the store's settings, the files the guest has
// open or may still open (a file that lost its last name lives until its last RELEASE and its
// FORGET), and the start-up exchange
// with the server, done once on the control plane with a blocking pump of a throw-away connection
// (the queues' own connections are made by their pollers).

public struct KVConfiguration: Sendable {
    public var endpoint: KVEndpoint
    /// Every key of this file system starts with it: several file systems share one server.
    public var prefix: String
    /// The chunk size a new store is formatted with (an existing store keeps its own).
    public var chunkBytes: Int
    /// File bytes the store may hold (ENOSPC past it), and one file's size at most (EFBIG).
    public var capacityBytes: Int
    public var fileBytesMax: Int
    /// Inodes the store may hold (files, directories, links, nodes): ENOSPC at the bound, so one
    /// tenant cannot fill a shared server with empty files.
    public var inodesMax: Int
    public var validity: CacheValidity
    public var openFlags: UInt32
    public var openFilesMax: Int
    /// A request not answered in this time fails EIO (a stalled server takes its connection down).
    public var requestTimeoutMilliseconds: Int

    public static let prefixBytesMax = 64
    public static let chunkBytesRange = 4096...(1 << 20)
    /// Lua numbers are doubles: offsets and sizes stay below 2^53, and truncating a file deletes its
    /// chunks one by one, so one file is bounded (64 GiB of 64 KiB chunks: 2^20 deletions at most).
    public static let fileBytesLimit = 1 << 36

    public init(endpoint: KVEndpoint, prefix: String, chunkBytes: Int, capacityBytes: Int, fileBytesMax: Int,
                validity: CacheValidity, openFlags: UInt32, openFilesMax: Int, requestTimeoutMilliseconds: Int,
                inodesMax: Int = 1 << 20) {
        precondition(Self.prefixProblem(prefix) == nil)
        precondition(Self.chunkBytesRange.contains(chunkBytes) && chunkBytes & (chunkBytes - 1) == 0)
        precondition(capacityBytes > 0 && fileBytesMax > 0 && fileBytesMax <= Self.fileBytesLimit)
        precondition(openFilesMax >= 16 && requestTimeoutMilliseconds >= 10 && inodesMax >= 2)
        self.inodesMax = inodesMax
        self.endpoint = endpoint
        self.prefix = prefix
        self.chunkBytes = chunkBytes
        self.capacityBytes = capacityBytes
        self.fileBytesMax = fileBytesMax
        self.validity = validity
        self.openFlags = openFlags
        self.openFilesMax = openFilesMax
        self.requestTimeoutMilliseconds = requestTimeoutMilliseconds
    }

    /// Why `prefix` cannot name a file system, or nil. Letters, digits, '-', '_' and '.': no glob
    /// character (the store's check scans with MATCH PREFIX:i:*) and no ':' (the key separator).
    public static func prefixProblem(_ prefix: String) -> String? {
        guard !prefix.isEmpty, prefix.utf8.count <= prefixBytesMax else { return "kv_prefix must be 1 to \(prefixBytesMax) bytes" }
        let allowed = prefix.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
        }
        return allowed ? nil : "kv_prefix may hold only letters, digits, '-', '_' and '.' (got '\(prefix)')"
    }
}

public struct KVStartupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The regular files the kernel may still reach without a name, by inode: how many opens each
/// has, whether it lost its last name, and whether the kernel has forgotten it (FORGET). An
/// inode that lost its last name is reclaimed only when both its opens and the kernel's hold on
/// it are gone: an OPEN can reach the engine after the UNLINK that took the file's last name was
/// answered (the opener's path walk found the inode before, and open(2) does not wait for
/// unlink(2)), and the file must still read as it was, as on a local file system.
/// Open addressing with backward-shift deletion, under one mutex: taken by OPEN, CREATE, RELEASE,
/// an UNLINK or RENAME that took a last name, and a FORGET while an orphan awaits one; never by
/// READ or WRITE.
public final class KVOpenTable: @unchecked Sendable {
    public let capacity: Int
    let slotCount: Int
    let inodes: UnsafeMutablePointer<UInt64>
    let opens: UnsafeMutablePointer<UInt32>
    let orphaned: UnsafeMutablePointer<Bool>
    let forgotten: UnsafeMutablePointer<Bool>
    let mutex = HostMutex()
    public private(set) var count = 0
    /// Orphans whose FORGET has not come: while none does, a FORGET takes no lock.
    let awaitingForget = Atomic<Int>(0)
    /// Orphans reclaimed at once because the table had no room to keep them until their FORGET.
    public let reclaimedWithoutRoom = Atomic<Int>(0)

    public init(capacity: Int) {
        precondition(capacity >= 1 && capacity <= 1 << 24)
        self.capacity = capacity
        var slots = 1
        while slots < capacity * 2 { slots <<= 1 }
        slotCount = slots
        inodes = .allocate(capacity: slots)
        inodes.initialize(repeating: 0, count: slots)
        opens = .allocate(capacity: slots)
        opens.initialize(repeating: 0, count: slots)
        orphaned = .allocate(capacity: slots)
        orphaned.initialize(repeating: false, count: slots)
        forgotten = .allocate(capacity: slots)
        forgotten.initialize(repeating: false, count: slots)
    }

    deinit {
        inodes.deallocate()
        opens.deallocate()
        orphaned.deallocate()
        forgotten.deallocate()
    }

    func home(_ inode: UInt64) -> Int { Int(truncatingIfNeeded: (inode &* 0x9E37_79B9_7F4A_7C15) >> 20) & (slotCount - 1) }

    /// The slot of `inode`, or of the empty slot where it would go.
    func probe(_ inode: UInt64) -> Int {
        var slot = home(inode)
        while inodes[slot] != 0 && inodes[slot] != inode { slot = (slot + 1) & (slotCount - 1) }
        return slot
    }

    /// A new entry for `inode` in the empty slot `slot` (the caller checked the room).
    func insert(_ inode: UInt64, at slot: Int) {
        precondition(inodes[slot] == 0 && count < capacity)
        inodes[slot] = inode
        opens[slot] = 0
        orphaned[slot] = false
        forgotten[slot] = false
        count += 1
    }

    /// One open more of `inode`; false when the table is full (the open fails ENFILE).
    public func open(_ inode: UInt64) -> Bool {
        precondition(inode != 0)
        return mutex.withLock {
            let slot = probe(inode)
            if inodes[slot] == 0 {
                guard count < capacity else { return false }
                insert(inode, at: slot)
            }
            opens[slot] += 1
            return true
        }
    }

    /// One open less; true when it was the last one of a file that has no name left and that the
    /// kernel has forgotten (the caller reclaims it). An inode not open (a guest's made-up handle)
    /// is ignored.
    public func release(_ inode: UInt64) -> Bool {
        mutex.withLock {
            let slot = probe(inode)
            guard inode != 0, inodes[slot] == inode, opens[slot] > 0 else { return false }
            opens[slot] -= 1
            guard opens[slot] == 0 else { return false }
            // An orphan the kernel still holds waits for its FORGET.
            if orphaned[slot] && !forgotten[slot] { return false }
            let reclaim = orphaned[slot]
            remove(at: slot)
            return reclaim
        }
    }

    /// `inode` lost its last name: it stays until its last RELEASE and its FORGET have both come.
    /// True only when the table has no room to remember it: the caller reclaims it now (counted).
    public func lostLastName(_ inode: UInt64) -> Bool {
        precondition(inode != 0)
        return mutex.withLock {
            let slot = probe(inode)
            if inodes[slot] != inode {
                // Half the table at most waits for FORGETs, so opens always find room: a FORGET
                // may never come for an inode this kernel did not know (another engine changed
                // the name under it).
                guard count < capacity, awaitingForget.load(ordering: .relaxed) < max(1, capacity / 2) else {
                    reclaimedWithoutRoom.add(1, ordering: .relaxed)
                    return true
                }
                insert(inode, at: slot)
            }
            guard !orphaned[slot] else { return false }
            orphaned[slot] = true
            awaitingForget.add(1, ordering: .relaxed)
            return false
        }
    }

    /// The kernel forgot `inode` (FORGET: its lookup count is zero, so no new OPEN can come); true
    /// when it was an orphan nobody has open (the caller reclaims it).
    public func forget(_ inode: UInt64) -> Bool {
        guard inode != 0, awaitingForget.load(ordering: .relaxed) > 0 else { return false }
        return mutex.withLock {
            let slot = probe(inode)
            guard inodes[slot] == inode, orphaned[slot], !forgotten[slot] else { return false }
            forgotten[slot] = true
            awaitingForget.subtract(1, ordering: .relaxed)
            guard opens[slot] == 0 else { return false }
            remove(at: slot)
            return true
        }
    }

    /// A new session: the kernel forgot every open and every inode of the old one.
    public func reset() {
        mutex.withLock {
            inodes.update(repeating: 0, count: slotCount)
            opens.update(repeating: 0, count: slotCount)
            orphaned.update(repeating: false, count: slotCount)
            forgotten.update(repeating: false, count: slotCount)
            count = 0
            awaitingForget.store(0, ordering: .relaxed)
        }
    }

    /// Backward-shift deletion: every entry after the hole that may move closer to its home does.
    func remove(at start: Int) {
        var hole = start
        var next = (hole + 1) & (slotCount - 1)
        while inodes[next] != 0 {
            let wanted = home(inodes[next])
            // Move `next` into the hole unless its home lies cyclically in (hole, next].
            let distanceToNext = (next - wanted) & (slotCount - 1)
            let distanceToHole = (hole - wanted) & (slotCount - 1)
            if distanceToHole < distanceToNext {
                inodes[hole] = inodes[next]
                opens[hole] = opens[next]
                orphaned[hole] = orphaned[next]
                forgotten[hole] = forgotten[next]
                hole = next
            }
            next = (next + 1) & (slotCount - 1)
        }
        inodes[hole] = 0
        opens[hole] = 0
        orphaned[hole] = false
        forgotten[hole] = false
        count -= 1
    }
}

public final class KVDevice: @unchecked Sendable {
    public let configuration: KVConfiguration
    /// The store's chunk size, as it was formatted.
    public let chunkBytes: Int
    public let opens: KVOpenTable
    /// What the start found and did, for the report.
    public let orphansReclaimedAtStart: Int
    let prefixBytes: UnsafeMutableRawBufferPointer
    /// Fault counters of all queues (rare events: a shared atomic each is cheap enough).
    let reconnectCount = Atomic<Int>(0)
    let timeoutCount = Atomic<Int>(0)
    let lostChangeCount = Atomic<Int>(0)
    let badReplyCount = Atomic<Int>(0)
    let sessionReclaimFailures = Atomic<Int>(0)

    public var faultReport: String {
        "key-value server faults: \(reconnectCount.load(ordering: .relaxed)) reconnect(s), "
            + "\(timeoutCount.load(ordering: .relaxed)) request(s) failed EIO by the timeout, "
            + "\(lostChangeCount.load(ordering: .relaxed)) change(s) in flight when a connection ended failed EIO, "
            + "\(badReplyCount.load(ordering: .relaxed)) reply(ies) refused as malformed, "
            + "\(sessionReclaimFailures.load(ordering: .relaxed)) new session(s) whose old orphans wait for the next start, "
            + "\(opens.reclaimedWithoutRoom.load(ordering: .relaxed)) orphan(s) reclaimed before their FORGET (no room to wait)"
    }

    /// The fault counters, for `/metrics`.
    public var metricsCounters: [BackendCounter] {
        [BackendCounter(name: "reconnects", help: "Connections to the server made again after one failed.", value: UInt64(reconnectCount.load(ordering: .relaxed))),
         BackendCounter(name: "timeouts", help: "Requests failed EIO because the server did not answer in time.", value: UInt64(timeoutCount.load(ordering: .relaxed))),
         BackendCounter(name: "lost_changes", help: "Changes in flight when a connection ended, failed EIO.", value: UInt64(lostChangeCount.load(ordering: .relaxed))),
         BackendCounter(name: "bad_replies", help: "Server replies refused as malformed.", value: UInt64(badReplyCount.load(ordering: .relaxed)))]
    }

    public var report: String {
        "kv \(configuration.endpoint) prefix '\(configuration.prefix)': chunks of \(chunkBytes) bytes, "
            + "capacity \(configuration.capacityBytes >> 20) MiB, \(orphansReclaimedAtStart) orphan(s) reclaimed at start"
    }

    public init(configuration: KVConfiguration) throws(KVStartupError) {
        self.configuration = configuration
        let started = try Self.start(configuration)
        chunkBytes = started.chunkBytes
        orphansReclaimedAtStart = started.orphans
        opens = KVOpenTable(capacity: configuration.openFilesMax)
        let prefix = Array(configuration.prefix.utf8)
        prefixBytes = .allocate(byteCount: prefix.count, alignment: 8)
        prefixBytes.copyBytes(from: prefix)
    }

    deinit { prefixBytes.deallocate() }

    var prefix: UnsafeRawBufferPointer { UnsafeRawBufferPointer(prefixBytes) }

    /// Reclaims every orphan (a new session begins: nothing is open), with a blocking exchange of
    /// its own. A server that does not answer leaves them to the next start (counted).
    public func reclaimAllOrphans() {
        let now = realtimeNow()
        let configuration = configuration
        let replies = try? KVBlockingExchange.run(configuration.endpoint, timeoutMilliseconds: min(configuration.requestTimeoutMilliseconds, 2000), commands: [
            ["FCALL", "dpfs_start", "0", configuration.prefix, "0", "0", String(FileType.directory | 0o755),
             String(now.seconds), String(now.nanoseconds), String(chunkBytes)],
        ])
        if replies?.first?.count != 3 { sessionReclaimFailures.add(1, ordering: .relaxed) }
    }

    /// Loads the functions, formats an empty store and reclaims the orphans a previous run left.
    static func start(_ configuration: KVConfiguration) throws(KVStartupError) -> (chunkBytes: Int, orphans: Int) {
        let now = realtimeNow()
        let replies = try KVBlockingExchange.run(configuration.endpoint, timeoutMilliseconds: configuration.requestTimeoutMilliseconds, commands: [
            ["FUNCTION", "LOAD", "REPLACE", KVFunctions.library],
            ["FCALL", "dpfs_start", "0", configuration.prefix, "0", "0", String(FileType.directory | 0o755),
             String(now.seconds), String(now.nanoseconds), String(configuration.chunkBytes)],
        ])
        if case .error(let message) = replies[0].first { throw KVStartupError("loading the store's functions: \(message)") }
        if case .error(let message) = replies[1].first { throw KVStartupError("starting the store: \(message)") }
        guard replies[1].count == 3, case .integer(let chunk) = replies[1][1], case .integer(let orphans) = replies[1][2],
              KVConfiguration.chunkBytesRange.contains(Int(chunk)), chunk & (chunk - 1) == 0 else {
            throw KVStartupError("the store's start answered \(replies[1])")
        }
        return (Int(chunk), Int(orphans))
    }
}

/// The wall clock for file times (a vDSO read, no system call).
func realtimeNow() -> FUSETime {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return FUSETime(seconds: UInt64(max(0, now.tv_sec)), nanoseconds: UInt32(now.tv_nsec))
}
