import FUSEWire
import Testing
@testable import NFSBackend

/// Every stage of the NFS backend's request plans, without a server: which call follows which
/// answer, what is resent after a lost connection, and what the request answers. The real server
/// runs the same plans in tools/host/test-host-mount.sh and the fault, crash and hostile tests.
@Suite struct NFSStagePlanTests {
    static let noEntry: UInt32 = 2
    static let permission: UInt32 = 1
    static let exists: UInt32 = 17

    @Test("a lost connection resends what is safe to repeat and fails the rest EIO")
    func lostConnections() {
        for call in [NFSCall.lookup, .getattr, .setattr, .readlink, .access, .read, .write, .commit, .fsstat, .readdir, .readdirplus, .resendWrite] {
            var plan = NFSStagePlan(call: call)
            #expect(plan.answer(.connectionLost(sent: true)) == .wait, "\(call) is idempotent")
        }
        for call in [NFSCall.symlink, .mknod, .mkdir, .remove, .rmdir, .rename, .link] {
            var plan = NFSStagePlan(call: call)
            #expect(plan.answer(.connectionLost(sent: true)) == .fail(.io), "\(call) done twice is not done once")
            var unsent = NFSStagePlan(call: call)
            #expect(unsent.answer(.connectionLost(sent: false)) == .wait, "never sent: nothing to repeat")
        }
        var unchecked = NFSStagePlan(call: .create)
        #expect(unchecked.answer(.connectionLost(sent: true)) == .wait, "UNCHECKED finds the same file")
        var exclusive = NFSStagePlan(call: .create, progress: [.exclusive, .needsModeSetattr])
        #expect(exclusive.answer(.connectionLost(sent: true)) == .wait, "the verifier makes the server see a repeat")
        var guarded = NFSStagePlan(call: .create, progress: .guarded)
        #expect(guarded.answer(.connectionLost(sent: true)) == .fail(.io), "GUARDED would fail EEXIST the second time")
    }

    @Test("a malformed answer fails EIO at any stage")
    func malformed() {
        for call in [NFSCall.lookup, .create, .read, .commit, .resendWrite] {
            var plan = NFSStagePlan(call: call)
            #expect(plan.answer(.malformed) == .fail(.io))
        }
    }

    @Test("single-stage calls: the answer's data is the reply, a status is its errno")
    func singleStage() {
        for call in [NFSCall.readlink, .read, .write, .fsstat, .readdir, .readdirplus] {
            var ok = NFSStagePlan(call: call)
            #expect(ok.answer(.status(0)) == .reply)
            var refused = NFSStagePlan(call: call)
            #expect(refused.answer(.status(Self.noEntry)) == .fail(.noEntry))
        }
        var rmdir = NFSStagePlan(call: .rmdir)
        #expect(rmdir.answer(.status(66)) == .fail(.notEmpty))
        var getattr = NFSStagePlan(call: .getattr)
        #expect(getattr.answer(.entry(status: 0, handle: .absent, attributes: true)) == .reply, "not a staged entry: the attributes are the reply")
    }

    @Test("create-like calls: a missing handle is looked up, missing attributes fetched, then the entry")
    func entries() {
        var complete = NFSStagePlan(call: .mkdir)
        #expect(complete.answer(.entry(status: 0, handle: .valid, attributes: true)) == .replyEntry)

        var noHandle = NFSStagePlan(call: .mknod)
        #expect(noHandle.answer(.entry(status: 0, handle: .absent, attributes: false)) == .send)
        #expect(noHandle.call == .lookup)
        #expect(noHandle.answer(.entry(status: 0, handle: .valid, attributes: false)) == .send)
        #expect(noHandle.call == .getattr && noHandle.progress.contains(.stagedTarget), "the GETATTR goes to the staged handle")
        #expect(noHandle.answer(.entry(status: 0, handle: .absent, attributes: true)) == .replyEntry)

        var refused = NFSStagePlan(call: .symlink)
        #expect(refused.answer(.entry(status: Self.exists, handle: .absent, attributes: false)) == .fail(.exists))
        var lookupMissing = NFSStagePlan(call: .lookup)
        #expect(lookupMissing.answer(.entry(status: Self.noEntry, handle: .absent, attributes: false)) == .fail(.noEntry))
    }

    @Test("exclusive CREATE: the mode is set by a SETATTR of the new file, whose attributes make the entry")
    func exclusiveCreate() {
        var plan = NFSStagePlan(call: .create, progress: [.exclusive, .needsModeSetattr])
        #expect(plan.answer(.entry(status: 0, handle: .valid, attributes: true)) == .send)
        #expect(plan.call == .setattr && plan.progress.contains(.stagedTarget))
        #expect(!plan.progress.contains(.haveAttributes), "the verifier's times are not the file's attributes")
        #expect(plan.answer(.setattr(status: 0, setIDDropRefused: false, attributes: false)) == .send)
        #expect(plan.call == .getattr, "the SETATTR sent no attributes")
        #expect(plan.answer(.entry(status: 0, handle: .absent, attributes: true)) == .replyEntry)
        var refused = NFSStagePlan(call: .create, progress: [.exclusive, .needsModeSetattr])
        _ = refused.answer(.entry(status: 0, handle: .valid, attributes: true))
        #expect(refused.answer(.setattr(status: Self.permission, setIDDropRefused: true, attributes: false)) == .fail(.notPermitted),
                "the staged SETATTR is never retried as the engine")
    }

    @Test("SETATTR: a refused set-ID drop goes again as the engine, once; no attributes: a GETATTR")
    func setattr() {
        var plan = NFSStagePlan(call: .setattr)
        #expect(plan.answer(.setattr(status: Self.permission, setIDDropRefused: true, attributes: false)) == .send)
        #expect(plan.progress.contains(.asEngine) && plan.call == .setattr)
        #expect(plan.answer(.setattr(status: Self.permission, setIDDropRefused: true, attributes: false)) == .fail(.notPermitted))
        var other = NFSStagePlan(call: .setattr)
        #expect(other.answer(.setattr(status: Self.permission, setIDDropRefused: false, attributes: false)) == .fail(.notPermitted))
        var withAttributes = NFSStagePlan(call: .setattr)
        #expect(withAttributes.answer(.setattr(status: 0, setIDDropRefused: false, attributes: true)) == .reply)
        var without = NFSStagePlan(call: .setattr)
        #expect(without.answer(.setattr(status: 0, setIDDropRefused: false, attributes: false)) == .send)
        #expect(without.call == .getattr && !without.progress.contains(.stagedTarget))
        #expect(without.answer(.entry(status: 0, handle: .absent, attributes: true)) == .reply)
    }

    @Test("UNLINK: a file the guest has open is hidden instead; removed at once if its last open ended meanwhile")
    func unlink() {
        var closed = NFSStagePlan(call: .lookup, progress: .removeCheck, kind: .unlink)
        #expect(closed.answer(.target(status: 0, openByGuest: false)) == .send)
        #expect(closed.call == .remove)
        #expect(closed.answer(.status(0)) == .succeed)

        var missing = NFSStagePlan(call: .lookup, progress: .removeCheck, kind: .unlink)
        #expect(missing.answer(.target(status: Self.noEntry, openByGuest: false)) == .fail(.noEntry))

        var open = NFSStagePlan(call: .lookup, progress: .removeCheck, kind: .unlink)
        #expect(open.answer(.target(status: 0, openByGuest: true)) == .send)
        #expect(open.call == .rename && open.progress.contains(.hiding))
        #expect(open.answer(.status(0)) == .markHidden)
        #expect(open.answer(.hidden(removeNow: false)) == .succeed, "the last RELEASE removes it")

        var raced = NFSStagePlan(call: .lookup, progress: .removeCheck, kind: .unlink)
        _ = raced.answer(.target(status: 0, openByGuest: true))
        _ = raced.answer(.status(0))
        #expect(raced.answer(.hidden(removeNow: true)) == .send)
        #expect(raced.call == .remove && raced.progress.contains(.removingHidden))
        #expect(raced.answer(.status(Self.noEntry)) == .succeed, "the hidden name is the request's last business, whatever the server says")

        var submount = NFSStagePlan(call: .lookup, progress: .removeCheck, kind: .unlink)
        _ = submount.answer(.target(status: 0, openByGuest: true))
        #expect(submount.answer(.status(18)) == .dropStagedAndSend, "another file system: cannot be hidden")
        #expect(submount.call == .remove && !submount.progress.contains(.hiding))
    }

    @Test("RENAME: NOREPLACE checks the new name; a replaced file the guest has open is hidden first")
    func rename() {
        var free = NFSStagePlan(call: .lookup, progress: .noReplaceCheck, kind: .rename)
        #expect(free.answer(.status(Self.noEntry)) == .send)
        #expect(free.call == .rename && !free.progress.contains(.noReplaceCheck))
        #expect(free.answer(.status(0)) == .succeed)
        var taken = NFSStagePlan(call: .lookup, progress: .noReplaceCheck, kind: .rename)
        #expect(taken.answer(.status(0)) == .fail(.exists))
        var denied = NFSStagePlan(call: .lookup, progress: .noReplaceCheck, kind: .rename)
        #expect(denied.answer(.status(13)) == .fail(.accessDenied))

        var over = NFSStagePlan(call: .lookup, progress: .replaceCheck, kind: .rename)
        #expect(over.answer(.target(status: Self.noEntry, openByGuest: false)) == .send, "RENAME lets the server speak")
        #expect(over.call == .rename)

        var hiding = NFSStagePlan(call: .lookup, progress: .replaceCheck, kind: .rename)
        #expect(hiding.answer(.target(status: 0, openByGuest: true)) == .send)
        #expect(hiding.call == .rename && hiding.progress.contains(.hiding))
        #expect(hiding.answer(.status(0)) == .markHidden)
        #expect(hiding.answer(.hidden(removeNow: false)) == .send)
        #expect(hiding.call == .rename && !hiding.progress.contains(.hiding), "then the RENAME itself")
        #expect(hiding.answer(.status(0)) == .succeed)

        var removedFirst = NFSStagePlan(call: .lookup, progress: .replaceCheck, kind: .rename)
        _ = removedFirst.answer(.target(status: 0, openByGuest: true))
        _ = removedFirst.answer(.status(0))
        #expect(removedFirst.answer(.hidden(removeNow: true)) == .send)
        #expect(removedFirst.call == .remove)
        #expect(removedFirst.answer(.status(0)) == .send, "RENAME goes on after the hidden name is removed")
        #expect(removedFirst.call == .rename)
    }

    @Test("OPEN and ACCESS: the server's bits decide; OPEN then makes the open")
    func access() {
        var open = NFSStagePlan(call: .access, progress: .countedOpen, kind: .open)
        #expect(open.answer(.access(status: 0, allowed: true)) == .open)
        var denied = NFSStagePlan(call: .access, progress: .countedOpen, kind: .open)
        #expect(denied.answer(.access(status: 0, allowed: false)) == .fail(.accessDenied))
        var check = NFSStagePlan(call: .access, kind: .access)
        #expect(check.answer(.access(status: 0, allowed: true)) == .succeed)
        var stale = NFSStagePlan(call: .access, kind: .access)
        #expect(stale.answer(.access(status: 70, allowed: false)) == .fail(FUSEErrno(116)))
    }

    @Test("FSYNC: a COMMIT whose verifier the journal does not match is repaired, a few rounds at most")
    func commitRepair() {
        var clean = NFSStagePlan(call: .commit)
        #expect(clean.answer(.committed(status: 0, repairable: true, mismatch: false)) == .recordCommit(repaired: true))
        #expect(clean.answer(.commitRecorded(safe: true)) == .succeed)

        var unjournaled = NFSStagePlan(call: .commit)
        #expect(unjournaled.answer(.committed(status: 0, repairable: false, mismatch: false)) == .recordCommit(repaired: false))
        #expect(unjournaled.answer(.commitRecorded(safe: false)) == .fail(.io), "the server may have lost what this open wrote")

        var repair = NFSStagePlan(call: .commit)
        for round in 1...Int(NFSStagePlan.repairRoundsMax) {
            #expect(repair.answer(.committed(status: 0, repairable: true, mismatch: true)) == .send)
            #expect(repair.call == .resendWrite && repair.resendRounds == UInt8(round))
            #expect(repair.answer(.resent(status: 0, more: true)) == .send)
            #expect(repair.call == .resendWrite, "another entry to resend")
            #expect(repair.answer(.resent(status: 0, more: false)) == .send)
            #expect(repair.call == .commit, "then COMMIT again")
        }
        #expect(repair.answer(.committed(status: 0, repairable: true, mismatch: true)) == .fail(.io), "the server keeps restarting")

        var resendRefused = NFSStagePlan(call: .commit)
        _ = resendRefused.answer(.committed(status: 0, repairable: true, mismatch: true))
        #expect(resendRefused.answer(.resent(status: 28, more: false)) == .fail(.noSpace))
        var refused = NFSStagePlan(call: .commit)
        #expect(refused.answer(.committed(status: 5, repairable: true, mismatch: false)) == .fail(.io))
    }

    @Test("RELEASE: the open ends whatever the COMMIT said; the last open of a hidden file removes its name")
    func release() {
        var plain = NFSStagePlan(call: .commit, kind: .release)
        #expect(plain.answer(.committed(status: 0, repairable: false, mismatch: false)) == .recordCommit(repaired: false))
        #expect(plain.answer(.commitRecorded(safe: false)) == .endOpen)
        #expect(plain.answer(.openEnded(removeHidden: false)) == .fail(.io))

        var refused = NFSStagePlan(call: .commit, kind: .release)
        #expect(refused.answer(.committed(status: 5, repairable: false, mismatch: false)) == .endOpen)

        var hidden = NFSStagePlan(call: .commit, kind: .release)
        _ = hidden.answer(.committed(status: 0, repairable: true, mismatch: false))
        #expect(hidden.answer(.commitRecorded(safe: true)) == .endOpen)
        #expect(hidden.answer(.openEnded(removeHidden: true)) == .send)
        #expect(hidden.call == .remove && hidden.progress.contains(.removingHidden))
        #expect(hidden.answer(.status(0)) == .succeed)

        var notDirty = NFSStagePlan(call: .remove, progress: .removingHidden, kind: .release)
        #expect(notDirty.answer(.status(Self.noEntry)) == .succeed)
    }

    @Test("the request kind follows the FUSE opcode")
    func kinds() {
        #expect(NFSRequestKind(FUSEOpcode.unlink.rawValue) == .unlink)
        #expect(NFSRequestKind(FUSEOpcode.rename2.rawValue) == .rename)
        #expect(NFSRequestKind(FUSEOpcode.opendir.rawValue) == .open)
        #expect(NFSRequestKind(FUSEOpcode.release.rawValue) == .release)
        #expect(NFSRequestKind(FUSEOpcode.fsync.rawValue) == .other)
    }
}
