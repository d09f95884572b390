@testable import NFSBackend
import NFSv4Wire
import Testing

/// The NFSv4 lock state per (node, lock owner): the first LOCK opens then locks, later ones go
/// through the lock stateid; one request at a time makes or ends a pair's state; FLUSH undoes what
/// exists; a full table says so; a failed OPEN leaves nothing behind.
@Suite struct NFSv4LockTableTests {
    static let open = NFSv4Stateid(sequence: 1, other: (0xA, 1))
    static let lock = NFSv4Stateid(sequence: 1, other: (0xB, 2))

    @Test("first LOCK: OPEN then LOCK; later: the lock stateid, with sequence 0 (the latest)")
    func lifecycle() {
        let table = NFSv4LockTable(capacity: 4)
        guard case .openThenLock(let entry) = table.begin(node: 7, owner: 99) else { Issue.record("no open first"); return }
        #expect(table.begin(node: 7, owner: 99) == .wait, "one request at a time per pair")
        #expect(table.teardown(node: 7, owner: 99) == .wait, "FLUSH waits for the LOCK that makes the state")
        table.opened(entry, Self.open)
        table.locked(entry, Self.lock)
        table.finished(entry)
        #expect(table.begin(node: 7, owner: 99) == .lockKnown(entry: entry, lock: NFSv4Stateid(sequence: 0, other: (0xB, 2))))
        table.finished(entry)
        #expect(table.begin(node: 7, owner: 100) != .wait, "another owner of the same file is another pair")
        guard case .undo(let teardown) = table.teardown(node: 7, owner: 99) else { Issue.record("nothing to undo"); return }
        #expect(teardown.lock == NFSv4Stateid(sequence: 0, other: (0xB, 2)) && teardown.open == NFSv4Stateid(sequence: 0, other: (0xA, 1)))
        #expect(table.begin(node: 7, owner: 99) == .wait, "busy while FLUSH undoes it")
        table.ended(teardown.entry)
        #expect(table.count == 1)
    }

    @Test("a refused first LOCK keeps the open for the next try; a failed OPEN leaves nothing")
    func refusals() {
        let table = NFSv4LockTable(capacity: 4)
        guard case .openThenLock(let entry) = table.begin(node: 1, owner: 1) else { Issue.record("no open first"); return }
        table.opened(entry, Self.open)
        table.finished(entry)   // LOCK DENIED
        #expect(table.begin(node: 1, owner: 1) == .lockFromOpen(entry: entry, open: NFSv4Stateid(sequence: 0, other: (0xA, 1))))
        table.finished(entry)
        guard case .undo(let teardown) = table.teardown(node: 1, owner: 1) else { Issue.record("nothing to undo"); return }
        #expect(teardown.lock == nil && teardown.open != nil, "CLOSE only")
        table.ended(teardown.entry)
        guard case .openThenLock(let second) = table.begin(node: 2, owner: 1) else { Issue.record("no open first"); return }
        table.finished(second)  // OPEN refused
        #expect(table.count == 0)
        #expect(table.teardown(node: 2, owner: 1) == .nothing, "nothing to undo")
    }

    @Test("a full table answers full (ENOLCK); a new client drops the pairs that held no lock")
    func bounded() {
        let table = NFSv4LockTable(capacity: 2)
        #expect(table.begin(node: 1, owner: 1) != .full)
        #expect(table.begin(node: 2, owner: 1) != .full)
        #expect(table.begin(node: 3, owner: 1) == .full)
        table.reset()
        #expect(table.count == 0)
        #expect(table.begin(node: 3, owner: 1) != .full)
    }

    @Test("a new client makes the pairs that held locks lost: their LOCKs fail until FLUSH ends them")
    func lostWithTheClient() {
        let table = NFSv4LockTable(capacity: 4)
        guard case .openThenLock(let entry) = table.begin(node: 5, owner: 9) else { Issue.record("no open first"); return }
        table.opened(entry, Self.open)
        table.locked(entry, Self.lock)
        table.granted(entry, start: 0, end: 9, write: true)
        table.finished(entry)
        guard case .openThenLock(let other) = table.begin(node: 6, owner: 9) else { Issue.record("no open first"); return }
        let unlockedAgain = Self.lockedPair(table, node: 7, owner: 9)
        table.granted(unlockedAgain, start: 0, end: 9, write: true)
        table.released(unlockedAgain, start: 0, end: 9)
        table.finished(unlockedAgain)
        table.reset()   // a request in flight on `other` when the client was made again
        table.opened(other, Self.open)
        table.finished(other)
        #expect(table.lostCount() == 1 && table.count == 1, "only the pair that held a lock is lost (not one that unlocked all it held)")
        #expect(table.begin(node: 5, owner: 9) == .lost)
        #expect(table.teardown(node: 5, owner: 9) == .nothing, "nothing to undo on the server")
        #expect(table.count == 0)
        if case .openThenLock = table.begin(node: 5, owner: 9) {} else { Issue.record("a fresh start after the close") }
    }

    @Test("a request that outlived its pair touches nothing of the pair that has its index now; a stateid the server lost makes the pair lost")
    func generations() {
        let table = NFSv4LockTable(capacity: 1)
        guard case .openThenLock(let old) = table.begin(node: 1, owner: 1) else { Issue.record("no open first"); return }
        table.finished(old)   // OPEN refused: the pair goes, its index is free
        guard case .openThenLock(let new) = table.begin(node: 2, owner: 2) else { Issue.record("no open first"); return }
        #expect(new & 0xFFFF_FFFF == old & 0xFFFF_FFFF && new != old, "the same index, a new generation")
        table.opened(old, Self.open)
        table.finished(old)
        #expect(table.begin(node: 2, owner: 2) == .wait, "the new pair is still busy: the old request's finish did nothing")
        table.opened(new, Self.open)
        table.locked(new, Self.lock)
        table.finished(new)
        guard case .lockKnown(let again, _) = table.begin(node: 2, owner: 2) else { Issue.record("not locked"); return }
        table.lose(again)   // BAD_STATEID on the LOCK
        table.finished(again)
        #expect(table.begin(node: 2, owner: 2) == .lost)
    }

    /// A locked pair, its entry not busy.
    static func lockedPair(_ table: NFSv4LockTable, node: UInt32, owner: UInt64) -> Int {
        guard case .openThenLock(let entry) = table.begin(node: node, owner: owner) else { preconditionFailure("no open first") }
        table.opened(entry, Self.open, access: NFSv4ShareAccess.read)
        table.locked(entry, Self.lock)
        return entry
    }

    @Test("the ranges a pair holds follow POSIX: a lock replaces what it covers, an unlock splits what it cuts")
    func rangesFollowPosix() {
        let table = NFSv4LockTable(capacity: 2)
        let entry = Self.lockedPair(table, node: 3, owner: 4)
        table.granted(entry, start: 0, end: 99, write: true)
        table.released(entry, start: 10, end: 19)
        table.granted(entry, start: 50, end: 59, write: false)
        let held = table.heldRanges(entry).sorted { $0.start < $1.start }
        #expect(held == [NFSv4HeldRange(start: 0, end: 9, write: true), NFSv4HeldRange(start: 20, end: 49, write: true),
                         NFSv4HeldRange(start: 50, end: 59, write: false), NFSv4HeldRange(start: 60, end: 99, write: true)])
        table.granted(entry, start: 5, end: UInt64(Int64.max), write: false)
        #expect(table.heldRanges(entry).sorted { $0.start < $1.start }
                == [NFSv4HeldRange(start: 0, end: 4, write: true), NFSv4HeldRange(start: 5, end: UInt64(Int64.max), write: false)])
        table.released(entry, start: 0, end: UInt64(Int64.max))
        #expect(table.heldRanges(entry).isEmpty)
    }

    @Test("a reclaimed pair survives the new client with its new stateids; one not reclaimed, or with too many ranges, is lost")
    func reclaim() {
        let table = NFSv4LockTable(capacity: 4)
        let kept = Self.lockedPair(table, node: 1, owner: 1)
        table.granted(kept, start: 0, end: 9, write: true)
        table.finished(kept)
        let many = Self.lockedPair(table, node: 2, owner: 2)
        for at in 0..<UInt64(NFSv4LockTable.rangesMax + 1) { table.granted(many, start: at * 10, end: at * 10 + 1, write: true) }
        table.finished(many)
        let refused = Self.lockedPair(table, node: 3, owner: 3)
        table.granted(refused, start: 0, end: 0, write: false)
        table.finished(refused)
        let candidates = table.reclaimable()
        #expect(candidates.map(\.node).sorted() == [1, 3], "more ranges than kept: not reclaimable")
        #expect(candidates.first { $0.node == 1 } == NFSv4ReclaimPair(entry: kept, node: 1, owner: 1, access: NFSv4ShareAccess.read,
                                                                      ranges: [NFSv4HeldRange(start: 0, end: 9, write: true)], serial: 1))
        #expect(table.begin(node: 1, owner: 1) == .wait, "a pair being reclaimed is busy for other requests")
        let newLock = NFSv4Stateid(sequence: 1, other: (0xC, 3))
        table.reclaimed(kept, open: NFSv4Stateid(sequence: 1, other: (0xD, 4)), lock: newLock)
        table.reset()
        #expect(table.begin(node: 1, owner: 1) == .lockKnown(entry: kept, lock: NFSv4Stateid(sequence: 0, other: (0xC, 3))))
        #expect(table.begin(node: 2, owner: 2) == .lost)
        #expect(table.begin(node: 3, owner: 3) == .lost)
        table.finished(kept)
        table.reset()
        #expect(table.begin(node: 1, owner: 1) == .lost, "a second new client with no reclaim loses it")
    }

    @Test("NFSv4.0: stateids keep their sequence, each pair has its own never-reused serial, seqids move per owner, a refused first LOCK names a new lock-owner")
    func owners40() {
        let table = NFSv4LockTable(capacity: 4, exactSequences: true)
        guard case .openThenLock(let first) = table.begin(node: 5, owner: 6) else { Issue.record("no open first"); return }
        table.opened(first, Self.open, access: NFSv4ShareAccess.both, needsConfirm: true)
        #expect(table.owners40(first) == NFSv4LockTable.Owners40(serial: 1, lockGeneration: 0, openSeqid: 0, lockSeqid: 0, unconfirmed: true))
        table.advanceSeqid(first, lockOwner: false)
        table.confirmed(first, NFSv4Stateid(sequence: 2, other: (0xA, 1)))
        table.advanceSeqid(first, lockOwner: false)
        table.lockOwnerIntroduced(first, made: false)
        #expect(table.owners40(first) == NFSv4LockTable.Owners40(serial: 1, lockGeneration: 1, openSeqid: 2, lockSeqid: 0, unconfirmed: false))
        table.lockOwnerIntroduced(first, made: true)
        table.locked(first, NFSv4Stateid(sequence: 1, other: (0xB, 2)))
        table.lockStateidChanged(first, NFSv4Stateid(sequence: 2, other: (0xB, 2)))
        #expect(table.stateids(first).open == NFSv4Stateid(sequence: 2, other: (0xA, 1)), "4.0 keeps the sequence")
        #expect(table.stateids(first).lock == NFSv4Stateid(sequence: 2, other: (0xB, 2)))
        #expect(table.owners40(first)?.lockSeqid == 1)
        table.finished(first)
        guard case .undo(let teardown) = table.teardown(node: 5, owner: 6) else { Issue.record("nothing to undo"); return }
        table.ended(teardown.entry)
        guard case .openThenLock(let again) = table.begin(node: 5, owner: 6) else { Issue.record("no open first"); return }
        #expect(table.owners40(again)?.serial == 2, "a closed owner's name is never used again (the server may remember its seqid)")
    }

    @Test("NFSv4.0 node names: recorded, moved to a hidden name with their fileid, forgotten")
    func nodeNames() {
        let names = NFSv40NodeNames(capacity: 8)
        #expect(names.location(3) == nil)
        Array("file".utf8).withUnsafeBytes { names.record(3, parent: 1, name: $0, fileid: 77) }
        #expect(names.location(3).map { ($0.parent, Array($0.name), $0.fileid) }! == (1, Array("file".utf8), 77))
        Array("hidden-name".utf8).withUnsafeBytes { names.moved(3, parent: 2, name: $0) }
        #expect(names.location(3).map { ($0.parent, Array($0.name), $0.fileid) }! == (2, Array("hidden-name".utf8), 77))
        Array([UInt8](repeating: 65, count: 256)).withUnsafeBytes { names.record(4, parent: 1, name: $0, fileid: 1) }
        #expect(names.location(4) == nil, "a name longer than 255 bytes is not kept")
        names.forget(3)
        #expect(names.location(3) == nil)
    }
}
