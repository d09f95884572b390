import KeyValueBackend
import Testing

/// The key-value backend's table of files the kernel may still reach without a name: an orphan
/// goes only when its last RELEASE and its FORGET have both come, in either order, and the table
/// never fills with orphans whose FORGET may not come.
@Suite struct KVOpenTableTests {
    @Test("an orphan is reclaimed by whichever of its last RELEASE and its FORGET comes second")
    func eitherOrder() {
        let table = KVOpenTable(capacity: 8)
        #expect(table.open(7))
        #expect(!table.lostLastName(7), "open: kept")
        #expect(!table.release(7), "not forgotten yet: kept")
        #expect(table.forget(7), "the FORGET reclaims")
        #expect(table.count == 0)
        #expect(table.open(9))
        #expect(!table.lostLastName(9))
        #expect(!table.forget(9), "still open: kept")
        #expect(table.release(9), "the last RELEASE reclaims")
        #expect(table.count == 0)
    }

    @Test("a file nobody has open waits for its FORGET; an OPEN in between keeps it")
    func openAfterLastName() {
        let table = KVOpenTable(capacity: 8)
        #expect(!table.lostLastName(3), "the kernel may still open it")
        #expect(table.open(3))
        #expect(!table.release(3))
        #expect(table.forget(3))
        #expect(!table.forget(3), "a second FORGET is nothing")
        #expect(!table.forget(4), "neither is a FORGET of a file with a name")
        #expect(table.open(4))
        #expect(!table.release(4), "not an orphan: nothing to reclaim")
        #expect(!table.release(4), "a RELEASE more than opens is ignored")
        #expect(table.count == 0)
    }

    @Test("at most half the table waits for FORGETs: past that an orphan is reclaimed at once, and opens still find room")
    func orphansBounded() {
        let table = KVOpenTable(capacity: 8)
        for inode in UInt64(1)...4 { #expect(!table.lostLastName(inode)) }
        #expect(table.lostLastName(5), "no room to wait: reclaimed now")
        #expect(table.reclaimedWithoutRoom.load(ordering: .relaxed) == 1)
        for inode in UInt64(10)...13 { #expect(table.open(inode)) }
        #expect(!table.open(14), "full: ENFILE")
        #expect(table.forget(1))
        #expect(table.open(14), "a FORGET made room")
        table.reset()
        #expect(table.count == 0)
        #expect(!table.lostLastName(6), "a new session waits for no old FORGET")
    }
}
