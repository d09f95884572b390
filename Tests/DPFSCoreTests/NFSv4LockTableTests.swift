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
        table.finished(entry)
        guard case .openThenLock(let other) = table.begin(node: 6, owner: 9) else { Issue.record("no open first"); return }
        table.reset()   // a request in flight on `other` when the client was made again
        table.opened(other, Self.open)
        table.finished(other)
        #expect(table.lostCount() == 1 && table.count == 1, "only the pair that held a lock is lost")
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
}
