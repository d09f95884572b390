import CDPFS
import NFSv4Wire
import Testing

/// NFSv4.0's client operations (SETCLIENTID, SETCLIENTID_CONFIRM, RENEW), VERIFY and OPEN_CONFIRM written
/// by our XDR are byte for byte what libnfs's `zdr_COMPOUND4args` writes; their results, including
/// a CLID_INUSE refusal's body, encoded by libnfs's `zdr_COMPOUND4res` read back.
@Suite struct NFSv4Client40Tests {
    typealias Wire = NFSv4FileOperationTests
    static let owner = Array("dpfs-engine/host/7".utf8)
    static let verifier: UInt64 = 0x0102_0304_0506_0708
    static let theirVerifier: (CChar, CChar, CChar, CChar, CChar, CChar, CChar, CChar) = (1, 2, 3, 4, 5, 6, 7, 8)
    static let stateid = NFSv4Stateid(sequence: 3, other: (0x1122_3344_5566_7788, 0x99AA_BBCC))
    static let theirStateid = stateid4(seqid: 3, other: (0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, -0x78, -0x67, -0x56, -0x45, -0x34))

    @Test("SETCLIENTID, SETCLIENTID_CONFIRM, RENEW, VERIFY of a fileid, OPEN_CONFIRM: libnfs's bytes")
    func argumentsMatchLibnfs() {
        let arena = Wire.Arena()
        var set = nfs_argop4()
        set.argop = OP_SETCLIENTID
        set.nfs_argop4_u.opsetclientid.client.verifier = Self.theirVerifier
        set.nfs_argop4_u.opsetclientid.client.id.id_len = UInt32(Self.owner.count)
        set.nfs_argop4_u.opsetclientid.client.id.id_val = arena.bytes(Self.owner)
        set.nfs_argop4_u.opsetclientid.callback.cb_program = 0
        set.nfs_argop4_u.opsetclientid.callback.cb_location.r_netid = arena.bytes(Array("tcp".utf8) + [0])
        set.nfs_argop4_u.opsetclientid.callback.cb_location.r_addr = arena.bytes(Array("127.0.0.1.0.0".utf8) + [0])
        set.nfs_argop4_u.opsetclientid.callback_ident = 9
        var confirm = nfs_argop4()
        confirm.argop = OP_SETCLIENTID_CONFIRM
        confirm.nfs_argop4_u.opsetclientid_confirm.clientid = 0xC1
        confirm.nfs_argop4_u.opsetclientid_confirm.setclientid_confirm = Self.theirVerifier
        var renew = nfs_argop4()
        renew.argop = OP_RENEW
        renew.nfs_argop4_u.oprenew.clientid = 0xC1
        var verify = nfs_argop4()
        verify.argop = OP_VERIFY
        verify.nfs_argop4_u.opverify.obj_attributes = arena.fattr(NFSv4Bitmap([.fileid]), Wire.be64(0xF11E_1D))
        var openConfirm = nfs_argop4()
        openConfirm.argop = OP_OPEN_CONFIRM
        openConfirm.nfs_argop4_u.opopen_confirm = OPEN_CONFIRM4args(open_stateid: Self.theirStateid, seqid: 6)
        let expected = Wire.libnfs([set, confirm, renew, verify, openConfirm])
        let written = Wire.ours { writer in
            Self.owner.withUnsafeBytes { writer.setClientID(verifier: Self.verifier, owner: $0, callbackIdent: 9) }
            writer.setClientIDConfirm(clientID: 0xC1, confirm: Self.verifier)
            writer.renew(clientID: 0xC1)
            writer.verifyFileid(0xF11E_1D)
            writer.openConfirm(Self.stateid, seqid: 6)
        }
        #expect(written == expected)
    }

    @Test("SETCLIENTID made, SETCLIENTID refused CLID_INUSE (its address read past), OPEN_CONFIRM, RENEW: read back")
    func resultsReadBack() throws {
        let arena = Wire.Arena()
        var results = [nfs_resop4](repeating: nfs_resop4(), count: 5)
        results[0].resop = OP_SETCLIENTID
        results[0].nfs_resop4_u.opsetclientid.status = NFS4_OK
        results[0].nfs_resop4_u.opsetclientid.SETCLIENTID4res_u.resok4 = SETCLIENTID4resok(clientid: 0xABCD, setclientid_confirm: Self.theirVerifier)
        results[1].resop = OP_SETCLIENTID_CONFIRM
        results[1].nfs_resop4_u.opsetclientid_confirm.status = NFS4_OK
        results[2].resop = OP_OPEN_CONFIRM
        results[2].nfs_resop4_u.opopen_confirm.status = NFS4_OK
        results[2].nfs_resop4_u.opopen_confirm.OPEN_CONFIRM4res_u.resok4 = OPEN_CONFIRM4resok(open_stateid: Self.theirStateid)
        results[3].resop = OP_RENEW
        results[3].nfs_resop4_u.oprenew.status = NFS4_OK
        results[4].resop = OP_SETCLIENTID
        results[4].nfs_resop4_u.opsetclientid.status = NFS4ERR_CLID_INUSE
        results[4].nfs_resop4_u.opsetclientid.SETCLIENTID4res_u.client_using = clientaddr4(
            r_netid: arena.bytes(Array("tcp".utf8) + [0]), r_addr: arena.bytes(Array("10.0.0.9.3.1".utf8) + [0]))
        let reply = Wire.encodeReply(&results, status: NFS4ERR_CLID_INUSE)
        try reply.withUnsafeBytes { raw in
            var reader = try CompoundReader(buffer: raw, operationsSent: 5)
            let made = try reader.setClientIDResult(try reader.next(.setclientid))
            #expect(made == .made(NFSv4SetClientIDResult(clientID: 0xABCD, confirm: Self.verifier)))
            #expect(try reader.next(.setclientidConfirm) == .ok)
            #expect(try reader.next(.openConfirm) == .ok)
            #expect(try reader.openConfirmResult() == Self.stateid)
            #expect(try reader.next(.renew) == .ok)
            #expect(try reader.setClientIDResult(try reader.next(.setclientid)) == .inUse)
            try reader.finish()
        }
    }

    @Test("a CLID_INUSE body whose address runs past the reply is refused")
    func cutClientInUseRefused() {
        let reply = Wire.be32(10017) + Wire.be32(0) + Wire.be32(1) + Wire.be32(35) + Wire.be32(10017) + Wire.opaque(Array("tcp".utf8)) + Wire.be32(64)
        #expect(throws: XDRError.self) {
            try reply.withUnsafeBytes { raw in
                var reader = try CompoundReader(buffer: raw, operationsSent: 1)
                _ = try reader.setClientIDResult(try reader.next(.setclientid))
            }
        }
    }
}
