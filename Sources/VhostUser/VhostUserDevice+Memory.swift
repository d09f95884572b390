import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import Logging
import Synchronization
import Virtio

// Guest memory of a vhost-user device: the regions the front-end maps for us, validated before use,
// and the translation table the split queues read through. Changes happen only while every queue is
// stopped and quiesced.
extension VhostUserDevice {

    func setMemoryTable(_ message: VhostUserMessage, fds: inout [Int32]) throws(VhostUserError) {
        guard let count = message.field(UInt32.self, at: 0) else { throw VhostUserError("SET_MEM_TABLE payload too short") }
        guard count >= 1, count <= UInt32(VhostUserWire.memTableRegionsMax) else {
            throw VhostUserError("SET_MEM_TABLE with \(count) regions (1...\(VhostUserWire.memTableRegionsMax) allowed)")
        }
        guard message.payload.count == 8 + Int(count) * VhostUserWire.memoryRegionBytes else {
            throw VhostUserError("SET_MEM_TABLE payload is \(message.payload.count) bytes for \(count) regions")
        }
        guard fds.count == Int(count) else {
            throw VhostUserError("SET_MEM_TABLE with \(count) regions but \(fds.count) descriptors")
        }
        var descriptions: [VhostUserMemoryRegion] = []
        for index in 0..<Int(count) {
            descriptions.append(VhostUserMemoryRegion(message, at: 8 + index * VhostUserWire.memoryRegionBytes)!)
        }
        try validateNoOverlap(descriptions)
        // Map the whole new table before touching the old one: a table that cannot be mapped is
        // refused and the memory the queues use stays as it was.
        var mapped: [MappedRegion] = []
        let descriptors = fds
        fds.removeAll()
        for (position, (description, fd)) in zip(descriptions, descriptors).enumerated() {
            do throws(VhostUserError) {
                mapped.append(try map(description, fd: fd))
            } catch {
                for region in mapped { munmap(region.mapping, region.mappingBytes) }
                for unused in descriptors[(position + 1)...] { _ = Glibc.close(unused) }
                throw error
            }
        }
        let running = stopAllQueues()
        unmapAll()
        regions = mapped
        rebuildQueues(restarting: running)
    }

    func addMemoryRegion(_ message: VhostUserMessage, fds: inout [Int32]) throws(VhostUserError) {
        guard message.payload.count == 8 + VhostUserWire.memoryRegionBytes else {
            throw VhostUserError("ADD_MEM_REG payload is \(message.payload.count) bytes, not 40")
        }
        guard fds.count == 1 else { throw VhostUserError("ADD_MEM_REG carries \(fds.count) descriptors, not 1") }
        guard regions.count < GuestMemory.regionsMax else { throw VhostUserError("more than \(GuestMemory.regionsMax) memory regions") }
        let description = VhostUserMemoryRegion(message, at: 8)!
        try validateNoOverlap(regions.map(\.description) + [description])
        let mapped = try map(description, fd: fds.removeFirst())
        let running = stopAllQueues()
        regions.append(mapped)
        rebuildQueues(restarting: running)
    }

    func removeMemoryRegion(_ message: VhostUserMessage) throws(VhostUserError) {
        guard message.payload.count == 8 + VhostUserWire.memoryRegionBytes else {
            throw VhostUserError("REM_MEM_REG payload is \(message.payload.count) bytes, not 40")
        }
        let description = VhostUserMemoryRegion(message, at: 8)!
        guard let position = regions.firstIndex(where: {
            $0.description.guestPhysicalAddress == description.guestPhysicalAddress
                && $0.description.sizeBytes == description.sizeBytes
                && $0.description.frontendVirtualAddress == description.frontendVirtualAddress
        }) else { throw VhostUserError("REM_MEM_REG of a region that was never added") }
        let running = stopAllQueues()
        let removed = regions.remove(at: position)
        munmap(removed.mapping, removed.mappingBytes)
        rebuildQueues(restarting: running)
    }

    func validateNoOverlap(_ descriptions: [VhostUserMemoryRegion]) throws(VhostUserError) {
        for (position, region) in descriptions.enumerated() {
            guard region.sizeBytes > 0,
                  region.guestPhysicalAddress.addingReportingOverflow(region.sizeBytes).overflow == false,
                  region.frontendVirtualAddress.addingReportingOverflow(region.sizeBytes).overflow == false,
                  region.mmapOffset.addingReportingOverflow(region.sizeBytes).overflow == false,
                  region.mmapOffset + region.sizeBytes <= UInt64(Int.max)
            else { throw VhostUserError("memory region \(position) has an empty or overflowing range") }
            for other in descriptions[..<position] {
                let overlaps = region.guestPhysicalAddress < other.guestPhysicalAddress + other.sizeBytes
                    && other.guestPhysicalAddress < region.guestPhysicalAddress + region.sizeBytes
                guard !overlaps else { throw VhostUserError("memory regions overlap in guest-physical space") }
            }
        }
    }

    /// Maps `mmap_offset + size` bytes from offset 0 and uses the region from `mmap_offset` on, as
    /// DPDK does: this works whatever the offset's alignment. Takes ownership of `fd`.
    func map(_ description: VhostUserMemoryRegion, fd: Int32) throws(VhostUserError) -> MappedRegion {
        defer { _ = Glibc.close(fd) }
        let length = Int(description.mmapOffset + description.sizeBytes)
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw VhostUserError("memory region fd is not a file: \(String(cString: strerror(errno)))") }
        guard Int(status.st_size) >= length else {
            throw VhostUserError("memory region needs \(length) bytes but its file has \(status.st_size)")
        }
        let pointer = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0)
        guard pointer != MAP_FAILED, let pointer else {
            throw VhostUserError("mmap of a \(length)-byte memory region failed: \(String(cString: strerror(errno)))")
        }
        return MappedRegion(description: description, mapping: pointer, mappingBytes: length)
    }

    func unmapAll() {
        for region in regions { munmap(region.mapping, region.mappingBytes) }
        regions.removeAll()
    }

    var guestMemory: GuestMemory {
        var memory = GuestMemory(storage: regionStorage)
        for region in regions {
            let added = memory.add(GuestMemoryRegion(
                guestPhysicalAddress: region.description.guestPhysicalAddress, sizeBytes: region.description.sizeBytes,
                frontendVirtualAddress: region.description.frontendVirtualAddress, local: region.local))
            precondition(added, "regions were validated when they were added")
        }
        return memory
    }
}
