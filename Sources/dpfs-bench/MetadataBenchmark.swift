import ArgumentParser
import DPFSPosix
import Glibc

/// `dpfs-bench metadata`: create, stat and unlink N files in a directory of any mounted file system
/// (a host mount through /dev/fuse, or the native file system it is compared with), one phase at a
/// time, timed from this process. Plain system calls in a loop, so the figure is the file system's
/// cost and not a load generator's (a Python loop would add microseconds per call to both sides).
struct MetadataBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metadata",
        abstract: "Create, stat and unlink N files in a directory; operations per second per phase.")

    @Option(help: "Directory to work in (a subdirectory is made and removed).")
    var directory: String

    @Option(help: "Files per phase.")
    var files: Int = 10_000

    @Option(help: "Label for the JSON rows.")
    var label: String = "metadata"

    @Flag(help: "One JSON object per phase instead of a table.")
    var json = false

    func validate() throws {
        guard files >= 1 && files <= 1_000_000 else { throw ValidationError("--files must be 1 ... 1000000") }
    }

    struct Phase {
        let name: String
        let nanoseconds: UInt64
        let files: Int
        var operationsPerSecond: Double { Double(files) * 1e9 / Double(max(nanoseconds, 1)) }
        var microsecondsPerOperation: Double { Double(nanoseconds) / 1e3 / Double(files) }
    }

    func run() throws {
        let work = directory + "/dpfs-bench-metadata.\(getpid())"
        guard mkdir(work, 0o755) == 0 else { throw ValidationError("mkdir \(work): \(String(cString: strerror(errno)))") }
        defer { _ = rmdir(work) }
        let directoryFD = open(work, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directoryFD >= 0 else { throw ValidationError("open \(work): \(String(cString: strerror(errno)))") }
        defer { _ = close(directoryFD) }
        // Names made up front, so the timed loops only make system calls.
        let names = (0..<files).map { "f\($0)" }
        var phases: [Phase] = []
        phases.append(try phase("create", names) { name in
            let fd = openat(directoryFD, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o644)
            if fd < 0 { return errno }
            _ = close(fd)
            return 0
        })
        phases.append(try phase("stat", names) { name in
            var status = stat()
            return fstatat(directoryFD, name, &status, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : errno
        })
        phases.append(try phase("unlink", names) { name in
            unlinkat(directoryFD, name, 0) == 0 ? 0 : errno
        })
        for phase in phases {
            if json {
                print("{\"label\":\"\(label)\",\"phase\":\"\(phase.name)\",\"files\":\(phase.files),"
                    + "\"nanoseconds\":\(phase.nanoseconds),\"ops_per_second\":\(Int(phase.operationsPerSecond))}")
            } else {
                print("\(label)  \(phase.name.padding(toLength: 7, withPad: " ", startingAt: 0))  "
                    + "\(Int(phase.operationsPerSecond)) ops/s  \(String(format: "%.1f", phase.microsecondsPerOperation)) µs/op")
            }
        }
    }

    /// Runs `operation` on every name; the first failure ends the benchmark with its errno.
    func phase(_ name: String, _ names: [String], _ operation: (UnsafePointer<CChar>) -> Int32) throws -> Phase {
        let started = monotonicNanoseconds()
        for file in names {
            let error = file.withCString { operation($0) }
            if error != 0 { throw ValidationError("\(name) \(file): \(String(cString: strerror(error)))") }
        }
        return Phase(name: name, nanoseconds: monotonicNanoseconds() - started, files: names.count)
    }
}
