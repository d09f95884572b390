import BackendKit
import DPFSConfiguration
import KeyValueBackend
import NFSBackend
import NullBackend
import PassthroughBackend

/// Every backend the engine serves: one line each in `visitAll`. The configuration reader checks
/// devices against their schemas; dpfs-engine starts each device through its factory
/// (docs/writing-a-backend.md, "Registering a backend").
public enum RegisteredBackends {
    @inlinable
    public static func visitAll<Visitor: BackendVisitor>(_ visitor: inout Visitor) throws {
        try visitor.visit(NullBackendFactory.self)
        try visitor.visit(PassthroughBackendFactory.self)
        try visitor.visit(NFSBackendFactory.self)
        try visitor.visit(KVBackendFactory.self)
    }

    /// Every registered backend's schema, by name.
    public static let registry: BackendRegistry = {
        var collector = SchemaCollector()
        try! visitAll(&collector)
        return BackendRegistry(collector.schemas)
    }()
}
