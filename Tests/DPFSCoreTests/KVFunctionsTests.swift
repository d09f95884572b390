import Foundation
import Glibc
import KeyValueStore
import RESP
import Testing

/// The key-value backend's Redis functions against a real redis-server (tools/test-kv-redis.sh
/// starts one and sets DPFS_REDIS_SOCKET): each file-system change is one atomic FCALL that checks
/// before it writes, and `dpfs_check` — the consistency check the atomicity test will run after
/// every crash — finds a whole store whole, and a broken one broken.
@Suite(.enabled(if: ProcessInfo.processInfo.environment["DPFS_REDIS_SOCKET"] != nil, "needs the server tools/test-kv-redis.sh starts"))
struct KVFunctionsTests {
    let client: RESPRedisTests.Client
    let prefix = "dpfs-test:\(getpid()):\(UInt32.random(in: 0...UInt32.max))"
    static let chunk = 16

    init() throws {
        client = try RESPRedisTests.Client(path: ProcessInfo.processInfo.environment["DPFS_REDIS_SOCKET"]!)
        let loaded = try call(["FUNCTION", "LOAD", "REPLACE", KVFunctions.library])
        #expect(loaded == ["$\(KVFunctions.libraryName) |"], "\(loaded)")
        _ = try fcall("dpfs_format", ["0", "0", String(0o040755), "1", "0"])
    }

    /// One command's reply tokens.
    func call(_ parts: [String]) throws -> [String] {
        try client.exchange(replies: 1) { writer in
            guard writer.begin(parts: parts.count) else { return false }
            for part in parts {
                guard part.utf8CString.withUnsafeBytes({ writer.part(UnsafeRawBufferPointer(rebasing: $0.dropLast())) }) else { return false }
            }
            return true
        }
    }

    func fcall(_ function: String, _ arguments: [String]) throws -> [String] {
        client.bulks = []
        return try call(["FCALL", function, "0", prefix] + arguments)
    }

    /// A new entry's inode number ("1000" mode bits as octal text).
    func create(_ parent: String, _ name: String, mode: Int, target: String = "") throws -> String {
        let reply = try fcall("dpfs_create", [parent, name, String(mode), "0", "0", "0", "2", "0", target])
        guard reply.count == 14, reply[1].hasPrefix("$") else { throw RESPRedisTests.RESPTestError("create \(name): \(reply)") }
        return String(reply[1].dropFirst())
    }

    /// What `dpfs_check` found (its array of strings).
    func problems() throws -> [String] {
        try fcall("dpfs_check", []).dropFirst().map { token in
            String(token.dropFirst().replacingOccurrences(of: " |", with: ""))
        }
    }

    /// The errno of an error reply ("-ENOENT no such entry |" → "ENOENT"), or nil.
    static func errno(_ reply: [String]) -> String? {
        guard reply.count == 1, reply[0].hasPrefix("-") else { return nil }
        return String(reply[0].dropFirst().prefix { $0 != " " })
    }

    @Test("entries, links and renames keep every count right; errors come before any write")
    func namespace() throws {
        let d = try create("1", "d", mode: 0o040755)
        let f = try create(d, "f", mode: 0o100644)
        _ = try create("1", "l", mode: 0o120777, target: "d/f")
        #expect(Self.errno(try fcall("dpfs_create", [d, "f", String(0o100644), "0", "0", "0", "3", "0", ""])) == "EEXIST")
        #expect(try fcall("dpfs_lookup", [d, "f"])[1] == "$\(f)")
        #expect(Self.errno(try fcall("dpfs_lookup", [f, "x"])) == "ENOTDIR")
        #expect(try fcall("dpfs_link", [f, "1", "f2", "4", "0"])[6] == "$2", "nlink 2")
        #expect(Self.errno(try fcall("dpfs_rmdir", ["1", "d", "5", "0", "\(Self.chunk)"])) == "ENOTEMPTY")
        #expect(Self.errno(try fcall("dpfs_unlink", ["1", "d", "5", "0"])) == "EISDIR")
        #expect(Self.errno(try fcall("dpfs_rename", ["1", "f2", d, "f", "1", "6", "0", "\(Self.chunk)"])) == "EEXIST", "NOREPLACE")
        #expect(Self.errno(try fcall("dpfs_rename", ["1", "d", d, "inside", "0", "6", "0", "\(Self.chunk)"])) == "EINVAL", "below itself")
        #expect(try problems() == [])
        #expect(try fcall("dpfs_rename", ["1", "l", d, "f", "2", "7", "0", "\(Self.chunk)"]) == [":0 |"], "EXCHANGE")
        #expect(try fcall("dpfs_lookup", ["1", "l"])[1] == "$\(f)")
        _ = try fcall("dpfs_rename", ["1", "l", d, "f", "2", "8", "0", "\(Self.chunk)"])
        let e = try create("1", "e", mode: 0o040755)
        #expect(try fcall("dpfs_rename", [d, "f", e, "moved", "0", "9", "0", "\(Self.chunk)"]) == [":0 |"])
        #expect(try fcall("dpfs_rename", ["1", "d", e, "sub", "0", "9", "0", "\(Self.chunk)"]) == [":0 |"], "a directory moves")
        #expect(try fcall("dpfs_getattr", ["1"])[6] == "$3", "root: . .. and e (d moved into e)")
        #expect(try fcall("dpfs_getattr", [e])[6] == "$3", "e: . .. and sub")
        #expect(try problems() == [])
        #expect(try fcall("dpfs_rename", [e, "moved", "1", "f2", "0", "10", "0", "\(Self.chunk)"]) == [":0 |"],
                "onto another name of the same file: nothing happens (POSIX)")
        #expect(try fcall("dpfs_lookup", [e, "moved"])[1] == "$\(f)" && fcall("dpfs_lookup", ["1", "f2"])[1] == "$\(f)")
        #expect(try problems() == [])
    }

    @Test("data across chunk boundaries, holes as zeros, truncation, and orphans reclaimed")
    func data() throws {
        let f = try create("1", "data", mode: 0o100644)
        #expect(try fcall("dpfs_write", [f, "13", "abcdefghij", "\(Self.chunk)", "3", "0"]) == [":10 |"])
        #expect(try fcall("dpfs_write", [f, "40", "XY", "\(Self.chunk)", "3", "0"]) == [":2 |"])
        _ = try fcall("dpfs_read", [f, "0", "100", "\(Self.chunk)"])
        var expected = [UInt8](repeating: 0, count: 42)
        expected.replaceSubrange(13..<23, with: Array("abcdefghij".utf8))
        expected.replaceSubrange(40..<42, with: Array("XY".utf8))
        #expect(client.bulks == [expected], "the bytes, with the holes zero")
        _ = try fcall("dpfs_truncate", [f, "15", "\(Self.chunk)", "4", "0"])
        _ = try fcall("dpfs_truncate", [f, "30", "\(Self.chunk)", "4", "0"])
        _ = try fcall("dpfs_read", [f, "0", "100", "\(Self.chunk)"])
        var cut = [UInt8](repeating: 0, count: 30)
        cut.replaceSubrange(13..<15, with: Array("ab".utf8))
        #expect(client.bulks == [cut], "what truncation cut off reads as zeros when the file grows again")
        #expect(try fcall("dpfs_unlink", ["1", "data", "5", "0"]) == ["*2", ":\(f)", ":0 |"])
        #expect(try problems() == [], "an unlinked file is an orphan, listed")
        #expect(try fcall("dpfs_reclaim", [f, "\(Self.chunk)"]) == [":1 |"])
        #expect(try call(["EXISTS", "\(prefix):i:\(f)", "\(prefix):c:\(f):0", "\(prefix):c:\(f):2"]) == [":0 |"], "inode and chunks gone")
        #expect(try problems() == [])
    }

    /// A listing's (offset, name) pairs from `offset` on.
    func listing(_ dir: String, from offset: Int, count: Int = 100) throws -> [(Int, String)] {
        let reply = try fcall("dpfs_readdir", [dir, String(offset), String(count), "0"])
        var entries: [(Int, String)] = []
        var index = 2   // the array's header, then the parent
        while index + 3 < reply.count {
            entries.append((Int(reply[index].dropFirst())!, String(reply[index + 3].dropFirst().replacingOccurrences(of: " |", with: ""))))
            index += 4
        }
        return entries
    }

    @Test("listing offsets stay stable while entries come and go; a renamed-over name keeps its place")
    func listingOrder() throws {
        let d = try create("1", "list", mode: 0o040755)
        for name in ["a", "b", "c", "d"] { _ = try create(d, name, mode: 0o100644) }
        let first = try listing(d, from: 0)
        #expect(first.map(\.1) == ["a", "b", "c", "d"] && first.map(\.0) == [3, 4, 5, 6])
        _ = try fcall("dpfs_unlink", [d, "b", "2", "0"])
        _ = try create(d, "e", mode: 0o100644)
        #expect(try listing(d, from: 4).map(\.1) == ["c", "d", "e"], "resuming after b's offset skips nothing and repeats nothing")
        _ = try fcall("dpfs_rename", [d, "a", d, "d", "0", "3", "0", "\(Self.chunk)"])
        #expect(try listing(d, from: 0).map(\.1) == ["c", "d", "e"])
        #expect(try listing(d, from: 0, count: 2).count == 2, "COUNT bounds a page")
        #expect(try problems() == [])
    }

    @Test("setattr, capacity, xattrs and the start's orphan reclaim")
    func attributesAndStart() throws {
        let f = try create("1", "attrs", mode: 0o100644)
        // mode 0600, size 100 (a hole), mtime 7.5: WHAT = 1 | 8 | 32.
        let after = try fcall("dpfs_setattr", [f, "41", "384", "0", "0", "100", "0", "0", "7", "500", "9", "0", "\(Self.chunk)", "1000000"])
        #expect(after[1] == "$\(f)" && after[2] == "$\(0o100600)" && after[5] == "$100" && after[10] == "$7" && after[11] == "$500", "\(after)")
        #expect(Self.errno(try fcall("dpfs_setattr", [f, "8", "0", "0", "0", "5000000", "0", "0", "0", "0", "9", "0", "\(Self.chunk)", "1000000"])) == "ENOSPC")
        #expect(Self.errno(try fcall("dpfs_write", [f, "999990", "0123456789ab", "\(Self.chunk)", "9", "0", "1000000"])) == "ENOSPC")
        #expect(try fcall("dpfs_setattr", [f, "64", "0", "0", "0", "10", "0", "0", "0", "0", "9", "0", "\(Self.chunk)", "1000000"])[5] == "$100",
                "fallocate never shrinks")
        #expect(Self.errno(try fcall("dpfs_getxattr", [f, "user.x"])) == "ENODATA")
        #expect(try fcall("dpfs_setxattr", [f, "user.x", "v1", "1", "9", "0"]) == [":0 |"])
        #expect(Self.errno(try fcall("dpfs_setxattr", [f, "user.x", "v2", "1", "9", "0"])) == "EEXIST")
        #expect(Self.errno(try fcall("dpfs_setxattr", [f, "user.y", "v2", "2", "9", "0"])) == "ENODATA")
        #expect(try fcall("dpfs_getxattr", [f, "user.x"]) == ["$v1 |"])
        #expect(try fcall("dpfs_listxattr", [f]) == ["*1", "$user.x |"])
        #expect(try fcall("dpfs_removexattr", [f, "user.x", "9", "0"]) == [":0 |"])
        #expect(Self.errno(try fcall("dpfs_removexattr", [f, "user.x", "9", "0"])) == "ENODATA")
        _ = try fcall("dpfs_unlink", ["1", "attrs", "9", "0"])
        #expect(try fcall("dpfs_statfs", [])[3] == ":1 |", "one orphan waits")
        #expect(try fcall("dpfs_start", ["0", "0", String(0o040755), "1", "0", "\(Self.chunk)"]) == ["*2", ":\(Self.chunk)", ":1 |"])
        #expect(try fcall("dpfs_statfs", []) == ["*3", ":0", ":1", ":0 |"], "no bytes, one inode (the root), no orphan left")
        #expect(try problems() == [])
    }

    @Test("the inode bound: ENOSPC at it, room again when an inode goes")
    func inodeBound() throws {
        // The root and two files, with a bound of 3.
        func make(_ name: String) throws -> [String] {
            try fcall("dpfs_create", ["1", name, String(0o100644), "0", "0", "0", "2", "0", "", "0", "3"])
        }
        _ = try make("one")
        _ = try make("two")
        #expect(Self.errno(try make("three")) == "ENOSPC")
        _ = try fcall("dpfs_unlink", ["1", "two", "3", "0"])
        #expect(Self.errno(try make("three")) == "ENOSPC", "an orphan still holds its inode")
        _ = try fcall("dpfs_start", ["0", "0", String(0o040755), "1", "0", "\(Self.chunk)"])
        #expect(try make("three").count == 14, "reclaimed: room for one more")
        #expect(try problems() == [])
    }

    @Test("the check finds what a torn change would leave (its negative control)")
    func checkCanFail() throws {
        let f = try create("1", "x", mode: 0o100644)
        _ = try call(["HSET", "\(prefix):i:\(f)", "nlink", "2"])
        #expect(try problems() == ["nlink of \(f)"])
        _ = try call(["HSET", "\(prefix):i:\(f)", "nlink", "1"])
        _ = try call(["HSET", "\(prefix):d:1", "ghost", "999999"])
        #expect(try problems() == ["dangling 1/ghost"])
        _ = try call(["HDEL", "\(prefix):d:1", "ghost", "x"])
        #expect(try problems() == ["nlink of \(f)", "orphan \(f) not listed"])
        _ = try call(["HSET", "\(prefix):d:1", "x", f])
        _ = try call(["INCR", "\(prefix):inodes"])
        #expect(try problems() == ["inode count"], "a count that drifted from the inodes that exist")
    }

    @Test("a random namespace workload leaves a whole store after every step")
    func randomWorkload() throws {
        var generator = SystemRandomNumberGenerator()
        var dirs = ["1"]
        let names = ["a", "b", "c", "d"]
        for step in 0..<300 {
            let dir = dirs.randomElement(using: &generator)!
            let other = dirs.randomElement(using: &generator)!
            let name = names.randomElement(using: &generator)!
            let second = names.randomElement(using: &generator)!
            switch Int.random(in: 0..<6, using: &generator) {
            case 0: if let ino = try? create(dir, name, mode: 0o040755) { dirs.append(ino) }
            case 1: _ = try? create(dir, name, mode: 0o100644)
            case 2: _ = try fcall("dpfs_unlink", [dir, name, "1", "0"])
            case 3: _ = try fcall("dpfs_rmdir", [dir, name, "1", "0", "\(Self.chunk)"])
            case 4: _ = try fcall("dpfs_rename", [dir, name, other, second, String(Int.random(in: 0...2, using: &generator)), "1", "0", "\(Self.chunk)"])
            default:
                let found = try fcall("dpfs_lookup", [dir, name])
                if found.count == 14 { _ = try fcall("dpfs_link", [String(found[1].dropFirst()), other, second, "1", "0"]) }
            }
            // Directories that were removed answer ENOENT from then on; keep only live ones.
            dirs = try dirs.filter { try fcall("dpfs_getattr", [$0]).count == 14 }
            let found = try problems()
            try #require(found == [], "step \(step): \(found)")
        }
    }
}
