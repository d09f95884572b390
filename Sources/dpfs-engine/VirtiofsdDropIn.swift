import ArgumentParser
import DPFSConfiguration
import FUSEWire
import Glibc

// dpfs-engine started the way launchers start virtiofsd (issue 11): the arguments are read by
// VirtiofsdCommandLine and served as dpfs-engine's own one-device command line, passthrough backend.

extension DPFSEngine {
    /// The entry point: virtiofsd-style arguments are translated, anything else is ours.
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard VirtiofsdCommandLine.looksLikeVirtiofsd(arguments) else { return main(arguments) }
        do throws(VirtiofsdOptionError) {
            let invocation = try VirtiofsdCommandLine.parse(arguments)
            if invocation.printCapabilities {
                print(VirtiofsdCommandLine.capabilitiesJSON)
                Glibc.exit(0)
            }
            main(try ownArguments(invocation))
        } catch {
            FileHandleStandardError.write("dpfs-engine (virtiofsd command line): \(error.description)\n")
            Glibc.exit(1)
        }
    }

    /// The same device in dpfs-engine's own options, with a line on standard error for every
    /// option that has no effect here.
    static func ownArguments(_ invocation: VirtiofsdInvocation) throws(VirtiofsdOptionError) -> [String] {
        let listener: [String]
        switch invocation.listener {
        case .socketPath(let path)?: listener = ["--vhost-user-socket", path]
        case .descriptor(let fd)?: listener = ["--vhost-user-fd", String(fd)]
        case nil: preconditionFailure("VirtiofsdCommandLine.parse requires a listener")
        }
        var notes = invocation.ignored
        if !invocation.xattr { notes.append("xattrs off: the passthrough backend serves extended attributes whatever the setting") }
        if let limit = invocation.rlimitNofile { notes.append("--rlimit-nofile=\(limit): the engine sizes RLIMIT_NOFILE from its own tables") }
        for note in notes { FileHandleStandardError.write("dpfs-engine: accepted, no effect: \(note)\n") }
        let level = invocation.logLevel == "off" ? "critical" : invocation.logLevel
        return listener + ["--backend", "passthrough", "--shared-dir", invocation.sharedDirectory!,
                "--cache", invocation.cache.rawValue, "--sandbox", invocation.sandbox.rawValue, "--log-level", level]
            + (invocation.readOnly ? ["--read-only"] : [])
    }
}

/// Standard error without Foundation's FileHandle (one write per line).
enum FileHandleStandardError {
    static func write(_ text: String) {
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}
