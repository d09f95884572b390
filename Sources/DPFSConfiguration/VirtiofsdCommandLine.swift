import FUSEWire

// virtiofsd's command line (issue 11), as the launchers pass it: libvirt (`--fd=N -o source=DIR,
// cache=...,xattr`, or with separate options `--fd=N --shared-dir DIR --cache MODE`), Kata
// (`--syslog --cache=auto --shared-dir=DIR --fd=3 --thread-pool-size=1 --announce-submounts`) and
// cloud-hypervisor (`--log-level debug --socket-path=P --shared-dir=D --cache=never
// --thread-pool-size=N`). Pure: it reads the arguments into one passthrough device's settings
// and says, for every option, whether it is applied, accepted and ignored (with why), or refused.

/// What a virtiofsd-style invocation asks for.
public struct VirtiofsdInvocation: Equatable, Sendable {
    public enum Listener: Equatable, Sendable {
        /// Create and listen on this socket path (`--socket-path`, `-o vhost_user_socket=`).
        case socketPath(String)
        /// The launcher made and listens on the socket already (`--fd=N`, libvirt and Kata).
        case descriptor(Int32)
    }

    public var listener: Listener?
    public var sharedDirectory: String?
    public var cache: CacheMode = .auto
    public var xattr = false
    public var logLevel = "info"
    public var rlimitNofile: Int?
    /// `--readonly`: every change is refused with EROFS.
    public var readOnly = false
    /// `--sandbox`, `-o sandbox=`: what the process does to confine itself once set up.
    public var sandbox: SandboxMode = .none
    /// `--print-capabilities`: print `capabilitiesJSON` and exit.
    public var printCapabilities = false
    /// Options accepted but with no effect here, each with the reason (one log line each at start).
    public var ignored: [String] = []

    public init() {}
}

/// How the engine confines itself after set-up in single-device mode. `namespace`, virtiofsd's
/// default, is refused when asked for by name: it needs the mount namespace made before the first
/// thread, and the engine does not make one (docs/configuration.md).
public enum SandboxMode: String, Sendable, CaseIterable {
    /// Nothing beyond the backend's own confinement (names resolve beneath the share).
    case none
    /// chroot(2) into the share once the device is set up (root: CAP_SYS_CHROOT).
    case chroot
}

public struct VirtiofsdOptionError: Error, Equatable, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public enum VirtiofsdCommandLine {
    /// What `--print-capabilities` prints: the vhost-user back-end conventions' JSON for a file
    /// system back-end (docs/interop/vhost-user.json in QEMU). No "migrate-precopy": the engine
    /// offers no dirty-page log, so it cannot migrate.
    public static let capabilitiesJSON = #"{"type": "fs", "features": ["separate-options"]}"#

    /// Options that take no effect here, with why (accepted so launchers work unchanged).
    static let ignoredOptions: [String: String] = [
        "thread-pool-size": "requests are served by one poller per queue, not by a thread pool",
        "syslog": "logs go to standard error, which the launcher collects",
        "announce-submounts": "the share is served as one file system; submounts are not announced",
        "foreground": "dpfs-engine never daemonizes",
        "tag": "the tag is the launcher's device setting (QEMU's -device vhost-user-fs-pci,tag=)",
        "no_flock": "flock(2) is kept by the guest's kernel already",
        "flock": "flock(2) is kept by the guest's kernel",
        "posix_lock": "POSIX locks are kept on the host",
        "no_posix_lock": "POSIX locks are kept on the host",
    ]

    /// Options refused, with why: reading them as something else would serve the wrong thing.
    static let refusedOptions: [String: String] = [
        "uid-map": "uid mapping is not supported",
        "gid-map": "gid mapping is not supported",
        "translate-uid": "uid translation is not supported",
        "translate-gid": "gid translation is not supported",
        "daemonize": "dpfs-engine does not daemonize; the launcher keeps it in the foreground",
        "inode-file-handles": "inodes are always held by descriptor",
        "writeback": "writeback caching follows --cache (always)",
        "allow-direct-io": "direct I/O follows --cache",
        "security-label": "security labels are not supported",
        "posix-acl": "POSIX ACLs are not supported",
        "modcaps": "capabilities are not modified",
        "killpriv-v2": "set-ID killing is negotiated by the engine itself",
        "preserve-noatime": "not supported",
        "migration-mode": "live migration is not offered",
        "migration-on-error": "live migration is not offered",
        "migration-verify-handles": "live migration is not offered",
        "migration-confirm-paths": "live migration is not offered",
    ]

    /// Whether `arguments` are virtiofsd's rather than dpfs-engine's own: they name a share or a
    /// listener the way only virtiofsd does, or ask for its capabilities.
    public static func looksLikeVirtiofsd(_ arguments: [String]) -> Bool {
        arguments.contains { argument in
            argument == "--print-capabilities" || argument.hasPrefix("--fd") || argument.hasPrefix("--socket-path")
                || argument == "-o" || argument.hasPrefix("-o") && argument.count > 2
        }
    }

    public static func parse(_ arguments: [String]) throws(VirtiofsdOptionError) -> VirtiofsdInvocation {
        var invocation = VirtiofsdInvocation()
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if argument == "-o" || argument.hasPrefix("-o") && !argument.hasPrefix("--") {
                let list = argument == "-o" ? try value(after: argument, arguments, &index) : String(argument.dropFirst(2))
                for option in list.split(separator: ",", omittingEmptySubsequences: true) {
                    try applyCompat(String(option), to: &invocation)
                }
                continue
            }
            guard argument.hasPrefix("-") else { throw VirtiofsdOptionError("unexpected argument '\(argument)'") }
            if argument == "-d" || argument == "--debug" { invocation.logLevel = "debug"; continue }
            if argument == "-f" { invocation.ignored.append("-f: dpfs-engine never daemonizes"); continue }
            let body = argument.drop { $0 == "-" }
            let name: String
            var inline: String? = nil
            if let equals = body.firstIndex(of: "=") {
                name = String(body[..<equals])
                inline = String(body[body.index(after: equals)...])
            } else {
                name = String(body)
            }
            try applyOption(name, inline: inline, arguments, &index, to: &invocation)
        }
        return try validated(invocation)
    }

    /// The value of an option: after '=' or the next argument.
    static func value(after option: String, _ arguments: [String], _ index: inout Int) throws(VirtiofsdOptionError) -> String {
        guard index < arguments.count else { throw VirtiofsdOptionError("\(option) needs a value") }
        index += 1
        return arguments[index - 1]
    }

    static func applyOption(_ name: String, inline: String?, _ arguments: [String], _ index: inout Int,
                            to invocation: inout VirtiofsdInvocation) throws(VirtiofsdOptionError) {
        func argument() throws(VirtiofsdOptionError) -> String {
            if let inline { return inline }
            return try value(after: "--" + name, arguments, &index)
        }
        switch name {
        case "fd":
            guard let fd = Int32(try argument()), fd >= 0 else { throw VirtiofsdOptionError("--fd needs a descriptor number") }
            invocation.listener = .descriptor(fd)
        case "socket-path": invocation.listener = .socketPath(try argument())
        case "shared-dir": invocation.sharedDirectory = try argument()
        case "cache": invocation.cache = try cacheMode(try argument())
        case "xattr": invocation.xattr = true
        case "no-xattr": invocation.xattr = false
        case "log-level": invocation.logLevel = try logLevel(try argument())
        case "print-capabilities": invocation.printCapabilities = true
        case "rlimit-nofile":
            guard let limit = Int(try argument()), limit >= 0 else { throw VirtiofsdOptionError("--rlimit-nofile needs a number") }
            invocation.rlimitNofile = limit
        case "readonly": invocation.readOnly = true
        case "sandbox": invocation.sandbox = try sandbox(try argument())
        case "thread-pool-size", "tag":
            let given = try argument()
            invocation.ignored.append("--\(name)=\(given): \(ignoredOptions[name]!)")
        case _ where ignoredOptions[name] != nil:
            invocation.ignored.append("--\(name): \(ignoredOptions[name]!)")
        case _ where refusedOptions[name] != nil:
            throw VirtiofsdOptionError("--\(name) is refused: \(refusedOptions[name]!)")
        default:
            throw VirtiofsdOptionError("unknown virtiofsd option --\(name)")
        }
    }

    /// One `-o` option (the C virtiofsd's spellings).
    static func applyCompat(_ option: String, to invocation: inout VirtiofsdInvocation) throws(VirtiofsdOptionError) {
        let parts = option.split(separator: "=", maxSplits: 1).map(String.init)
        let key = parts[0], given = parts.count > 1 ? parts[1] : nil
        switch (key, given) {
        case ("source", let directory?): invocation.sharedDirectory = directory
        case ("vhost_user_socket", let path?): invocation.listener = .socketPath(path)
        case ("cache", let mode?): invocation.cache = try cacheMode(mode)
        case ("xattr", nil): invocation.xattr = true
        case ("no_xattr", nil): invocation.xattr = false
        case ("log_level", let level?), ("loglevel", let level?): invocation.logLevel = try logLevel(level)
        case ("sandbox", let mode?): invocation.sandbox = try sandbox(mode)
        case ("readonly", nil): invocation.readOnly = true
        case ("tag", let mode?): invocation.ignored.append("-o \(key)=\(mode): \(ignoredOptions[key]!)")
        case ("announce_submounts", nil): invocation.ignored.append("-o \(key): \(ignoredOptions["announce-submounts"]!)")
        case (_, nil) where ignoredOptions[key] != nil: invocation.ignored.append("-o \(key): \(ignoredOptions[key]!)")
        default: throw VirtiofsdOptionError("unknown or malformed virtiofsd option -o \(option)")
        }
    }

    /// virtiofsd's cache modes: `none` (the C virtiofsd's word) is never.
    static func cacheMode(_ text: String) throws(VirtiofsdOptionError) -> CacheMode {
        if text == "none" { return .never }
        guard let mode = CacheMode(rawValue: text) else {
            throw VirtiofsdOptionError("cache mode '\(text)' is none, never, metadata, auto or always")
        }
        return mode
    }

    static func sandbox(_ text: String) throws(VirtiofsdOptionError) -> SandboxMode {
        if text == "namespace" {
            throw VirtiofsdOptionError("sandbox mode namespace is refused: the engine does not build a mount namespace; --sandbox chroot confines it to the share, --sandbox none leaves the backend's own confinement")
        }
        guard let mode = SandboxMode(rawValue: text) else { throw VirtiofsdOptionError("sandbox mode '\(text)' is none or chroot (namespace is refused)") }
        return mode
    }

    static func logLevel(_ text: String) throws(VirtiofsdOptionError) -> String {
        let levels = ["trace", "debug", "info", "warn", "warning", "error", "critical", "off"]
        guard levels.contains(text.lowercased()) else { throw VirtiofsdOptionError("log level '\(text)' is one of \(levels.joined(separator: ", "))") }
        return text.lowercased() == "warn" ? "warning" : text.lowercased()
    }

    /// A device needs both a share and a listener (unless only capabilities are asked for).
    static func validated(_ invocation: VirtiofsdInvocation) throws(VirtiofsdOptionError) -> VirtiofsdInvocation {
        guard !invocation.printCapabilities else { return invocation }
        guard invocation.sharedDirectory != nil else { throw VirtiofsdOptionError("no shared directory: --shared-dir DIR or -o source=DIR") }
        guard invocation.listener != nil else { throw VirtiofsdOptionError("no socket: --fd=N, --socket-path=PATH or -o vhost_user_socket=PATH") }
        return invocation
    }
}
