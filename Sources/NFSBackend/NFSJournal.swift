// A queue's copy of the data it wrote UNSTABLE and the server has not committed yet, so that a
// COMMIT whose verifier says the server restarted (and may have dropped that data) is answered by
// writing the data again, not by failing the application's fsync. The same reason Linux's NFS
// client keeps dirty pages until COMMIT succeeds.
//
// A ring of `capacityBytes` bytes and a ring of entries, both allocated when the queue is made and
// owned by the queue's poller alone (no sharing, no lock). An entry is reserved when its WRITE is
// issued (the data is copied in and sent from the copy, so what is resent is what was sent),
// acknowledged when the server answers UNSTABLE (with its verifier and a sequence number a COMMIT
// compares against), and released once a COMMIT covering it matched, or when the WRITE failed, was
// answered stable, or its open ended. Entries are released out of order; the tail moves past every
// released entry at the tail end. A WRITE that finds no room is sent unjournaled and its open can
// no longer be repaired (a changed verifier then fails its FSYNC with EIO: nothing is lost
// silently); an application that fsyncs at least every `capacityBytes` keeps the repair.

struct JournalEntry {
    enum State: UInt8 { case free, reserved, acknowledged, released }
    var state: State = .free
    /// The open (index and generation: its FUSE file handle) the data belongs to.
    var fileHandle: UInt64 = 0
    var offsetInFile: UInt64 = 0
    var length: Int = 0
    /// Where the bytes are: a position in the byte ring (monotonic; modulo capacity in memory).
    var position: UInt64 = 0
    /// The server's write verifier of the last WRITE of these bytes.
    var verifier: UInt64 = 0
    /// Acknowledged as the `ackSequence`-th UNSTABLE answer of this queue: a COMMIT sent when the
    /// counter stood at N covers every entry with a sequence ≤ N.
    var ackSequence: UInt64 = 0
}

final class WriteJournal {
    let capacityBytes: Int
    let bytes: UnsafeMutableRawPointer?
    let entries: UnsafeMutablePointer<JournalEntry>
    let entryCapacity: Int
    /// Byte ring: the next free position and the oldest live one (monotonic counters).
    var head: UInt64 = 0
    var tail: UInt64 = 0
    /// Entry ring, as counters.
    var entryHead = 0
    var entryTail = 0
    var ackCounter: UInt64 = 0
    /// For reports and tests.
    var resent = 0
    var fullFallbacks = 0

    var isEnabled: Bool { capacityBytes > 0 }
    var bytesInUse: Int { Int(head - tail) }
    var entriesInUse: Int { entryHead - entryTail }

    /// `capacityBytes` 0 disables the journal (every UNSTABLE write then stays unprotected, and a
    /// changed verifier fails the open's next FSYNC, FLUSH and RELEASE with EIO).
    init(capacityBytes: Int, entryCapacity: Int) {
        precondition(capacityBytes >= 0 && entryCapacity >= 1)
        self.capacityBytes = capacityBytes
        bytes = capacityBytes > 0 ? .allocate(byteCount: capacityBytes, alignment: 4096) : nil
        self.entryCapacity = entryCapacity
        entries = .allocate(capacity: entryCapacity)
        entries.initialize(repeating: JournalEntry(), count: entryCapacity)
    }

    deinit {
        bytes?.deallocate()
        entries.deallocate()
    }

    @_noAllocation @_noLocks
    func entry(_ index: Int) -> UnsafeMutablePointer<JournalEntry> { entries + index % entryCapacity }

    func data(_ index: Int) -> UnsafeMutableRawPointer {
        bytes! + Int(entry(index).pointee.position % UInt64(capacityBytes))
    }

    /// Room for `length` contiguous bytes and one entry, or nil (the caller sends it unjournaled).
    /// The returned entry index is a counter value; it stays valid until released.
    func reserve(fileHandle: UInt64, offsetInFile: UInt64, length: Int) -> Int? {
        guard let position = placement(length) else {
            if isEnabled { fullFallbacks += 1 }
            return nil
        }
        if entryTail == entryHead { tail = position }
        let index = entryHead
        entryHead += 1
        head = position + UInt64(length)
        entry(index).pointee = JournalEntry(state: .reserved, fileHandle: fileHandle, offsetInFile: offsetInFile, length: length,
                                            position: position, verifier: 0, ackSequence: 0)
        return index
    }

    /// No room for `length` more bytes or one more entry.
    func isFull(forLength length: Int) -> Bool { placement(length) == nil }

    /// Where `length` contiguous bytes would go, or nil when they do not fit. Data never wraps: it
    /// skips the ring's end (those bytes count as used until the tail passes them), except in an
    /// empty ring, which may start anywhere.
    @_noAllocation @_noLocks
    func placement(_ length: Int) -> UInt64? {
        guard isEnabled, length > 0, length <= capacityBytes, entryHead - entryTail < entryCapacity else { return nil }
        var position = head
        let inRing = Int(position % UInt64(capacityBytes))
        if inRing + length > capacityBytes { position += UInt64(capacityBytes - inRing) }
        let oldest = entryTail == entryHead ? position : tail
        guard position + UInt64(length) - oldest <= UInt64(capacityBytes) else { return nil }
        return position
    }

    /// The server answered the WRITE UNSTABLE with `verifier`.
    func acknowledge(_ index: Int, verifier: UInt64) {
        let record = entry(index)
        precondition(record.pointee.state == .reserved || record.pointee.state == .acknowledged)
        ackCounter += 1
        record.pointee.state = .acknowledged
        record.pointee.verifier = verifier
        record.pointee.ackSequence = ackCounter
    }

    /// A resent WRITE came back: same bytes, the new verifier (the sequence stays: the COMMIT that
    /// found the mismatch still covers it).
    func rewritten(_ index: Int, verifier: UInt64) {
        precondition(entry(index).pointee.state == .acknowledged)
        entry(index).pointee.verifier = verifier
        resent += 1
    }

    func release(_ index: Int) {
        let record = entry(index)
        precondition(record.pointee.state == .reserved || record.pointee.state == .acknowledged, "release of a free journal entry")
        record.pointee.state = .released
        while entryTail < entryHead && entry(entryTail).pointee.state == .released {
            entry(entryTail).pointee.state = .free
            entryTail += 1
        }
        tail = entryTail < entryHead ? entry(entryTail).pointee.position : head
    }

    /// The first acknowledged entry of `fileHandle` covered by `ackSequence` whose verifier is not
    /// `verifier`, searching from entry counter `from`; nil when none is left.
    func mismatch(fileHandle: UInt64, coveredBy ackSequence: UInt64, verifier: UInt64, from: Int) -> Int? {
        var index = max(from, entryTail)
        while index < entryHead {
            let record = entry(index).pointee
            if record.state == .acknowledged && record.fileHandle == fileHandle && record.ackSequence <= ackSequence
                && record.verifier != verifier {
                return index
            }
            index += 1
        }
        return nil
    }

    /// Releases `fileHandle`'s acknowledged entries a COMMIT with sequence `ackSequence` covered
    /// (all of them with `everything`: the open ended).
    func releaseCommitted(fileHandle: UInt64, coveredBy ackSequence: UInt64, everything: Bool = false) {
        var index = entryTail
        while index < entryHead {
            let record = entry(index).pointee
            // A reserved entry belongs to a WRITE still in flight: its slot releases it.
            if record.fileHandle == fileHandle && record.state == .acknowledged && (everything || record.ackSequence <= ackSequence) {
                release(index)
            }
            index += 1
        }
    }

    /// A new session: nothing of the old one is kept.
    func reset() {
        for index in entryTail..<entryHead { entry(index).pointee.state = .free }
        entryTail = entryHead
        tail = head
    }
}
