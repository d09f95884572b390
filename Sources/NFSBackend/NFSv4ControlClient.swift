import CDPFS
import DPFSPosix
import Glibc
import NFSv4Wire

// NFSv4 on the control plane: one blocking connection carrying COMPOUNDs in our own XDR
// (NFSv4Wire) over libnfs's transport (the CDPFS_nfs4_* shim), and on it an NFSv4.1 client and
// session (EXCHANGE_ID, CREATE_SESSION, RECLAIM_COMPLETE; DESTROY_SESSION and DESTROY_CLIENTID at
// the end). Start-up and stop use it, and `dpfs-bench nfs4-probe` drives a file's whole life
// through it against a real server. Replies are copied out of libnfs's buffer inside its callback:
// this path allocates, the data path will not.

/// One blocking NFSv4 connection: a COMPOUND written by the caller, its reply's bytes returned.
public final class NFSv4ControlClient {
    public let url: NFSURL
    var rpc: OpaquePointer
    let timeoutNanoseconds: UInt64
    var done = false
    var failure: String? = nil
    var reply: [UInt8] = []
    /// False: a reply's bytes are not copied out, only its COMPOUND status kept (the allocation
    /// gate's bare loop, which must allocate nothing of its own).
    public var keepReply = true
    public private(set) var replyStatus: UInt32 = 0

    /// Connects to the server's NFS port as AUTH_SYS `uid`/`gid`.
    public init(url: NFSURL, timeoutMilliseconds: Int, uid: UInt32 = 0, gid: UInt32 = 0) throws(NFSStartupError) {
        precondition(url.version == 4 && timeoutMilliseconds > 0)
        self.url = url
        guard let context = rpc_init_context() else { throw NFSStartupError("NFSv4: cannot make an RPC context") }
        rpc = context
        timeoutNanoseconds = UInt64(timeoutMilliseconds) * 1_000_000
        self.uid = uid
        self.gid = gid
        try connect()
    }

    let uid: UInt32
    let gid: UInt32

    /// A new connection in place of one the server dropped (its restart).
    public func reconnect() throws(NFSStartupError) {
        rpc_destroy_context(rpc)
        guard let context = rpc_init_context() else { throw NFSStartupError("NFSv4: cannot make an RPC context") }
        rpc = context
        try connect()
    }

    func connect() throws(NFSStartupError) {
        rpc_set_autoreconnect(rpc, 0)
        rpc_set_uid(rpc, Int32(bitPattern: uid))
        rpc_set_gid(rpc, Int32(bitPattern: gid))
        done = false
        failure = nil
        let started = url.host.withCString { host in
            rpc_connect_port_async(rpc, host, Int32(url.nfsPort), Int32(NFS4_PROGRAM), Int32(NFS_V4), Self.callback, tag)
        }
        guard started == 0 else {
            throw NFSStartupError("NFSv4 service at \(url.host):\(url.nfsPort): \(String(cString: rpc_get_error(rpc)))")
        }
        try pump("connect")
        if let failure {
            throw NFSStartupError("cannot connect to the NFSv4 service at \(url.host):\(url.nfsPort): \(failure)")
        }
    }

    public func close() { rpc_destroy_context(rpc) }

    var tag: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    static let callback: rpc_cb = { _, status, data, tag in
        let client = Unmanaged<NFSv4ControlClient>.fromOpaque(tag!).takeUnretainedValue()
        client.done = true
        guard status == RPC_STATUS_SUCCESS else {
            let text = status == RPC_STATUS_ERROR && data != nil ? String(cString: data!.assumingMemoryBound(to: CChar.self)) : "RPC status \(status)"
            client.failure = text
            return
        }
        // A connect's callback carries no data; a COMPOUND's carries the raw COMPOUND4res.
        guard let data else { return }
        let captured = data.assumingMemoryBound(to: CDPFS_nfs4_reply.self).pointee
        let bytes = UnsafeRawBufferPointer(start: captured.bytes, count: Int(captured.count))
        client.replyStatus = bytes.count >= 4 ? UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self)) : UInt32.max
        if client.keepReply { client.reply = Array(bytes) }
    }

    /// Sends one COMPOUND, written by `body` into the room libnfs gives plus `roomBytes`, and
    /// returns the reply's COMPOUND4res bytes.
    public func compound(_ what: String, minorVersion: UInt32, roomBytes: Int = 0,
                         _ body: (inout CompoundWriter) -> Void) throws(NFSStartupError) -> [UInt8] {
        var area: UnsafeMutablePointer<UInt8>? = nil
        var areaBytes = 0
        var layoutWrong: Int32 = 0
        guard let pdu = CDPFS_nfs4_begin(rpc, Self.callback, tag, roomBytes, &area, &areaBytes, &layoutWrong) else {
            throw NFSStartupError(layoutWrong != 0 ? "\(what): this libnfs's private pdu layout is not libnfs 4.0's: NFSv4 refused"
                                                   : "\(what): out of memory")
        }
        var writer = CompoundWriter(buffer: UnsafeMutableRawBufferPointer(start: area, count: areaBytes), minorVersion: minorVersion)
        body(&writer)
        guard let written = writer.finish() else {
            CDPFS_nfs4_abandon(rpc, pdu)
            throw NFSStartupError("\(what): the COMPOUND does not fit \(areaBytes) bytes")
        }
        done = false
        failure = nil
        reply = []
        guard CDPFS_nfs4_send(rpc, pdu, written) == 0 else { throw NFSStartupError("\(what): cannot queue the COMPOUND") }
        try pump(what)
        if let failure { throw NFSStartupError("\(what): \(failure)") }
        return reply
    }

    func pump(_ what: String) throws(NFSStartupError) {
        let deadline = monotonicNanoseconds() + timeoutNanoseconds
        while !done {
            guard monotonicNanoseconds() < deadline else { throw NFSStartupError("\(what): no answer from \(url.host) in time") }
            var entry = pollfd(fd: rpc_get_fd(rpc), events: Int16(rpc_which_events(rpc)), revents: 0)
            let ready = Glibc.poll(&entry, 1, 100)
            if ready < 0 && errno != EINTR { throw NFSStartupError("\(what): poll: errno \(errno)") }
            if rpc_service(rpc, ready > 0 ? Int32(entry.revents) : 0) < 0 && !done {
                throw NFSStartupError("\(what): \(String(cString: rpc_get_error(rpc)))")
            }
        }
    }
}

/// An NFSv4 client id over a control connection: over 4.1 with a session of its own (slot 0 only),
/// over 4.0 made by SETCLIENTID and SETCLIENTID_CONFIRM, its COMPOUNDs carrying no SEQUENCE.
public final class NFSv4ControlSession {
    public let client: NFSv4ControlClient
    public private(set) var clientID: UInt64 = 0
    public private(set) var session = NFSv4SessionID()
    /// The fore channel the server granted.
    public private(set) var fore = NFSv4ChannelAttributes(requestBytesMax: 0, responseBytesMax: 0, responseCachedBytesMax: 0,
                                                          operationsMax: 0, requestsMax: 0)
    public private(set) var exchange = NFSv4ExchangeIDResult(clientID: 0, sequenceID: 0, flags: 0, stateProtection: 0)
    var slotSequence: UInt32 = 1
    var established = false
    /// The sequence the client's next CREATE_SESSION carries (EXCHANGE_ID's, then one more each).
    var createSessionSequence: UInt32 = 0

    func nextCreateSessionSequence() -> UInt32 {
        defer { createSessionSequence &+= 1 }
        return createSessionSequence
    }

    /// EXCHANGE_ID as `owner` (the same owner across restarts: the server then drops the old
    /// instance's state, told apart by `verifier`), CREATE_SESSION asking `slots` fore-channel
    /// slots, then RECLAIM_COMPLETE (nothing to reclaim: a new client).
    public init(client: NFSv4ControlClient, owner: [UInt8], verifier: UInt64, slots: UInt32,
                transferBytesMax: UInt32) throws(NFSStartupError) {
        precondition(slots >= 1 && (client.url.minorVersion == 1 || client.url.minorVersion == 0))
        self.client = client
        minorVersion = UInt32(client.url.minorVersion)
        self.owner = owner
        self.verifier = verifier
        self.slots = slots
        self.transferBytesMax = transferBytesMax
        try establish()
    }

    let owner: [UInt8]
    let verifier: UInt64
    /// 0 or 1: which NFSv4 this client speaks.
    public let minorVersion: UInt32
    /// NFSv4.1: what `reestablish` reclaims between CREATE_SESSION and RECLAIM_COMPLETE.
    var reclaim: (() -> Void)? = nil
    let slots: UInt32
    let transferBytesMax: UInt32

    /// The client again after the server forgot it (a restart, an expired lease): a new
    /// connection, EXCHANGE_ID with the same owner and verifier, a new control session, the
    /// reclaim of what the client held (`reclaim`: its locks; its other opens last one COMPOUND,
    /// its I/O uses the anonymous stateid), RECLAIM_COMPLETE.
    public func reestablish() throws(NFSStartupError) {
        try client.reconnect()
        try establish()
    }

    func establish() throws(NFSStartupError) {
        if minorVersion == 0 { return try establish40() }
        let owner = self.owner, verifier = self.verifier
        let exchanged = try Self.parse("EXCHANGE_ID", client.compound("EXCHANGE_ID", minorVersion: 1) { writer in
            owner.withUnsafeBytes { writer.exchangeID(verifier: verifier, owner: $0, flags: NFSv4ExchangeFlags.useNonPNFS) }
        }, operations: 1) { reader throws(XDRError) in try reader.exchangeIDResult() }
        exchange = exchanged
        clientID = exchanged.clientID
        createSessionSequence = exchanged.sequenceID
        let created = try createSession(slots: slots, transferBytesMax: transferBytesMax)
        session = created.session
        fore = created.fore
        slotSequence = 1
        established = true
        // A client made again after the server restarted reclaims what it held, in the grace
        // period, before it says it is done (not one the server still knew: its state stands).
        if !exchanged.confirmedBefore { reclaim?() }
        _ = try call("RECLAIM_COMPLETE", operations: 1) { writer in writer.reclaimComplete(oneFileSystem: false) } read: { _, _ in () }
    }

    /// NFSv4.0: SETCLIENTID as the same owner (with this start's verifier), then its confirmation.
    /// CLID_INUSE means another principal holds the owner: the engine always speaks as uid 0 here.
    func establish40() throws(NFSStartupError) {
        let owner = self.owner, verifier = self.verifier
        let answer = try Self.parse("SETCLIENTID", client.compound("SETCLIENTID", minorVersion: 0) { writer in
            owner.withUnsafeBytes { writer.setClientID(verifier: verifier, owner: $0) }
        }, operations: 1, firstMayFail: true) { reader throws(XDRError) in try reader.setClientIDResult(try reader.next(.setclientid)) }
        guard case .made(let made) = answer else {
            if answer == .inUse {
                throw NFSStartupError("SETCLIENTID: the server says another principal holds this engine's client name (CLID_INUSE)")
            }
            throw NFSStartupError("SETCLIENTID: the server answered \(answer)")
        }
        _ = try Self.parse("SETCLIENTID_CONFIRM", client.compound("SETCLIENTID_CONFIRM", minorVersion: 0) { writer in
            writer.setClientIDConfirm(clientID: made.clientID, confirm: made.confirm)
        }, operations: 1) { _ throws(XDRError) in () }
        clientID = made.clientID
        // A client made again reclaims what it held while the server is in its grace period (4.0
        // has no RECLAIM_COMPLETE: the grace period ends by itself).
        if established { reclaim?() }
        // What a 4.0 COMPOUND may carry is the server's maxread/maxwrite alone (no session's limits).
        fore = NFSv4ChannelAttributes(requestBytesMax: transferBytesMax + 8192, responseBytesMax: transferBytesMax + 8192,
                                      responseCachedBytesMax: 0, operationsMax: UInt32(CompoundWriter.operationsMax), requestsMax: slots)
        established = true
    }

    /// NFSv4.0: RENEW on the control connection; the status (STALE_CLIENTID, EXPIRED: the server
    /// forgot the client) or a thrown error (the connection is gone).
    public func renew40() throws(NFSStartupError) -> NFSv4Status {
        precondition(minorVersion == 0)
        let clientID = self.clientID
        return try Self.parse("RENEW", client.compound("RENEW", minorVersion: 0) { writer in writer.renew(clientID: clientID) },
                              operations: 1, firstMayFail: true) { reader throws(XDRError) in try reader.next(.renew) }
    }

    /// SEQUENCE on slot 0 (over 4.0: nothing), then the operations `body` writes (`operations` of
    /// them); `read` gets the reader after SEQUENCE's result and the last operation's status as
    /// sent by the server.
    public func call<T>(_ what: String, operations: Int, roomBytes: Int = 0, _ body: (inout CompoundWriter) -> Void,
                        read: (inout CompoundReader, NFSv4Status) throws(XDRError) -> T) throws(NFSStartupError) -> T {
        if minorVersion == 0 {
            let bytes = try client.compound(what, minorVersion: 0, roomBytes: roomBytes, body)
            return try Self.parse(what, bytes, operations: operations, firstMayFail: true) { reader throws(XDRError) in
                try read(&reader, reader.status)
            }
        }
        let bytes = try client.compound(what, minorVersion: 1, roomBytes: roomBytes) { writer in
            self.session.withBytes { writer.sequence(session: $0, sequenceID: slotSequence, slot: 0, highestSlot: 0, cacheThis: false) }
            body(&writer)
        }
        let session = self.session
        return try Self.parse(what, bytes, operations: operations + 1) { reader throws(XDRError) in
            let sequenceStatus = try reader.next(.sequence)
            guard sequenceStatus == .ok else { throw XDRError.invalid(at: 0, value: sequenceStatus.rawValue) }
            _ = try reader.sequenceResult(session: session)
            slotSequence &+= 1
            return try read(&reader, reader.status)
        }
    }

    /// SEQUENCE on slot 0 and `body`'s operations, the reply not copied: true when the whole
    /// COMPOUND succeeded (the allocation gate's bare loop).
    public func sendUnread(_ what: String, roomBytes: Int = 0, _ body: (inout CompoundWriter) -> Void) throws(NFSStartupError) -> Bool {
        client.keepReply = false
        defer { client.keepReply = true }
        let sequenced = minorVersion == 1
        _ = try client.compound(what, minorVersion: minorVersion, roomBytes: roomBytes) { writer in
            if sequenced {
                withUnsafeBytes(of: session.bytes) { writer.sequence(session: $0, sequenceID: slotSequence, slot: 0, highestSlot: 0, cacheThis: false) }
            }
            body(&writer)
        }
        guard client.replyStatus == 0 else { return false }
        if sequenced { slotSequence &+= 1 }
        return true
    }

    /// Reads a reply whose first result must be OK; a lie or a failed first operation is an error
    /// naming the call.
    /// (`firstMayFail`: `read` looks at every status itself.)
    static func parse<T>(_ what: String, _ bytes: [UInt8], operations: Int, firstMayFail: Bool = false,
                         _ read: (inout CompoundReader) throws(XDRError) -> T) throws(NFSStartupError) -> T {
        do throws(XDRError) {
            let result = bytes.withUnsafeBytes { raw in
                Result { () throws(XDRError) -> T in
                    var reader = try CompoundReader(buffer: raw, operationsSent: operations)
                    if operations == 1 && !firstMayFail {
                        let status = try reader.next(Self.only(what))
                        guard status == .ok else { throw XDRError.invalid(at: 0, value: status.rawValue) }
                    }
                    return try read(&reader)
                }
            }
            return try result.get()
        } catch {
            if case .invalid(at: 0, let status) = error { throw NFSStartupError("\(what): the server answered nfsstat4 \(status)") }
            throw NFSStartupError("\(what): the reply does not parse (\(error))")
        }
    }

    static func only(_ what: String) -> NFSv4Operation {
        switch what {
        case "EXCHANGE_ID": return .exchangeID
        case "CREATE_SESSION": return .createSession
        case "DESTROY_SESSION": return .destroySession
        case "SETCLIENTID_CONFIRM": return .setclientidConfirm
        default: return .destroyClientID
        }
    }

    /// DESTROY_SESSION then DESTROY_CLIENTID: the server forgets this client now, not at lease end.
    /// (NFSv4.0 has neither: its client is left to the lease.)
    public func destroy() throws(NFSStartupError) {
        guard established else { return }
        established = false
        guard minorVersion == 1 else { return }
        let session = self.session
        _ = try Self.parse("DESTROY_SESSION", client.compound("DESTROY_SESSION", minorVersion: 1) { writer in
            writer.destroySession(session)
        }, operations: 1) { _ throws(XDRError) in () }
        _ = try Self.parse("DESTROY_CLIENTID", client.compound("DESTROY_CLIENTID", minorVersion: 1) { writer in
            writer.destroyClientID(clientID)
        }, operations: 1) { _ throws(XDRError) in () }
    }
}
