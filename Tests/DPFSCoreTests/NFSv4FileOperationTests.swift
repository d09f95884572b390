import CDPFS
import NFSv4Wire
import NFSBackend
import Testing

/// OPEN, CLOSE, CREATE, SETATTR, READDIR, RENAME and LINK written by our XDR are byte for byte what
/// libnfs's `zdr_COMPOUND4args` writes; OPEN's, CREATE's, SETATTR's (on error too), RENAME's and
/// READDIR's results encoded by libnfs's `zdr_COMPOUND4res` read back. The settable attributes'
/// values are laid out by hand from RFC 7530 §5 (size, mode, owner strings, settime4), so our
/// fattr4 writer is checked against the RFC, not against itself. The 4.1-only parts (CLAIM_FH,
/// EXCLUSIVE4_1, the session operations) have no libnfs 4.0 oracle and are checked by hand.
@Suite struct NFSv4FileOperationTests {
    /// C memory for libnfs's structures, freed with the test.
    final class Arena {
        var blocks: [UnsafeMutableRawPointer] = []
        deinit { blocks.forEach { $0.deallocate() } }

        func bytes(_ values: [UInt8]) -> UnsafeMutablePointer<CChar> {
            let block = UnsafeMutableRawPointer.allocate(byteCount: max(values.count, 1), alignment: 8)
            blocks.append(block)
            values.withUnsafeBytes { if let base = $0.baseAddress { block.copyMemory(from: base, byteCount: values.count) } }
            return block.assumingMemoryBound(to: CChar.self)
        }

        func words(_ values: [UInt32]) -> bitmap4 {
            let block = UnsafeMutableRawPointer.allocate(byteCount: max(values.count, 1) * 4, alignment: 8)
            blocks.append(block)
            let typed = block.bindMemory(to: UInt32.self, capacity: max(values.count, 1))
            for (index, value) in values.enumerated() { typed[index] = value }
            return bitmap4(bitmap4_len: UInt32(values.count), bitmap4_val: typed)
        }

        func string(_ text: [UInt8]) -> utf8string { utf8string(utf8string_len: UInt32(text.count), utf8string_val: bytes(text)) }

        func fattr(_ mask: NFSv4Bitmap, _ values: [UInt8]) -> fattr4 {
            let words = mask.words.1 == 0 ? [mask.words.0] : [mask.words.0, mask.words.1]
            return fattr4(attrmask: self.words(words), attr_vals: attrlist4(attrlist4_len: UInt32(values.count), attrlist4_val: bytes(values)))
        }
    }

    static func be32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32($0))) } }
    static func be64(_ value: UInt64) -> [UInt8] { be32(UInt32(value >> 32)) + be32(UInt32(truncatingIfNeeded: value)) }
    static func opaque(_ bytes: [UInt8]) -> [UInt8] { be32(UInt32(bytes.count)) + bytes + [UInt8](repeating: 0, count: (4 - bytes.count % 4) % 4) }

    /// Size 0, mode 0644, owner "1000", group "100", atime by the server, mtime 1 700 000 000.5 s.
    static let settable = NFSv4SetAttributes(size: 0, mode: 0o644, owner: 1000, ownerGroup: 100, accessTime: .server,
                                             modifyTime: .client(NFSv4Time(seconds: 1_700_000_000, nanoseconds: 500_000_000)))
    static let settableValues: [UInt8] = be64(0) + be32(0o644) + opaque(Array("1000".utf8)) + opaque(Array("100".utf8))
        + be32(0) + be32(1) + be64(1_700_000_000) + be32(500_000_000)

    static func ours(_ build: (inout CompoundWriter) -> Void) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 8192)
        let length = bytes.withUnsafeMutableBytes { raw -> Int in
            var writer = CompoundWriter(buffer: raw, minorVersion: 0)
            build(&writer)
            return writer.finish() ?? -1
        }
        precondition(length > 0)
        return Array(bytes[0..<length])
    }

    static func libnfs(_ operations: [nfs_argop4]) -> [UInt8] {
        var operations = operations
        return operations.withUnsafeMutableBufferPointer { pointer in
            var arguments = COMPOUND4args()
            arguments.argarray.argarray_len = UInt32(pointer.count)
            arguments.argarray.argarray_val = pointer.baseAddress
            return NFSv4WireTests.libnfsEncode(&arguments)
        }
    }

    @Test("the settable attributes' mask is size, mode, owner, owner_group, time_access_set, time_modify_set")
    func settableMask() {
        let mask = Self.settable.mask
        #expect(mask.words.0 == 1 << 4)
        #expect(mask.words.1 == (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 22))
    }

    @Test("OPEN GUARDED by name, CLOSE, CREATE of a directory and of a symlink, SETATTR: libnfs's bytes")
    func openCreateSetattrMatchLibnfs() {
        let arena = Arena()
        let owner = Array("dpfs/host/1".utf8), name = Array("new file".utf8), target = Array("../t".utf8)
        let stateid = NFSv4Stateid(sequence: 3, other: (0x1122_3344_5566_7788, 0x99AA_BBCC))
        let theirStateid = stateid4(seqid: 3, other: (0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, -0x78, -0x67, -0x56, -0x45, -0x34))
        var open = nfs_argop4()
        open.argop = OP_OPEN
        open.nfs_argop4_u.opopen.seqid = 0
        open.nfs_argop4_u.opopen.share_access = 3
        open.nfs_argop4_u.opopen.owner.clientid = 0xABCD
        open.nfs_argop4_u.opopen.owner.owner.owner_len = UInt32(owner.count)
        open.nfs_argop4_u.opopen.owner.owner.owner_val = arena.bytes(owner)
        open.nfs_argop4_u.opopen.openhow.opentype = OPEN4_CREATE
        open.nfs_argop4_u.opopen.openhow.openflag4_u.how.mode = GUARDED4
        open.nfs_argop4_u.opopen.openhow.openflag4_u.how.createhow4_u.createattrs = arena.fattr(Self.settable.mask, Self.settableValues)
        open.nfs_argop4_u.opopen.claim.claim = CLAIM_NULL
        open.nfs_argop4_u.opopen.claim.open_claim4_u.file = arena.string(name)
        var close = nfs_argop4()
        close.argop = OP_CLOSE
        close.nfs_argop4_u.opclose = CLOSE4args(seqid: 0, open_stateid: theirStateid)
        var directory = nfs_argop4()
        directory.argop = OP_CREATE
        directory.nfs_argop4_u.opcreate.objtype.type = NF4DIR
        directory.nfs_argop4_u.opcreate.objname = arena.string(name)
        directory.nfs_argop4_u.opcreate.createattrs = arena.fattr(NFSv4SetAttributes(mode: 0o755).mask, Self.be32(0o755))
        var link = nfs_argop4()
        link.argop = OP_CREATE
        link.nfs_argop4_u.opcreate.objtype.type = NF4LNK
        link.nfs_argop4_u.opcreate.objtype.createtype4_u.linkdata = arena.string(target)
        link.nfs_argop4_u.opcreate.objname = arena.string(name)
        link.nfs_argop4_u.opcreate.createattrs = arena.fattr(NFSv4Bitmap(), [])
        var setattr = nfs_argop4()
        setattr.argop = OP_SETATTR
        setattr.nfs_argop4_u.opsetattr = SETATTR4args(stateid: theirStateid, obj_attributes: arena.fattr(Self.settable.mask, Self.settableValues))
        let expected = Self.libnfs([open, close, directory, link, setattr])
        let written = Self.ours { writer in
            owner.withUnsafeBytes { ownerBytes in
                name.withUnsafeBytes { writer.open(clientID: 0xABCD, owner: ownerBytes, access: 3, create: .guarded(Self.settable), claim: .name($0)) }
            }
            writer.close(stateid)
            name.withUnsafeBytes { writer.create(.directory, name: $0, attributes: NFSv4SetAttributes(mode: 0o755)) }
            target.withUnsafeBytes { targetBytes in
                name.withUnsafeBytes { writer.create(.symlink(targetBytes), name: $0, attributes: NFSv4SetAttributes()) }
            }
            writer.setattr(stateid, Self.settable)
        }
        #expect(written == expected)
    }

    @Test("READDIR, RENAME, LINK, READLINK, LOOKUPP: libnfs's bytes")
    func namespaceMatchesLibnfs() {
        let arena = Arena()
        let old = Array("a".utf8), new = Array("bcdef".utf8)
        let mask = NFSv4Bitmap.standard
        var readdir = nfs_argop4()
        readdir.argop = OP_READDIR
        readdir.nfs_argop4_u.opreaddir = READDIR4args(cookie: 77, cookieverf: (1, 2, 3, 4, 5, 6, 7, 8), dircount: 8192, maxcount: 32768,
                                                      attr_request: arena.words([mask.words.0, mask.words.1]))
        var rename = nfs_argop4()
        rename.argop = OP_RENAME
        rename.nfs_argop4_u.oprename = RENAME4args(oldname: arena.string(old), newname: arena.string(new))
        var link = nfs_argop4()
        link.argop = OP_LINK
        link.nfs_argop4_u.oplink.newname = arena.string(new)
        var readlink = nfs_argop4()
        readlink.argop = OP_READLINK
        var lookupp = nfs_argop4()
        lookupp.argop = OP_LOOKUPP
        let expected = Self.libnfs([readdir, rename, link, readlink, lookupp])
        let written = Self.ours { writer in
            writer.readdir(cookie: 77, verifier: 0x0102_0304_0506_0708, directoryBytes: 8192, replyBytes: 32768, mask)
            old.withUnsafeBytes { oldBytes in new.withUnsafeBytes { writer.rename(oldBytes, to: $0) } }
            new.withUnsafeBytes { writer.link($0) }
            writer.readlink()
            writer.lookupp()
        }
        #expect(written == expected)
    }

    @Test("OPEN, CREATE, SETATTR (failed, attrsset carried), RENAME and READDIR results encoded by libnfs read back")
    func resultsReadBack() throws {
        let arena = Arena()
        let mask = NFSv4Bitmap.standard
        let values = NFSv4WireTests.fileAttributeValues()
        let change = change_info4(atomic: 1, before: 5, after: 6)
        var results = [nfs_resop4](repeating: nfs_resop4(), count: 5)
        results[0].resop = OP_OPEN
        results[0].nfs_resop4_u.opopen.status = NFS4_OK
        results[0].nfs_resop4_u.opopen.OPEN4res_u.resok4 = OPEN4resok(
            stateid: stateid4(seqid: 1, other: (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)), cinfo: change, rflags: 4,
            attrset: arena.words([1 << 4, 1 << 1]), delegation: open_delegation4())
        results[1].resop = OP_CREATE
        results[1].nfs_resop4_u.opcreate.CREATE4res_u.resok4 = CREATE4resok(cinfo: change_info4(atomic: 0, before: 8, after: 9), attrset: arena.words([0, 2]))
        results[2].resop = OP_SETATTR
        results[2].nfs_resop4_u.opsetattr = SETATTR4res(status: NFS4ERR_PERM, attrsset: arena.words([1 << 4]))
        results[3].resop = OP_RENAME
        results[3].nfs_resop4_u.oprename.RENAME4res_u.resok4 = RENAME4resok(source_cinfo: change, target_cinfo: change_info4(atomic: 1, before: 6, after: 7))
        var second = entry4(cookie: 20, name: arena.string(Array("z".utf8)), attrs: arena.fattr(mask, values), nextentry: nil)
        try withUnsafeMutablePointer(to: &second) { secondPointer in
            var first = entry4(cookie: 10, name: arena.string(Array("first".utf8)), attrs: arena.fattr(mask, values), nextentry: secondPointer)
            try withUnsafeMutablePointer(to: &first) { firstPointer in
                results[4].resop = OP_READDIR
                results[4].nfs_resop4_u.opreaddir.READDIR4res_u.resok4 = READDIR4resok(
                    cookieverf: (9, 9, 9, 9, 0, 0, 0, 1), reply: dirlist4(entries: firstPointer, eof: 1))
                let reply = Self.encodeReply(&results, status: NFS4ERR_PERM)
                try Self.readBack(reply)
            }
        }
    }

    static func encodeReply(_ results: inout [nfs_resop4], status: nfsstat4) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: 16384)
        let length = results.withUnsafeMutableBufferPointer { pointer in
            var reply = COMPOUND4res()
            reply.status = status
            reply.resarray.resarray_len = UInt32(pointer.count)
            reply.resarray.resarray_val = pointer.baseAddress
            return output.withUnsafeMutableBytes { raw -> Int in
                var zdr = ZDR()
                libnfs_zdrmem_create(&zdr, raw.baseAddress!.assumingMemoryBound(to: CChar.self), UInt32(raw.count), ZDR_ENCODE)
                defer { libnfs_zdr_destroy(&zdr) }
                guard zdr_COMPOUND4res(&zdr, &reply) != 0 else { return -1 }
                return Int(libnfs_zdr_getpos(&zdr))
            }
        }
        precondition(length > 0)
        return Array(output[0..<length])
    }

    static func readBack(_ reply: [UInt8]) throws {
        try reply.withUnsafeBytes { raw in
            var reader = try CompoundReader(buffer: raw, operationsSent: 5)
            #expect(reader.status == .perm)
            #expect(try reader.next(.open) == .ok)
            let opened = try reader.openResult()
            #expect(opened.stateid.sequence == 1 && opened.stateid.other.0 == 0x0102_0304_0506_0708 && opened.stateid.other.1 == 0x090A_0B0C)
            #expect(opened.changeAfter == 6 && opened.flags == 4 && opened.delegation == 0 && !opened.needsConfirm)
            #expect(opened.attributesSet.contains(4) && opened.attributesSet.contains(33))
            #expect(try reader.next(.create) == .ok)
            let created = try reader.createResult()
            #expect(created.changeAfter == 9 && created.attributesSet.contains(33))
            #expect(try reader.next(.setattr) == .perm)
            #expect(try reader.setattrResult().contains(4), "attrsset is read though SETATTR failed")
            #expect(try reader.next(.rename) == .ok)
            let renamed = try reader.renameResult()
            #expect(renamed.sourceAfter == 6 && renamed.targetAfter == 7)
            #expect(try reader.next(.readdir) == .ok)
            #expect(try reader.readdirVerifier() == 0x0909_0909_0000_0001)
            let first = try #require(try reader.directoryEntry())
            #expect(first.cookie == 10 && Array(first.name) == Array("first".utf8) && first.attributes.size == 5000)
            let second = try #require(try reader.directoryEntry())
            #expect(second.cookie == 20 && Array(second.name) == Array("z".utf8) && second.attributes.owner == 1000)
            #expect(try reader.directoryEntry() == nil)
            #expect(try reader.readdirEnd())
            try reader.finish()
        }
    }

    @Test("a READDIR entry whose attributes lie is kept by name alone; the entry after it still reads")
    func lyingEntryKeepsTheListing() throws {
        let arena = Arena()
        let mask = NFSv4Bitmap.standard
        var lying = NFSv4WireTests.fileAttributeValues()
        lying.replaceSubrange((lying.count - 4)..., with: [0x77, 0x35, 0x94, 0x00])   // 2e9 nanoseconds
        var second = entry4(cookie: 20, name: arena.string(Array("honest".utf8)), attrs: arena.fattr(mask, NFSv4WireTests.fileAttributeValues()), nextentry: nil)
        try withUnsafeMutablePointer(to: &second) { secondPointer in
            var first = entry4(cookie: 10, name: arena.string(Array("liar".utf8)), attrs: arena.fattr(mask, lying), nextentry: secondPointer)
            try withUnsafeMutablePointer(to: &first) { firstPointer in
                var results = [nfs_resop4](repeating: nfs_resop4(), count: 1)
                results[0].resop = OP_READDIR
                results[0].nfs_resop4_u.opreaddir.READDIR4res_u.resok4 = READDIR4resok(cookieverf: (0, 0, 0, 0, 0, 0, 0, 0),
                                                                                      reply: dirlist4(entries: firstPointer, eof: 1))
                let reply = Self.encodeReply(&results, status: NFS4_OK)
                try reply.withUnsafeBytes { raw in
                    var reader = try CompoundReader(buffer: raw, operationsSent: 1)
                    #expect(try reader.next(.readdir) == .ok)
                    _ = try reader.readdirVerifier()
                    let liar = try #require(try reader.directoryEntry())
                    #expect(Array(liar.name) == Array("liar".utf8) && liar.attributes.present == NFSv4Bitmap())
                    let honest = try #require(try reader.directoryEntry())
                    #expect(Array(honest.name) == Array("honest".utf8) && honest.attributes.size == 5000)
                    #expect(try reader.directoryEntry() == nil)
                    #expect(try reader.readdirEnd())
                    try reader.finish()
                }
            }
        }
    }

    @Test("EXCHANGE_ID, CREATE_SESSION, RECLAIM_COMPLETE, DESTROY_*, OPEN by handle EXCLUSIVE4_1, as RFC 8881 lays them out")
    func sessionLayouts() {
        let be32 = Self.be32, be64 = Self.be64
        let owner = Array("own".utf8)
        var session = NFSv4SessionID()
        session.bytes = (0x0807_0605_0403_0201, 0x100F_0E0D_0C0B_0A09)   // bytes 1...16 as they travel
        let fore = NFSv4ChannelAttributes(requestBytesMax: 1000, responseBytesMax: 2000, responseCachedBytesMax: 300,
                                          operationsMax: 16, requestsMax: 64)
        let written = Self.ours { writer in
            owner.withUnsafeBytes { writer.exchangeID(verifier: 0x55, owner: $0, flags: NFSv4ExchangeFlags.useNonPNFS) }
            writer.createSession(clientID: 0x77, sequenceID: 3, fore: fore, back: fore)
            writer.reclaimComplete(oneFileSystem: false)
            writer.destroySession(session)
            writer.destroyClientID(0x77)
            owner.withUnsafeBytes { writer.open(clientID: 0x77, owner: $0, access: 0x0403, create: .exclusive(verifier: 0x99, NFSv4SetAttributes(mode: 0o600)), claim: .handle) }
        }
        let channel = be32(0) + be32(1000) + be32(2000) + be32(300) + be32(16) + be32(64) + be32(0)
        var expected = be32(0) + be32(0) + be32(6)
        expected += be32(42) + be64(0x55) + Self.opaque(owner) + be32(0x0001_0000) + be32(0) + be32(0)
        expected += be32(43) + be64(0x77) + be32(3) + be32(0) + channel + channel + be32(0x4000_0000) + be32(1) + be32(0)
        expected += be32(58) + be32(0)
        expected += be32(44) + (1...16).map { UInt8($0) }
        expected += be32(57) + be64(0x77)
        expected += be32(18) + be32(0) + be32(0x0403) + be32(0) + be64(0x77) + Self.opaque(owner)
            + be32(1) + be32(3) + be64(0x99) + be32(2) + be32(0) + be32(1 << 1) + be32(4) + be32(0o600) + be32(4)
        #expect(written == expected)
    }
}

@Suite struct NFSURLVersionTests {
    @Test("version=4 and 4.1 mean NFSv4.1, 4.0 means 4.0, 3 stays the default")
    func versions() throws {
        #expect(try NFSURL.parse("nfs://h/e").versionText == "3")
        #expect(try NFSURL.parse("nfs://h/e?version=4&nfsport=2050").versionText == "4.1")
        #expect(try NFSURL.parse("nfs://h/e?version=4.1").description == "nfs://h/e?version=4.1")
        #expect(try NFSURL.parse("nfs://h/e?version=4.0").minorVersion == 0)
        #expect(throws: NFSURL.ParseError.self) { try NFSURL.parse("nfs://h/e?version=4.x") }
    }
}
