import FUSEWire
import Testing

@Suite struct SetIDBitsTests {
    @Test("only a mode that takes set-ID bits away and changes nothing else counts as dropping privileges")
    func onlyDrops() {
        #expect(SetIDBits.onlyDrops(from: 0o6777, to: 0o0777))
        #expect(SetIDBits.onlyDrops(from: 0o6777, to: 0o2777))
        #expect(SetIDBits.onlyDrops(from: 0o100_4755, to: 0o0755), "the file type bits are ignored")
        #expect(!SetIDBits.onlyDrops(from: 0o0777, to: 0o0777), "nothing dropped")
        #expect(!SetIDBits.onlyDrops(from: 0o4755, to: 0o0777), "permission bits changed too")
        #expect(!SetIDBits.onlyDrops(from: 0o0755, to: 0o4755), "a bit added")
        #expect(!SetIDBits.onlyDrops(from: 0o4755, to: 0o2755), "set-group-ID added while set-user-ID goes")
        #expect(!SetIDBits.onlyDrops(from: 0o1777, to: 0o0777), "the sticky bit is not a set-ID bit")
    }
}
