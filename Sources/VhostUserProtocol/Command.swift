// A vhost-user message decoded into what it asks, every field checked: the payload's size, queue
// indices, sizes and bases within their limits, feature bits that were offered, the descriptors
// each request carries. A message that fails any check is refused here, before the control plane
// or the device sees it. Pure: descriptors are numbers the caller owns until a command takes them.

/// The limits of the device a message is decoded for.
public struct VhostUserLimits: Equatable, Sendable {
    /// Virtqueues, the hiprio queue included.
    public let queueCount: Int
    /// Largest virtqueue size (a power of two).
    public let queueSizeMax: Int

    public init(queueCount: Int, queueSizeMax: Int) {
        precondition(queueCount >= 1 && queueCount <= 256 && queueSizeMax >= 1)
        self.queueCount = queueCount
        self.queueSizeMax = queueSizeMax
    }
}

/// Which of a ring's three descriptors SET_VRING_KICK, _CALL and _ERR set.
public enum VhostUserRingDescriptor: Equatable, Sendable {
    case kick, call, error
}

public enum VhostUserCommand: Equatable, Sendable {
    case getFeatures
    case setFeatures(UInt64)
    case getProtocolFeatures
    case setProtocolFeatures(UInt64)
    case setOwner
    /// RESET_OWNER and RESET_DEVICE: back to a fresh connection's state.
    case reset
    case getQueueNum
    case getMaxMemSlots
    /// The whole guest memory: regions and one descriptor each (owned by the command).
    case setMemoryTable([VhostUserMemoryRegion], descriptors: [Int32])
    case addMemoryRegion(VhostUserMemoryRegion, descriptor: Int32)
    case removeMemoryRegion(VhostUserMemoryRegion)
    case setVringNum(queue: Int, size: Int)
    case setVringBase(queue: Int, base: UInt16)
    case setVringAddr(queue: Int, descriptors: UInt64, used: UInt64, avail: UInt64)
    case getVringBase(queue: Int)
    /// A ring's kick, call or error eventfd; nil: none (the ring is polled).
    case setVringDescriptor(VhostUserRingDescriptor, queue: Int, descriptor: Int32?)
    case setVringEnable(queue: Int, enabled: Bool)

    /// Decodes `message`; the descriptors the command keeps are taken out of `descriptors` (the
    /// caller closes what is left). Throws for anything malformed or not supported.
    public static func decode(_ message: VhostUserMessage, descriptors: inout [Int32],
                              limits: VhostUserLimits) throws(VhostUserError) -> VhostUserCommand {
        guard let request = message.request else { throw VhostUserError("unknown request id \(message.requestRaw)") }
        let decoder = VhostUserDecoder(message: message, request: request, limits: limits)
        switch request {
        case .getFeatures: return .getFeatures
        case .setFeatures: return .setFeatures(try decoder.features(offered: VirtioFeatures.offered, what: "features"))
        case .getProtocolFeatures: return .getProtocolFeatures
        case .setProtocolFeatures:
            return .setProtocolFeatures(try decoder.features(offered: VhostUserProtocolFeatures.offered, what: "protocol features"))
        case .setOwner: return .setOwner
        case .resetOwner, .resetDevice: return .reset
        case .getQueueNum: return .getQueueNum
        case .getMaxMemSlots: return .getMaxMemSlots
        case .setMemTable: return try decoder.memoryTable(descriptors: &descriptors)
        case .addMemReg: return try decoder.addedRegion(descriptors: &descriptors)
        case .remMemReg: return .removeMemoryRegion(try decoder.singleRegion())
        case .setVringNum, .setVringBase, .getVringBase, .setVringEnable: return try decoder.ringState()
        case .setVringAddr: return try decoder.ringAddresses()
        case .setVringKick, .setVringCall, .setVringErr: return try decoder.ringDescriptor(descriptors: &descriptors)
        case .setLogBase, .setLogFD, .sendRARP, .netSetMTU, .setBackendReqFD, .iotlbMessage, .setVringEndian,
             .getConfig, .setConfig, .setStatus, .getStatus:
            throw VhostUserError("\(request) is not supported by this back-end (its feature was not offered)")
        }
    }

    /// Checks a memory table's regions: each a non-empty range that does not overflow, no two
    /// overlapping in guest-physical space.
    public static func validate(regions descriptions: [VhostUserMemoryRegion]) throws(VhostUserError) {
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
}

/// The field checks of one message.
struct VhostUserDecoder {
    let message: VhostUserMessage
    let request: VhostUserRequest
    let limits: VhostUserLimits

    func exactly<T: FixedWidthInteger>(_ type: T.Type, at offset: Int, payloadBytes: Int) throws(VhostUserError) -> T {
        guard message.payload.count == payloadBytes, let value = message.field(T.self, at: offset) else {
            throw VhostUserError("\(request) payload is \(message.payload.count) bytes, not \(payloadBytes)")
        }
        return value
    }

    func queue(_ value: UInt64) throws(VhostUserError) -> Int {
        guard value < UInt64(limits.queueCount) else {
            throw VhostUserError("queue \(value) does not exist (the device has \(limits.queueCount))")
        }
        return Int(value)
    }

    /// A SET_*FEATURES payload: exactly one u64, with no bit that was never offered.
    func features(offered: UInt64, what: String) throws(VhostUserError) -> UInt64 {
        let features = try exactly(UInt64.self, at: 0, payloadBytes: 8)
        guard features & ~offered == 0 else {
            throw VhostUserError("\(what) 0x\(String(features, radix: 16)) include bits never offered")
        }
        return features
    }

    /// SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE, SET_VRING_ENABLE: a queue index and a number.
    func ringState() throws(VhostUserError) -> VhostUserCommand {
        guard message.payload.count == 8 else { throw VhostUserError("vring state payload is \(message.payload.count) bytes, not 8") }
        let index = try queue(UInt64(message.field(UInt32.self, at: 0)!))
        let number = message.field(UInt32.self, at: 4)!
        switch request {
        case .setVringNum:
            guard number > 0, number <= UInt32(limits.queueSizeMax), number & (number - 1) == 0 else {
                throw VhostUserError("queue \(index) size \(number) is not a power of two in 1...\(limits.queueSizeMax)")
            }
            return .setVringNum(queue: index, size: Int(number))
        case .setVringBase:
            guard number <= UInt32(UInt16.max) else { throw VhostUserError("queue \(index) base \(number) exceeds 65535") }
            return .setVringBase(queue: index, base: UInt16(number))
        case .getVringBase:
            return .getVringBase(queue: index)
        default:
            guard number <= 1 else { throw VhostUserError("SET_VRING_ENABLE \(number) for queue \(index)") }
            return .setVringEnable(queue: index, enabled: number == 1)
        }
    }

    func ringAddresses() throws(VhostUserError) -> VhostUserCommand {
        guard message.payload.count == 40 else { throw VhostUserError("SET_VRING_ADDR payload is \(message.payload.count) bytes, not 40") }
        return .setVringAddr(queue: try queue(UInt64(message.field(UInt32.self, at: 0)!)),
                             descriptors: message.field(UInt64.self, at: 8)!, used: message.field(UInt64.self, at: 16)!,
                             avail: message.field(UInt64.self, at: 24)!)
    }

    /// SET_VRING_KICK, _CALL, _ERR: a queue index, the no-descriptor bit, and exactly the
    /// descriptors it announces.
    func ringDescriptor(descriptors: inout [Int32]) throws(VhostUserError) -> VhostUserCommand {
        let value = try exactly(UInt64.self, at: 0, payloadBytes: 8)
        let index = try queue(value & VhostUserWire.vringIndexMask)
        let none = value & VhostUserWire.vringNoFDFlag != 0
        guard value & ~(VhostUserWire.vringIndexMask | VhostUserWire.vringNoFDFlag) == 0 else {
            throw VhostUserError("\(request) has unknown bits set: \(value)")
        }
        guard none ? descriptors.isEmpty : descriptors.count == 1 else {
            throw VhostUserError("\(request) for queue \(index) carries \(descriptors.count) descriptors")
        }
        let which: VhostUserRingDescriptor = request == .setVringKick ? .kick : request == .setVringCall ? .call : .error
        return .setVringDescriptor(which, queue: index, descriptor: none ? nil : descriptors.removeFirst())
    }

    func memoryTable(descriptors: inout [Int32]) throws(VhostUserError) -> VhostUserCommand {
        guard let count = message.field(UInt32.self, at: 0) else { throw VhostUserError("SET_MEM_TABLE payload too short") }
        guard count >= 1, count <= UInt32(VhostUserWire.memTableRegionsMax) else {
            throw VhostUserError("SET_MEM_TABLE with \(count) regions (1...\(VhostUserWire.memTableRegionsMax) allowed)")
        }
        guard message.payload.count == 8 + Int(count) * VhostUserWire.memoryRegionBytes else {
            throw VhostUserError("SET_MEM_TABLE payload is \(message.payload.count) bytes for \(count) regions")
        }
        guard descriptors.count == Int(count) else {
            throw VhostUserError("SET_MEM_TABLE with \(count) regions but \(descriptors.count) descriptors")
        }
        let regions = (0..<Int(count)).map { VhostUserMemoryRegion(message, at: 8 + $0 * VhostUserWire.memoryRegionBytes)! }
        try VhostUserCommand.validate(regions: regions)
        defer { descriptors.removeAll() }
        return .setMemoryTable(regions, descriptors: descriptors)
    }

    func singleRegion() throws(VhostUserError) -> VhostUserMemoryRegion {
        guard message.payload.count == 8 + VhostUserWire.memoryRegionBytes else {
            throw VhostUserError("\(request) payload is \(message.payload.count) bytes, not 40")
        }
        return VhostUserMemoryRegion(message, at: 8)!
    }

    func addedRegion(descriptors: inout [Int32]) throws(VhostUserError) -> VhostUserCommand {
        let region = try singleRegion()
        guard descriptors.count == 1 else { throw VhostUserError("ADD_MEM_REG carries \(descriptors.count) descriptors, not 1") }
        try VhostUserCommand.validate(regions: [region])
        return .addMemoryRegion(region, descriptor: descriptors.removeFirst())
    }
}
