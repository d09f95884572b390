import FUSEWire
import Testing

/// The FOPEN flags every cache mode gives an open (all backends take them from `CacheMode`).
@Suite struct OpenFlagsTests {
    @Test("every cache mode allows parallel direct writes; never and metadata are direct I/O, always keeps the cache")
    func flags() {
        for mode in [CacheMode.never, .metadata, .auto, .always] {
            // Without it a 6.2+ kernel writes one O_DIRECT write to a file at a time (measured on a
            // host mount: 4 threads × 4 KiB went from 30-36k to 97-133k writes/s with it).
            #expect(mode.openFlags & OpenReplyFlags.parallelDirectWrites != 0, "\(mode)")
        }
        #expect(CacheMode.never.openFlags & OpenReplyFlags.directIO != 0)
        #expect(CacheMode.metadata.openFlags & OpenReplyFlags.directIO != 0)
        #expect(CacheMode.auto.openFlags & (OpenReplyFlags.directIO | OpenReplyFlags.keepCache) == 0)
        #expect(CacheMode.always.openFlags & OpenReplyFlags.keepCache != 0)
    }
}
