import CDPFS
import DPFSPosix
import Foundation
import Glibc
import Testing

// The vhost-user socket admits its owner (and one group) only, whatever the umask, and is never
// bound over a live listener, a symbolic link or a file that is not a socket.

func fileMode(_ path: String) -> (type: mode_t, permissions: mode_t, gid: gid_t)? {
    var status = stat()
    guard lstat(path, &status) == 0 else { return nil }
    return (status.st_mode & S_IFMT, status.st_mode & 0o7777, status.st_gid)
}

/// Whether a client can connect to `path` (errno otherwise).
func connectErrno(_ path: String) -> Int32 {
    var address = try! UnixSocketListener.socketAddress(path)
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    return result == 0 ? 0 : errno
}

@Suite struct SocketListenerTests {
    /// A group other than the process's own when root may give sockets away (users: 100).
    static var otherGroup: gid_t { geteuid() == 0 ? 100 : getegid() }

    @Test("the socket is owner-only (0600), or 0660 with its group, under umask 0 and umask 077",
          arguments: [mode_t(0), 0o077, 0o022])
    func modes(umaskBits: mode_t) throws {
        let directory = SharedDirectory()
        let group = Self.otherGroup
        let result = try withThreadUmask(umaskBits) { () -> [String] in
            var problems: [String] = []
            do {
                let owner = try UnixSocketListener.listen(path: directory.host("owner.sock"), access: SocketAccess(), backlog: 1)
                let shared = try UnixSocketListener.listen(path: directory.host("group.sock"), access: SocketAccess(groupID: group), backlog: 1)
                if let mode = fileMode(directory.host("owner.sock")), mode.type == S_IFSOCK, mode.permissions == 0o600 {} else {
                    problems.append("owner.sock: \(String(describing: fileMode(directory.host("owner.sock"))))")
                }
                if let mode = fileMode(directory.host("group.sock")), mode.type == S_IFSOCK, mode.permissions == 0o660, mode.gid == group {} else {
                    problems.append("group.sock: \(String(describing: fileMode(directory.host("group.sock"))))")
                }
                if connectErrno(directory.host("owner.sock")) != 0 { problems.append("owner cannot connect") }
                owner.close()
                shared.close()
                if fileMode(directory.host("owner.sock")) != nil { problems.append("close left owner.sock behind") }
            } catch {
                problems.append("\(error)")
            }
            return problems
        }
        #expect(result.isEmpty, "umask \(String(umaskBits, radix: 8)): \(result)")
    }

    @Test("a socket another process listens on is refused, named, and keeps its listener")
    func liveSocketRefused() throws {
        let directory = SharedDirectory()
        let path = directory.host("live.sock")
        let first = try UnixSocketListener.listen(path: path, access: SocketAccess(), backlog: 1)
        defer { first.close() }
        #expect {
            _ = try UnixSocketListener.listen(path: path, access: SocketAccess(), backlog: 1)
        } throws: { error in
            "\(error)".contains("\(path) is in use")
        }
        // The first listener still owns the path and takes connections.
        #expect(connectErrno(path) == 0)
        var client = pollfd(fd: first.fd, events: Int16(POLLIN), revents: 0)
        #expect(poll(&client, 1, 1000) == 1)
    }

    @Test("a stale socket (its listener died without removing it) is replaced")
    func staleSocketReplaced() throws {
        let directory = SharedDirectory()
        let path = directory.host("stale.sock")
        let dead = try UnixSocketListener.listen(path: path, access: SocketAccess(), backlog: 1)
        close(dead.fd)   // as a SIGKILL leaves it: the file stays, nobody listens
        #expect(connectErrno(path) == ECONNREFUSED)
        let next = try UnixSocketListener.listen(path: path, access: SocketAccess(), backlog: 1)
        defer { next.close() }
        #expect(connectErrno(path) == 0)
    }

    @Test("a symbolic link or a file that is not a socket is never followed or replaced")
    func notASocket() throws {
        let directory = SharedDirectory()
        let target = directory.host("victim")
        #expect(FileManager.default.createFile(atPath: target, contents: Data("keep".utf8)))
        #expect(symlink(target, directory.host("link.sock")) == 0)
        #expect { _ = try UnixSocketListener.listen(path: directory.host("link.sock"), access: SocketAccess(), backlog: 1) } throws: {
            "\($0)".contains("is a symbolic link")
        }
        #expect { _ = try UnixSocketListener.listen(path: target, access: SocketAccess(), backlog: 1) } throws: {
            "\($0)".contains("is not a socket")
        }
        #expect(FileManager.default.contents(atPath: target) == Data("keep".utf8))
        #expect(fileMode(directory.host("link.sock"))?.type == S_IFLNK)
    }

    @Test("closing removes the socket file only while it is still the one bound")
    func closeRemovesOnlyItsOwn() throws {
        let directory = SharedDirectory()
        let path = directory.host("moved.sock")
        let first = try UnixSocketListener.listen(path: path, access: SocketAccess(), backlog: 1)
        #expect(rename(path, directory.host("elsewhere.sock")) == 0)
        #expect(FileManager.default.createFile(atPath: path, contents: Data("someone else's".utf8)))
        first.close()
        #expect(FileManager.default.contents(atPath: path) == Data("someone else's".utf8))
    }

    @Test("groups by name and number; an unknown group is an error naming it")
    func groups() throws {
        #expect(try UnixSocketListener.groupID(named: "root") == 0)
        #expect(try UnixSocketListener.groupID(named: "36") == 36)
        #expect { _ = try UnixSocketListener.groupID(named: "no-such-group-dpfs") } throws: { "\($0)".contains("no-such-group-dpfs") }
        #expect { _ = try UnixSocketListener.listen(path: String(repeating: "x", count: 200), access: SocketAccess(), backlog: 1) } throws: {
            "\($0)".contains("must be 1...107 bytes")
        }
    }
}
