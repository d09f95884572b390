import CDPFS
import NFSv4Wire
import Testing

/// Our NFSv4 XDR against libnfs's own (`zdr_COMPOUND4args`, `zdr_COMPOUND4res`, generated from the
/// RFC's .x files) in both directions, and against replies that lie. libnfs 4.0 knows NFSv4.0 only,
/// so SEQUENCE's bytes are checked against RFC 8881 §18.46 by hand.
@Suite struct NFSv4WireTests {
    /// Encodes `arguments` with libnfs into a fresh buffer; the bytes.
    static func libnfsEncode(_ arguments: inout COMPOUND4args) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 65536)
        let length = bytes.withUnsafeMutableBytes { raw -> Int in
            var zdr = ZDR()
            libnfs_zdrmem_create(&zdr, raw.baseAddress!.assumingMemoryBound(to: CChar.self), UInt32(raw.count), ZDR_ENCODE)
            defer { libnfs_zdr_destroy(&zdr) }
            guard zdr_COMPOUND4args(&zdr, &arguments) != 0 else { return -1 }
            return Int(libnfs_zdr_getpos(&zdr))
        }
        precondition(length > 0, "libnfs could not encode the COMPOUND")
        return Array(bytes[0..<length])
    }

    static func ours(_ build: (inout CompoundWriter) -> Void) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 65536)
        let length = bytes.withUnsafeMutableBytes { raw -> Int in
            var writer = CompoundWriter(buffer: raw, minorVersion: 0)
            build(&writer)
            return writer.finish() ?? -1
        }
        precondition(length > 0)
        return Array(bytes[0..<length])
    }

    @Test("a COMPOUND of ten NFSv4.0 operations is byte for byte what libnfs writes")
    func encodeMatchesLibnfs() {
        let handle: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8, 9]          // 9 bytes: padding is exercised
        let name = Array("file.txt".utf8), other = Array("gone".utf8)
        let data = (0..<13).map { UInt8($0) }
        let mask = NFSv4Bitmap.standard
        let expected: [UInt8] = handle.withUnsafeBufferPointer { handleBytes in
            name.withUnsafeBufferPointer { nameBytes in
                other.withUnsafeBufferPointer { otherBytes in
                    data.withUnsafeBufferPointer { dataBytes in
                        var words: [UInt32] = [mask.words.0, mask.words.1]
                        return words.withUnsafeMutableBufferPointer { wordBytes in
                            func mutable(_ p: UnsafeBufferPointer<UInt8>) -> UnsafeMutablePointer<CChar> {
                                UnsafeMutableRawPointer(mutating: p.baseAddress!).assumingMemoryBound(to: CChar.self)
                            }
                            var ops = [nfs_argop4](repeating: nfs_argop4(), count: 10)
                            ops[0].argop = OP_PUTFH
                            ops[0].nfs_argop4_u.opputfh.object = nfs_fh4(nfs_fh4_len: 9, nfs_fh4_val: mutable(handleBytes))
                            ops[1].argop = OP_GETATTR
                            ops[1].nfs_argop4_u.opgetattr.attr_request = bitmap4(bitmap4_len: 2, bitmap4_val: wordBytes.baseAddress)
                            ops[2].argop = OP_LOOKUP
                            ops[2].nfs_argop4_u.oplookup.objname = utf8string(utf8string_len: UInt32(name.count), utf8string_val: mutable(nameBytes))
                            ops[3].argop = OP_GETFH
                            ops[4].argop = OP_ACCESS
                            ops[4].nfs_argop4_u.opaccess.access = 0x3f
                            ops[5].argop = OP_READ
                            ops[5].nfs_argop4_u.opread = READ4args(stateid: stateid4(), offset: 1 << 33, count: 8192)
                            ops[6].argop = OP_WRITE
                            ops[6].nfs_argop4_u.opwrite = WRITE4args(stateid: stateid4(), offset: 4096, stable: FILE_SYNC4,
                                                                    data: .init(data_len: 13, data_val: mutable(dataBytes)))
                            ops[7].argop = OP_COMMIT
                            ops[7].nfs_argop4_u.opcommit = COMMIT4args(offset: 7, count: 9)
                            ops[8].argop = OP_SAVEFH
                            ops[9].argop = OP_REMOVE
                            ops[9].nfs_argop4_u.opremove.target = utf8string(utf8string_len: UInt32(other.count), utf8string_val: mutable(otherBytes))
                            return ops.withUnsafeMutableBufferPointer { opBytes in
                                var arguments = COMPOUND4args()
                                arguments.minorversion = 0
                                arguments.argarray.argarray_len = 10
                                arguments.argarray.argarray_val = opBytes.baseAddress
                                return Self.libnfsEncode(&arguments)
                            }
                        }
                    }
                }
            }
        }
        let written = Self.ours { writer in
            handle.withUnsafeBytes { writer.putfh($0) }
            writer.getattr(mask)
            name.withUnsafeBytes { writer.lookup($0) }
            writer.getfh()
            writer.access(0x3f)
            writer.read(.anonymous, offset: 1 << 33, count: 8192)
            let area = writer.write(.anonymous, offset: 4096, stability: .fileSync, byteCount: 13)!
            data.withUnsafeBytes { area.copyMemory(from: $0) }
            writer.commit(offset: 7, count: 9)
            writer.savefh()
            other.withUnsafeBytes { writer.remove($0) }
        }
        #expect(written == expected)
        #expect(written.count % 4 == 0)
    }

    @Test("SEQUENCE, as RFC 8881 lays it out: session id, sequence id, slot, highest slot, cache flag")
    func sequenceLayout() {
        let session = (0..<16).map { UInt8(0xA0 + $0) }
        var bytes = [UInt8](repeating: 0xEE, count: 256)
        let length = bytes.withUnsafeMutableBytes { raw -> Int in
            var writer = CompoundWriter(buffer: raw, minorVersion: 1)
            session.withUnsafeBytes { writer.sequence(session: $0, sequenceID: 7, slot: 3, highestSlot: 15, cacheThis: true) }
            writer.putrootfh()
            return writer.finish()!
        }
        let be: (UInt32) -> [UInt8] = { [UInt8($0 >> 24), UInt8(($0 >> 16) & 0xff), UInt8(($0 >> 8) & 0xff), UInt8($0 & 0xff)] }
        let header: [UInt8] = be(0) + be(1) + be(2)
        let sequence: [UInt8] = be(53) + session + be(7) + be(3) + be(15) + be(1)
        let expected: [UInt8] = header + sequence + be(24)
        #expect(Array(bytes[0..<length]) == expected)
    }

    @Test("the operation, status and attribute numbers are libnfs's")
    func numbersMatchLibnfs() {
        let operations: [(NFSv4Operation, nfs_opnum4)] = [
            (.access, OP_ACCESS), (.close, OP_CLOSE), (.commit, OP_COMMIT), (.create, OP_CREATE), (.getattr, OP_GETATTR),
            (.getfh, OP_GETFH), (.link, OP_LINK), (.lock, OP_LOCK), (.lockt, OP_LOCKT), (.locku, OP_LOCKU),
            (.lookup, OP_LOOKUP), (.lookupp, OP_LOOKUPP), (.open, OP_OPEN), (.openConfirm, OP_OPEN_CONFIRM),
            (.putfh, OP_PUTFH), (.putrootfh, OP_PUTROOTFH), (.read, OP_READ), (.readdir, OP_READDIR),
            (.readlink, OP_READLINK), (.remove, OP_REMOVE), (.rename, OP_RENAME), (.renew, OP_RENEW),
            (.restorefh, OP_RESTOREFH), (.savefh, OP_SAVEFH), (.setattr, OP_SETATTR), (.setclientid, OP_SETCLIENTID),
            (.setclientidConfirm, OP_SETCLIENTID_CONFIRM), (.write, OP_WRITE), (.releaseLockowner, OP_RELEASE_LOCKOWNER),
        ]
        for (ours, theirs) in operations { #expect(ours.rawValue == theirs.rawValue, "\(ours)") }
        let statuses: [(NFSv4Status, nfsstat4)] = [
            (.ok, NFS4_OK), (.perm, NFS4ERR_PERM), (.noent, NFS4ERR_NOENT), (.io, NFS4ERR_IO), (.access, NFS4ERR_ACCESS),
            (.exist, NFS4ERR_EXIST), (.notdir, NFS4ERR_NOTDIR), (.isdir, NFS4ERR_ISDIR), (.inval, NFS4ERR_INVAL),
            (.fbig, NFS4ERR_FBIG), (.nospc, NFS4ERR_NOSPC), (.rofs, NFS4ERR_ROFS), (.nametoolong, NFS4ERR_NAMETOOLONG),
            (.notempty, NFS4ERR_NOTEMPTY), (.stale, NFS4ERR_STALE), (.badhandle, NFS4ERR_BADHANDLE),
            (.notsupp, NFS4ERR_NOTSUPP), (.serverfault, NFS4ERR_SERVERFAULT), (.delay, NFS4ERR_DELAY),
            (.denied, NFS4ERR_DENIED), (.expired, NFS4ERR_EXPIRED), (.grace, NFS4ERR_GRACE), (.clidInuse, NFS4ERR_CLID_INUSE),
            (.staleClientid, NFS4ERR_STALE_CLIENTID), (.staleStateid, NFS4ERR_STALE_STATEID), (.oldStateid, NFS4ERR_OLD_STATEID),
            (.badStateid, NFS4ERR_BAD_STATEID), (.badSeqid, NFS4ERR_BAD_SEQID), (.locksHeld, NFS4ERR_LOCKS_HELD),
        ]
        for (ours, theirs) in statuses { #expect(ours.rawValue == theirs.rawValue, "\(ours)") }
        let attributes: [(NFSv4Attribute, Int32)] = [
            (.type, FATTR4_TYPE), (.change, FATTR4_CHANGE), (.size, FATTR4_SIZE), (.fsid, FATTR4_FSID), (.fileid, FATTR4_FILEID),
            (.mode, FATTR4_MODE), (.numlinks, FATTR4_NUMLINKS), (.owner, FATTR4_OWNER), (.ownerGroup, FATTR4_OWNER_GROUP),
            (.rawdev, FATTR4_RAWDEV), (.spaceUsed, FATTR4_SPACE_USED), (.timeAccess, FATTR4_TIME_ACCESS),
            (.timeMetadata, FATTR4_TIME_METADATA), (.timeModify, FATTR4_TIME_MODIFY),
        ]
        for (ours, theirs) in attributes { #expect(ours.rawValue == Int(theirs), "\(ours)") }
    }

    /// The attribute values a GETATTR of a regular file carries, written with our XDR primitives.
    static func fileAttributeValues(owner: String = "1000") -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 512)
        let length = bytes.withUnsafeMutableBytes { raw -> Int in
            var xdr = XDRWriter(buffer: raw)
            xdr.u32(1); xdr.u64(42); xdr.u64(5000)                    // type, change, size
            xdr.u64(9); xdr.u64(10); xdr.u64(777)                    // fsid, fileid
            xdr.u32(0o644); xdr.u32(2)                               // mode, numlinks
            xdr.opaque(Array(owner.utf8)); xdr.opaque(Array("100".utf8))
            xdr.u32(0); xdr.u32(0); xdr.u64(8192)                    // rawdev, space used
            for seconds: UInt64 in [1_700_000_001, 1_700_000_002, 1_700_000_003] { xdr.u64(seconds); xdr.u32(500) }
            return xdr.position
        }
        return Array(bytes[0..<length])
    }

    /// A COMPOUND4res of PUTFH, GETATTR, GETFH, READ and WRITE, all OK, encoded by libnfs.
    static func libnfsReply(attributeValues: [UInt8], words: [UInt32]) -> [UInt8] {
        let handle: [UInt8] = [9, 8, 7, 6, 5]
        let data: [UInt8] = Array("hello, nfs".utf8)
        var output = [UInt8](repeating: 0, count: 65536)
        var values = attributeValues.map { CChar(bitPattern: $0) }, handleBytes = handle.map { CChar(bitPattern: $0) }
        var dataBytes = data.map { CChar(bitPattern: $0) }, maskWords = words
        let length = values.withUnsafeMutableBufferPointer { valuesPointer in
            handleBytes.withUnsafeMutableBufferPointer { handlePointer in
                dataBytes.withUnsafeMutableBufferPointer { dataPointer in
                    maskWords.withUnsafeMutableBufferPointer { maskPointer in
                        var results = [nfs_resop4](repeating: nfs_resop4(), count: 5)
                        results[0].resop = OP_PUTFH
                        results[1].resop = OP_GETATTR
                        results[1].nfs_resop4_u.opgetattr.GETATTR4res_u.resok4.obj_attributes = fattr4(
                            attrmask: bitmap4(bitmap4_len: UInt32(maskPointer.count), bitmap4_val: maskPointer.baseAddress),
                            attr_vals: attrlist4(attrlist4_len: UInt32(valuesPointer.count), attrlist4_val: valuesPointer.baseAddress))
                        results[2].resop = OP_GETFH
                        results[2].nfs_resop4_u.opgetfh.GETFH4res_u.resok4.object = nfs_fh4(nfs_fh4_len: 5, nfs_fh4_val: handlePointer.baseAddress)
                        results[3].resop = OP_READ
                        results[3].nfs_resop4_u.opread.READ4res_u.resok4.eof = 1
                        results[3].nfs_resop4_u.opread.READ4res_u.resok4.data = .init(data_len: UInt32(dataPointer.count), data_val: dataPointer.baseAddress)
                        results[4].resop = OP_WRITE
                        results[4].nfs_resop4_u.opwrite.WRITE4res_u.resok4.count = 4096
                        results[4].nfs_resop4_u.opwrite.WRITE4res_u.resok4.committed = DATA_SYNC4
                        results[4].nfs_resop4_u.opwrite.WRITE4res_u.resok4.writeverf = (1, 2, 3, 4, 5, 6, 7, 8)
                        return results.withUnsafeMutableBufferPointer { resultPointer in
                            var reply = COMPOUND4res()
                            reply.status = NFS4_OK
                            reply.resarray.resarray_len = 5
                            reply.resarray.resarray_val = resultPointer.baseAddress
                            return output.withUnsafeMutableBytes { raw -> Int in
                                var zdr = ZDR()
                                libnfs_zdrmem_create(&zdr, raw.baseAddress!.assumingMemoryBound(to: CChar.self), UInt32(raw.count), ZDR_ENCODE)
                                defer { libnfs_zdr_destroy(&zdr) }
                                guard zdr_COMPOUND4res(&zdr, &reply) != 0 else { return -1 }
                                return Int(libnfs_zdr_getpos(&zdr))
                            }
                        }
                    }
                }
            }
        }
        precondition(length > 0)
        return Array(output[0..<length])
    }

    @Test("a reply libnfs encodes is read back: statuses, attributes, handle, data, write result")
    func decodeLibnfsReply() throws {
        let mask = NFSv4Bitmap.standard
        let reply = Self.libnfsReply(attributeValues: Self.fileAttributeValues(), words: [mask.words.0, mask.words.1])
        try reply.withUnsafeBytes { raw in
            var reader = try CompoundReader(buffer: raw)
            #expect(reader.status == .ok && reader.results == 5)
            #expect(try reader.next(.putfh) == .ok)
            #expect(try reader.next(.getattr) == .ok)
            let attributes = try reader.attributes()
            #expect(attributes.present == mask)
            #expect(attributes.type == 1 && attributes.change == 42 && attributes.size == 5000)
            #expect(attributes.fsid == (9, 10) && attributes.fileid == 777 && attributes.mode == 0o644 && attributes.numlinks == 2)
            #expect(attributes.owner == 1000 && attributes.ownerGroup == 100 && attributes.spaceUsed == 8192)
            #expect(attributes.modifyTime == NFSv4Time(seconds: 1_700_000_003, nanoseconds: 500))
            #expect(try reader.next(.getfh) == .ok)
            #expect(Array(try reader.handle()) == [9, 8, 7, 6, 5])
            #expect(try reader.next(.read) == .ok)
            let read = try reader.readData(limit: 1 << 20)
            #expect(read.eof && Array(read.data) == Array("hello, nfs".utf8))
            #expect(try reader.next(.write) == .ok)
            let write = try reader.writeResult()
            #expect(write.count == 4096 && write.committed == .dataSync && write.verifier == 0x0102_0304_0506_0708)
            try reader.finish()
        }
    }

    @Test("lies are refused with where they are, never read past", arguments: [
        "truncated", "wrong operation", "attribute not asked for", "values too short", "values left over",
        "nanoseconds", "handle too long", "too many results", "one result more than sent", "a byte left over",
    ])
    func lies(_ lie: String) throws {
        let mask = NFSv4Bitmap.standard
        var values = Self.fileAttributeValues()
        var words = [mask.words.0, mask.words.1]
        var reply: [UInt8]
        switch lie {
        case "attribute not asked for": words[0] |= 1 << 2                  // fh_expire_type
        case "values left over": values += [0, 0, 0, 0]
        case "values too short": values.removeLast(4)
        case "nanoseconds": values.replaceSubrange((values.count - 4)..., with: [0x3B, 0x9A, 0xCA, 0x00])   // 10^9
        default: break
        }
        reply = Self.libnfsReply(attributeValues: values, words: words)
        switch lie {
        case "truncated": reply.removeLast(6)
        case "wrong operation": reply[4 * 3 + 3] = UInt8(NFSv4Operation.getfh.rawValue)          // first resop
        case "too many results": reply[4 * 2 + 3] = 200
        case "one result more than sent": reply[4 * 2 + 3] = 6
        case "a byte left over": reply += [0, 0, 0, 0]
        case "handle too long":
            // GETFH's handle length, found after the GETATTR body: 200 bytes claimed.
            let getattrEnd = 12 + 8 + 8 + 4 + 4 * words.count + 4 + values.count
            reply[getattrEnd + 8 + 3] = 200
        default: break
        }
        _ = reply.withUnsafeBytes { raw in
            #expect(throws: XDRError.self, "\(lie)") {
                var reader = try CompoundReader(buffer: raw, operationsSent: 5)
                _ = try reader.next(.putfh)
                _ = try reader.next(.getattr)
                _ = try reader.attributes()
                _ = try reader.next(.getfh)
                _ = try reader.handle()
                _ = try reader.next(.read)
                _ = try reader.readData(limit: 1 << 20)
                _ = try reader.next(.write)
                _ = try reader.writeResult()
                try reader.finish()
            }
        }
    }

    @Test("a writer out of room writes nothing past its buffer and says so")
    func writerOverflow() {
        var bytes = [UInt8](repeating: 0xEE, count: 40)
        let result = bytes.withUnsafeMutableBytes { raw -> (Int?, UnsafeMutableRawBufferPointer?) in
            var writer = CompoundWriter(buffer: UnsafeMutableRawBufferPointer(rebasing: raw[0..<32]), minorVersion: 0)
            writer.putrootfh()
            let area = writer.write(.anonymous, offset: 0, stability: .unstable, byteCount: 4096)
            writer.getfh()
            return (writer.finish(), area)
        }
        #expect(result.0 == nil && result.1 == nil)
        #expect(bytes[32..<40].allSatisfy { $0 == 0xEE })
    }

    @Test("owners: numbers are read, names and overflow are not")
    func owners() throws {
        let cases: [(owner: String, expected: UInt32?)] = [("0", 0), ("4294967295", .max), ("alice@example.com", nil), ("4294967296", nil), ("-1", nil)]
        for (owner, expected) in cases {
            let mask = NFSv4Bitmap.standard
            let reply = Self.libnfsReply(attributeValues: Self.fileAttributeValues(owner: owner), words: [mask.words.0, mask.words.1])
            let attributes = try reply.withUnsafeBytes { raw throws -> NFSv4Attributes in
                var reader = try CompoundReader(buffer: raw)
                _ = try reader.next(.putfh)
                _ = try reader.next(.getattr)
                return try reader.attributes()
            }
            #expect(attributes.owner == expected, "\(owner)")
        }
    }
}
