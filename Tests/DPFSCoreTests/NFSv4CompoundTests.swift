import CDPFS
import NFSv4Wire
import Testing

/// What the NFSv4 path needs from libnfs 4.0 before any server is involved: a COMPOUND of our own
/// XDR carrying a WRITE larger than libnfs's own 4 KiB encode buffer can be queued, and the private
/// pdu layout the shim relies on is the one this libnfs has (the shim checks it on every call).
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

    @Test("libnfs 4.0's own COMPOUND call cannot carry a 64 KiB WRITE")
    func libnfsOwnLimit() {
        let own = Self.queueWrite(dataBytes: 64 << 10) { rpc, arguments in
            rpc_nfs4_compound_async(rpc, Self.ignore, arguments, nil)
        }
        #expect(own == -2, "libnfs 4.0 encodes into 4 KiB: the limit the shim exists for")
    }

    /// Begins a pdu on an unconnected context, hands its area to `body`, which answers the bytes
    /// written (nil: abandon), and returns what send answered.
    static func begin(room: Int, body: (UnsafeMutableRawBufferPointer) -> Int?) -> (begun: Bool, layoutWrong: Int32, sent: Int32?) {
        let rpc = rpc_init_context()!
        defer { rpc_destroy_context(rpc) }
        var area: UnsafeMutablePointer<UInt8>? = nil
        var areaBytes = 0
        var layoutWrong: Int32 = 0
        guard let pdu = CDPFS_nfs4_begin(rpc, Self.ignore, nil, room, &area, &areaBytes, &layoutWrong) else {
            return (false, layoutWrong, nil)
        }
        guard let written = body(UnsafeMutableRawBufferPointer(start: area, count: areaBytes)) else {
            CDPFS_nfs4_abandon(rpc, pdu)
            return (true, layoutWrong, nil)
        }
        return (true, layoutWrong, CDPFS_nfs4_send(rpc, pdu, written))
    }

    @Test("the shim's room holds a 64 KiB WRITE written by our own XDR, and the layout check passes")
    func largeWriteFits() {
        let bytes = 64 << 10
        var roomSeen = 0
        let result = Self.begin(room: bytes + 1024) { area in
            roomSeen = area.count
            var compound = CompoundWriter(buffer: area, minorVersion: 1)
            let handle: [UInt8] = [7, 7, 7, 7, 7, 7, 7, 7]
            handle.withUnsafeBytes { compound.putfh($0) }
            guard let data = compound.write(.anonymous, offset: 4096, stability: .unstable, byteCount: bytes) else { return nil }
            data.initializeMemory(as: UInt8.self, repeating: 0x5A)
            return compound.finish()
        }
        #expect(result.begun && result.layoutWrong == 0)
        // The room asked for, plus what is left of libnfs's own 4 KiB after the RPC header.
        #expect(roomSeen > bytes + 1024 && roomSeen < bytes + 1024 + 4096)
        #expect(result.sent == 0, "queued")
    }

    @Test("the shim refuses more than its room, a length not a multiple of 4, and a room over 64 MiB")
    func wrongLengthsAreRefused() {
        #expect(Self.begin(room: 1024) { area in area.count + 4 }.sent == -1)
        #expect(Self.begin(room: 1024) { _ in 10 }.sent == -1)
        let huge = Self.begin(room: (64 << 20) + 1) { _ in 0 }
        #expect(!huge.begun && huge.layoutWrong == 0)
        #expect(Self.begin(room: 0) { _ in 8 }.sent == 0, "a small COMPOUND fits the 4 KiB libnfs always gives")
        #expect(Self.begin(room: 0) { _ in nil }.begun, "abandoned: freed without sending")
    }
}
