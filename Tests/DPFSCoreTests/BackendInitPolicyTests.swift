import FUSEWire
import NullBackend
import PassthroughBackend
import Testing

// Each backend states what it asks of INIT (the engine no longer keeps that knowledge in its own
// serve path): the flags that change what the guest's kernel does must follow the settings.

@Suite struct BackendInitPolicyTests {
    @Test("passthrough: POSIX locks always, writeback only with cache always, killpriv_v2 only on a host mount")
    func passthroughPolicy() {
        let defaults = InitPolicy().flagsWanted
        for cache in CacheMode.allCases {
            for hostMount in [false, true] {
                let flags = PassthroughBackend.initPolicy(cacheMode: cache, hostMount: hostMount).flagsWanted
                #expect(flags & InitFlags.posixLocks != 0)
                #expect((flags & InitFlags.writebackCache != 0) == (cache == .always))
                #expect((flags & InitFlags.handleKillprivV2 != 0) == hostMount)
                // Nothing else differs from the engine's defaults.
                let added = InitFlags.posixLocks | InitFlags.writebackCache | InitFlags.handleKillprivV2
                #expect(flags & ~added == defaults & ~added)
            }
        }
    }

    @Test("null: the engine's defaults")
    func nullPolicy() {
        #expect(NullBackend.initPolicy.flagsWanted == InitPolicy().flagsWanted)
        #expect(NullBackend.initPolicy.writeBytesMax == InitPolicy().writeBytesMax)
    }
}
