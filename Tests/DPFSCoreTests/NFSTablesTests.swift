import Testing
@testable import NFSBackend

/// The NFS backend's shared node table: open counts and the hidden-file ("silly rename") claim,
/// where exactly one of the last RELEASE and the hiding RENAME's answer must remove the file.
@Suite struct NFSTablesTests {
    static let root: [UInt8] = [1, 2, 3, 4]

    static func table() -> FileHandleTable {
        root.withUnsafeBytes { FileHandleTable(capacity: 16, rootHandle: $0, rootKind: 0o040000) }
    }

    static func node(_ table: FileHandleTable, _ handle: [UInt8]) throws -> UInt32 {
        let id = try #require(handle.withUnsafeBytes { table.lookup(handle: $0, kind: 0o100000) })
        return try #require(table.pin(id))
    }

    @Test("the last close of a file that is not hidden claims nothing")
    func closeOfVisibleFile() throws {
        let table = Self.table()
        let file = try Self.node(table, [9, 9])
        table.opened(file)
        table.opened(file)
        #expect(table.openCount(file) == 2)
        #expect(!table.closed(file))
        #expect(!table.closed(file))
        #expect(table.openCount(file) == 0)
        #expect(!table.isHidden(file))
    }

    @Test("hidden while open: the last close claims the removal, once")
    func lastCloseClaims() throws {
        let table = Self.table()
        let file = try Self.node(table, [7])
        table.opened(file)
        table.opened(file)
        #expect(!table.hid(file), "still open: the RENAME's answer must not remove it")
        #expect(table.isHidden(file))
        #expect(!table.closed(file), "one open is left")
        #expect(table.closed(file), "the last close removes it")
    }

    @Test("closed while the hiding RENAME was in flight: its answer claims the removal")
    func renameAnswerClaims() throws {
        let table = Self.table()
        let file = try Self.node(table, [5, 5, 5])
        table.opened(file)
        #expect(!table.closed(file), "not hidden yet when it closes")
        #expect(table.hid(file), "nobody has it open any more")
    }

    @Test("findPinned finds only handles the guest knows, and pins them")
    func findPinned() throws {
        let table = Self.table()
        let handle: [UInt8] = [8, 8]
        #expect(handle.withUnsafeBytes { table.findPinned(handle: $0) } == nil)
        let file = try Self.node(table, handle)
        let found = try #require(handle.withUnsafeBytes { table.findPinned(handle: $0) })
        #expect(found == file)
        #expect(([UInt8](repeating: 1, count: 65)).withUnsafeBytes { table.findPinned(handle: $0) } == nil, "longer than NFS3_FHSIZE")
        #expect(([UInt8]()).withUnsafeBytes { table.findPinned(handle: $0) } == nil)
    }

    @Test("hidden names: instance and node id in hex, and the reserved prefix refused or hidden")
    func hiddenNames() {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: HiddenName.bytesMax, alignment: 8)
        defer { buffer.deallocate() }
        HiddenName.write(instance: 0x0123_4567_89ab_cdef, nodeID: 0x0000_0001_0000_002a, into: buffer)
        #expect(String(cString: buffer.assumingMemoryBound(to: CChar.self)) == "0123456789abcdef-000000010000002a")
        for (name, reserved) in [(".dpfs-hidden", true), (".dpfs-hiddenx", true), (".dpfs-hidde", false), ("dpfs-hidden", false), ("a", false)] {
            let bytes = Array(name.utf8)
            #expect(bytes.withUnsafeBytes { HiddenName.isReserved($0) } == reserved, "\(name)")
        }
    }
}

/// The NFS backend's write journal: what a changed verifier makes the queue write again.
@Suite struct WriteJournalTests {
    @Test("an acknowledged entry is found by a covering COMMIT with another verifier, and released by a matching one")
    func mismatchAndRelease() throws {
        let journal = WriteJournal(capacityBytes: 16384, entryCapacity: 8)
        let a = try #require(journal.reserve(fileHandle: 7, offsetInFile: 0, length: 4096))
        let b = try #require(journal.reserve(fileHandle: 7, offsetInFile: 4096, length: 4096))
        let other = try #require(journal.reserve(fileHandle: 9, offsetInFile: 0, length: 100))
        journal.acknowledge(a, verifier: 1)
        journal.acknowledge(other, verifier: 1)
        let snapshot = journal.ackCounter
        journal.acknowledge(b, verifier: 1)   // after the COMMIT was sent: not covered
        #expect(journal.mismatch(fileHandle: 7, coveredBy: snapshot, verifier: 1, from: 0) == nil)
        #expect(journal.mismatch(fileHandle: 7, coveredBy: snapshot, verifier: 2, from: 0) == a)
        #expect(journal.mismatch(fileHandle: 7, coveredBy: journal.ackCounter, verifier: 2, from: a + 1) == b)
        journal.rewritten(a, verifier: 2)
        #expect(journal.mismatch(fileHandle: 7, coveredBy: snapshot, verifier: 2, from: 0) == nil)
        journal.releaseCommitted(fileHandle: 7, coveredBy: snapshot)
        #expect(journal.entriesInUse == 2, "a (at the tail) is gone; b, not covered, and the other open's entry stay")
        journal.releaseCommitted(fileHandle: 7, coveredBy: journal.ackCounter)
        journal.releaseCommitted(fileHandle: 9, coveredBy: 0, everything: true)
        #expect(journal.entriesInUse == 0 && journal.bytesInUse == 0)
        #expect(journal.resent == 1)
    }

    @Test("a full journal refuses (the WRITE then goes unjournaled), and data never wraps inside an entry")
    func fullAndWrap() throws {
        let journal = WriteJournal(capacityBytes: 10000, entryCapacity: 4)
        let first = try #require(journal.reserve(fileHandle: 1, offsetInFile: 0, length: 6000))
        #expect(journal.reserve(fileHandle: 1, offsetInFile: 0, length: 6000) == nil, "no room for a second 6000 bytes")
        #expect(journal.fullFallbacks == 1)
        journal.acknowledge(first, verifier: 5)
        journal.release(first)
        // Head at 6000: 6000 more would cross the end, so it starts at the next lap (10000); the ring
        // is empty, so the skip costs nothing.
        let second = try #require(journal.reserve(fileHandle: 1, offsetInFile: 0, length: 6000))
        #expect(journal.entry(second).pointee.position == 10000)
        #expect(journal.data(second) == journal.bytes!)
        #expect(journal.reserve(fileHandle: 1, offsetInFile: 0, length: 10001) == nil, "larger than the journal")
        // 4000 bytes are left before the ring's end; 4001 would have to skip them, and the skipped
        // bytes count as used until the tail passes them.
        #expect(!journal.isFull(forLength: 4000) && journal.isFull(forLength: 4001))
        journal.acknowledge(second, verifier: 5)
        journal.release(second)
        #expect(!journal.isFull(forLength: 10000) && journal.isFull(forLength: 10001))
        let disabled = WriteJournal(capacityBytes: 0, entryCapacity: 1)
        #expect(!disabled.isEnabled && disabled.reserve(fileHandle: 1, offsetInFile: 0, length: 1) == nil)
    }
}
