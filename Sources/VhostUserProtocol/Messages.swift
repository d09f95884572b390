// The vhost-user wire protocol (QEMU docs/interop/vhost-user.rst; ids and bits as in rust-vmm
// vhost `message.rs`), shared by the back-end (VhostUser) and the front-end (VhostUserFrontend).
// Pure: no system call. Payloads are read at explicit little-endian offsets, never through Swift
// struct layout.

/// Front-end → back-end request ids this back-end knows.
public enum VhostUserRequest: UInt32, Sendable, CustomStringConvertible {
    case getFeatures = 1
    case setFeatures = 2
    case setOwner = 3
    case resetOwner = 4
    case setMemTable = 5
    case setLogBase = 6
    case setLogFD = 7
    case setVringNum = 8
    case setVringAddr = 9
    case setVringBase = 10
    case getVringBase = 11
    case setVringKick = 12
    case setVringCall = 13
    case setVringErr = 14
    case getProtocolFeatures = 15
    case setProtocolFeatures = 16
    case getQueueNum = 17
    case setVringEnable = 18
    case sendRARP = 19
    case netSetMTU = 20
    case setBackendReqFD = 21
    case iotlbMessage = 22
    case setVringEndian = 23
    case getConfig = 24
    case setConfig = 25
    case resetDevice = 34
    case getMaxMemSlots = 36
    case addMemReg = 37
    case remMemReg = 38
    case setStatus = 39
    case getStatus = 40

    public var description: String {
        switch self {
        case .getFeatures: return "GET_FEATURES"
        case .setFeatures: return "SET_FEATURES"
        case .setOwner: return "SET_OWNER"
        case .resetOwner: return "RESET_OWNER"
        case .setMemTable: return "SET_MEM_TABLE"
        case .setLogBase: return "SET_LOG_BASE"
        case .setLogFD: return "SET_LOG_FD"
        case .setVringNum: return "SET_VRING_NUM"
        case .setVringAddr: return "SET_VRING_ADDR"
        case .setVringBase: return "SET_VRING_BASE"
        case .getVringBase: return "GET_VRING_BASE"
        case .setVringKick: return "SET_VRING_KICK"
        case .setVringCall: return "SET_VRING_CALL"
        case .setVringErr: return "SET_VRING_ERR"
        case .getProtocolFeatures: return "GET_PROTOCOL_FEATURES"
        case .setProtocolFeatures: return "SET_PROTOCOL_FEATURES"
        case .getQueueNum: return "GET_QUEUE_NUM"
        case .setVringEnable: return "SET_VRING_ENABLE"
        case .sendRARP: return "SEND_RARP"
        case .netSetMTU: return "NET_SET_MTU"
        case .setBackendReqFD: return "SET_BACKEND_REQ_FD"
        case .iotlbMessage: return "IOTLB_MSG"
        case .setVringEndian: return "SET_VRING_ENDIAN"
        case .getConfig: return "GET_CONFIG"
        case .setConfig: return "SET_CONFIG"
        case .resetDevice: return "RESET_DEVICE"
        case .getMaxMemSlots: return "GET_MAX_MEM_SLOTS"
        case .addMemReg: return "ADD_MEM_REG"
        case .remMemReg: return "REM_MEM_REG"
        case .setStatus: return "SET_STATUS"
        case .getStatus: return "GET_STATUS"
        }
    }
}

public enum VhostUserWire {
    public static let headerBytes = 12
    /// Largest payload accepted (rust-vmm's MAX_MSG_SIZE): anything larger is a broken front-end.
    public static let payloadBytesMax = 4096
    /// Most file descriptors one message may carry (rust-vmm's MAX_ATTACHED_FD_ENTRIES).
    public static let fdsMax = 32
    public static let flagVersionMask: UInt32 = 0x3
    public static let version: UInt32 = 1
    public static let flagReply: UInt32 = 0x4
    public static let flagNeedReply: UInt32 = 0x8
    /// Bit 8 of SET_VRING_KICK/CALL/ERR: no file descriptor attached (poll instead).
    public static let vringNoFDFlag: UInt64 = 0x100
    public static let vringIndexMask: UInt64 = 0xFF
    public static let memoryRegionBytes = 32
    /// SET_MEM_TABLE carries at most this many regions (QEMU's VHOST_MEMORY_BASELINE_NREGIONS).
    public static let memTableRegionsMax = 8
}

/// Virtio and vhost-user feature bits.
public enum VirtioFeatures {
    public static let indirectDescriptors: UInt64 = 1 << 28
    public static let eventIndex: UInt64 = 1 << 29
    /// VHOST_USER_F_PROTOCOL_FEATURES: a reused bit, never exposed to the guest.
    public static let protocolFeatures: UInt64 = 1 << 30
    public static let version1: UInt64 = 1 << 32

    /// What this back-end offers.
    public static let offered: UInt64 = version1 | protocolFeatures | eventIndex | indirectDescriptors
}

public enum VhostUserProtocolFeatures {
    public static let multiqueue: UInt64 = 1 << 0
    public static let replyAck: UInt64 = 1 << 3
    public static let resetDevice: UInt64 = 1 << 13
    public static let configureMemSlots: UInt64 = 1 << 15

    /// What this back-end offers: no CONFIG (QEMU serves virtio-fs config itself), no LOG_SHMFD
    /// (no live migration yet: QEMU then installs a migration blocker).
    public static let offered: UInt64 = multiqueue | replyAck | resetDevice | configureMemSlots
}

/// One received message: header fields, payload and attached descriptors.
public struct VhostUserMessage: Sendable {
    public var requestRaw: UInt32
    public var flags: UInt32
    public var payload: [UInt8]
    public var fds: [Int32]

    public init(requestRaw: UInt32, flags: UInt32, payload: [UInt8], fds: [Int32]) {
        self.requestRaw = requestRaw
        self.flags = flags
        self.payload = payload
        self.fds = fds
    }

    public var request: VhostUserRequest? { VhostUserRequest(rawValue: requestRaw) }
    public var needsReply: Bool { flags & VhostUserWire.flagNeedReply != 0 }

    /// A little-endian integer at `offset` of the payload, or nil when the payload is too short.
    public func field<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T? {
        guard offset >= 0, offset + MemoryLayout<T>.size <= payload.count else { return nil }
        var value: T = 0
        for index in 0..<MemoryLayout<T>.size {
            value |= T(payload[offset + index]) << (8 * index)
        }
        return value
    }
}

/// A memory region as SET_MEM_TABLE and ADD_MEM_REG describe it.
public struct VhostUserMemoryRegion: Equatable, Sendable {
    public var guestPhysicalAddress: UInt64
    public var sizeBytes: UInt64
    public var frontendVirtualAddress: UInt64
    public var mmapOffset: UInt64

    public init(guestPhysicalAddress: UInt64, sizeBytes: UInt64, frontendVirtualAddress: UInt64, mmapOffset: UInt64) {
        self.guestPhysicalAddress = guestPhysicalAddress
        self.sizeBytes = sizeBytes
        self.frontendVirtualAddress = frontendVirtualAddress
        self.mmapOffset = mmapOffset
    }

    /// Reads a 32-byte region description at `offset` of `message`'s payload.
    public init?(_ message: VhostUserMessage, at offset: Int) {
        guard let gpa = message.field(UInt64.self, at: offset),
              let size = message.field(UInt64.self, at: offset + 8),
              let uaddr = message.field(UInt64.self, at: offset + 16),
              let mmapOffset = message.field(UInt64.self, at: offset + 24) else { return nil }
        self.init(guestPhysicalAddress: gpa, sizeBytes: size, frontendVirtualAddress: uaddr, mmapOffset: mmapOffset)
    }
}

/// A refused message: why, for the log and for REPLY_ACK.
public struct VhostUserError: Error, CustomStringConvertible, Sendable {
    public let message: String
    /// Whether the connection can go on (a refused request) or must be closed (a broken stream).
    public let fatal: Bool

    public init(_ message: String, fatal: Bool = false) {
        self.message = message
        self.fatal = fatal
    }

    public var description: String { message }
}

/// Little-endian payload builders.
public enum VhostUserPayload {
    public static func u64(_ value: UInt64) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: value >> UInt64(8 * $0)) }
    }

    public static func vringState(index: UInt32, number: UInt32) -> [UInt8] {
        (0..<4).map { UInt8(truncatingIfNeeded: index >> UInt32(8 * $0)) }
            + (0..<4).map { UInt8(truncatingIfNeeded: number >> UInt32(8 * $0)) }
    }
}
