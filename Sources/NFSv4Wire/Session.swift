// NFSv4.1's client and session operations (RFC 8881 §18.35, §18.36, §18.37, §18.50, §18.51):
// EXCHANGE_ID makes the client id, CREATE_SESSION the session whose slots every later COMPOUND's
// SEQUENCE names, RECLAIM_COMPLETE ends this client's part of a grace period, DESTROY_SESSION and
// DESTROY_CLIENTID undo both at stop. The engine asks for no state protection, no back channel and
// no delegations; a reply granting one of those anyway is read (its size is known) and reported.

/// `sessionid4`: 16 opaque bytes, kept as they travel.
public struct NFSv4SessionID: Equatable, Sendable {
    public var bytes: (UInt64, UInt64) = (0, 0)

    public init() {}

    public init(_ raw: UnsafeRawBufferPointer) {
        precondition(raw.count == 16)
        bytes = (raw.loadUnaligned(as: UInt64.self), raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
    }

    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeBytes(of: bytes) { try body($0) }
    }

    public static func == (a: NFSv4SessionID, b: NFSv4SessionID) -> Bool { a.bytes == b.bytes }
}

/// `channel_attrs4`: what one direction of a session carries.
public struct NFSv4ChannelAttributes: Equatable, Sendable {
    public var headerPadBytes: UInt32 = 0
    public var requestBytesMax: UInt32
    public var responseBytesMax: UInt32
    public var responseCachedBytesMax: UInt32
    public var operationsMax: UInt32
    /// Slots: requests in flight at once.
    public var requestsMax: UInt32

    public init(requestBytesMax: UInt32, responseBytesMax: UInt32, responseCachedBytesMax: UInt32,
                operationsMax: UInt32, requestsMax: UInt32) {
        self.requestBytesMax = requestBytesMax
        self.responseBytesMax = responseBytesMax
        self.responseCachedBytesMax = responseCachedBytesMax
        self.operationsMax = operationsMax
        self.requestsMax = requestsMax
    }
}

/// EXCHANGE_ID's result.
public struct NFSv4ExchangeIDResult: Equatable, Sendable {
    public var clientID: UInt64
    public var sequenceID: UInt32
    public var flags: UInt32
    /// `state_protect_how4` the server chose (0: SP4_NONE, the only one asked for).
    public var stateProtection: UInt32

    public init(clientID: UInt64, sequenceID: UInt32, flags: UInt32, stateProtection: UInt32) {
        self.clientID = clientID
        self.sequenceID = sequenceID
        self.flags = flags
        self.stateProtection = stateProtection
    }

    /// EXCHGID4_FLAG_CONFIRMED_R: the client id was confirmed before (a restart of ours, not new).
    public var confirmedBefore: Bool { flags & 0x8000_0000 != 0 }
}

/// CREATE_SESSION's result.
public struct NFSv4CreateSessionResult: Equatable, Sendable {
    public var session: NFSv4SessionID
    public var sequenceID: UInt32
    public var flags: UInt32
    public var fore: NFSv4ChannelAttributes
    public var back: NFSv4ChannelAttributes
}

public enum NFSv4ExchangeFlags {
    /// EXCHGID4_FLAG_USE_NON_PNFS: a plain NFS client, no pNFS.
    public static let useNonPNFS: UInt32 = 0x0001_0000
}

extension CompoundWriter {
    public static let ownerBytesMax = 1024

    /// EXCHANGE_ID: `owner` names this client across its restarts; `verifier` changes with each
    /// start (the server then drops the old instance's state).
    public mutating func exchangeID(verifier: UInt64, owner: UnsafeRawBufferPointer, flags: UInt32) {
        precondition(!owner.isEmpty && owner.count <= Self.ownerBytesMax)
        operation(.exchangeID)
        xdr.u64(verifier)
        xdr.opaque(owner)
        xdr.u32(flags)
        xdr.u32(0)          // eia_state_protect: SP4_NONE
        xdr.u32(0)          // eia_client_impl_id: none
    }

    /// CREATE_SESSION with no back channel (flags 0): callbacks are never asked for.
    public mutating func createSession(clientID: UInt64, sequenceID: UInt32, fore: NFSv4ChannelAttributes,
                                       back: NFSv4ChannelAttributes) {
        operation(.createSession)
        xdr.u64(clientID)
        xdr.u32(sequenceID)
        xdr.u32(0)          // csa_flags
        channelAttributes(fore)
        channelAttributes(back)
        xdr.u32(0x4000_0000)  // csa_cb_program (unused without a back channel)
        xdr.u32(1)          // csa_sec_parms: one, AUTH_NONE
        xdr.u32(0)
    }

    mutating func channelAttributes(_ attributes: NFSv4ChannelAttributes) {
        xdr.u32(attributes.headerPadBytes)
        xdr.u32(attributes.requestBytesMax)
        xdr.u32(attributes.responseBytesMax)
        xdr.u32(attributes.responseCachedBytesMax)
        xdr.u32(attributes.operationsMax)
        xdr.u32(attributes.requestsMax)
        xdr.u32(0)          // ca_rdma_ird: none
    }

    public mutating func reclaimComplete(oneFileSystem: Bool) {
        operation(.reclaimComplete)
        xdr.bool(oneFileSystem)
    }

    public mutating func destroySession(_ session: NFSv4SessionID) {
        operation(.destroySession)
        session.withBytes { xdr.fixedOpaque($0) }
    }

    public mutating func destroyClientID(_ clientID: UInt64) {
        operation(.destroyClientID)
        xdr.u64(clientID)
    }
}

extension CompoundReader {
    public static let serverOwnerBytesMax = 1024

    public mutating func exchangeIDResult() throws(XDRError) -> NFSv4ExchangeIDResult {
        let clientID = try xdr.u64()
        let sequenceID = try xdr.u32()
        let flags = try xdr.u32()
        let at = xdr.position
        let protection = try xdr.u32()
        switch protection {
        case 0: break
        case 1:             // SP4_MACH_CRED: spo_must_enforce, spo_must_allow
            _ = try resultBitmap()
            _ = try resultBitmap()
        default: throw .invalid(at: at, value: protection)   // SP4_SSV was not asked for
        }
        _ = try xdr.u64()                                    // so_minor_id
        _ = try xdr.opaque(limit: Self.serverOwnerBytesMax)  // so_major_id
        _ = try xdr.opaque(limit: Self.serverOwnerBytesMax)  // eir_server_scope
        if try xdr.count(limit: 1) == 1 {                    // eir_server_impl_id
            _ = try xdr.opaque(limit: Self.serverOwnerBytesMax)
            _ = try xdr.opaque(limit: Self.serverOwnerBytesMax)
            _ = try NFSv4Attributes.time(&xdr)
        }
        return NFSv4ExchangeIDResult(clientID: clientID, sequenceID: sequenceID, flags: flags, stateProtection: protection)
    }

    public mutating func createSessionResult() throws(XDRError) -> NFSv4CreateSessionResult {
        let session = NFSv4SessionID(try xdr.fixedOpaque(16))
        let sequenceID = try xdr.u32()
        let flags = try xdr.u32()
        let fore = try channelAttributes()
        let back = try channelAttributes()
        return NFSv4CreateSessionResult(session: session, sequenceID: sequenceID, flags: flags, fore: fore, back: back)
    }

    mutating func channelAttributes() throws(XDRError) -> NFSv4ChannelAttributes {
        var attributes = NFSv4ChannelAttributes(requestBytesMax: 0, responseBytesMax: 0, responseCachedBytesMax: 0,
                                                operationsMax: 0, requestsMax: 0)
        attributes.headerPadBytes = try xdr.u32()
        attributes.requestBytesMax = try xdr.u32()
        attributes.responseBytesMax = try xdr.u32()
        attributes.responseCachedBytesMax = try xdr.u32()
        attributes.operationsMax = try xdr.u32()
        attributes.requestsMax = try xdr.u32()
        if try xdr.count(limit: 1) == 1 { _ = try xdr.u32() }
        return attributes
    }

    /// A `bitmap4` in a result (OPEN's and SETATTR's attrset, a state-protection mask): up to 8
    /// words; bits past the 64th are dropped (the backend sets none of those).
    public mutating func resultBitmap() throws(XDRError) -> NFSv4Bitmap {
        var bitmap = NFSv4Bitmap()
        let words = try xdr.count(limit: 8)
        for word in 0..<words {
            let bits = try xdr.u32()
            if word == 0 { bitmap.words.0 = bits } else if word == 1 { bitmap.words.1 = bits }
        }
        return bitmap
    }
}
