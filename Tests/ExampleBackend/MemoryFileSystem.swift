import BackendKit
import DPFSConfiguration
import DPFSCore
import FUSEWire

// The worked example of docs/writing-a-backend.md, compiled with the tests and run through the
// backend conformance suite, so the guide cannot drift from the contract: a flat directory of at
// most `filesMax` files, each at most `fileBytesMax` bytes, held in memory reserved at start-up.

/// Where the files live: reserved once, shared by every queue's backend value.
final class MemoryStore: @unchecked Sendable {
    static let filesMax = 32
    static let fileBytesMax = 64 * 1024

    /// One file: its name, size and mode; `inUse` false for a free record.
    struct File {
        var inUse = false
        var generation: UInt32 = 0
        var nameLength = 0
        var name = InlineArray<256, UInt8>(repeating: 0)
        var sizeBytes = 0
        var mode: UInt32 = FileType.regular | 0o644
    }

    let files: UnsafeMutablePointer<File>
    let data: UnsafeMutableRawPointer

    init() {
        files = .allocate(capacity: Self.filesMax)
        files.initialize(repeating: File(), count: Self.filesMax)
        data = .allocate(byteCount: Self.filesMax * Self.fileBytesMax, alignment: 4096)
    }

    deinit {
        files.deallocate()
        data.deallocate()
    }
}

// [example: declaration]
public struct MemoryFileSystem: FileSystem {
    static let rootNodeID: UInt64 = 1
    let store = MemoryStore()
    let validity = CacheValidity(seconds: 1)

    public init() {}
// [end]

    // MARK: Nodes: record index + 2 in the low 32 bits, the record's generation in the high 32.

    func nodeID(_ index: Int) -> UInt64 { UInt64(store.files[index].generation) << 32 | UInt64(index + 2) }

    /// The record a node id names, if it still does (a reused record has a new generation).
    func index(of nodeID: UInt64) -> Int? {
        let index = Int(nodeID & 0xFFFF_FFFF) - 2
        guard index >= 0 && index < MemoryStore.filesMax, store.files[index].inUse,
              UInt64(store.files[index].generation) == nodeID >> 32 else { return nil }
        return index
    }

    func index(named name: Name) -> Int? {
        for index in 0..<MemoryStore.filesMax where store.files[index].inUse && store.files[index].nameLength == name.count {
            let matches = withUnsafeBytes(of: store.files[index].name) { name.equals(UnsafeRawBufferPointer(rebasing: $0[0..<name.count])) }
            if matches { return index }
        }
        return nil
    }

    func attributes(of nodeID: UInt64) -> FileAttributes? {
        let time = FUSETime(seconds: 1_700_000_000)
        if nodeID == Self.rootNodeID {
            return FileAttributes(inode: nodeID, sizeBytes: 4096, blocks: 8, accessTime: time, modificationTime: time,
                                  changeTime: time, mode: FileType.directory | 0o755, linkCount: 2, uid: 0, gid: 0, rdev: 0, blockSizeBytes: 4096)
        }
        guard let index = index(of: nodeID) else { return nil }
        let file = store.files[index]
        return FileAttributes(inode: nodeID, sizeBytes: UInt64(file.sizeBytes), blocks: UInt64(file.sizeBytes + 511) / 512,
                              accessTime: time, modificationTime: time, changeTime: time, mode: file.mode, linkCount: 1,
                              uid: 0, gid: 0, rdev: 0, blockSizeBytes: 4096)
    }

    // [example: lookup]
    public mutating func lookup(_ operation: Operation<NameArguments>, reply: EntryReply) -> BackendAnswer {
        guard operation.nodeID == Self.rootNodeID else { return reply.fail(.notDirectory) }
        guard let index = index(named: operation.arguments.name), let attributes = attributes(of: nodeID(index)) else {
            return reply.fail(.noEntry)
        }
        return reply.entry(nodeID: attributes.inode, generation: 0, entryValid: validity, attrValid: validity,
                           attributes: attributes)
    }
    // [end]

    public mutating func getattr(_ operation: Operation<GetattrArguments>, reply: AttributesReply) -> BackendAnswer {
        guard let attributes = attributes(of: operation.nodeID) else { return reply.fail(.noEntry) }
        return reply.attributes(attributes, valid: validity)
    }

    /// Size and mode can change; the rest of a memory file's attributes are fixed.
    public mutating func setattr(_ operation: Operation<SetattrArguments>, reply: AttributesReply) -> BackendAnswer {
        guard let index = index(of: operation.nodeID) else { return reply.fail(operation.nodeID == Self.rootNodeID ? .notPermitted : .noEntry) }
        let arguments = operation.arguments
        if let newSize = arguments.newSizeBytes {
            guard newSize <= UInt64(MemoryStore.fileBytesMax) else { return reply.fail(.fileTooLarge) }
            let old = store.files[index].sizeBytes, new = Int(newSize)
            // Growing reads as zeros.
            if new > old { (store.data + index * MemoryStore.fileBytesMax + old).initializeMemory(as: UInt8.self, repeating: 0, count: new - old) }
            store.files[index].sizeBytes = new
        }
        if let mode = arguments.newMode { store.files[index].mode = FileType.regular | mode }
        return reply.attributes(attributes(of: operation.nodeID)!, valid: validity)
    }

    // [example: create]
    public mutating func create(_ operation: Operation<CreateArguments>, reply: CreatedReply) -> BackendAnswer {
        guard operation.nodeID == Self.rootNodeID else { return reply.fail(.notDirectory) }
        let name = operation.arguments.name
        guard !name.isDotOrDotDot else { return reply.fail(.exists) }
        if let existing = index(named: name) {
            guard operation.arguments.flags & 0o200 == 0 else { return reply.fail(.exists) }   // O_EXCL
            return opened(existing, reply: reply)
        }
        var free = 0
        while free < MemoryStore.filesMax && store.files[free].inUse { free += 1 }
        guard free < MemoryStore.filesMax else { return reply.fail(.noSpace) }
        store.files[free].inUse = true
        store.files[free].generation &+= 1
        store.files[free].sizeBytes = 0
        store.files[free].mode = FileType.regular | (operation.arguments.mode & ~operation.arguments.umask & 0o7777)
        store.files[free].nameLength = name.count
        for offset in 0..<name.count { store.files[free].name[offset] = name.bytes[offset] }
        return opened(free, reply: reply)
    }

    /// The open file's handle is its node id: nothing is kept per open.
    func opened(_ index: Int, reply: CreatedReply) -> BackendAnswer {
        let attributes = attributes(of: nodeID(index))!
        return reply.created(nodeID: attributes.inode, generation: 0, entryValid: validity, attrValid: validity,
                             attributes: attributes, fileHandle: attributes.inode, openFlags: 0)
    }
    // [end]

    public mutating func open(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer {
        guard operation.nodeID != Self.rootNodeID else { return reply.fail(.isDirectory) }
        guard index(of: operation.nodeID) != nil else { return reply.fail(.noEntry) }
        return reply.open(fileHandle: operation.nodeID, openFlags: 0)
    }

    // [example: read]
    public mutating func read(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer {
        guard let index = index(of: operation.arguments.handle) else { return reply.fail(.badFileDescriptor) }
        let size = store.files[index].sizeBytes
        let offset = Int(min(operation.arguments.offset, UInt64(size)))
        let count = min(Int(operation.arguments.size), size - offset, reply.dataCapacity)
        // Straight into the guest's buffers: no staging copy.
        var destination = reply.data
        _ = destination.write(from: store.data + index * MemoryStore.fileBytesMax + offset, byteCount: count)
        return reply.sendInPlace(dataBytes: count)
    }
    // [end]

    public mutating func write(_ operation: Operation<WriteArguments>, reply: WrittenReply) -> BackendAnswer {
        guard let index = index(of: operation.arguments.handle) else { return reply.fail(.badFileDescriptor) }
        let offset = operation.arguments.offset, count = Int(operation.arguments.size)
        guard offset <= UInt64(MemoryStore.fileBytesMax - count) else { return reply.fail(.fileTooLarge) }
        let start = Int(offset), old = store.files[index].sizeBytes
        let file = store.data + index * MemoryStore.fileBytesMax
        // A write past the end leaves a hole, which reads as zeros.
        if start > old { (file + old).initializeMemory(as: UInt8.self, repeating: 0, count: start - old) }
        var payload = operation.arguments.payload
        guard payload.read(into: file + start, byteCount: count) == count else { return reply.fail(.io) }
        store.files[index].sizeBytes = max(old, start + count)
        return reply.written(bytes: UInt32(count))
    }

    public mutating func unlink(_ operation: Operation<NameArguments>, reply: StatusReply) -> BackendAnswer {
        guard operation.nodeID == Self.rootNodeID else { return reply.fail(.notDirectory) }
        guard let index = index(named: operation.arguments.name) else { return reply.fail(.noEntry) }
        store.files[index].inUse = false
        return reply.ok()
    }

    /// Within the one directory only; an existing target is replaced (RENAME_NOREPLACE refuses).
    public mutating func rename(_ operation: Operation<RenameArguments>, reply: StatusReply) -> BackendAnswer {
        let arguments = operation.arguments
        guard operation.nodeID == Self.rootNodeID, arguments.newParent == Self.rootNodeID else { return reply.fail(.notDirectory) }
        guard arguments.flags & ~1 == 0 else { return reply.fail(.invalid) }   // only RENAME_NOREPLACE
        guard let source = index(named: arguments.name) else { return reply.fail(.noEntry) }
        if let target = index(named: arguments.newName), target != source {
            guard arguments.flags == 0 else { return reply.fail(.exists) }
            store.files[target].inUse = false
        }
        store.files[source].nameLength = arguments.newName.count
        for offset in 0..<arguments.newName.count { store.files[source].name[offset] = arguments.newName.bytes[offset] }
        return reply.ok()
    }

    public mutating func opendir(_ operation: Operation<OpenArguments>, reply: OpenedReply) -> BackendAnswer {
        operation.nodeID == Self.rootNodeID ? reply.open(fileHandle: Self.rootNodeID, openFlags: 0) : reply.fail(.notDirectory)
    }

    /// The offset of an entry is its record index + 1: stable while other files come and go.
    public mutating func readdir(_ operation: Operation<ReadArguments>, reply: DataReply) -> BackendAnswer {
        guard operation.nodeID == Self.rootNodeID else { return reply.fail(.notDirectory) }
        var writer = DirectoryEntryWriter(destination: reply.body, capacity: min(Int(operation.arguments.size), reply.bodyCapacity))
        var index = Int(min(operation.arguments.offset, UInt64(MemoryStore.filesMax)))
        while index < MemoryStore.filesMax {
            if store.files[index].inUse {
                let length = store.files[index].nameLength
                let fits = withUnsafeBytes(of: store.files[index].name) {
                    writer.append(inode: nodeID(index), nextOffset: UInt64(index + 1), type: DirentType.regular, name: UnsafeRawBufferPointer(rebasing: $0[0..<length]))
                }
                if !fits { break }
            }
            index += 1
        }
        return reply.send(bodyBytes: writer.bytesWritten)
    }

    public mutating func statfs(_ operation: Operation<NoArguments>, reply: StatisticsReply) -> BackendAnswer {
        var used = 0
        for index in 0..<MemoryStore.filesMax where store.files[index].inUse { used += 1 }
        let blocks = UInt64(MemoryStore.filesMax * MemoryStore.fileBytesMax / 4096)
        return reply.statistics(FileSystemStatistics(
            blocks: blocks, blocksFree: blocks, blocksAvailable: blocks, files: UInt64(MemoryStore.filesMax),
            filesFree: UInt64(MemoryStore.filesMax - used), blockSizeBytes: 4096, nameBytesMax: 255, fragmentSizeBytes: 4096))
    }
}

// [example: factory]
/// How the engine would start it: a name, its settings (none beyond what the engine has), the
/// state the device's queues share, and one backend value per queue.
public struct MemoryFileSystemFactory: BackendFactory {
    public static let schema = BackendSchema(name: "memory", summary: "a flat directory held in memory", settings: [])

    public init(settings: BackendSettings, context: BackendStartContext) {}

    public var initPolicy: InitPolicy { InitPolicy() }
    public var report: String { "backend memory (\(MemoryStore.filesMax) files of \(MemoryStore.fileBytesMax) bytes at most)" }
    public func makeBackend(queue: Int) -> MemoryFileSystem { MemoryFileSystem() }
}
// [end]
