import BackendKit
import Synchronization
import Testing

/// BackendKit's PinnedTable on its own, with a payload that records what the table asks of it:
/// ids and generations, lookup counts, pins outliving FORGET, the bound, the identity hash under
/// collisions, the busy mark, and the permanent root.
@Suite struct PinnedTableTests {
    /// Keys per record and how many times each record was freed.
    struct CountingPayload: PinnedRecordPayload {
        let keys: UnsafeMutablePointer<UInt64>
        let frees: UnsafeMutablePointer<Atomic<Int>>
        let capacity: Int

        init(capacity: Int) {
            self.capacity = capacity
            keys = .allocate(capacity: capacity)
            keys.initialize(repeating: 0, count: capacity)
            frees = .allocate(capacity: capacity)
            for index in 0..<capacity { (frees + index).initialize(to: Atomic(0)) }
        }

        func recordFreed(_ index: UInt32) { frees[Int(index)].add(1, ordering: .relaxed) }
        func deallocate() {
            keys.deallocate()
            frees.deallocate()
        }
        func freeCount(_ index: UInt32) -> Int { frees[Int(index)].load(ordering: .relaxed) }
    }

    typealias Table = PinnedTable<CountingPayload>

    static func table(capacity: Int = 16, keyed: Bool = true, reserved: Int = 0) -> Table {
        Table(capacity: capacity, keyed: keyed, reservedIndices: reserved, payload: CountingPayload(capacity: capacity))
    }

    /// Finds or adds `key` (hashed with `hash`, which tests may make collide), one lookup counted.
    static func enter(_ table: Table, key: UInt64, hash: (UInt64) -> UInt64 = { $0 &* 0x9E37_79B9_7F4A_7C15 }) -> UInt64? {
        table.withLock { () -> UInt64? in
            if let index = find(table, key: key, hash: hash) {
                table.countLookup(index)
                return table.id(of: index)
            }
            guard let index = table.takeFree() else { return nil }
            table.payload.keys[Int(index)] = key
            table.publish(index, keyHash: hash(key))
            return table.id(of: index)
        }
    }

    static func find(_ table: Table, key: UInt64, hash: (UInt64) -> UInt64 = { $0 &* 0x9E37_79B9_7F4A_7C15 }) -> UInt32? {
        table.find(keyHash: hash(key)) { table.payload.keys[Int($0)] == key }
    }

    @Test("an id names its record until it is freed; a stale, zero or out-of-range id names nothing")
    func idsAndGenerations() throws {
        let table = Self.table()
        let id = try #require(Self.enter(table, key: 7))
        let index = try #require(table.pin(id))
        #expect(UInt64(index) == id & 0xFFFF_FFFF)
        table.unpin(index)
        table.forget(id, count: 1)
        #expect(table.payload.freeCount(index) == 1)
        #expect(table.pin(id) == nil, "the freed record's old id is stale")
        let again = try #require(Self.enter(table, key: 8))
        #expect(again & 0xFFFF_FFFF == id & 0xFFFF_FFFF, "the index is reused first")
        #expect(again >> 32 == (id >> 32) + 1, "with a newer generation")
        #expect(table.pin(id) == nil, "the old id does not reach the new occupant")
        #expect(table.pin(0) == nil)
        #expect(table.pin(UInt64(1) << 32 | 16) == nil, "index past the capacity")
    }

    @Test("FORGET drops counted lookups; the record goes at zero, over-counts and unknown ids are ignored")
    func lookupCounts() throws {
        let table = Self.table()
        let id = try #require(Self.enter(table, key: 1))
        #expect(Self.enter(table, key: 1) == id, "a second LOOKUP finds the same record")
        #expect(Self.enter(table, key: 1) == id)
        #expect(!table.forget(id, count: 2), "one lookup is left")
        #expect(table.pin(id).map { table.unpin($0) } != nil)
        #expect(table.forget(id, count: 5), "the last lookup (over-counted) frees it")
        #expect(table.inUse == 0)
        #expect(!table.forget(id, count: 1), "a forgotten id is ignored")
        #expect(!table.forget(12_345, count: 1), "an invented id is ignored")
    }

    @Test("a request's pin outlives FORGET: the payload is released by the last unpin, once")
    func pinOutlivesForget() throws {
        let table = Self.table()
        let id = try #require(Self.enter(table, key: 3))
        let index = try #require(table.pin(id))
        table.retain(index)
        #expect(table.forget(id, count: 1))
        #expect(table.payload.freeCount(index) == 0, "two requests still use it")
        #expect(Self.find(table, key: 3) == nil, "but a new LOOKUP no longer finds it")
        let third = try #require(table.pin(id), "the id stays current until the record is freed")
        table.unpin(third)
        table.unpin(index)
        #expect(table.payload.freeCount(index) == 0)
        table.unpin(index)
        #expect(table.payload.freeCount(index) == 1)
        #expect(table.pin(id) == nil)
    }

    @Test("the table is bounded: a full table refuses, a freed record is handed out again")
    func bounded() throws {
        let table = Self.table(capacity: 5)
        var ids: [UInt64] = []
        for key in 1...4 { ids.append(try #require(Self.enter(table, key: UInt64(key)))) }
        #expect(Self.enter(table, key: 99) == nil, "4 records at most (index 0 is never issued)")
        #expect(table.inUse == 4)
        table.forget(ids[2], count: 1)
        #expect(Self.enter(table, key: 99) != nil)
        #expect(table.inUse == 4)
    }

    @Test("colliding keys: every key stays findable while others leave the probe run (backward shift)")
    func collisions() throws {
        let table = Self.table(capacity: 64)
        // Half the keys share one home cell, the rest land beside it: long, interleaved probe runs.
        let hash: (UInt64) -> UInt64 = { $0 % 2 == 0 ? 5 : 5 + $0 % 3 }
        var model: [UInt64: UInt64] = [:]
        var generator = SystemRandomNumberGenerator()
        for round in 0..<2000 {
            let key = UInt64.random(in: 1...40, using: &generator)
            if let id = model[key], Bool.random(using: &generator) {
                table.forget(id, count: .max)
                model[key] = nil
            } else if model[key] == nil {
                model[key] = try #require(Self.enter(table, key: key, hash: hash))
            }
            for (known, id) in model {
                let found = Self.find(table, key: known, hash: hash)
                #expect(found.map { table.id(of: $0) } == id, "key \(known) lost in round \(round)")
            }
        }
        #expect(table.inUse == model.count)
    }

    @Test("an open handle (unkeyed): its first RELEASE drops it, a second one is refused")
    func handles() throws {
        let table = Self.table(keyed: false)
        let index = try #require(table.withLock { () -> UInt32? in
            guard let index = table.takeFree() else { return nil }
            table.publish(index)
            return index
        })
        let id = table.id(of: index)
        #expect(table.forget(id, count: 1))
        #expect(!table.forget(id, count: 1))
        #expect(table.payload.freeCount(index) == 1)
    }

    @Test("the busy mark is taken only on an idle record, and holds off no one after it is cleared")
    func busyMark() throws {
        let table = Self.table()
        let id = try #require(Self.enter(table, key: 4))
        let index = try #require(table.pin(id))
        #expect(!table.markBusyIfIdle(index), "a request holds it")
        table.unpin(index)
        #expect(table.markBusyIfIdle(index))
        table.clearBusy(index)
        let again = try #require(table.pin(id))
        table.unpin(again)
    }

    @Test("a permanent root is id 1, found by its key, and never forgotten")
    func permanentRoot() throws {
        let table = Self.table(reserved: 1)
        table.payload.keys[1] = 42
        table.installPermanent(1, keyHash: 42 &* 0x9E37_79B9_7F4A_7C15)
        #expect(table.id(of: 1) == 1)
        #expect(Self.find(table, key: 42) == 1)
        #expect(Self.enter(table, key: 42) == 1, "a LOOKUP returning the root's key gets node 1")
        table.forget(1, count: .max)
        table.forgetAll()
        let root = try #require(table.pin(1))
        table.unpin(root)
        #expect(table.payload.freeCount(1) == 0)
        #expect(table.inUse == 0)
        let other = try #require(Self.enter(table, key: 9))
        #expect(other & 0xFFFF_FFFF == 2, "ordinary records start after the reserved index")
    }
}
