import CDPFS
import DPFSCore
import DPFSPosix
import FUSEWire
import Glibc
import Logging
import Synchronization
import Virtio
import VhostUserProtocol

// Guest memory of a vhost-user device: the regions the front-end maps for us, validated before use,
// and the translation table the split queues read through. Changes happen only while every queue is
// stopped and quiesced.
extension VhostUserDevice {

    /// SET_MEM_TABLE: maps the whole new table before touching the old one (a table that cannot be
    /// mapped is refused and the memory the queues use stays as it was), then swaps it in while
    /// every queue is stopped. Takes ownership of the descriptors.
    func replaceMemory(_ descriptions: [VhostUserMemoryRegion], descriptors: [Int32]) throws(VhostUserError) {
        var mapped: [MappedRegion] = []
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
        plane.memoryRegionCount = regions.count
        rebuildQueues(restarting: running)
    }

    /// ADD_MEM_REG: one more region, checked against those mapped. Takes ownership of `fd`.
    func addMemoryRegion(_ description: VhostUserMemoryRegion, descriptor fd: Int32) throws(VhostUserError) {
        do throws(VhostUserError) {
            guard regions.count < GuestMemory.regionsMax else { throw VhostUserError("more than \(GuestMemory.regionsMax) memory regions") }
            try VhostUserCommand.validate(regions: regions.map(\.description) + [description])
        } catch {
            _ = Glibc.close(fd)
            throw error
        }
        let mapped = try map(description, fd: fd)
        let running = stopAllQueues()
        regions.append(mapped)
        plane.memoryRegionCount = regions.count
        rebuildQueues(restarting: running)
    }

    /// REM_MEM_REG: a region added before goes, while every queue is stopped.
    func removeMemoryRegion(_ description: VhostUserMemoryRegion) throws(VhostUserError) {
        guard let position = regions.firstIndex(where: {
            $0.description.guestPhysicalAddress == description.guestPhysicalAddress
                && $0.description.sizeBytes == description.sizeBytes
                && $0.description.frontendVirtualAddress == description.frontendVirtualAddress
        }) else { throw VhostUserError("REM_MEM_REG of a region that was never added") }
        let running = stopAllQueues()
        let removed = regions.remove(at: position)
        munmap(removed.mapping, removed.mappingBytes)
        plane.memoryRegionCount = regions.count
        rebuildQueues(restarting: running)
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
        plane.memoryRegionCount = 0
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
