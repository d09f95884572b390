import DPFSPosix
import NFSv4Wire

// NFSv4 lock state of one device (Specs/nfs-semantics.md, "NFSv4.1 locks"; the stages that use
// it: NFSQueue+Locks4.swift).
//
// POSIX locks belong to a (process, file) pair, which FUSE names (lock owner, node). NFSv4 needs,
// for each such pair, an open of the file by an open-owner and a lock stateid the first LOCK makes
// from it (RFC 8881 §9.1.4). The table keeps both per (node, owner), bounded: a LOCK that finds no
// room fails ENOLCK. Stateids are kept with sequence 0, which a 4.1 server reads as "the latest"
// (RFC 8881 §8.2.2), so concurrent LOCKs of one owner need not agree on a sequence number. One
// request at a time makes or ends an entry's state (`busy`); another of the same pair waits and
// asks again. One mutex: LOCK, LOCKU and FLUSH are rare next to READ and WRITE, which never take it.

/// What a LOCK of (node, owner) sends, as the table decides it.
enum NFSv4LockStep: Equatable {
    /// No state yet: OPEN the file by handle for this owner, then LOCK as a new lock-owner.
    case openThenLock(entry: Int)
    /// Opened, never locked (the first LOCK was refused): LOCK as a new lock-owner from the open.
    case lockFromOpen(entry: Int, open: NFSv4Stateid)
    /// Locked before: LOCK (or LOCKU) through the owner's lock stateid.
    case lockKnown(entry: Int, lock: NFSv4Stateid)
    /// Another request of this owner on this file is making or ending its state: ask again shortly.
    case wait
    /// No room for another (node, owner): ENOLCK.
    case full
    /// The pair held locks the server forgot (it restarted, or the lease ran out): EIO until the
    /// owner closes the file (FLUSH ends the pair), as the guest cannot be told which it lost.
    case lost
}

/// What FLUSH (the owner closed a descriptor of the file: POSIX drops all its locks there) undoes.
struct NFSv4LockTeardown: Equatable {
    let entry: Int
    /// LOCKU of everything, then FREE_STATEID (nil: the owner never got a lock).
    let lock: NFSv4Stateid?
    /// CLOSE (nil: the open was never made).
    let open: NFSv4Stateid?
}

/// What a FLUSH of (node, owner) does.
enum NFSv4TeardownStep: Equatable {
    /// The pair holds no state: nothing to send.
    case nothing
    /// A request of the pair is making its state: ask again shortly.
    case wait
    case undo(NFSv4LockTeardown)
}

/// A byte range one (node, owner) holds locked on the server, FUSE's way (inclusive ends).
struct NFSv4HeldRange: Equatable {
    var start: UInt64
    var end: UInt64
    var write: Bool
}

/// A pair whose locks a new client may reclaim in the server's grace period (control path).
struct NFSv4ReclaimPair: Equatable {
    let entry: Int
    let node: UInt32
    let owner: UInt64
    /// The share access its open had.
    let access: UInt32
    let ranges: [NFSv4HeldRange]
    /// NFSv4.0: the pair's owner serial and lock-owner generation (its owners' names).
    var serial: UInt32 = 0
    var lockGeneration: UInt32 = 0
}

final class NFSv4LockTable: @unchecked Sendable {
    let capacity: Int
    let nodes: UnsafeMutablePointer<UInt32>
    let owners: UnsafeMutablePointer<UInt64>
    let opens: UnsafeMutablePointer<NFSv4Stateid>
    let locks: UnsafeMutablePointer<NFSv4Stateid>
    /// Bit 0: in use; bit 1: opened; bit 2: locked; bit 3: busy; bit 4: lost with an old client.
    let flags: UnsafeMutablePointer<UInt8>
    /// Bumped whenever an index changes hands or loses its state: a request names its entry as
    /// index | generation << 32, so one that outlived its pair (a new client, a removal) touches
    /// nothing of the pair that has the index now.
    let generations: UnsafeMutablePointer<UInt32>
    /// Per entry: the ranges it holds (up to `rangesMax`, FUSE's view of what the server granted,
    /// kept so a new client can reclaim them), and the share access of its open.
    let ranges: UnsafeMutablePointer<NFSv4HeldRange>
    let rangeCounts: UnsafeMutablePointer<UInt8>
    let accesses: UnsafeMutablePointer<UInt32>
    /// NFSv4.0 (`exactSequences`): stateids keep their sequence (4.0 has no "latest"), and each pair
    /// has its own open-owner and lock-owner, named by the pair's serial (never reused, as a 4.0
    /// server may remember a closed owner's seqid) and, for the lock-owner, a generation changed
    /// when a refused first LOCK leaves it in doubt; with the seqid each carries next. One request
    /// per pair at a time (`busy`) keeps one seqid-bearing call in flight per owner.
    let exactSequences: Bool
    let serials: UnsafeMutablePointer<UInt32>
    let lockOwnerGenerations: UnsafeMutablePointer<UInt32>
    let openSeqids: UnsafeMutablePointer<UInt32>
    let lockSeqids: UnsafeMutablePointer<UInt32>
    var nextSerial: UInt32 = 1
    let mutex = HostMutex()
    private(set) var count = 0

    static let inUse: UInt8 = 1, opened: UInt8 = 2, locked: UInt8 = 4, busy: UInt8 = 8, lostState: UInt8 = 16
    /// Bit 5: more ranges than are kept (not reclaimable); bit 6: reclaimed by the new client.
    static let untracked: UInt8 = 32, reclaimedMark: UInt8 = 64
    /// Bit 7 (NFSv4.0): the pair's open awaits OPEN_CONFIRM.
    static let unconfirmed: UInt8 = 128
    /// Ranges kept per pair: a process rarely holds more than a few on one file; one that does is
    /// not reclaimed after a server restart (its locks are lost, as without a grace period).
    static let rangesMax = 8

    init(capacity: Int, exactSequences: Bool = false) {
        precondition(capacity >= 1 && capacity <= 1 << 20)
        self.capacity = capacity
        self.exactSequences = exactSequences
        serials = .allocate(capacity: capacity)
        serials.initialize(repeating: 0, count: capacity)
        lockOwnerGenerations = .allocate(capacity: capacity)
        lockOwnerGenerations.initialize(repeating: 0, count: capacity)
        openSeqids = .allocate(capacity: capacity)
        openSeqids.initialize(repeating: 0, count: capacity)
        lockSeqids = .allocate(capacity: capacity)
        lockSeqids.initialize(repeating: 0, count: capacity)
        nodes = .allocate(capacity: capacity)
        nodes.initialize(repeating: 0, count: capacity)
        owners = .allocate(capacity: capacity)
        owners.initialize(repeating: 0, count: capacity)
        opens = .allocate(capacity: capacity)
        opens.initialize(repeating: NFSv4Stateid(), count: capacity)
        locks = .allocate(capacity: capacity)
        locks.initialize(repeating: NFSv4Stateid(), count: capacity)
        flags = .allocate(capacity: capacity)
        flags.initialize(repeating: 0, count: capacity)
        generations = .allocate(capacity: capacity)
        generations.initialize(repeating: 1, count: capacity)
        ranges = .allocate(capacity: capacity * Self.rangesMax)
        ranges.initialize(repeating: NFSv4HeldRange(start: 0, end: 0, write: false), count: capacity * Self.rangesMax)
        rangeCounts = .allocate(capacity: capacity)
        rangeCounts.initialize(repeating: 0, count: capacity)
        accesses = .allocate(capacity: capacity)
        accesses.initialize(repeating: 0, count: capacity)
    }

    deinit {
        nodes.deallocate()
        owners.deallocate()
        opens.deallocate()
        locks.deallocate()
        flags.deallocate()
        generations.deallocate()
        ranges.deallocate()
        rangeCounts.deallocate()
        accesses.deallocate()
        serials.deallocate()
        lockOwnerGenerations.deallocate()
        openSeqids.deallocate()
        lockSeqids.deallocate()
    }

    /// A stateid as this table keeps it: 4.1's sequence 0 ("the latest"), or 4.0's exact one.
    func kept(_ stateid: NFSv4Stateid) -> NFSv4Stateid { exactSequences ? stateid : NFSv4Stateid(sequence: 0, other: stateid.other) }

    /// NFSv4.0: what a pair's calls carry (its owners' names and their next seqids).
    struct Owners40: Equatable {
        var serial: UInt32
        var lockGeneration: UInt32
        var openSeqid: UInt32
        var lockSeqid: UInt32
        var unconfirmed: Bool
    }

    func owners40(_ entry: Int) -> Owners40? {
        mutex.withLock {
            index(entry).map { Owners40(serial: serials[$0], lockGeneration: lockOwnerGenerations[$0], openSeqid: openSeqids[$0],
                                        lockSeqid: lockSeqids[$0], unconfirmed: flags[$0] & Self.unconfirmed != 0) }
        }
    }

    /// NFSv4.0: the server moved the open-owner's (or lock-owner's) seqid on.
    func advanceSeqid(_ entry: Int, lockOwner: Bool) {
        mutex.withLock {
            guard let index = index(entry) else { return }
            if lockOwner { lockSeqids[index] &+= 1 } else { openSeqids[index] &+= 1 }
        }
    }

    /// NFSv4.0: a first LOCK from the open made the lock-owner (its next seqid 1), or was refused
    /// (whether the server kept the new lock-owner is not said: the next try names a new one).
    func lockOwnerIntroduced(_ entry: Int, made: Bool) {
        mutex.withLock {
            guard let index = index(entry) else { return }
            if made {
                lockSeqids[index] = 1
            } else {
                lockOwnerGenerations[index] &+= 1
                lockSeqids[index] = 0
            }
        }
    }

    /// NFSv4.0: OPEN_CONFIRM answered with the confirmed stateid.
    func confirmed(_ entry: Int, _ stateid: NFSv4Stateid) {
        mutex.withLock {
            guard let index = index(entry), flags[index] & Self.busy != 0 else { return }
            opens[index] = kept(stateid)
            flags[index] &= ~Self.unconfirmed
        }
    }

    /// NFSv4.0: a LOCK or LOCKU of a known owner returned the lock stateid's next sequence.
    func lockStateidChanged(_ entry: Int, _ stateid: NFSv4Stateid) {
        mutex.withLock {
            guard let index = index(entry), flags[index] & Self.locked != 0 else { return }
            locks[index] = kept(stateid)
        }
    }

    /// The lock-owner serial of (node, owner)'s pair, if it has one (LOCKT names it: a GETLK must
    /// not see the caller's own locks).
    func pairSerial(node: UInt32, owner: UInt64) -> (serial: UInt32, generation: UInt32)? {
        mutex.withLock { find(node: node, owner: owner).map { (serials[$0], lockOwnerGenerations[$0]) } }
    }

    /// The handle a request keeps for `index` (the caller holds the mutex).
    func handle(_ index: Int) -> Int { index | Int(generations[index]) << 32 }

    /// The index `entry` names while its generation holds, else nil (the caller holds the mutex).
    func index(_ entry: Int) -> Int? {
        let index = entry & 0xFFFF_FFFF
        guard entry >= 0, index < capacity, generations[index] == UInt32(truncatingIfNeeded: entry >> 32) else { return nil }
        return index
    }

    /// The entry of (node, owner), if any (the caller holds the mutex). A linear scan: the table
    /// holds the pairs that hold or held a lock since their last close, a handful in practice.
    func find(node: UInt32, owner: UInt64) -> Int? {
        for entry in 0..<capacity where flags[entry] & Self.inUse != 0 && nodes[entry] == node && owners[entry] == owner {
            return entry
        }
        return nil
    }

    /// A LOCK (or LOCKU) of (node, owner) begins: what it sends. Every step but `wait` and `full`
    /// leaves the entry busy until `finished`.
    func begin(node: UInt32, owner: UInt64) -> NFSv4LockStep {
        mutex.withLock {
            if let index = find(node: node, owner: owner) {
                if flags[index] & Self.lostState != 0 { return .lost }
                guard flags[index] & Self.busy == 0 else { return .wait }
                flags[index] |= Self.busy
                let entry = handle(index)
                if flags[index] & Self.locked != 0 { return .lockKnown(entry: entry, lock: locks[index]) }
                if flags[index] & Self.opened != 0 { return .lockFromOpen(entry: entry, open: opens[index]) }
                return .openThenLock(entry: entry)
            }
            guard count < capacity, let index = (0..<capacity).first(where: { flags[$0] & Self.inUse == 0 }) else { return .full }
            nodes[index] = node
            owners[index] = owner
            flags[index] = Self.inUse | Self.busy
            serials[index] = nextSerial
            nextSerial &+= 1
            lockOwnerGenerations[index] = 0
            openSeqids[index] = 0
            lockSeqids[index] = 0
            count += 1
            return .openThenLock(entry: handle(index))
        }
    }

    /// The entry's OPEN succeeded: its stateid (kept with sequence 0). An entry whose generation
    /// passed (a new client, a removal) is left alone, here and below.
    func opened(_ entry: Int, _ stateid: NFSv4Stateid, access: UInt32 = NFSv4ShareAccess.both, needsConfirm: Bool = false) {
        mutex.withLock {
            guard let index = index(entry), flags[index] & Self.busy != 0 else { return }
            opens[index] = kept(stateid)
            accesses[index] = access
            flags[index] |= Self.opened
            if needsConfirm { flags[index] |= Self.unconfirmed }
        }
    }

    /// The server granted the entry [start, end] of this type: as POSIX does, it replaces what the
    /// owner held there.
    func granted(_ entry: Int, start: UInt64, end: UInt64, write: Bool) {
        precondition(start <= end)
        mutex.withLock {
            guard let index = index(entry), flags[index] & Self.untracked == 0 else { return }
            guard carve(index, start: start, end: end), Int(rangeCounts[index]) < Self.rangesMax else {
                flags[index] |= Self.untracked
                return
            }
            ranges[index * Self.rangesMax + Int(rangeCounts[index])] = NFSv4HeldRange(start: start, end: end, write: write)
            rangeCounts[index] += 1
        }
    }

    /// The server unlocked the entry's [start, end].
    func released(_ entry: Int, start: UInt64, end: UInt64) {
        precondition(start <= end)
        mutex.withLock {
            guard let index = index(entry), flags[index] & Self.untracked == 0 else { return }
            if !carve(index, start: start, end: end) { flags[index] |= Self.untracked }
        }
    }

    /// Takes [start, end] out of the entry's ranges (the caller holds the mutex); false when a
    /// range split in two finds no room for its second half.
    func carve(_ index: Int, start: UInt64, end: UInt64) -> Bool {
        let base = ranges + index * Self.rangesMax
        var at = 0
        while at < Int(rangeCounts[index]) {
            let range = base[at]
            if range.end < start || range.start > end {
                at += 1
            } else if range.start >= start && range.end <= end {
                rangeCounts[index] -= 1
                base[at] = base[Int(rangeCounts[index])]
            } else if range.start < start && range.end > end {
                guard Int(rangeCounts[index]) < Self.rangesMax else { return false }
                base[at].end = start - 1
                base[Int(rangeCounts[index])] = NFSv4HeldRange(start: end + 1, end: range.end, write: range.write)
                rangeCounts[index] += 1
                at += 1
            } else if range.start < start {
                base[at].end = start - 1
                at += 1
            } else {
                base[at].start = end + 1
                at += 1
            }
        }
        return true
    }

    /// The ranges the entry holds (tests and the reclaim).
    func heldRanges(_ entry: Int) -> [NFSv4HeldRange] {
        mutex.withLock {
            guard let index = index(entry) else { return [] }
            return (0..<Int(rangeCounts[index])).map { ranges[index * Self.rangesMax + $0] }
        }
    }

    /// The pairs a new client may reclaim (control path): locked, not busy, not lost, every range
    /// kept. Each is made busy (a request of the pair on another queue waits) until `reclaimed`
    /// or `reclaimFailed`.
    func reclaimable() -> [NFSv4ReclaimPair] {
        mutex.withLock {
            var pairs: [NFSv4ReclaimPair] = []
            for index in 0..<capacity where flags[index] & (Self.inUse | Self.locked) == Self.inUse | Self.locked
                && flags[index] & (Self.busy | Self.lostState | Self.untracked) == 0 && rangeCounts[index] > 0 {
                flags[index] |= Self.busy
                pairs.append(NFSv4ReclaimPair(entry: handle(index), node: nodes[index], owner: owners[index], access: accesses[index],
                                              ranges: (0..<Int(rangeCounts[index])).map { ranges[index * Self.rangesMax + $0] },
                                              serial: serials[index], lockGeneration: lockOwnerGenerations[index]))
            }
            return pairs
        }
    }

    /// The new client reclaimed the pair's open and every range: its new stateids; the `reset`
    /// that follows keeps it.
    /// (NFSv4.0: with the seqids its owners carry next.)
    func reclaimed(_ entry: Int, open: NFSv4Stateid, lock: NFSv4Stateid, seqids40: (open: UInt32, lock: UInt32)? = nil) {
        mutex.withLock {
            guard let index = index(entry), flags[index] & Self.busy != 0, flags[index] & Self.lostState == 0 else { return }
            flags[index] &= ~Self.busy
            opens[index] = kept(open)
            locks[index] = kept(lock)
            if let seqids40 { (openSeqids[index], lockSeqids[index]) = seqids40 }
            flags[index] &= ~Self.unconfirmed
            flags[index] |= Self.reclaimedMark
        }
    }

    /// The entry's first LOCK was granted: the lock stateid.
    func locked(_ entry: Int, _ stateid: NFSv4Stateid) {
        mutex.withLock {
            guard let index = index(entry), flags[index] & Self.busy != 0, flags[index] & Self.opened != 0 else { return }
            locks[index] = kept(stateid)
            flags[index] |= Self.locked
        }
    }

    /// The request that began on the entry is answered. An entry that never got its open (the
    /// OPEN failed) is dropped: nothing on the server belongs to it.
    func finished(_ entry: Int) {
        mutex.withLock {
            guard let index = index(entry), flags[index] & Self.busy != 0 else { return }
            flags[index] &= ~Self.busy
            if flags[index] & Self.opened == 0 { remove(index) }
        }
    }

    /// FLUSH of (node, owner): what to undo on the server, with the entry busy until `ended`.
    func teardown(node: UInt32, owner: UInt64) -> NFSv4TeardownStep {
        mutex.withLock {
            guard count > 0, let index = find(node: node, owner: owner) else { return .nothing }
            // A pair whose locks the server forgot has nothing left there to undo.
            if flags[index] & Self.lostState != 0 {
                remove(index)
                return .nothing
            }
            guard flags[index] & Self.busy == 0 else { return .wait }
            flags[index] |= Self.busy
            let lock = flags[index] & Self.locked != 0 ? locks[index] : nil
            let open = flags[index] & Self.opened != 0 ? opens[index] : nil
            return .undo(NFSv4LockTeardown(entry: handle(index), lock: lock, open: open))
        }
    }

    /// The teardown is done (whatever the server said: a lease that ends frees what is left).
    func ended(_ entry: Int) {
        mutex.withLock {
            guard let index = index(entry), flags[index] & Self.busy != 0 else { return }
            remove(index)
        }
    }

    /// The server no longer knows the pair's lock stateid (BAD_STATEID, EXPIRED, ADMIN_REVOKED):
    /// its locks are gone there, so it is lost like a pair of an old client.
    func lose(_ entry: Int) {
        mutex.withLock {
            guard let index = index(entry), flags[index] & Self.locked != 0 else { return }
            flags[index] = Self.inUse | Self.lostState
            generations[index] &+= 1
        }
    }

    /// Whether the entry's owner has a lock stateid (its next LOCK names it, not the open).
    func isLocked(_ entry: Int) -> Bool { mutex.withLock { index(entry).map { flags[$0] & Self.locked != 0 } ?? false } }

    /// The entry's stateids (its request holds it busy, so they do not change under it).
    func stateids(_ entry: Int) -> (open: NFSv4Stateid, lock: NFSv4Stateid) {
        mutex.withLock { index(entry).map { (opens[$0], locks[$0]) } ?? (NFSv4Stateid(), NFSv4Stateid()) }
    }

    /// A new client (the server forgot the old one, and with it every open and lock): pairs that
    /// held locks are lost (their LOCKs fail EIO until the owner closes the file); the others go.
    /// A request still working on an entry finds it no longer busy and leaves it so.
    /// The pair's reclaim was refused: no longer busy (the `reset` that follows makes it lost).
    func reclaimFailed(_ entry: Int) {
        mutex.withLock {
            guard let index = index(entry) else { return }
            flags[index] &= ~Self.busy
        }
    }

    /// Pairs the new client reclaimed (`reclaimed`) stay, as they are on the server; a pair that
    /// held no range any more just goes.
    func reset() {
        mutex.withLock {
            for entry in 0..<capacity where flags[entry] & Self.inUse != 0 {
                if flags[entry] & Self.reclaimedMark != 0 {
                    flags[entry] &= ~Self.reclaimedMark
                } else if flags[entry] & Self.locked != 0 && (rangeCounts[entry] > 0 || flags[entry] & Self.untracked != 0) {
                    flags[entry] = Self.inUse | Self.lostState
                    generations[entry] &+= 1
                } else {
                    remove(entry)
                }
            }
        }
    }

    /// A held pair, as the end of a guest session hands it over to be undone on the server.
    struct HeldPair {
        let node: UInt32
        let open: NFSv4Stateid
        let lock: NFSv4Stateid?
        /// NFSv4.0: the pair's owners and seqids.
        var owners40: Owners40? = nil
    }

    /// Every pair with an open on the server, the table emptied (a guest session ended: none of its
    /// processes exists any more). Control path only: the array is made here.
    func drain() -> [HeldPair] {
        mutex.withLock {
            var held: [HeldPair] = []
            for index in 0..<capacity where flags[index] & Self.inUse != 0 {
                if flags[index] & Self.opened != 0 && flags[index] & Self.lostState == 0 {
                    held.append(HeldPair(node: nodes[index], open: opens[index],
                                         lock: flags[index] & Self.locked != 0 ? locks[index] : nil,
                                         owners40: exactSequences ? Owners40(serial: serials[index], lockGeneration: lockOwnerGenerations[index],
                                                                             openSeqid: openSeqids[index], lockSeqid: lockSeqids[index],
                                                                             unconfirmed: flags[index] & Self.unconfirmed != 0) : nil))
                }
                remove(index)
            }
            return held
        }
    }

    /// Pairs whose locks the server forgot, not yet closed by their owners.
    func lostCount() -> Int { mutex.withLock { (0..<capacity).reduce(0) { $0 + (flags[$1] & Self.lostState != 0 ? 1 : 0) } } }

    func remove(_ index: Int) {
        flags[index] = 0
        rangeCounts[index] = 0
        generations[index] &+= 1
        count -= 1
    }
}
