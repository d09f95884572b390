// swift-tools-version:6.1
//
// DPFS in Swift: a file-system virtualization engine. The module graph follows the request path:
// transport → engine core → FUSE wire → backend. Each module has one
// job, and everything that touches the operating system sits in `DPFSPosix`, never in the pure cores.
import PackageDescription

/// Settings every Swift target shares. Release builds also run full cross-module optimisation so the
/// generic poller is specialised for its concrete transport and backend in the executables.
let swiftSettings: [SwiftSetting] = [
    .enableExperimentalFeature("Lifetimes"),
    .unsafeFlags(["-cross-module-optimization"], .when(configuration: .release)),
    // The performance annotations (@_noAllocation, @_noLocks) need every callee's body in view,
    // which only whole-module builds give. Release builds are whole-module and enforce them; debug
    // builds compile file by file, so there the check is switched off rather than made noisy.
    .unsafeFlags(["-Xllvm", "-sil-disable-pass=performance-diagnostics"], .when(configuration: .debug)),
]

let package = Package(
    name: "dpfs",
    products: [
        .executable(name: "dpfs-engine", targets: ["dpfs-engine"]),
        .executable(name: "dpfs-bench", targets: ["dpfs-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/ordo-one/malloc-interposer", from: "1.6.1"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // One C target for every system header the engine needs; shims only for macros and
        // constants the Swift importer drops.
        .target(
            name: "CDPFS",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [
                .linkedLibrary("uring"), .linkedLibrary("ibverbs"),
                .linkedLibrary("numa"), .linkedLibrary("nfs"),
            ]
        ),
        // FUSE wire protocol: opcodes, layouts, decoding from scatter-gather segments, in-place replies.
        .target(name: "FUSEWire", dependencies: ["CDPFS"], swiftSettings: swiftSettings),
        // Engine core: slots, the transition table, rings, the poller, Backend/Transport protocols.
        .target(name: "DPFSCore", dependencies: ["CDPFS", "FUSEWire"], swiftSettings: swiftSettings),
        // Split virtqueues over a guest memory map: every guest address and length checked.
        .target(name: "Virtio", dependencies: ["CDPFS", "DPFSCore"], swiftSettings: swiftSettings),
        // Everything that touches the OS: hugepage/NUMA arena, threads and affinity, clocks.
        .target(name: "DPFSPosix", dependencies: ["CDPFS", "DPFSCore"], swiftSettings: swiftSettings),
        // In-process transport: a virtio 1.2 split-queue driver and the device side that serves it.
        .target(
            name: "LoopbackTransport",
            dependencies: ["DPFSCore", "FUSEWire", "Virtio"],
            swiftSettings: swiftSettings
        ),
        // The contract every backend is written against: typed per-operation arguments and replies,
        // defaults for what a backend does not answer, and the one opcode switch (FileSystem).
        // Metrics for Prometheus, pure: a scrape copies every queue's counters (relaxed loads) and
        // renders the text exposition format.
        .target(name: "EngineMetrics", dependencies: ["CDPFS", "DPFSCore", "FUSEWire"], swiftSettings: swiftSettings),
        .target(name: "BackendKit", dependencies: ["CDPFS", "DPFSCore", "FUSEWire", "DPFSPosix", "DPFSConfiguration", "EngineMetrics"], swiftSettings: swiftSettings),
        .target(name: "NullBackend", dependencies: ["CDPFS", "DPFSCore", "FUSEWire", "BackendKit", "DPFSConfiguration"], swiftSettings: swiftSettings),
        // A host directory shared with the guest: confined openat2 resolution, the caller's
        // credentials, io_uring data path, inode and open-file tables shared by a device's queues.
        .target(name: "PassthroughBackend", dependencies: ["CDPFS", "DPFSCore", "FUSEWire", "DPFSPosix", "BackendKit", "DPFSConfiguration"], swiftSettings: swiftSettings),
        // An NFS export (NFSv3 over libnfs's raw asynchronous RPC layer): file handles, never paths;
        // each queue's own connection driven from its poller; reconnect, resend and timeouts.
        .target(name: "NFSBackend", dependencies: ["CDPFS", "DPFSCore", "FUSEWire", "DPFSPosix", "BackendKit", "DPFSConfiguration", "NFSv4Wire"], swiftSettings: swiftSettings),
        // NFSv4 XDR, pure: COMPOUNDs written and replies read in caller memory, every length checked
        // (the NFS backend's v4 wire; not used by a device yet).
        .target(name: "NFSv4Wire", swiftSettings: swiftSettings),
        // RESP2, the Redis protocol, pure: commands written and replies parsed in caller memory,
        // with a limit on everything (the key-value backend's wire).
        .target(name: "RESP", swiftSettings: swiftSettings),
        // The key-value backend's store in Redis: the key schema and the Redis functions that make
        // every multi-key change one atomic call.
        .target(name: "KeyValueStore", swiftSettings: swiftSettings),
        // The key-value backend: its connection to Redis, driven from the poller (no FUSE
        // operation is served from it yet).
        .target(name: "KeyValueBackend", dependencies: ["CDPFS", "DPFSCore", "FUSEWire", "DPFSPosix", "BackendKit", "DPFSConfiguration", "RESP", "KeyValueStore"], swiftSettings: swiftSettings),
        // The vhost-user protocol, pure: messages, their decoding with every field checked, and the
        // control plane as a value (queue setup, features; effects returned as actions).
        .target(name: "VhostUserProtocol", swiftSettings: swiftSettings),
        // A vhost-user device: the socket, guest memory mapping, and the poller threads of its
        // queues, performing what the protocol's control plane decides.
        .target(
            name: "VhostUser",
            dependencies: ["CDPFS", "DPFSCore", "FUSEWire", "Virtio", "DPFSPosix", "VhostUserProtocol", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // A mount on the host through /dev/fuse: mount(2), classic read/writev queues on cloned
        // descriptors, FUSE-over-io_uring ring entries, kernel passthrough backing files.
        .target(
            name: "FUSEDevice",
            dependencies: ["CDPFS", "DPFSCore", "FUSEWire", "DPFSPosix", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // The front-end side of vhost-user (QEMU's part): for the load generator and hostile tests.
        .target(
            name: "VhostUserFrontend",
            dependencies: ["CDPFS", "DPFSCore", "FUSEWire", "DPFSPosix", "LoopbackTransport", "Virtio", "VhostUserProtocol"],
            swiftSettings: swiftSettings
        ),
        // Configuration: the engine's TOML (read by TOMLKit) and its validation (pure, tested on its own).
        .target(name: "DPFSConfiguration", dependencies: ["FUSEWire", .product(name: "TOMLKit", package: "TOMLKit")],
                swiftSettings: swiftSettings),
        // The registry: every backend the engine serves, one line each.
        .target(
            name: "DPFSBackends",
            dependencies: ["BackendKit", "DPFSConfiguration", "NullBackend", "PassthroughBackend", "NFSBackend", "KeyValueBackend"],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "dpfs-engine",
            dependencies: [
                "DPFSCore", "FUSEWire", "DPFSPosix", "BackendKit", "DPFSBackends", "VhostUser", "FUSEDevice", "DPFSConfiguration", "CDPFS",
                "EngineMetrics",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "dpfs-bench",
            dependencies: [
                "DPFSCore", "FUSEWire", "Virtio", "DPFSPosix", "LoopbackTransport", "NullBackend", "PassthroughBackend",
                "VhostUser", "VhostUserFrontend", "FUSEDevice", "NFSBackend", "NFSv4Wire", "KeyValueBackend", "CDPFS",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
            ],
            swiftSettings: swiftSettings
        ),
        // Test support: a request builder and a scripted backend shared by the test targets.
        .target(
            name: "DPFSTestSupport",
            dependencies: ["DPFSCore", "FUSEWire", "Virtio", "LoopbackTransport", "NullBackend", "PassthroughBackend", "DPFSPosix", "CDPFS"],
            path: "Tests/DPFSTestSupport",
            swiftSettings: swiftSettings
        ),
        // The worked example of docs/writing-a-backend.md: compiled and run through the backend
        // conformance suite with every test run, so the guide cannot drift from the contract.
        .target(
            name: "ExampleBackend",
            dependencies: ["BackendKit", "DPFSCore", "FUSEWire", "DPFSConfiguration"],
            path: "Tests/ExampleBackend",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "DPFSCoreTests",
            dependencies: [
                "DPFSCore", "FUSEWire", "Virtio", "LoopbackTransport", "NullBackend", "PassthroughBackend", "DPFSPosix",
                "DPFSTestSupport", "VhostUser", "VhostUserProtocol", "RESP", "KeyValueStore", "KeyValueBackend", "VhostUserFrontend", "DPFSConfiguration", "CDPFS", "NFSBackend", "BackendKit", "ExampleBackend", "DPFSBackends", "EngineMetrics", "NFSv4Wire",
                .product(name: "PropertyBased", package: "swift-property-based"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The zero-allocation gate runs in its own test binary, so no other suite's threads can
        // allocate while the counters are hooked.
        .testTarget(
            name: "AllocationGateTests",
            dependencies: [
                "DPFSCore", "FUSEWire", "LoopbackTransport", "NullBackend", "PassthroughBackend", "DPFSPosix", "DPFSTestSupport",
                .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
            ],
            swiftSettings: swiftSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
