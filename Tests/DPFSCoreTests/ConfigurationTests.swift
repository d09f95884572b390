import DPFSBackends
import Foundation
import DPFSConfiguration
import FUSEWire
import Testing

@Suite struct ConfigurationTests {
    static func parse(_ text: String) throws(ConfigurationError) -> EngineConfiguration {
        try EngineConfiguration.parse(text, backends: RegisteredBackends.registry)
    }

    static func backend(_ name: String, _ values: [String: SettingValue] = [:]) -> BackendSettings {
        var settings = RegisteredBackends.registry.schema(name)!.defaults.values
        for (key, value) in values { settings[key] = value }
        return BackendSettings(backend: name, values: settings)
    }

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
        let configuration = try Self.parse(Self.twoDevices)
        #expect(configuration.logLevel == "debug")
        #expect(configuration.devices.count == 2)
        let a = configuration.devices[0]
        var queues = QueueSettings(for: .vhostUser)
        queues.requestQueues = 2
        queues.slotsPerQueue = 128
        queues.batchMax = 16
        queues.busyPollMicroseconds = 0
        queues.cpus = [0, 1]
        #expect(a == DeviceConfiguration(name: "tenant-a", transport: .vhostUser(VhostUserSettings(socketPath: "/run/dpfs/a.sock")),
                                         queues: queues, backend: Self.backend("null", ["null_file_size": .integer(1 << 20)])))
        let b = configuration.devices[1]
        #expect(b == DeviceConfiguration(name: "tenant-b", transport: .vhostUser(VhostUserSettings(socketPath: "/run/dpfs/b.sock")),
                                         backend: Self.backend("null")))
        #expect(b.queues.slotsPerQueue == 256 && b.queues.batchMax == 32 && b.queues.busyPollMicroseconds == 50)
        #expect(b.backend.integer("null_file_size") == 1 << 30)
    }

    @Test("all of TOML: inline tables, literal strings, 1_024, hex, dotted keys, arrays, a table array written inline")
    func fullTOML() throws {
        let text = """
            engine = { log_level = 'warning', metrics_address = '127.0.0.1:9464' }
            device = [
              { name = 'inline', socket = 'C:\\no-escapes-here.sock', cpus = [1, 0], null_file_size = 0x4000_0000 },
            ]
            """
        let inline = try Self.parse(text)
        #expect(inline.logLevel == "warning" && inline.metricsAddress == "127.0.0.1:9464")
        #expect(inline.devices[0].transport == .vhostUser(VhostUserSettings(socketPath: #"C:\no-escapes-here.sock"#)))
        #expect(inline.devices[0].queues.cpus == [1, 0])
        #expect(inline.devices[0].backend.integer("null_file_size") == 1 << 30)

        let dotted = try Self.parse("""
            engine.log_level = "error"
            [[device]]
            name = "d"
            socket = '''/run/dpfs/d.sock'''
            slots = 1_024
            cpus = "2,3"   # the older spelling still reads
            """)
        #expect(dotted.logLevel == "error" && dotted.devices[0].queues.slotsPerQueue == 1024 && dotted.devices[0].queues.cpus == [2, 3])
    }

    @Test("a passthrough device: shared directory, cache mode and table limits")
    func passthroughDevice() throws {
        let configuration = try Self.parse("""
            [[device]]
            socket = "/run/dpfs/p.sock"
            backend = "passthrough"
            shared_dir = "/srv/share"
            cache = "never"
            inodes_max = 1000
            open_files_max = 100
            """)
        #expect(configuration.devices[0] == DeviceConfiguration(
            name: "dpfs0", transport: .vhostUser(VhostUserSettings(socketPath: "/run/dpfs/p.sock")),
            backend: Self.backend("passthrough", ["shared_dir": .string("/srv/share"), "cache": .string("never"),
                                                  "inodes_max": .integer(1000), "open_files_max": .integer(100)])))
        let backend = configuration.devices[0].backend
        #expect(backend.choice("cache", CacheMode.self) == .never)
        #expect(backend.integer("inode_descriptors_max") == DeviceTableDefaults.nodeDescriptorsMax)
        #expect(backend.string("data_path") == "inline-first")
    }

    @Test("a host mount: transport fuse, mount point, io_uring depth and kernel passthrough")
    func hostMountDevice() throws {
        let configuration = try Self.parse("""
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
        var expected = HostMountSettings(mountPoint: "/mnt/dpfs")
        expected.mode = .uring
        expected.kernelPassthrough = true
        expected.ringDepth = 64
        #expect(device.transport == .fuse(expected))
        #expect(device.deployment == BackendDeployment(transport: .fuse, kernelPassthrough: true))
        // The defaults a host mount gets: auto transport, passthrough off, queues that sleep.
        let plain = try Self.parse("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"").devices[0]
        #expect(plain.transport == .fuse(HostMountSettings(mountPoint: "/m")))
        #expect(plain.queues.busyPollMicroseconds == 0 && plain.queues.slotsPerQueue == 16, "a host mount's queues sleep: its application shares the CPUs")
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
            _ = try Self.parse(text)
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
        ("[[device]]\nsocket = \"/a", "line 2: not valid TOML: Error while parsing string"),
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
        ("[[device]]\nsocket = \"/a\"\nsocket = \"/b\"", "line 3: not valid TOML: Error while parsing key-value pair: cannot redefine existing string 'socket'"),
        ("[engine]", "no [[device]]"),
        ("[[device]\nsocket = \"/a\"", "line 1: not valid TOML: Error while parsing table header"),
        ("[[device]]\nsocket = \"/a\"\nslots = 1.5", "line 3: 'slots' must be an integer"),
        ("[[device]]\nsocket = \"/a\"\ncpus = [0, \"x\"]", "line 3: cpus must be an array of CPU numbers"),
        ("[[device]]\nsocket = \"/a\"\ncpus = [4096]", "line 3: cpus must be an array of CPU numbers 0...4095"),
        ("[[device]]\nsocket = \"/a\"\nnull_file_size = 1979-05-27", "line 3: 'null_file_size' cannot be a date or time"),
        ("[[device]]\nsocket = \"/a\"\nname = { first = \"x\" }", "line 3: 'name' must be a string, not a table"),
        ("device = [{ socket = \"/a\", colour = \"red\" }]", "line 1: unknown key 'colour'"),
        ("device = \"/a\"", "line 1: key 'device' outside any table (devices are [[device]] tables)"),
        ("[[device]]\n  'socket' = \"/a\"\n  \"slots\" = 3", "line 3: device dpfs0: slots must be a power of two"),
        ("[[device]]\nsocket = \"/a\"\nslots = 100", "line 3: device dpfs0: slots must be a power of two"),
        ("[[device]]\nsocket = \"/a\"\nbusy_poll_us = 2_000_000", "line 3: device dpfs0: busy_poll_us must be 0...1000000"),
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
        ("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://h/e?version=4\"\nnfs_connections = 2", "nfs_url: NFSv4 takes one connection per queue"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://h/e?version=4.0\"\nnfs_connections = 3", "nfs_url: NFSv4 takes one connection per queue"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://h/e?version=4.2\"", "nfs_url: NFS version '4.2' is not known (3, 4.0, 4.1; 4 means 4.1)"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://h/e?version=2\"", "nfs_url: NFS version '2' is not known"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"http://h/e\"", "nfs_url: NFS URL must start with nfs://"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://h/e\"\ndata_path = \"uring\"", "line 5: data_path is only for the passthrough backend"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"null\"\ncache = \"never\"", "line 4: cache is only for the passthrough, nfs and kv backends"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"passthrough\"\nshared_dir = \"\"", "shared_dir must not be empty"),
        ("[[device]]\nsocket = \"/a\"\nbackend = \"passthrough\"\nshared_dir = \"/s\"\ndata_path = \"mmap\"", "line 5: data_path must be one of inline-first, uring"),
        ("[[device]]\nsocket = \"/a\"\nnull_file_size = -1", "line 3: null_file_size must be 0..."),
        ("[[device]]\nsocket = \"/a\"\ncpus = \"0, x\"", "line 3: cpus"),
    ])
    func mistakes(text: String, expected: String) {
        do {
            _ = try Self.parse(text)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.description.contains(expected), "\(error.description) does not mention '\(expected)'")
        }
    }

    @Test("socket_group and fuse_allow_other are read; both are off unless asked for")
    func accessKeys() throws {
        let socket = try #require(try Self.parse("[[device]]\nsocket = \"/a\"\nsocket_group = \"libvirt-qemu\"").devices.first)
        #expect(socket.transport == .vhostUser(VhostUserSettings(socketPath: "/a", socketGroup: "libvirt-qemu")))
        let mount = try #require(try Self.parse("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"\nfuse_allow_other = true").devices.first)
        var allowed = HostMountSettings(mountPoint: "/m")
        allowed.allowOther = true
        #expect(mount.transport == .fuse(allowed))
        let plain = try #require(try Self.parse("[[device]]\ntransport = \"fuse\"\nmount = \"/m\"\n[[device]]\nsocket = \"/m.sock\"").devices)
        #expect(plain[0].transport == .fuse(HostMountSettings(mountPoint: "/m")))
        #expect(plain[1].transport == .vhostUser(VhostUserSettings(socketPath: "/m.sock")))
        #expect(EngineConfiguration.normalizedPath("//run/./dpfs//a.sock/") == "/run/dpfs/a.sock")
        #expect(EngineConfiguration.normalizedPath("./a.sock") == "a.sock")
    }

    @Test("an NFS device takes its URL, timeout, connections and journal size")
    func nfsDevice() throws {
        let text = "[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://127.0.0.1/export?version=3\"\n"
            + "nfs_timeout_ms = 5000\nnfs_connections = 4\nnfs_journal_mb = 0\n"
        let device = try #require(try Self.parse(text).devices.first)
        #expect(device.backend == Self.backend("nfs", ["nfs_url": .string("nfs://127.0.0.1/export?version=3"), "nfs_timeout_ms": .integer(5000),
                                                       "nfs_connections": .integer(4), "nfs_journal_mb": .integer(0)]))
        let defaults = try #require(try Self.parse("[[device]]\nsocket = \"/a\"\nbackend = \"nfs\"\nnfs_url = \"nfs://h/e\"").devices.first)
        #expect(defaults.backend.integer("nfs_connections") == 1 && defaults.backend.integer("nfs_journal_mb") == 16
                && defaults.backend.integer("nfs_timeout_ms") == 30_000)
    }

    @Test("strings keep '#' and escapes; comments after values are dropped")
    func strings() throws {
        let document = try TOMLReader.parse("[engine]\nlog_level = \"a#b\\\"c\" # comment")
        #expect(document.tables["engine"]?["log_level"] == .string("a#b\"c"))
    }

    @Test("backend settings on the command line: both spellings, checked, and refused when they belong to another backend")
    func commandLine() throws {
        let registry = RegisteredBackends.registry
        let given = try registry.commandLineSettings(["--shared-dir", "/srv", "--cache=never", "--inodes-max", "1_000"], backend: "passthrough")
        #expect(given == ["shared_dir": .string("/srv"), "cache": .string("never"), "inodes_max": .integer(1000)])
        let refusals: [([String], String, String)] = [
            (["--shared-dir", "/srv"], "null", "--shared-dir is only for the passthrough backend"),
            (["--cache", "never"], "null", "--cache is only for the passthrough, nfs and kv backends"),
            (["--shared-dir"], "passthrough", "--shared-dir needs a value"),
            (["--cache", "sometimes"], "passthrough", "cache must be one of never, metadata, auto, always"),
            (["--inodes-max", "many"], "passthrough", "--inodes-max must be an integer"),
            (["--inodes-max", "3"], "passthrough", "inodes_max must be 16...16777216"),
            (["--cache", "never", "--cache", "auto"], "passthrough", "--cache given twice"),
            (["--colour", "red"], "passthrough", "unknown option '--colour'"),
            (["/srv"], "passthrough", "unknown option '/srv'"),
            ([], "nfs3", "unknown backend 'nfs3' (known: null, passthrough, nfs, kv)"),
        ]
        for (arguments, backend, expected) in refusals {
            do {
                _ = try registry.commandLineSettings(arguments, backend: backend)
                Issue.record("accepted \(arguments) for \(backend)")
            } catch {
                #expect(error.description.contains(expected), "\(error.description) does not mention '\(expected)'")
            }
        }
    }

    @Test("every registered backend's schema: distinct keys, defaults inside their own ranges, documented in --help")
    func schemas() throws {
        let registry = RegisteredBackends.registry
        #expect(registry.names == ["null", "passthrough", "nfs", "kv"])
        for schema in registry.schemas {
            #expect(registry.help.contains("backend \(schema.name):"))
            for setting in schema.settings {
                #expect(registry.help.contains("\(setting.flag) / \(setting.key):"), "--help lacks \(setting.key)")
                if let value = setting.defaultValue { #expect((try? setting.check(value, line: 0)) != nil) }
                // A key two backends share means one thing: the same kind, default and help.
                if let other = registry.anySetting(setting.key) {
                    #expect(other.defaultValue == setting.defaultValue && other.help == setting.help, "\(setting.key) drifted between backends")
                }
            }
            // Required settings are refused when missing, defaults fill the rest.
            let required = schema.settings.filter { $0.defaultValue == nil }.map(\.key)
            for key in required {
                do {
                    _ = try schema.complete([:], device: "d", deployment: BackendDeployment(transport: .vhostUser))
                    Issue.record("\(schema.name) started without \(key)")
                } catch {
                    #expect(error.description.contains("needs \(key)"))
                }
            }
        }
    }
}

/// docs/configuration.md's table of backend settings names every setting every registered backend
/// declares, with its flag, and nothing that no backend declares.
@Suite struct ConfigurationReferenceTests {
    @Test("the configuration reference lists every backend setting and its flag")
    func reference() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("docs/configuration.md"), encoding: .utf8)
        let section = try #require(text.components(separatedBy: "## Backend settings").dropFirst().first?.components(separatedBy: "\n## ").first)
        let rows = section.split(separator: "\n").filter { $0.hasPrefix("| ") && $0.contains("` | `--") }
        var documented = Set<String>()
        for row in rows {
            let cells = row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            documented.insert(cells[1].trimmingCharacters(in: CharacterSet(charactersIn: "`")))
        }
        for schema in RegisteredBackends.registry.schemas {
            for setting in schema.settings {
                let row = rows.first { $0.contains("| `\(setting.key)` | `\(setting.flag)` |") }
                #expect(row != nil, "docs/configuration.md lacks \(setting.key) (\(setting.flag))")
                if let row { #expect(row.contains(schema.name), "\(setting.key)'s row does not name the \(schema.name) backend") }
            }
        }
        let declared = Set(RegisteredBackends.registry.schemas.flatMap { $0.settings.map(\.key) })
        #expect(documented == declared, "documented but not declared: \(documented.subtracting(declared))")
    }
}
