import FUSEWire

// NFSv4.0 opens a file only by (directory handle, name) (CLAIM_NULL; a 4.0 server need not take
// CLAIM_FH, and ganesha does not), but the engine knows its nodes by handle. So a 4.0 device keeps,
// per node, the directory and name it was last found under (LOOKUP, a create-like call, LINK, a
// READDIRPLUS entry, the hidden name of an unlinked open file) and its fileid, which the lock's OPEN
// VERIFYs before it opens the name: a name renamed away from the node since (by this engine between
// two LOOKUPs, or by another client) fails the VERIFY, and the lock ENOLCK, never opening another
// file. Written by any queue without a lock: two queues recording one node at once under two names
// may leave a torn name, which the VERIFY refuses the same way (the lock's COMPOUND copies the name
// once, so its LOOKUP and its OPEN name the same bytes).

/// The last (directory, name, fileid) of each node, by node index. Allocated at start (the node
/// table's capacity × 268 bytes), for NFSv4.0 devices only.
final class NFSv40NodeNames: @unchecked Sendable {
    static let nameBytesMax = FUSELimits.nameBytesMax
    let capacity: Int
    let parents: UnsafeMutablePointer<UInt32>
    let fileids: UnsafeMutablePointer<UInt64>
    let lengths: UnsafeMutablePointer<UInt8>
    let bytes: UnsafeMutablePointer<UInt8>

    init(capacity: Int) {
        precondition(capacity >= 1 && capacity <= 1 << 24)
        precondition(Self.nameBytesMax <= Int(UInt8.max))
        self.capacity = capacity
        parents = .allocate(capacity: capacity)
        parents.initialize(repeating: 0, count: capacity)
        fileids = .allocate(capacity: capacity)
        fileids.initialize(repeating: 0, count: capacity)
        lengths = .allocate(capacity: capacity)
        lengths.initialize(repeating: 0, count: capacity)
        bytes = .allocate(capacity: capacity * Self.nameBytesMax)
    }

    deinit {
        parents.deallocate()
        fileids.deallocate()
        lengths.deallocate()
        bytes.deallocate()
    }

    /// Node `node` was found as `name` in directory node `parent`.
    @_noAllocation @_noLocks
    func record(_ node: UInt32, parent: UInt32, name: UnsafeRawBufferPointer, fileid: UInt64) {
        guard Int(node) < capacity, name.count >= 1, name.count <= Self.nameBytesMax else { return }
        let at = Int(node)
        lengths[at] = 0
        parents[at] = parent
        fileids[at] = fileid
        UnsafeMutableRawPointer(bytes + at * Self.nameBytesMax).copyMemory(from: name.baseAddress!, byteCount: name.count)
        lengths[at] = UInt8(name.count)
    }

    /// Node `node` now lives as `name` in `parent` (its fileid unchanged): the hidden name of an
    /// unlinked open file.
    func moved(_ node: UInt32, parent: UInt32, name: UnsafeRawBufferPointer) {
        guard Int(node) < capacity, lengths[Int(node)] > 0 else { return }
        record(node, parent: parent, name: name, fileid: fileids[Int(node)])
    }

    /// Node `node`'s name is gone (its entry removed).
    func forget(_ node: UInt32) {
        guard Int(node) < capacity else { return }
        lengths[Int(node)] = 0
    }

    /// Where node `node` was last found, or nil (never, or forgotten).
    func location(_ node: UInt32) -> (parent: UInt32, name: UnsafeRawBufferPointer, fileid: UInt64)? {
        guard Int(node) < capacity, lengths[Int(node)] > 0 else { return nil }
        let at = Int(node)
        return (parents[at], UnsafeRawBufferPointer(start: bytes + at * Self.nameBytesMax, count: Int(lengths[at])), fileids[at])
    }
}
