// The control plane of one vhost-user device as a value: what the front-end has told us about
// each virtqueue and the features it acknowledged, and for each decoded command the effects the
// device must perform (stop or start a queue's thread, close a descriptor, hand a call eventfd to a
// poller, map memory, reset) and the reply. The device performs them and reports back what only it
// knows (a queue started, stopped at some ring index; memory mapped). Pure, so the protocol's
// rules — a running ring's layout cannot change, a ring starts only when it has everything, a
// descriptor replaced is closed — are unit-tested without threads, sockets or guest memory.

/// Everything the front-end told us about one virtqueue.
public struct VhostUserQueueSetup: Equatable, Sendable {
    public var size = 0
    public var nextAvailIndex: UInt16 = 0
    public var descriptorAddress: UInt64? = nil
    public var availAddress: UInt64? = nil
    public var usedAddress: UInt64? = nil
    /// -1: none (a polled ring when `kickPolled`).
    public var kickFD: Int32 = -1
    public var kickPolled = false
    public var callFD: Int32 = -1
    public var errorFD: Int32 = -1
    public var enabled = false

    public init() {}

    var descriptors: [Int32] { [kickFD, callFD, errorFD].filter { $0 >= 0 } }
}

/// An effect of a command, performed by the device in order.
public enum VhostUserControlAction: Equatable, Sendable {
    /// Stop the queue's thread (after its in-flight requests) and report `queueStopped`.
    case stopQueue(Int)
    /// Start the queue's thread if `readyToStart` says so, and report `queueStarted`.
    case startIfReady(Int)
    /// GET_VRING_BASE: the stopped ring's last index becomes its base; its translation goes.
    case forgetRing(Int)
    case closeDescriptor(Int32)
    /// Hand the queue's (stopped) poller its new call eventfd (-1: none).
    case installCall(queue: Int, descriptor: Int32)
    /// Map a whole new memory table (taking the descriptors), then restart the queues that ran.
    case replaceMemory([VhostUserMemoryRegion], descriptors: [Int32])
    case addMemoryRegion(VhostUserMemoryRegion, descriptor: Int32)
    case removeMemoryRegion(VhostUserMemoryRegion)
    /// Stop every queue, unmap the memory, end the FUSE session.
    case resetDevice
}

/// What the front-end gets back.
public enum VhostUserControlReply: Equatable, Sendable {
    /// Nothing (or, when asked for, REPLY_ACK's success).
    case none
    case payload([UInt8])
    /// GET_VRING_BASE: the queue's base once the actions are done.
    case ringBase(Int)
}

public struct VhostUserControlStep: Equatable, Sendable {
    public var actions: [VhostUserControlAction]
    public var reply: VhostUserControlReply
}

public struct VhostUserControlPlane: Sendable {
    public let limits: VhostUserLimits
    /// GET_MAX_MEM_SLOTS: guest memory regions the device can map.
    public let memoryRegionsMax: Int
    public private(set) var queues: [VhostUserQueueSetup]
    public private(set) var ackedFeatures: UInt64 = 0
    public private(set) var protocolFeatures: UInt64 = 0
    /// Which queues' threads run, as the device reported.
    public private(set) var running: [Bool]
    /// Memory regions mapped, as the device reported.
    public var memoryRegionCount = 0

    public init(limits: VhostUserLimits, memoryRegionsMax: Int) {
        self.limits = limits
        self.memoryRegionsMax = memoryRegionsMax
        queues = Array(repeating: VhostUserQueueSetup(), count: limits.queueCount)
        running = Array(repeating: false, count: limits.queueCount)
    }

    public var eventIndex: Bool { ackedFeatures & VirtioFeatures.eventIndex != 0 }
    public var indirectDescriptors: Bool { ackedFeatures & VirtioFeatures.indirectDescriptors != 0 }
    public var replyAck: Bool { protocolFeatures & VhostUserProtocolFeatures.replyAck != 0 }

    /// A stopped queue that has everything a running ring needs.
    public func readyToStart(_ index: Int) -> Bool {
        let setup = queues[index]
        return !running[index] && setup.enabled && (setup.kickFD >= 0 || setup.kickPolled) && memoryRegionCount > 0
            && setup.size > 0 && setup.descriptorAddress != nil
    }

    // MARK: - What the device reports

    public mutating func queueStarted(_ index: Int) { running[index] = true }

    /// The queue's thread stopped; `lastAvailIndex`: where its ring got to (nil: it had none).
    public mutating func queueStopped(_ index: Int, lastAvailIndex: UInt16?) {
        running[index] = false
        if let lastAvailIndex { queues[index].nextAvailIndex = lastAvailIndex }
    }

    /// Back to a fresh connection's state; the descriptors it held, for the device to close.
    public mutating func reset() -> [Int32] {
        let held = queues.flatMap(\.descriptors)
        queues = Array(repeating: VhostUserQueueSetup(), count: limits.queueCount)
        running = Array(repeating: false, count: limits.queueCount)
        ackedFeatures = 0
        protocolFeatures = 0
        return held
    }

    // MARK: - Commands

    public mutating func apply(_ command: VhostUserCommand) throws(VhostUserError) -> VhostUserControlStep {
        switch command {
        case .getFeatures: return Self.reply(VirtioFeatures.offered)
        case .setFeatures(let features):
            ackedFeatures = features
            return Self.done
        case .getProtocolFeatures: return Self.reply(VhostUserProtocolFeatures.offered)
        case .setProtocolFeatures(let features):
            protocolFeatures = features
            return Self.done
        case .setOwner: return Self.done
        case .reset: return VhostUserControlStep(actions: [.resetDevice], reply: .none)
        case .getQueueNum: return Self.reply(UInt64(limits.queueCount))
        case .getMaxMemSlots: return Self.reply(UInt64(memoryRegionsMax))
        case .setMemoryTable(let regions, let descriptors):
            return VhostUserControlStep(actions: [.replaceMemory(regions, descriptors: descriptors)], reply: .none)
        case .addMemoryRegion(let region, let descriptor):
            return VhostUserControlStep(actions: [.addMemoryRegion(region, descriptor: descriptor)], reply: .none)
        case .removeMemoryRegion(let region):
            return VhostUserControlStep(actions: [.removeMemoryRegion(region)], reply: .none)
        case .setVringNum, .setVringBase, .setVringAddr:
            try layoutChanged(command)
            return Self.done
        case .getVringBase(let index):
            // GET_VRING_BASE stops the ring; a later start comes with SET_VRING_BASE and a kick fd.
            var actions: [VhostUserControlAction] = [.stopQueue(index), .forgetRing(index)]
            if queues[index].kickFD >= 0 { actions.append(.closeDescriptor(queues[index].kickFD)) }
            queues[index].kickFD = -1
            queues[index].kickPolled = false
            return VhostUserControlStep(actions: actions, reply: .ringBase(index))
        case .setVringDescriptor(let which, let index, let descriptor):
            return VhostUserControlStep(actions: ringDescriptor(which, index, descriptor), reply: .none)
        case .setVringEnable(let index, let enabled):
            queues[index].enabled = enabled
            return VhostUserControlStep(actions: [enabled ? .startIfReady(index) : .stopQueue(index)], reply: .none)
        }
    }

    static let done = VhostUserControlStep(actions: [], reply: .none)

    static func reply(_ value: UInt64) -> VhostUserControlStep {
        VhostUserControlStep(actions: [], reply: .payload(VhostUserPayload.u64(value)))
    }

    /// SET_VRING_NUM, _BASE, _ADDR change a ring's layout: refused while it runs.
    mutating func layoutChanged(_ command: VhostUserCommand) throws(VhostUserError) {
        switch command {
        case .setVringNum(let index, let size):
            try requireStopped(index)
            queues[index].size = size
        case .setVringBase(let index, let base):
            try requireStopped(index)
            queues[index].nextAvailIndex = base
        case .setVringAddr(let index, let descriptors, let used, let avail):
            try requireStopped(index)
            queues[index].descriptorAddress = descriptors
            queues[index].usedAddress = used
            queues[index].availAddress = avail
        default:
            preconditionFailure("\(command) does not change a ring's layout")
        }
    }

    func requireStopped(_ index: Int) throws(VhostUserError) {
        guard !running[index] else { throw VhostUserError("queue \(index) is running; stop it first (GET_VRING_BASE)") }
    }

    /// SET_VRING_KICK restarts the ring on the new eventfd; SET_VRING_CALL swaps the eventfd the
    /// poller writes, only while it is stopped; SET_VRING_ERR just keeps it. The old one is closed.
    mutating func ringDescriptor(_ which: VhostUserRingDescriptor, _ index: Int, _ descriptor: Int32?) -> [VhostUserControlAction] {
        let fd = descriptor ?? -1
        switch which {
        case .kick:
            var actions: [VhostUserControlAction] = [.stopQueue(index)]
            if queues[index].kickFD >= 0 { actions.append(.closeDescriptor(queues[index].kickFD)) }
            queues[index].kickFD = fd
            queues[index].kickPolled = descriptor == nil
            // Without protocol features a ring starts enabled (vhost-user.rst, "Ring states").
            if ackedFeatures & VirtioFeatures.protocolFeatures == 0 { queues[index].enabled = true }
            return actions + [.startIfReady(index)]
        case .call:
            let wasRunning = running[index]
            var actions: [VhostUserControlAction] = [.stopQueue(index)]
            if queues[index].callFD >= 0 { actions.append(.closeDescriptor(queues[index].callFD)) }
            queues[index].callFD = fd
            actions.append(.installCall(queue: index, descriptor: fd))
            if wasRunning { actions.append(.startIfReady(index)) }
            return actions
        case .error:
            let old = queues[index].errorFD
            queues[index].errorFD = fd
            return old >= 0 ? [.closeDescriptor(old)] : []
        }
    }
}
