import DPFSConfiguration
import Foundation
import FUSEWire
import Testing

/// virtiofsd's command line as the launchers pass it (issue 11): every launcher's list reads as one
/// passthrough device with the share, listener and cache it names; options with no effect here are
/// accepted with their reason; options that would be misread are refused with theirs.
@Suite struct VirtiofsdCommandLineTests {
    static func parse(_ line: String) throws(VirtiofsdOptionError) -> VirtiofsdInvocation {
        try VirtiofsdCommandLine.parse(line.split(separator: " ").map(String.init))
    }

    @Test("sandbox and read-only: applied, in both spellings; the default is no sandbox and a writable share")
    func sandboxAndReadOnly() throws {
        // libvirt 9.0 with every <binary> option of its domain XML set.
        let libvirt = try Self.parse("--fd=33 -o source=/srv/share,cache=always,sandbox=chroot,xattr,flock,posix_lock --thread-pool-size=16")
        #expect(libvirt.sandbox == .chroot && !libvirt.readOnly && libvirt.cache == .always)
        let separate = try Self.parse("--socket-path=/run/s.sock --shared-dir=/srv/share --sandbox none --readonly")
        #expect(separate.sandbox == SandboxMode.none && separate.readOnly)
        #expect(try Self.parse("--fd=3 -o source=/s,readonly").readOnly)
        let plain = try Self.parse("--fd=3 --shared-dir=/s")
        #expect(plain.sandbox == SandboxMode.none && !plain.readOnly)
    }

    @Test("each launcher's argument list reads as the device it asks for", arguments: [
        // libvirt 9.0 (Debian 12), compat -o spelling.
        ("--fd=21 -o source=/srv/share,cache=always,xattr", VirtiofsdInvocation.Listener.descriptor(21), CacheMode.always, true),
        ("--fd=21 -o source=/srv/share,cache=none -o no_xattr", .descriptor(21), .never, false),
        // libvirt with separate options, and its extras.
        ("--fd=21 --shared-dir /srv/share --cache always --xattr --thread-pool-size=16 -d", .descriptor(21), .always, true),
        // Kata, both forms.
        ("--syslog --cache=auto --shared-dir=/srv/share --fd=3 --thread-pool-size=1 --announce-submounts", .descriptor(3), .auto, false),
        ("--socket-path /run/kata.sock --shared-dir /srv/share --cache auto --thread-pool-size=1 -o announce_submounts --xattr",
         .socketPath("/run/kata.sock"), .auto, true),
        // cloud-hypervisor.
        ("--log-level debug --socket-path=/run/ch.sock --shared-dir=/srv/share --cache=never --thread-pool-size=4 --tag=myfs",
         .socketPath("/run/ch.sock"), .never, false),
        // The C virtiofsd's own spelling of the socket.
        ("-o vhost_user_socket=/run/c.sock -o source=/srv/share -o log_level=debug", .socketPath("/run/c.sock"), .auto, false),
    ])
    func launchers(line: String, listener: VirtiofsdInvocation.Listener, cache: CacheMode, xattr: Bool) throws {
        #expect(VirtiofsdCommandLine.looksLikeVirtiofsd(line.split(separator: " ").map(String.init)))
        let invocation = try Self.parse(line)
        #expect(invocation.sharedDirectory == "/srv/share")
        #expect(invocation.listener == listener)
        #expect(invocation.cache == cache)
        #expect(invocation.xattr == xattr)
        if line.contains("thread-pool-size") { #expect(invocation.ignored.contains { $0.contains("--thread-pool-size") && $0.contains("poller") }) }
        if line.contains("debug") { #expect(invocation.logLevel == "debug") }
    }

    @Test("--print-capabilities answers the vhost-user back-end convention's JSON for a file system")
    func capabilities() throws {
        let invocation = try Self.parse("--print-capabilities")
        #expect(invocation.printCapabilities)
        let object = try JSONSerialization.jsonObject(with: Data(VirtiofsdCommandLine.capabilitiesJSON.utf8)) as? [String: Any]
        #expect(object?["type"] as? String == "fs")
        #expect((object?["features"] as? [String])?.contains("separate-options") == true)
        #expect((object?["features"] as? [String])?.contains("migrate-precopy") == false, "no dirty-page log: no migration")
    }

    @Test("what would be misread is refused with its reason, never taken for something else", arguments: [
        ("--fd=3 --shared-dir=/s --sandbox=namespace", "sandbox mode namespace is refused"),
        ("--fd=3 -o source=/s,sandbox=jail", "sandbox mode 'jail'"),
        ("--fd=3 --shared-dir=/s --uid-map=:0:1000:1:", "uid mapping"),
        ("--fd=3 --shared-dir=/s --daemonize", "does not daemonize"),
        ("--fd=3 --shared-dir=/s --frobnicate", "unknown virtiofsd option --frobnicate"),
        ("--fd=3 -o source=/s,frobnicate", "-o frobnicate"),
        ("--fd=3 --shared-dir=/s --cache=sometimes", "cache mode 'sometimes'"),
        ("--fd=x --shared-dir=/s", "descriptor number"),
        ("--fd=3", "no shared directory"),
        ("--shared-dir=/s", "no socket"),
        ("--fd=3 --shared-dir", "needs a value"),
        ("--fd=3 --shared-dir=/s --log-level=loud", "log level 'loud'"),
    ])
    func refused(line: String, reason: String) {
        #expect {
            _ = try Self.parse(line)
        } throws: { error in
            "\(error)".contains(reason)
        }
    }

    @Test("dpfs-engine's own command lines are not taken for virtiofsd's")
    func ownLines() {
        for line in ["--vhost-user-socket /run/d.sock --backend passthrough --shared-dir /srv/share --cache never",
                     "--fuse-mount /mnt --backend kv --kv-url unix:///tmp/r.sock --open-files-max 64", "--config engine.toml"] {
            #expect(!VirtiofsdCommandLine.looksLikeVirtiofsd(line.split(separator: " ").map(String.init)), "\(line)")
        }
    }
}
