import CDPFS
import NFSv4Wire
import Testing

/// LOCK (a new lock-owner through its open, and one the server knows), LOCKT, LOCKU and
/// RELEASE_LOCKOWNER written by our XDR are byte for byte what libnfs's `zdr_COMPOUND4args` writes;
/// their results encoded by libnfs's `zdr_COMPOUND4res` read back, the DENIED body (who holds what)
/// included; FREE_STATEID (4.1, no libnfs 4.0 oracle) is laid out by hand from RFC 8881 §18.38;
/// a DENIED body that lies is refused at its place.
@Suite struct NFSv4LockTests {
    typealias Wire = NFSv4FileOperationTests
    static let owner = Array("dpfs-lock/7".utf8)
    static let stateid = NFSv4Stateid(sequence: 3, other: (0x1122_3344_5566_7788, 0x99AA_BBCC))
    static let theirStateid = stateid4(seqid: 3, other: (0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, -0x78, -0x67, -0x56, -0x45, -0x34))

    static func lockOwner(_ arena: Wire.Arena) -> lock_owner4 {
        var owner = lock_owner4()
        owner.clientid = 0xC1
        owner.owner.owner_len = UInt32(Self.owner.count)
        owner.owner.owner_val = arena.bytes(Self.owner)
        return owner
    }

    @Test("LOCK by a new owner and by a known one, LOCKT, LOCKU, RELEASE_LOCKOWNER: libnfs's bytes")
    func argumentsMatchLibnfs() {
        let arena = Wire.Arena()
        var first = nfs_argop4()
        first.argop = OP_LOCK
        first.nfs_argop4_u.oplock.locktype = WRITEW_LT
        first.nfs_argop4_u.oplock.reclaim = 0
        first.nfs_argop4_u.oplock.offset = 100
        first.nfs_argop4_u.oplock.length = UInt64.max
        first.nfs_argop4_u.oplock.locker.new_lock_owner = 1
        first.nfs_argop4_u.oplock.locker.locker4_u.open_owner = open_to_lock_owner4(
            open_seqid: 5, open_stateid: Self.theirStateid, lock_seqid: 0, lock_owner: Self.lockOwner(arena))
        var again = nfs_argop4()
        again.argop = OP_LOCK
        again.nfs_argop4_u.oplock.locktype = READ_LT
        again.nfs_argop4_u.oplock.reclaim = 1
        again.nfs_argop4_u.oplock.offset = 0
        again.nfs_argop4_u.oplock.length = 4096
        again.nfs_argop4_u.oplock.locker.new_lock_owner = 0
        again.nfs_argop4_u.oplock.locker.locker4_u.lock_owner = exist_lock_owner4(lock_stateid: Self.theirStateid, lock_seqid: 2)
        var test = nfs_argop4()
        test.argop = OP_LOCKT
        test.nfs_argop4_u.oplockt = LOCKT4args(locktype: WRITE_LT, offset: 7, length: 9, owner: Self.lockOwner(arena))
        var unlock = nfs_argop4()
        unlock.argop = OP_LOCKU
        unlock.nfs_argop4_u.oplocku = LOCKU4args(locktype: READ_LT, seqid: 4, lock_stateid: Self.theirStateid, offset: 1, length: 2)
        var release = nfs_argop4()
        release.argop = OP_RELEASE_LOCKOWNER
        release.nfs_argop4_u.oprelease_lockowner = RELEASE_LOCKOWNER4args(lock_owner: Self.lockOwner(arena))
        let expected = Wire.libnfs([first, again, test, unlock, release])
        let written = Wire.ours { writer in
            Self.owner.withUnsafeBytes { owner in
                writer.lock(.writeWait, offset: 100, length: .max,
                            .newOwner(openStateid: Self.stateid, openSeqid: 5, clientID: 0xC1, owner: owner, lockSeqid: 0))
                writer.lock(.read, reclaim: true, offset: 0, length: 4096, .knownOwner(lockStateid: Self.stateid, lockSeqid: 2))
                writer.lockt(.write, offset: 7, length: 9, clientID: 0xC1, owner: owner)
                writer.locku(.read, seqid: 4, lockStateid: Self.stateid, offset: 1, length: 2)
                writer.releaseLockOwner(clientID: 0xC1, owner: owner)
            }
        }
        #expect(written == expected)
    }

    @Test("FREE_STATEID is its number and the stateid (RFC 8881 §18.38)")
    func freeStateidLayout() {
        let written = Wire.ours { $0.freeStateid(Self.stateid) }
        let header = Wire.be32(0) + Wire.be32(0) + Wire.be32(1)   // empty tag, minor version 0, one operation
        #expect(written == header + Wire.be32(45) + Wire.be32(3) + Wire.be64(0x1122_3344_5566_7788) + Wire.be32(0x99AA_BBCC))
    }

    @Test("LOCK granted, LOCK denied (the holder's range, type and owner), LOCKT denied, LOCKT free, LOCKU: libnfs's results read back")
    func resultsReadBack() throws {
        let arena = Wire.Arena()
        var results = [nfs_resop4](repeating: nfs_resop4(), count: 5)
        results[0].resop = OP_LOCK
        results[0].nfs_resop4_u.oplock.status = NFS4_OK
        results[0].nfs_resop4_u.oplock.LOCK4res_u.resok4 = LOCK4resok(lock_stateid: Self.theirStateid)
        results[1].resop = OP_LOCK
        results[1].nfs_resop4_u.oplock.status = NFS4ERR_DENIED
        results[1].nfs_resop4_u.oplock.LOCK4res_u.denied = LOCK4denied(offset: 10, length: 20, locktype: WRITE_LT, owner: Self.lockOwner(arena))
        results[2].resop = OP_LOCKT
        results[2].nfs_resop4_u.oplockt.status = NFS4ERR_DENIED
        results[2].nfs_resop4_u.oplockt.LOCKT4res_u.denied = LOCK4denied(offset: 0, length: .max, locktype: READ_LT, owner: Self.lockOwner(arena))
        results[3].resop = OP_LOCKT
        results[3].nfs_resop4_u.oplockt.status = NFS4_OK
        results[4].resop = OP_LOCKU
        results[4].nfs_resop4_u.oplocku.status = NFS4_OK
        results[4].nfs_resop4_u.oplocku.LOCKU4res_u.lock_stateid = Self.theirStateid
        let reply = Wire.encodeReply(&results, status: NFS4_OK)
        try reply.withUnsafeBytes { raw in
            var reader = try CompoundReader(buffer: raw, operationsSent: 5)
            let granted = try reader.lockResult(try reader.next(.lock))
            #expect(granted.granted == Self.stateid && granted.denied == nil)
            let status = try reader.next(.lock)
            #expect(status == .denied)
            let refused = try #require(try reader.lockResult(status).denied)
            #expect(refused.offset == 10 && refused.length == 20 && refused.type == .write && refused.clientID == 0xC1)
            #expect(Array(refused.owner) == Self.owner)
            let holder = try #require(try reader.locktResult(try reader.next(.lockt)))
            #expect(holder.offset == 0 && holder.length == .max && holder.type == .read)
            #expect(try reader.locktResult(try reader.next(.lockt)) == nil, "free: no body")
            #expect(try reader.next(.locku) == .ok)
            #expect(try reader.lockuResult() == Self.stateid)
            try reader.finish()
        }
    }

    @Test("a DENIED body with a lock type outside 1-4, or cut short, is refused at its place")
    func lyingDeniedRefused() throws {
        let prefix = Wire.be32(10010) + Wire.be32(0) + Wire.be32(1) + Wire.be32(12) + Wire.be32(10010)   // DENIED, no tag, one LOCK result
        let body = Wire.be64(0) + Wire.be64(1)
        let badType = prefix + body + Wire.be32(9) + Wire.be64(0xC1) + Wire.opaque(Self.owner)
        #expect(throws: XDRError.invalid(at: 36, value: 9)) {
            try badType.withUnsafeBytes { raw in
                var reader = try CompoundReader(buffer: raw, operationsSent: 1)
                _ = try reader.lockResult(try reader.next(.lock))
            }
        }
        let cut = prefix + body + Wire.be32(2) + Wire.be64(0xC1) + Wire.be32(40)   // owner says 40 bytes, none follow
        #expect(throws: XDRError.self) {
            try cut.withUnsafeBytes { raw in
                var reader = try CompoundReader(buffer: raw, operationsSent: 1)
                _ = try reader.lockResult(try reader.next(.lock))
            }
        }
    }
}
