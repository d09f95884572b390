import FUSEWire

// A request's NFS stages as a pure value (docs/architecture.md §7). A FUSE request becomes one to
// four NFSv3 calls on its slot: the main call, then a LOOKUP when a create-like call came back
// without the new file handle, a SETATTR of the mode after an exclusive CREATE, a GETATTR when the
// server sent no attributes; UNLINK and RENAME look their target up first and hide a file the guest
// still has open; FSYNC and RELEASE resend what a restarted server lost before they COMMIT again.
// The plan decides which call comes next and what the request answers; the driver (NFSQueue)
// sends `call`, turns the server's answer — or the connection's end — into an `NFSStageOutcome`,
// and performs the `NFSStageAction` `answer` returns. Nothing here touches a table, the journal or
// the network, so every stage is unit-tested without a server (NFSStagePlanTests).

/// What a slot's stages have gathered so far, and how the current stage is to be sent.
struct NFSProgress: OptionSet, Equatable {
    let rawValue: UInt16
    /// The slot's staged handle holds the node the entry reply names.
    static let haveHandle = NFSProgress(rawValue: 1)
    /// The slot's staged attributes hold its attributes.
    static let haveAttributes = NFSProgress(rawValue: 2)
    /// An exclusive CREATE: the mode is set by a SETATTR once the file exists.
    static let needsModeSetattr = NFSProgress(rawValue: 4)
    /// GETATTR / SETATTR go to the staged handle, not to the request's node.
    static let stagedTarget = NFSProgress(rawValue: 8)
    /// CREATE GUARDED (MKNOD of a regular file): not safe to send twice.
    static let guarded = NFSProgress(rawValue: 16)
    /// CREATE EXCLUSIVE (O_EXCL): safe to send again, the verifier makes the server see a repeat.
    static let exclusive = NFSProgress(rawValue: 32)
    /// RENAME_NOREPLACE: a LOOKUP of the new name first (EEXIST when it is there). Not atomic
    /// (NFSv3 has no such RENAME); the same check Linux's NFS client makes.
    static let noReplaceCheck = NFSProgress(rawValue: 64)
    /// UNLINK: a LOOKUP of the name first; a regular file with one link that the guest still has
    /// open is renamed to its hidden name instead of removed ("silly rename", as NFS clients do).
    static let removeCheck = NFSProgress(rawValue: 128)
    /// RENAME over a name: the same check for the file it would replace.
    static let replaceCheck = NFSProgress(rawValue: 256)
    /// The RENAME of this stage moves the slot's staged node to its hidden name.
    static let hiding = NFSProgress(rawValue: 512)
    /// The REMOVE of this stage removes the staged node's hidden name.
    static let removingHidden = NFSProgress(rawValue: 1024)
    /// OPEN counts its node open from the start, not from the answer: an UNLINK racing the OPEN
    /// (the kernel holds no lock across them) must see the file as open and hide it. The driver
    /// clears it when the count passes to the open.
    static let countedOpen = NFSProgress(rawValue: 2048)
    /// Sent again with the engine's own ids (AUTH_SYS uid 0): a SETATTR that only drops set-ID bits,
    /// which the server refused the writer who asked for it.
    static let asEngine = NFSProgress(rawValue: 4096)
    /// NFSv4.1 lock: read and write access was refused (a read-only file or export, a write-only
    /// file), so the lock's OPEN asks only for the access its type needs.
    static let lockTypeAccessOnly = NFSProgress(rawValue: 8192)
}

/// The FUSE request a plan serves, as far as its stages differ.
enum NFSRequestKind: UInt8 {
    case other = 0
    case unlink, rename, release, access, open

    init(_ opcodeRaw: UInt32) {
        switch FUSEOpcode(rawValue: opcodeRaw) {
        case .unlink: self = .unlink
        case .rename, .rename2: self = .rename
        case .release: self = .release
        case .access: self = .access
        case .open, .opendir: self = .open
        default: self = .other
        }
    }
}

/// Whether a LOOKUP answer carried a file handle the plan can use.
enum NFSHandlePart: Equatable {
    case absent
    case valid
}

/// What the driver learned, in the terms the plan decides on.
enum NFSStageOutcome: Equatable {
    /// The connection ended before the answer came (or the answer did not decode). `sent`: the
    /// call went out at least once.
    case connectionLost(sent: Bool)
    /// The answer broke the protocol (a handle no NFSv3 server may send, a count larger than
    /// asked, an empty symlink target): EIO.
    case malformed
    /// The call's nfsstat3 (0: NFS3_OK), for calls whose only news is the status.
    case status(UInt32)
    /// LOOKUP, a create-like call, LINK or a staged GETATTR: the status and, on success, what of
    /// the entry the driver could stage.
    case entry(status: UInt32, handle: NFSHandlePart, attributes: Bool)
    /// The LOOKUP of the name UNLINK removes or RENAME replaces: on success, whether it is a
    /// regular file with one link the guest has open (the driver pinned it as the staged node).
    case target(status: UInt32, openByGuest: Bool)
    /// SETATTR: the status; a refusal that only dropped set-ID bits of another user's file (the
    /// engine may make it); whether attributes came back.
    case setattr(status: UInt32, setIDDropRefused: Bool, attributes: Bool)
    /// ACCESS: the status, and whether the bits granted allow the request.
    case access(status: UInt32, allowed: Bool)
    /// COMMIT: the status; whether this queue's journal holds all the open's data, and whether
    /// it holds an entry the server lost (a verifier that changed).
    case committed(status: UInt32, repairable: Bool, mismatch: Bool)
    /// The driver recorded the COMMIT in the open table: whether everything written is safe.
    case commitRecorded(safe: Bool)
    /// A journal entry was written again: the status, and whether another is still to resend.
    case resent(status: UInt32, more: Bool)
    /// The node table was told the staged node is hidden: its last open ended meanwhile.
    case hidden(removeNow: Bool)
    /// RELEASE's open ended: it was the last open of a hidden file, whose name must now go.
    case openEnded(removeHidden: Bool)
}

/// What the driver does next.
enum NFSStageAction: Equatable {
    /// Send `call` (the next stage).
    case send
    /// Park until a connection is up, then send `call` again.
    case wait
    /// Write the answer's data into the reply (single-stage calls) and complete.
    case reply
    /// The staged handle and attributes make the entry (CREATE: and the open).
    case replyEntry
    /// OPEN's check passed: make the open and reply with it.
    case open
    /// An empty success.
    case succeed
    case fail(FUSEErrno)
    /// Tell the node table the staged node is hidden; answer `.hidden`.
    case markHidden
    /// The staged node cannot be hidden (it lives on another file system): unpin it, send `call`.
    case dropStagedAndSend
    /// Record the COMMIT in the open table (`repaired`: the journal's resends made it whole);
    /// answer `.commitRecorded`.
    case recordCommit(repaired: Bool)
    /// End RELEASE's open; answer `.openEnded`.
    case endOpen
}

struct NFSStagePlan: Equatable {
    var call: NFSCall
    var progress: NFSProgress
    let kind: NFSRequestKind
    /// Repairs this request made (resend, then COMMIT again).
    var resendRounds: UInt8 = 0
    /// FSYNC, FLUSH, RELEASE: the answer the COMMIT decided, given once the open is dealt with (0: success).
    var deferredErrno: Int32 = 0

    /// Repairs one FSYNC may make before it gives up with EIO.
    static let repairRoundsMax: UInt8 = 4
    static let statusNoEntry: UInt32 = 2

    init(call: NFSCall, progress: NFSProgress = [], kind: NFSRequestKind = .other) {
        self.call = call
        self.progress = progress
        self.kind = kind
    }

    /// What the current stage's LOOKUP is for, so the driver knows which outcome to make of it.
    enum LookupPurpose { case entry, noReplaceCheck, target }

    var lookupPurpose: LookupPurpose {
        if progress.contains(.noReplaceCheck) { return .noReplaceCheck }
        if progress.contains(.removeCheck) || progress.contains(.replaceCheck) { return .target }
        return .entry
    }

    /// A stage may go again on a new connection when doing it twice does what doing it once does.
    var resendable: Bool {
        switch call {
        case .lookup, .getattr, .setattr, .readlink, .access, .read, .write, .commit, .fsstat, .readdir, .readdirplus, .resendWrite:
            return true
        case .create:
            // UNCHECKED makes or finds the same file; EXCLUSIVE carries a verifier the server matches.
            return !progress.contains(.guarded)
        case .none, .symlink, .mknod, .mkdir, .remove, .rmdir, .rename, .link:
            return false
        // The same lock, unlock or open by the same owner twice is the same state once.
        case .lockBegin, .lockOpen, .lock, .unlock, .lockTest, .unlockAll:
            return true
        }
    }

    @_noAllocation @_noLocks
    mutating func answer(_ outcome: NFSStageOutcome) -> NFSStageAction {
        switch outcome {
        case .connectionLost(let sent): return resendable || !sent ? .wait : .fail(.io)
        case .malformed: return .fail(.io)
        case .hidden(let removeNow): return hidden(removeNow: removeNow)
        case .commitRecorded(let safe):
            if !safe { deferredErrno = FUSEErrno.io.rawValue }
            return commitFinished()
        case .openEnded(let removeHidden):
            guard removeHidden else { return deferredAnswer() }
            progress.insert(.removingHidden)
            call = .remove
            return .send
        default: return answered(outcome)
        }
    }

    /// The answer to the call that was sent.
    mutating func answered(_ outcome: NFSStageOutcome) -> NFSStageAction {
        switch (call, outcome) {
        case (.lookup, _): return lookedUp(outcome)
        case (.getattr, .entry(let status, _, let attributes)):
            guard status == 0 else { return Self.failure(status) }
            // The attributes asked for, or those of a staged entry.
            guard progress.contains(.stagedTarget) else { return .reply }
            return entry(handle: .absent, attributes: attributes)
        case (.symlink, .entry(let status, let handle, let attributes)), (.mknod, .entry(let status, let handle, let attributes)),
             (.mkdir, .entry(let status, let handle, let attributes)), (.create, .entry(let status, let handle, let attributes)),
             (.link, .entry(let status, let handle, let attributes)):
            guard status == 0 else { return Self.failure(status) }
            return entry(handle: handle, attributes: attributes)
        case (.setattr, .setattr(let status, let refused, let attributes)):
            return setattrAnswered(status: status, setIDDropRefused: refused, attributes: attributes)
        case (.remove, .status(let status)): return removed(status: status)
        case (.rename, .status(let status)): return renamed(status: status)
        case (.access, .access(let status, let allowed)):
            guard status == 0 else { return Self.failure(status) }
            guard allowed else { return .fail(.accessDenied) }
            return kind == .access ? .succeed : .open
        case (.commit, .committed(let status, let repairable, let mismatch)):
            return committed(status: status, repairable: repairable, mismatch: mismatch)
        case (.resendWrite, .resent(let status, let more)):
            guard status == 0 else { return Self.failure(status) }
            if !more { call = .commit }
            return .send
        case (.rmdir, .status(let status)):
            return status == 0 ? .succeed : Self.failure(status)
        case (.readlink, .status(let status)), (.read, .status(let status)), (.write, .status(let status)),
             (.fsstat, .status(let status)), (.readdir, .status(let status)), (.readdirplus, .status(let status)):
            return status == 0 ? .reply : Self.failure(status)
        default:
            preconditionFailure("outcome \(outcome) does not answer \(call)")
        }
    }

    static func failure(_ status: UInt32) -> NFSStageAction { .fail(NFSStatus.errno(v3: status)) }

    // MARK: - Entries

    /// LOOKUP: an entry, the check before RENAME_NOREPLACE, or the target of UNLINK or RENAME.
    mutating func lookedUp(_ outcome: NFSStageOutcome) -> NFSStageAction {
        switch (lookupPurpose, outcome) {
        case (.noReplaceCheck, .status(let status)):
            // RENAME_NOREPLACE: the new name must not exist.
            if status == 0 { return .fail(.exists) }
            guard status == Self.statusNoEntry else { return Self.failure(status) }
            progress.remove(.noReplaceCheck)
            call = .rename
            return .send
        case (.target, .target(let status, let openByGuest)):
            return target(status: status, openByGuest: openByGuest)
        case (.entry, .entry(let status, let handle, let attributes)):
            guard status == 0 else { return Self.failure(status) }
            return entry(handle: handle, attributes: attributes)
        default:
            preconditionFailure("outcome \(outcome) does not answer a \(lookupPurpose) LOOKUP")
        }
    }

    /// UNLINK's or RENAME's LOOKUP of the name it removes or replaces: a file the guest has open is
    /// hidden first (its data must outlive the name until the last RELEASE); anything else goes
    /// straight to the REMOVE or RENAME, which decides the errors.
    mutating func target(status: UInt32, openByGuest: Bool) -> NFSStageAction {
        let isUnlink = progress.contains(.removeCheck)
        // One flag at a time: an array literal of flags would allocate.
        progress.remove(.removeCheck)
        progress.remove(.replaceCheck)
        let next: NFSCall = isUnlink ? .remove : .rename
        // UNLINK of a name the server cannot find fails as LOOKUP did; RENAME lets the server speak.
        if status != 0 && isUnlink { return Self.failure(status) }
        if status == 0 && openByGuest {
            progress.insert(.hiding)
            call = .rename
            return .send
        }
        call = next
        return .send
    }

    /// What a stage brought of the entry is kept; whatever the reply still lacks is asked for: a
    /// handle (LOOKUP of the name), the exclusive CREATE's mode (SETATTR), attributes (GETATTR).
    mutating func entry(handle: NFSHandlePart, attributes: Bool) -> NFSStageAction {
        if handle == .valid { progress.insert(.haveHandle) }
        if attributes { progress.insert(.haveAttributes) }
        if !progress.contains(.haveHandle) {
            call = .lookup
            return .send
        }
        if progress.contains(.needsModeSetattr) {
            progress.remove(.needsModeSetattr)
            progress.remove(.haveAttributes)
            progress.insert(.stagedTarget)
            call = .setattr
            return .send
        }
        if !progress.contains(.haveAttributes) {
            progress.insert(.stagedTarget)
            call = .getattr
            return .send
        }
        return .replyEntry
    }

    /// SETATTR: the attributes after it (or a GETATTR for them); a refused set-ID drop goes again
    /// as the engine, once.
    mutating func setattrAnswered(status: UInt32, setIDDropRefused: Bool, attributes: Bool) -> NFSStageAction {
        guard status == 0 else {
            guard setIDDropRefused, !progress.contains(.asEngine), !progress.contains(.stagedTarget) else {
                return Self.failure(status)
            }
            progress.insert(.asEngine)
            return .send
        }
        // The exclusive CREATE's mode is set.
        if progress.contains(.stagedTarget) { return entry(handle: .absent, attributes: attributes) }
        if attributes { return .reply }
        call = .getattr
        return .send
    }

    // MARK: - Removing and hiding

    /// REMOVE: an UNLINK, or the removal of a hidden name.
    mutating func removed(status: UInt32) -> NFSStageAction {
        guard progress.contains(.removingHidden) else { return status == 0 ? .succeed : Self.failure(status) }
        // Whatever the server says, the hidden name is this request's last business with the file
        // (a failure leaves it on the server, as after a crash).
        progress.remove(.removingHidden)
        guard kind == .rename else { return .succeed }
        call = .rename
        return .send
    }

    /// RENAME: a RENAME, or the hiding of a file still open.
    mutating func renamed(status: UInt32) -> NFSStageAction {
        if progress.contains(.hiding) && status == NFSStatus.crossDevice {
            // The file is on another file system than the export's top (a submount): it cannot be
            // hidden, so it goes as without an open (later reads of it fail ESTALE).
            progress.remove(.hiding)
            call = kind == .unlink ? .remove : .rename
            return .dropStagedAndSend
        }
        guard status == 0 else { return Self.failure(status) }
        guard progress.contains(.hiding) else { return .succeed }
        progress.remove(.hiding)
        return .markHidden
    }

    /// The staged node is hidden: removed at once when its last open ended meanwhile; then
    /// UNLINK is done and RENAME goes on with its own call.
    mutating func hidden(removeNow: Bool) -> NFSStageAction {
        if removeNow {
            progress.insert(.removingHidden)
            call = .remove
            return .send
        }
        if kind == .unlink { return .succeed }
        call = .rename
        return .send
    }

    // MARK: - COMMIT and its repair

    /// COMMIT of FLUSH, FSYNC and RELEASE; a verifier the journal's entries do not match starts a
    /// repair (resend, COMMIT again), a few rounds at most should the server keep restarting.
    mutating func committed(status: UInt32, repairable: Bool, mismatch: Bool) -> NFSStageAction {
        guard status == 0 else {
            deferredErrno = NFSStatus.errno(v3: status).rawValue
            return commitFinished()
        }
        guard repairable && mismatch else { return .recordCommit(repaired: repairable) }
        guard resendRounds < Self.repairRoundsMax else {
            deferredErrno = FUSEErrno.io.rawValue
            return commitFinished()
        }
        resendRounds += 1
        call = .resendWrite
        return .send
    }

    /// RELEASE ends its open whatever the COMMIT said (the kernel does not look at its answer).
    func commitFinished() -> NFSStageAction {
        kind == .release ? .endOpen : deferredAnswer()
    }

    func deferredAnswer() -> NFSStageAction {
        deferredErrno == 0 ? .succeed : .fail(FUSEErrno(deferredErrno))
    }
}
