import CDPFS
import Testing

/// What the NFSv4 path needs from libnfs 4.0 before any server is involved: a COMPOUND carrying a
/// WRITE larger than libnfs's own 4 KiB encode buffer can be queued, and the private pdu layout the
/// shim relies on is the one this libnfs has (the shim checks it on every call).
@Suite struct NFSv4CompoundTests {
    static let ignore: rpc_cb = { _, _, _, _ in }

    /// Encodes PUTFH + WRITE of `dataBytes` on an unconnected context (queued, never sent) and
    /// answers what the given sender returned.
    static func queueWrite(dataBytes: Int, send: (OpaquePointer, UnsafeMutablePointer<COMPOUND4args>) -> Int32) -> Int32 {
        let rpc = rpc_init_context()!
        defer { rpc_destroy_context(rpc) }
        let handle = UnsafeMutablePointer<CChar>.allocate(capacity: 8)
        handle.initialize(repeating: 7, count: 8)
        let data = UnsafeMutablePointer<CChar>.allocate(capacity: max(dataBytes, 1))
        data.initialize(repeating: 0x5A, count: max(dataBytes, 1))
        defer {
            handle.deallocate()
            data.deallocate()
        }
        let operations = UnsafeMutablePointer<nfs_argop4>.allocate(capacity: 2)
        defer { operations.deallocate() }
        var putfh = nfs_argop4()
        putfh.argop = OP_PUTFH
        putfh.nfs_argop4_u.opputfh.object = nfs_fh4(nfs_fh4_len: 8, nfs_fh4_val: handle)
        var write = nfs_argop4()
        write.argop = OP_WRITE
        // The anonymous stateid (all zeros) and UNSTABLE, as the backend's first WRITE.
        write.nfs_argop4_u.opwrite = WRITE4args(stateid: stateid4(), offset: 4096, stable: UNSTABLE4,
                                                data: .init(data_len: u_int(dataBytes), data_val: data))
        operations[0] = putfh
        operations[1] = write
        var arguments = COMPOUND4args()
        arguments.minorversion = 0
        arguments.argarray.argarray_len = 2
        arguments.argarray.argarray_val = operations
        return send(rpc, &arguments)
    }

    @Test("libnfs 4.0's own COMPOUND call cannot carry a 64 KiB WRITE; the shim with room for it can")
    func largeWriteFits() {
        let bytes = 64 << 10
        let own = Self.queueWrite(dataBytes: bytes) { rpc, arguments in
            rpc_nfs4_compound_async(rpc, Self.ignore, arguments, nil)
        }
        #expect(own == -2, "libnfs 4.0 encodes into 4 KiB: the limit the shim exists for")
        let shim = Self.queueWrite(dataBytes: bytes) { rpc, arguments in
            CDPFS_nfs4_compound_async(rpc, Self.ignore, arguments, nil, bytes + 1024)
        }
        #expect(shim == 0, "queued: the pdu layout check passed and the WRITE was encoded")
    }

    @Test("the shim refuses what does not fit the room it was given, and a payload over 64 MiB")
    func tooLittleRoomIsRefused() {
        let bytes = 64 << 10
        let short = Self.queueWrite(dataBytes: bytes) { rpc, arguments in
            CDPFS_nfs4_compound_async(rpc, Self.ignore, arguments, nil, bytes / 2)
        }
        #expect(short == -2)
        let huge = Self.queueWrite(dataBytes: 16) { rpc, arguments in
            CDPFS_nfs4_compound_async(rpc, Self.ignore, arguments, nil, (64 << 20) + 1)
        }
        #expect(huge == -2)
        let small = Self.queueWrite(dataBytes: 512) { rpc, arguments in
            CDPFS_nfs4_compound_async(rpc, Self.ignore, arguments, nil, 0)
        }
        #expect(small == 0, "a small COMPOUND fits the 4 KiB libnfs always gives")
    }
}
