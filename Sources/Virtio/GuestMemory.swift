// The guest memory map (rust-vmm vm-memory's job): regions of guest-physical address space mapped
// into this process. Every translation checks that the whole range lies inside mapped memory; a
// range that crosses from one region into the next is split, never assumed contiguous.

/// One mapped region: guest-physical range, the front-end's virtual address for it (vhost-user
/// ring addresses are given in that space), and where it is mapped here.
@frozen
public struct GuestMemoryRegion: Equatable, @unchecked Sendable {
    public let guestPhysicalAddress: UInt64
    public let sizeBytes: UInt64
    public let frontendVirtualAddress: UInt64
    public let local: UnsafeMutableRawPointer

    public init(guestPhysicalAddress: UInt64, sizeBytes: UInt64, frontendVirtualAddress: UInt64,
                local: UnsafeMutableRawPointer) {
        precondition(sizeBytes > 0)
        precondition(guestPhysicalAddress.addingReportingOverflow(sizeBytes).overflow == false)
        precondition(frontendVirtualAddress.addingReportingOverflow(sizeBytes).overflow == false)
        self.guestPhysicalAddress = guestPhysicalAddress
        self.sizeBytes = sizeBytes
        self.frontendVirtualAddress = frontendVirtualAddress
        self.local = local
    }
}

/// A fixed-capacity table of regions. Built by the control plane; read by the data path.
@frozen
public struct GuestMemory: @unchecked Sendable {
    public static let regionsMax = 64

    @usableFromInline let regions: UnsafeMutablePointer<GuestMemoryRegion>
    public var count: Int { _count }
    @usableFromInline var _count: Int

    /// Takes ownership of nothing: `storage` must hold `regionsMax` regions and outlive the map.
    public init(storage: UnsafeMutablePointer<GuestMemoryRegion>) {
        regions = storage
        _count = 0
    }

    /// Adds a region. Overlapping guest-physical ranges are refused (they would make translation
    /// ambiguous). Returns false when refused or full.
    public mutating func add(_ region: GuestMemoryRegion) -> Bool {
        guard count < Self.regionsMax else { return false }
        let start = region.guestPhysicalAddress
        let end = start + region.sizeBytes
        for index in 0..<count {
            let other = regions[index]
            let otherEnd = other.guestPhysicalAddress + other.sizeBytes
            if start < otherEnd && other.guestPhysicalAddress < end { return false }
        }
        (regions + count).initialize(to: region)
        _count += 1
        return true
    }

    public mutating func removeAll() {
        _count = 0
    }

    public func region(at index: Int) -> GuestMemoryRegion {
        precondition(index >= 0 && index < count)
        return regions[index]
    }

    /// The local address of `[address, address + length)` if it lies inside one region.
    @inlinable
    @_noAllocation @_noLocks
    public func translate(guestPhysical address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for index in 0..<count {
            let region = regions[index]
            guard address >= region.guestPhysicalAddress else { continue }
            let offset = address &- region.guestPhysicalAddress
            guard offset < region.sizeBytes, length <= region.sizeBytes &- offset else { continue }
            return region.local + Int(offset)
        }
        return nil
    }

    /// The longest prefix of `[address, address + length)` inside one region: local address and
    /// length. Used to split a buffer that crosses regions into several segments.
    @inlinable
    @_noAllocation @_noLocks
    public func translatePrefix(guestPhysical address: UInt64, length: UInt64) -> (UnsafeMutableRawPointer, UInt64)? {
        for index in 0..<count {
            let region = regions[index]
            guard address >= region.guestPhysicalAddress else { continue }
            let offset = address &- region.guestPhysicalAddress
            guard offset < region.sizeBytes else { continue }
            return (region.local + Int(offset), min(length, region.sizeBytes &- offset))
        }
        return nil
    }

    /// The local address of a front-end virtual range (vhost-user SET_VRING_ADDR), inside one region.
    public func translate(frontendVirtual address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for index in 0..<count {
            let region = regions[index]
            guard address >= region.frontendVirtualAddress else { continue }
            let offset = address - region.frontendVirtualAddress
            guard offset < region.sizeBytes, length <= region.sizeBytes - offset else { continue }
            return region.local + Int(offset)
        }
        return nil
    }
}
