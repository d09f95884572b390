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
