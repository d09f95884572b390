import CDPFS
import DPFSCore
import Glibc

/// What kind of memory the arena got.
public enum ArenaMemoryKind: String, Sendable {
    /// Reserved 2 MiB hugepages (`/proc/sys/vm/nr_hugepages`).
    case hugepages2MiB = "2 MiB hugepages"
    /// Anonymous memory advised for transparent hugepages (the kernel may back it with them).
    case transparentHugepages = "anonymous memory advised for transparent hugepages"
    /// Plain anonymous memory (THP disabled on this kernel).
    case regularPages = "anonymous memory in 4 KiB pages"
}

/// The start-up memory of the engine: one mapping, on the NUMA node of the thread that creates it,
/// from hugepages when any are reserved. Unmapped when the arena is released.
public final class HugepageArena: @unchecked Sendable {
    public static let hugepageBytes = 2 << 20

    public let base: UnsafeMutableRawPointer
    public let sizeBytes: Int
    public let kind: ArenaMemoryKind
    /// NUMA node the memory was bound to and faulted in on, or nil without NUMA support.
    public let numaNode: Int?
    /// Why hugepages were not used, when they were not.
    public let fallbackReason: String?

    /// Maps at least `bytes` bytes, prefaulted, bound to the NUMA node of the calling thread.
    public init(bytes: Int, allowHugepages: Bool = true) throws(SystemCallError) {
        precondition(bytes > 0)
        let size = (bytes + Self.hugepageBytes - 1) / Self.hugepageBytes * Self.hugepageBytes
        let cpu = sched_getcpu()
        let node: Int? = (numa_available() >= 0 && cpu >= 0) ? Int(numa_node_of_cpu(cpu)) : nil

        var mapped: UnsafeMutableRawPointer? = nil
        var kind = ArenaMemoryKind.hugepages2MiB
        var fallbackReason: String? = nil
        if allowHugepages {
            let pointer = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | CDPFS_map_huge_2mb(), -1, 0)
            if pointer != MAP_FAILED, let pointer {
                mapped = pointer
            } else {
                let error = Glibc.errno
                fallbackReason = "no hugepages available (\(String(cString: strerror(error)))); reserve them with "
                    + "`echo \(size / Self.hugepageBytes) > /proc/sys/vm/nr_hugepages`"
            }
        } else {
            fallbackReason = "hugepages disabled by configuration"
        }
        if mapped == nil {
            let pointer = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            guard pointer != MAP_FAILED, let pointer else {
                throw SystemCallError(call: "mmap(\(size) bytes)", errno: Glibc.errno)
            }
            mapped = pointer
            kind = madvise(pointer, size, MADV_HUGEPAGE) == 0 ? .transparentHugepages : .regularPages
        }
        let base = mapped!
        // Bind before the first touch, so every page is allocated on the poller's node.
        if let node {
            numa_tonode_memory(base, size, Int32(node))
        }
        // Fault everything in now: the data path must never take a page fault on arena memory.
        base.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        self.base = base
        self.sizeBytes = size
        self.kind = kind
        self.fallbackReason = fallbackReason
        self.numaNode = node.map { _ in Self.nodeOf(address: base) ?? node! }
    }

    deinit {
        munmap(base, sizeBytes)
    }

    /// An allocator over the whole arena.
    public func allocator() -> ArenaAllocator {
        ArenaAllocator(base: base, capacityBytes: sizeBytes)
    }

    /// The node the kernel actually placed the page at `address` on.
    static func nodeOf(address: UnsafeMutableRawPointer) -> Int? {
        var node: Int32 = -1
        let result = get_mempolicy(&node, nil, 0, address, UInt32(MPOL_F_NODE | MPOL_F_ADDR))
        return result == 0 && node >= 0 ? Int(node) : nil
    }

    /// One line for the start-up report.
    public var report: String {
        let tenthsOfMebibytes = (sizeBytes * 10 + (1 << 19)) >> 20
        var line = "arena: \(tenthsOfMebibytes / 10).\(tenthsOfMebibytes % 10) MiB of \(kind.rawValue)"
        line += numaNode.map { " on NUMA node \($0)" } ?? " (no NUMA support)"
        if let fallbackReason { line += "; \(fallbackReason)" }
        return line
    }
}
