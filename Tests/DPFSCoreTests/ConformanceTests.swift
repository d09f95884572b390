import DPFSCore
import DPFSTestSupport
import ExampleBackend
import FUSEWire
import NullBackend
import PassthroughBackend
import Testing

// Every backend through the conformance suite (DPFSTestSupport/Conformance.swift). The NFS backend
// joins when it is ported onto the kit (it needs a real nfs-ganesha, started by a tools/ script).

@Suite struct ConformanceTests {
    @Test("the null backend conforms (a fixed namespace: the shared checks)")
    func null() {
        #expect(Conformance.run(FUSEClient(backend: NullBackend()), []) == [])
    }

    @Test("the passthrough backend conforms")
    func passthrough() throws {
        let directory = SharedDirectory()
        #expect(Conformance.run(try makeClient(directory), [.storesFiles]) == [])
    }

    @Test("the guide's example backend conforms")
    func example() {
        #expect(Conformance.run(FUSEClient(backend: MemoryFileSystem()), [.storesFiles]) == [])
    }

    @Test("the suite can fail: a backend that answers nothing does not conform")
    func control() {
        let failures = Conformance.run(FUSEClient(backend: AnswersNothing()), [.storesFiles])
        #expect(failures.count >= 6, "\(failures)")
    }
}

/// Replies ENOSYS to everything: every check of the suite must catch it.
struct AnswersNothing: Backend {
    mutating func handle(_ request: FUSERequest, reply: FUSEReply, token: CompletionToken) -> BackendAnswer {
        reply.fail(.notImplemented)
        return .done
    }
}
