// NFSv4.0's client and open-owner operations (RFC 7530 §16.33 SETCLIENTID, §16.34
// SETCLIENTID_CONFIRM, §16.29 RENEW, §16.18 OPEN_CONFIRM): a 4.0 client id is made in two steps
// (the server's confirm verifier echoed back), kept alive by RENEW (4.0 has no SEQUENCE), and a
// new open-owner's first OPEN must be confirmed before its stateid may be used. The engine offers
// no callback service: the callback address it names cannot be reached, so the server grants
// no delegations.

/// SETCLIENTID's result: the client id and the verifier SETCLIENTID_CONFIRM must echo.
public struct NFSv4SetClientIDResult: Equatable, Sendable {
    public var clientID: UInt64
    /// `verifier4`, kept as the 8 bytes travel (read and written big-endian: the same bytes).
    public var confirm: UInt64

    public init(clientID: UInt64, confirm: UInt64) {
        self.clientID = clientID
        self.confirm = confirm
    }
}

/// What a refused SETCLIENTID carries.
public enum NFSv4SetClientIDAnswer: Equatable, Sendable {
    case made(NFSv4SetClientIDResult)
    /// NFS4ERR_CLID_INUSE: another principal holds this id string; the body names its callback
    /// address (read, not kept: the engine only reports the refusal).
    case inUse
    case refused(NFSv4Status)
}

/// OPEN's result flags (`rflags`, RFC 7530 §16.16.5).
public enum NFSv4OpenFlags {
    /// OPEN4_RESULT_CONFIRM: a new open-owner; OPEN_CONFIRM before the stateid is used.
    public static let confirm: UInt32 = 0x2
}

extension CompoundWriter {
    /// The longest netid and universal address written for the (unreachable) callback.
    static let callbackNetID = Array("tcp".utf8)
    static let callbackAddress = Array("127.0.0.1.0.0".utf8)

    /// SETCLIENTID: `owner` names the client across restarts; `verifier` changes with each start
    /// (the server then drops the old instance's state once the new one is confirmed).
    public mutating func setClientID(verifier: UInt64, owner: UnsafeRawBufferPointer, callbackIdent: UInt32 = 0) {
        precondition(!owner.isEmpty && owner.count <= Self.ownerBytesMax)
        operation(.setclientid)
        xdr.u64(verifier)
        xdr.opaque(owner)
        xdr.u32(0)                              // cb_program: none served
        Self.callbackNetID.withUnsafeBytes { xdr.opaque($0) }
        Self.callbackAddress.withUnsafeBytes { xdr.opaque($0) }
        xdr.u32(callbackIdent)
    }

    public mutating func setClientIDConfirm(clientID: UInt64, confirm: UInt64) {
        operation(.setclientidConfirm)
        xdr.u64(clientID)
        xdr.u64(confirm)
    }

    public mutating func renew(clientID: UInt64) {
        operation(.renew)
        xdr.u64(clientID)
    }

    /// VERIFY that the current object's fileid is `fileid` (NOT_SAME stops the COMPOUND): what
    /// names a 4.0 OPEN by (directory, name) checks first, the name being the engine's memory.
    public mutating func verifyFileid(_ fileid: UInt64) {
        operation(.verify)
        bitmap(NFSv4Bitmap([.fileid]))
        xdr.u32(8)
        xdr.u64(fileid)
    }

    /// OPEN_CONFIRM of a new open-owner's first open (`seqid`: the OPEN's plus one).
    public mutating func openConfirm(_ openStateid: NFSv4Stateid, seqid: UInt32) {
        operation(.openConfirm)
        stateid(openStateid)
        xdr.u32(seqid)
    }
}

extension CompoundReader {
    /// The longest netid or address a CLID_INUSE body may name.
    public static let clientAddressBytesMax = 256

    /// SETCLIENTID's result for `status` (the body differs with it).
    public mutating func setClientIDResult(_ status: NFSv4Status) throws(XDRError) -> NFSv4SetClientIDAnswer {
        switch status {
        case .ok: return .made(NFSv4SetClientIDResult(clientID: try xdr.u64(), confirm: try xdr.u64()))
        case .clidInuse:
            _ = try xdr.opaque(limit: Self.clientAddressBytesMax)   // r_netid
            _ = try xdr.opaque(limit: Self.clientAddressBytesMax)   // r_addr
            return .inUse
        default: return .refused(status)
        }
    }

    /// OPEN_CONFIRM's result (after an OK status): the confirmed open stateid.
    public mutating func openConfirmResult() throws(XDRError) -> NFSv4Stateid { try stateidResult() }
}
