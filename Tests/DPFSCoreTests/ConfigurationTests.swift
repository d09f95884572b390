import DPFSConfiguration
import Testing

@Suite struct ConfigurationTests {
    static let twoDevices = """
        # Two tenants, one socket each.
        [engine]
        log_level = "debug"

        [[device]]
        name = "tenant-a"
        socket = "/run/dpfs/a.sock"   # the front-end connects here
        backend = "null"
        request_queues = 2
        slots = 128
        batch = 16
        busy_poll_us = 0
        null_file_size = 1_048_576
        cpus = "0, 1"

        [[device]]
        name = "tenant-b"
        socket = "/run/dpfs/b.sock"
        """

    @Test("a two-device file is read with every value and default")
    func twoDevices() throws {
        let configuration = try EngineConfiguration.parse(Self.twoDevices)
        #expect(configuration.logLevel == "debug")
        #expect(configuration.devices.count == 2)
        let a = configuration.devices[0]
        #expect(a == DeviceConfiguration(name: "tenant-a", socketPath: "/run/dpfs/a.sock", backend: .null, requestQueues: 2,
                                         slotsPerQueue: 128, batchMax: 16, busyPollMicroseconds: 0,
                                         nullFileSizeBytes: 1 << 20, cpus: [0, 1]))
        #expect(configuration.devices[1] == DeviceConfiguration(name: "tenant-b", socketPath: "/run/dpfs/b.sock"))
    }

    @Test("a passthrough device: shared directory, cache mode and table limits")
    func passthroughDevice() throws {
        let configuration = try EngineConfiguration.parse("""
            [[device]]
            socket = "/run/dpfs/p.sock"
            backend = "passthrough"
            shared_dir = "/srv/share"
            cache = "never"
            inodes_max = 1000
            open_files_max = 100
            """)
        #expect(configuration.devices[0] == DeviceConfiguration(
            name: "dpfs0", socketPath: "/run/dpfs/p.sock", backend: .passthrough, sharedDirectory: "/srv/share",
            cacheMode: .never, inodesMax: 1000, openFilesMax: 100))
    }

    @Test("a host mount: transport fuse, mount point, io_uring depth and kernel passthrough")
    func hostMountDevice() throws {
        let configuration = try EngineConfiguration.parse("""
            [[device]]
            transport = "fuse"
            mount = "/mnt/dpfs"
            backend = "passthrough"
            shared_dir = "/srv/share"
            fuse_transport = "uring"
            fuse_passthrough = true
            ring_depth = 64
            """)
        let device = configuration.devices[0]
        #expect(device.transport == .fuse)
        #expect(device.mountPoint == "/mnt/dpfs")
        #expect(device.socketPath.isEmpty)
        #expect(device.fuseTransport == "uring")
        #expect(device.fusePassthrough)
        #expect(device.ringDepth == 64)
        // The defaults a host mount gets: auto transport, passthrough off.
        let plain = try EngineConfiguration.parse("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"").devices[0]
        #expect(plain.fuseTransport == "auto" && !plain.fusePassthrough && plain.ringDepth == 16)
    }

    @Test("host-mount mistakes", arguments: [
        ("[[device]]\ntransport = \"fuse\"", "absolute mount path"),
        ("[[device]]\ntransport = \"fuse\"\nmount = \"relative/dir\"", "absolute mount path"),
        ("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"\nsocket = \"/a\"", "socket is only for"),
        ("[[device]]\nsocket = \"/a\"\nmount = \"/m\"", "mount is only for"),
        ("[[device]]\nsocket = \"/a\"\nfuse_passthrough = true", "fuse_passthrough is only for"),
        ("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"\nfuse_transport = \"rdma\"", "fuse_transport must be one of"),
        ("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"\nfuse_passthrough = true", "needs the passthrough backend"),
        ("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"\nbackend = \"passthrough\"\nshared_dir = \"/s\"\ncache = \"always\"\nfuse_passthrough = true",
         "exclude each other"),
        ("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"\nring_depth = 0", "ring_depth"),
        ("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"\nring_depth = 4096", "ring_depth"),
        ("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"\nfuse_passthrough = \"yes\"", "line 4"),
        ("[[device]]\ntransport = \"nvme\"", "transport must be one of"),
        ("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"\n[[device]]\ntransport = \"fuse\"\nmount = \"/m\"", "two devices mount /m"),
    ])
    func hostMountMistakes(text: String, expected: String) {
        do {
            _ = try EngineConfiguration.parse(text)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.description.contains(expected), "\(error.description) does not mention '\(expected)'")
        }
    }

    @Test("mistakes are reported with their line, never guessed", arguments: [
        ("[[device]]\nsocket = \"/a\"\nslots = 100", "power of two"),
        ("[[device]]\nsocket = \"/a\"\nrequest_queues = 0", "request_queues"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"nfs2\"", "unknown backend"),
        ("[[device]]\nsocket = \"/a\"\ncolour = \"red\"", "line 3: unknown key 'colour'"),
        ("[[device]]\nsocket = /a", "line 2"),
        ("[[device]]\nsocket = \"/a", "line 2: unterminated string"),
        ("[[device]]\nname = \"x\"", "has no socket"),
        ("[[device]]\nsocket = \"/a\"\n[[device]]\nsocket = \"/a\"", "share socket"),
        ("[[device]]\nsocket = \"/run/x/a.sock\"\n[[device]]\nsocket = \"/run//x/./a.sock\"", "two devices share socket /run/x/a.sock"),
        ("[[device]]\ntransport = \"fuse\"\nmount = \"/mnt/a\"\n[[device]]\ntransport = \"fuse\"\nmount = \"/mnt/a/\"", "two devices mount /mnt/a"),
        ("[[device]]\ntransport = \"fuse\"\nmount = \"/mnt/a\"\nsocket_group = \"kvm\"", "socket_group is only for transport = \"vhost-user\""),
        ("[[device]]\nsocket = \"/a\"\nfuse_allow_other = true", "fuse_allow_other is only for transport = \"fuse\""),
        ("[[device]]\nsocket = \"/a\"\nsocket_group = 36", "line 3: 'socket_group' must be a string"),
        ("[[device]]\nsocket = \"/a\"\nslots = \"256\"", "line 3: 'slots' must be an integer"),
        ("[engine]\nlog_level = \"loud\"", "log_level"),
        ("[servers]\nx = 1", "unknown table [servers]"),
        ("socket = \"/a\"", "line 1: key 'socket' outside any table"),
        ("[[device]]\nsocket = \"/a\"\nsocket = \"/b\"", "line 3: key 'socket' set twice"),
        ("[engine]", "no [[device]]"),
        ("[[device]\nsocket = \"/a\"", "line 1: unterminated"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"passthrough\"", "needs shared_dir"),
        ("[[device]]\nsocket = \"/a\"\nshared_dir = \"/srv\"", "only for the passthrough backend"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"passthrough\"\nshared_dir = \"/srv\"\ncache = \"sometimes\"", "line 5: cache must be one of"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"passthrough\"\nshared_dir = \"/srv\"\ninodes_max = 3", "inodes_max"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"", "needs nfs_url"),
        ("[[device]]\nsocket = \"/a\"\nnfs_url = \"nfs://h/e\"", "only for the nfs backend"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://h/e\"\nnfs_connections = 0", "nfs_connections must be 1...16"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://h/e\"\nnfs_connections = 17", "nfs_connections must be 1...16"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://h/e\"\nnfs_journal_mb = -1", "line 5"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://h/e\"\nnfs_journal_mb = 5000", "nfs_journal_mb must be 0...4096"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://h/e\"\nnfs_timeout_ms = 10", "nfs_timeout_ms"),
    ])
    func mistakes(text: String, expected: String) {
        do {
            _ = try EngineConfiguration.parse(text)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.description.contains(expected), "\(error.description) does not mention '\(expected)'")
        }
    }

    @Test("socket_group and fuse_allow_other are read; both are off unless asked for")
    func accessKeys() throws {
        let socket = try #require(try EngineConfiguration.parse("[[device]]\nsocket = \"/a\"\nsocket_group = \"libvirt-qemu\"").devices.first)
        #expect(socket.socketGroup == "libvirt-qemu")
        let mount = try #require(try EngineConfiguration.parse("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"\nfuse_allow_other = true").devices.first)
        #expect(mount.fuseAllowOther)
        let plain = try #require(try EngineConfiguration.parse("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"\n[[device]]\nsocket = \"/m.sock\"").devices)
        #expect(!plain[0].fuseAllowOther && plain[1].socketGroup.isEmpty)
        #expect(EngineConfiguration.normalizedPath("//run/./dpfs//a.sock/") == "/run/dpfs/a.sock")
        #expect(EngineConfiguration.normalizedPath("./a.sock") == "a.sock")
    }

    @Test("an NFS device takes its URL, timeout, connections and journal size")
    func nfsDevice() throws {
        let text = "[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://127.0.0.1/export?version=3\"\n"
            + "nfs_timeout_ms = 5000\nnfs_connections = 4\nnfs_journal_mb = 0\n"
        let device = try #require(try EngineConfiguration.parse(text).devices.first)
        #expect(device.backend == .nfs)
        #expect(device.nfsURL == "nfs://127.0.0.1/export?version=3")
        #expect(device.nfsTimeoutMilliseconds == 5000)
        #expect(device.nfsConnections == 4)
        #expect(device.nfsJournalMegabytes == 0)
        let defaults = try #require(try EngineConfiguration.parse("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://h/e\"").devices.first)
        #expect(defaults.nfsConnections == 1 && defaults.nfsJournalMegabytes == 16 && defaults.nfsTimeoutMilliseconds == 30_000)
    }

    @Test("strings keep '#' and escapes; comments after values are dropped")
    func strings() throws {
        let document = try TOMLSubset.parse("[engine]\nlog_level = \"a#b\\\"c\" # comment")
        #expect(document.tables["engine"]?["log_level"] == .string("a#b\"c"))
    }
}
