#!/usr/bin/env python3
"""hostile_nfs_server.py — an NFSv3 server (MOUNT and NFS on one TCP port) that lies.

The NFS backend must not trust what a server sends: handle lengths, counts, names, times. This
server answers the engine's start-up (MOUNT, FSINFO, LOOKUP of .dpfs-hidden) and a small tree
honestly enough to mount, and then lies in the ways listed in TREE below. It is a test double for
error paths only (the real server of every other test is nfs-ganesha).

  hostile_nfs_server.py --port N [--ready FILE]     (--port 0: a free port, written to FILE)

Tree (the root holds):
  good          a regular file of 11 bytes, served honestly ("hello world")
  bad/name      a listing entry whose name holds '/': must never reach the guest
  .             (listed again, and "..") as any server lists them
  long-read     READ answers more bytes than asked
  short-data    READ says 4096 bytes, sends 10
  long-link     READLINK answers a 5000-byte target
  empty-link    READLINK answers an empty target
  odd-times     GETATTR answers nanoseconds of 2e9 and a huge size
  badhandle     LOOKUP answers a 65-byte handle (more than NFS3_FHSIZE)
  many          a directory whose listing never ends (every answer says "not at the end" and
                hands out the same cookie again)
"""
import argparse
import socket
import struct
import sys
import threading

ROOT = b"\x01" * 8
HIDDEN = b"\x02" * 8
FILES = {
    # name: (handle, type, mode, size, nlink)
    "good": (b"\x10" * 8, 1, 0o644, 11, 1),
    "long-read": (b"\x11" * 8, 1, 0o644, 4096, 1),
    "short-data": (b"\x12" * 8, 1, 0o644, 4096, 1),
    "long-link": (b"\x13" * 8, 5, 0o777, 5000, 1),
    "empty-link": (b"\x14" * 8, 5, 0o777, 0, 1),
    "odd-times": (b"\x15" * 8, 1, 0o644, 1 << 62, 1),
    "badhandle": (b"\x16" * 8, 1, 0o644, 1, 1),
    "many": (b"\x17" * 8, 2, 0o755, 4096, 2),
}
BY_HANDLE = {h: (n, t, m, s, l) for n, (h, t, m, s, l) in FILES.items()}
BY_HANDLE[ROOT] = ("", 2, 0o755, 4096, 3)
BY_HANDLE[HIDDEN] = (".dpfs-hidden", 2, 0o1777, 4096, 2)


class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def u32(self):
        value = struct.unpack_from(">I", self.data, self.at)[0]
        self.at += 4
        return value

    def u64(self):
        value = struct.unpack_from(">Q", self.data, self.at)[0]
        self.at += 8
        return value

    def opaque(self):
        length = self.u32()
        value = self.data[self.at:self.at + length]
        self.at += (length + 3) & ~3
        return value


def u32(v):
    return struct.pack(">I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack(">Q", v & 0xFFFFFFFFFFFFFFFF)


def opaque(b):
    return u32(len(b)) + b + b"\0" * ((4 - len(b) % 4) % 4)


def fattr(handle):
    name, kind, mode, size, nlink = BY_HANDLE[handle]
    nseconds = 2_000_000_000 if name == "odd-times" else 0
    fileid = int.from_bytes(handle[:4], "big")
    times = (u32(1700000000) + u32(nseconds)) * 3
    return (u32(kind) + u32(mode) + u32(nlink) + u32(0) + u32(0) + u64(size) + u64(size) + u32(0) + u32(0)
            + u64(1) + u64(fileid) + times)


def post_op_attr(handle):
    return u32(1) + fattr(handle)


NO_ATTR = u32(0)


def entry_plus(fileid, name, cookie, handle=None, attributes=True):
    body = u32(1) + u64(fileid) + opaque(name) + u64(cookie)
    body += post_op_attr(handle) if (attributes and handle) else NO_ATTR
    body += (u32(1) + opaque(handle)) if handle else u32(0)
    return body


def nfs(proc, args):
    """The result body of an NFSv3 call, or None for "no such procedure"."""
    r = Reader(args)
    if proc == 0:
        return b""
    if proc == 1:  # GETATTR
        handle = r.opaque()
        if handle not in BY_HANDLE:
            return u32(70)  # STALE
        return u32(0) + fattr(handle)
    if proc == 3:  # LOOKUP
        directory, name = r.opaque(), r.opaque().decode(errors="replace")
        if directory == ROOT and name == ".dpfs-hidden":
            return u32(0) + opaque(HIDDEN) + post_op_attr(HIDDEN) + NO_ATTR
        if directory == ROOT and name in FILES:
            handle = FILES[name][0]
            if name == "badhandle":
                return u32(0) + opaque(b"\x16" * 65) + NO_ATTR + NO_ATTR
            return u32(0) + opaque(handle) + post_op_attr(handle) + NO_ATTR
        return u32(2) + NO_ATTR  # NOENT
    if proc == 4:  # ACCESS
        handle, wanted = r.opaque(), r.u32()
        return u32(0) + NO_ATTR + u32(wanted)
    if proc == 5:  # READLINK
        handle = r.opaque()
        name = BY_HANDLE.get(handle, ("",))[0]
        target = b"x" * 5000 if name == "long-link" else b""
        return u32(0) + NO_ATTR + opaque(target)
    if proc == 6:  # READ
        handle, offset, count = r.opaque(), r.u64(), r.u32()
        name = BY_HANDLE.get(handle, ("",))[0]
        if name == "good":
            data = b"hello world"[offset:offset + count]
            return u32(0) + NO_ATTR + u32(len(data)) + u32(1) + opaque(data)
        if name == "long-read":
            data = b"L" * (count + 4096)
            return u32(0) + NO_ATTR + u32(len(data)) + u32(0) + opaque(data)
        if name == "short-data":
            return u32(0) + NO_ATTR + u32(4096) + u32(0) + opaque(b"s" * 10)
        return u32(70)
    if proc == 16 or proc == 17:  # READDIR, READDIRPLUS
        handle, cookie = r.opaque(), r.u64()
        verifier = b"\0" * 8
        if handle == FILES["many"][0]:
            # Never at the end, always the same cookie: a server that loops.
            entries = b"".join(entry_plus(1000 + i, b"same-%d" % i, 7) for i in range(4)) if proc == 17 else \
                b"".join(u32(1) + u64(1000 + i) + opaque(b"same-%d" % i) + u64(7) for i in range(4))
            return u32(0) + NO_ATTR + verifier + entries + u32(0) + u32(0)
        if handle != ROOT:
            return u32(70)
        if cookie != 0:
            return u32(0) + NO_ATTR + verifier + u32(0) + u32(1)
        names = [(b".", ROOT), (b"..", ROOT), (b"bad/name", b"\x20" * 8)] + [(n.encode(), h) for n, (h, *_rest) in FILES.items()]
        if proc == 17:
            entries = b"".join(entry_plus(10 + i, name, 100 + i, handle if handle in BY_HANDLE else None)
                               for i, (name, handle) in enumerate(names))
        else:
            entries = b"".join(u32(1) + u64(10 + i) + opaque(name) + u64(100 + i) for i, (name, _) in enumerate(names))
        return u32(0) + NO_ATTR + verifier + entries + u32(0) + u32(1)
    if proc == 18:  # FSSTAT
        return u32(0) + NO_ATTR + u64(1 << 30) * 3 + u64(1000) * 3 + u32(0)
    if proc == 19:  # FSINFO
        return (u32(0) + NO_ATTR + u32(65536) * 3 + u32(65536) * 3 + u32(4096) + u64(1 << 40) + u32(0) + u32(1)
                + u32(0x1B))
    if proc == 20:  # PATHCONF
        return u32(0) + NO_ATTR + u32(32000) + u32(255) + u32(1) + u32(0) + u32(0) + u32(1)
    return None


def mount(proc, args):
    if proc == 0:
        return b""
    if proc == 1:  # MNT
        return u32(0) + opaque(ROOT) + u32(1) + u32(1)
    return None


def answer_v3(program, proc, args):
    return (mount if program == 100005 else nfs)(proc, args)


def serve(connection, answer=answer_v3):
    """Reads record-marked RPC calls and writes each answer: `answer(program, proc, args)` gives the
    result body, or None for "no such procedure"."""
    buffer = b""
    try:
        while True:
            while len(buffer) < 4:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            header = struct.unpack(">I", buffer[:4])[0]
            length = header & 0x7FFFFFFF
            while len(buffer) < 4 + length:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            message, buffer = buffer[4:4 + length], buffer[4 + length:]
            r = Reader(message)
            xid, kind, _rpcvers, program, _version, proc = (r.u32() for _ in range(6))
            r.u32(), r.opaque()  # credential
            r.u32(), r.opaque()  # verifier
            args = message[r.at:]
            body = answer(program, proc, args)
            reply = u32(xid) + u32(1) + u32(0) + u32(0) + u32(0)
            reply += (u32(0) + body) if body is not None else u32(3)  # SUCCESS / PROC_UNAVAIL
            connection.sendall(u32(0x80000000 | len(reply)) + reply)
    except (ConnectionError, OSError, struct.error, KeyError):
        return
    finally:
        connection.close()


def main(answer=answer_v3, description=__doc__):
    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready", help="write this file once listening")
    args = parser.parse_args()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(16)
    if args.ready:
        # The port actually bound (--port 0: one the kernel picked, free by construction).
        open(args.ready, "w").write(f"{listener.getsockname()[1]}\n")
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(connection, answer), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
