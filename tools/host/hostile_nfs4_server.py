#!/usr/bin/env python3
"""hostile_nfs4_server.py — an NFSv4.1 and NFSv4.0 server that lies, for the NFS backend's v4 error paths.

It answers EXCHANGE_ID, CREATE_SESSION, SEQUENCE, RECLAIM_COMPLETE (4.1), SETCLIENTID,
SETCLIENTID_CONFIRM and RENEW (4.0), the pseudo root's /hostile and
the engine's start-up honestly enough to mount, then serves the tree of hostile_nfs_server.py (the
NFSv3 liar) with the same lies told the v4 way, and three of its own:
  good, long-read, short-data, long-link, empty-link, odd-times, badhandle (a 129-byte handle),
  bad/name in the listing, many (a listing that never ends)
  unasked       GETATTR answers an attribute it was not asked for (fh_expire_type)
  wrong-op      the GETATTR result is labelled GETFH
  wrong-session SEQUENCE echoes another session id for a COMPOUND naming this file
  far-lock      LOCKT: held by another client from 2^63 + 5 (past any offset a guest can name)
  bad-lock      LOCKT: held, with a lock type outside 1-4
  (any other file: LOCKT says another client holds a read lock of everything)
and two of 4.0's, for a file made in /hostile (OPEN creating it by name):
  seqid-liar    OPEN answers BAD_SEQID to an owner's first seqid (a new owner takes any)
  confirm-fails OPEN makes it and asks for OPEN_CONFIRM, which then answers BAD_STATEID
It validates nothing of the client's sequence ids (a test double for error paths only; the real
server of every other test is nfs-ganesha).

  hostile_nfs4_server.py --port N [--ready FILE]     (--port 0: a free port, written to FILE)
"""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile_nfs_server import Reader, main, opaque, u32, u64  # noqa: E402

PSEUDO = b"\x00" * 8
ROOT = b"\x01" * 8
HIDDEN = b"\x02" * 8
FILES = {
    # name: (handle, type, mode, size, nlink)
    "good": (b"\x10" * 8, 1, 0o644, 11, 1),
    "long-read": (b"\x11" * 8, 1, 0o644, 4096, 1),
    "short-data": (b"\x12" * 8, 1, 0o644, 4096, 1),
    "long-link": (b"\x13" * 8, 5, 0o777, 5000, 1),
    "empty-link": (b"\x14" * 8, 5, 0o777, 0, 1),
    "odd-times": (b"\x15" * 8, 1, 0o644, 1 << 40, 1),
    "badhandle": (b"\x16" * 8, 1, 0o644, 1, 1),
    "many": (b"\x17" * 8, 2, 0o755, 4096, 2),
    "unasked": (b"\x18" * 8, 1, 0o644, 1, 1),
    "wrong-op": (b"\x19" * 8, 1, 0o644, 1, 1),
    "wrong-session": (b"\x1a" * 8, 1, 0o644, 1, 1),
    "far-lock": (b"\x1b" * 8, 1, 0o644, 1, 1),
    "bad-lock": (b"\x1c" * 8, 1, 0o644, 1, 1),
}
BY_HANDLE = {h: (n, t, m, s, l) for n, (h, t, m, s, l) in FILES.items()}
BY_HANDLE[PSEUDO] = ("/", 2, 0o755, 4096, 3)
BY_HANDLE[ROOT] = ("", 2, 0o755, 4096, 3)
BY_HANDLE[HIDDEN] = (".dpfs-hidden", 2, 0o1777, 4096, 2)
SESSION = b"S" * 16


def bitmap(words):
    return u32(len(words)) + b"".join(u32(w) for w in words)


def read_bitmap(r):
    return [r.u32() for _ in range(r.u32())]


def attributes(handle, wanted, lie_unasked=False):
    """fattr4 of `handle` for the attributes asked for that this server knows."""
    name, kind, mode, size, nlink = BY_HANDLE[handle]
    nseconds = 2_000_000_000 if name == "odd-times" else 0
    time = u64(1700000000) + u32(nseconds)
    values = {
        1: u32(kind), 3: u64(1), 4: u64(size), 8: u64(1) + u64(1), 10: u32(60), 11: u32(0),
        19: opaque(handle), 20: u64(int.from_bytes(handle[:4], "big") or 1), 21: u64(1000), 22: u64(1000),
        23: u64(1000), 30: u64(65536), 31: u64(65536), 33: u32(mode), 35: u32(nlink), 36: opaque(b"0"),
        37: opaque(b"0"), 41: u32(0) + u32(0), 42: u64(1 << 30), 43: u64(1 << 30), 44: u64(1 << 30),
        45: u64(size), 47: time, 52: time, 53: time,
    }
    asked = [bit for word, bits in enumerate(wanted) for bit in range(word * 32, word * 32 + 32)
             if bits & (1 << (bit - word * 32)) and bit in values]
    if lie_unasked:
        asked = sorted(asked + [2])
        values[2] = u32(0)
    words = [0, 0]
    for bit in asked:
        words[bit // 32] |= 1 << (bit % 32)
    return bitmap(words) + opaque(b"".join(values[bit] for bit in asked))


class Compound:
    """One COMPOUND's evaluation: the current handle, the saved one, the results so far."""

    def __init__(self):
        self.current = None
        self.saved = None
        self.results = []
        self.names = set()

    def result(self, op, status, body=b""):
        self.results.append(u32(op) + u32(status) + (body if status == 0 or op == 34 else b""))
        return status == 0

    def run(self, r, op):
        if op == 53:  # SEQUENCE
            r.at += 16
            sequence, slot, highest, _cache = r.u32(), r.u32(), r.u32(), r.u32()
            return self.result(op, 0, SESSION + u32(sequence) + u32(slot) + u32(highest) + u32(highest) + u32(0))
        if op == 42:  # EXCHANGE_ID
            r.at += 8
            r.opaque()
            r.u32(), r.u32()
            for _ in range(r.u32()):
                r.opaque(), r.opaque(), r.u64(), r.u32()
            return self.result(op, 0, u64(0x1234) + u32(1) + u32(0x00010000) + u32(0) + u64(0) + opaque(b"hostile")
                               + opaque(b"hostile") + u32(0))
        if op == 43:  # CREATE_SESSION
            r.u64()
            sequence = r.u32()
            r.u32()
            channels = []
            for _ in range(2):
                channel = [r.u32() for _ in range(6)]
                if r.u32():
                    r.u32()
                channels.append(channel)
            r.u32()
            for _ in range(r.u32()):
                if r.u32() == 1:
                    r.u32(), r.opaque(), r.u32(), r.u32()
                    [r.u32() for _ in range(r.u32())]
            fore = channels[0][:5] + [min(channels[0][5], 8)]
            body = SESSION + u32(sequence) + u32(0) + b"".join(u32(v) for v in fore) + u32(0)
            body += b"".join(u32(v) for v in channels[1]) + u32(0)
            return self.result(op, 0, body)
        if op in (58,):  # RECLAIM_COMPLETE
            r.u32()
            return self.result(op, 0)
        if op == 44:  # DESTROY_SESSION
            r.at += 16
            return self.result(op, 0)
        if op == 57:  # DESTROY_CLIENTID
            r.u64()
            return self.result(op, 0)
        if op == 35:  # SETCLIENTID (4.0): verifier, id, callback program, netid, address, ident
            r.at += 8
            r.opaque(), r.u32(), r.opaque(), r.opaque(), r.u32()
            return self.result(op, 0, u64(0x1234) + b"V" * 8)
        if op == 36:  # SETCLIENTID_CONFIRM
            r.u64()
            r.at += 8
            return self.result(op, 0)
        if op == 30:  # RENEW
            r.u64()
            return self.result(op, 0)
        if op == 18:  # OPEN (4.0 creates): the name decides the lie
            return self.open(r)
        if op == 20:  # OPEN_CONFIRM: the stateid is never good
            r.at += 16
            r.u32()
            return self.result(op, 10025)
        return self.files(r, op)

    def open(self, r):
        r.u32(), r.u32(), r.u32(), r.u64(), r.opaque()
        if r.u32() == 1:  # OPEN4_CREATE: createhow4
            how = r.u32()
            if how in (2, 3):
                r.at += 8
            if how != 2:
                read_bitmap(r)
                r.opaque()
        if r.u32() != 0:  # only CLAIM_NULL
            return self.result(18, 10004)
        name = r.opaque().decode(errors="replace")
        if self.current != ROOT or name not in ("seqid-liar", "confirm-fails"):
            return self.result(18, 10004)
        if name == "seqid-liar":
            return self.result(18, 10026)
        self.current = FILES["good"][0]
        stateid = u32(1) + b"O" * 12
        return self.result(18, 0, stateid + u32(1) + u64(1) + u64(2) + u32(2) + u32(0) + u32(0))

    def files(self, r, op):
        if op == 24:  # PUTROOTFH
            self.current = PSEUDO
            return self.result(op, 0)
        if op == 22:  # PUTFH
            handle = r.opaque()
            if handle not in BY_HANDLE:
                return self.result(op, 10001)
            self.current = handle
            self.names.add(BY_HANDLE[handle][0])
            return self.result(op, 0)
        if op == 32:  # SAVEFH
            self.saved = self.current
            return self.result(op, 0)
        if op == 31:  # RESTOREFH
            self.current = self.saved
            return self.result(op, 0)
        if op == 15:  # LOOKUP
            name = r.opaque().decode(errors="replace")
            return self.lookup(name)
        if op == 16:  # LOOKUPP
            self.current = PSEUDO if self.current == ROOT else ROOT
            return self.result(op, 0)
        if op == 10:  # GETFH
            handle = b"\x16" * 129 if BY_HANDLE[self.current][0] == "badhandle" else self.current
            return self.result(op, 0, opaque(handle))
        if op == 9:  # GETATTR
            wanted = read_bitmap(r)
            name = BY_HANDLE[self.current][0]
            label = 10 if name == "wrong-op" else 9
            self.results.append(u32(label) + u32(0) + attributes(self.current, wanted, lie_unasked=name == "unasked"))
            return True
        if op == 3:  # ACCESS
            wanted = r.u32()
            return self.result(op, 0, u32(wanted) + u32(wanted))
        if op == 25:  # READ
            r.at += 16
            offset, count = r.u64(), r.u32()
            return self.read(offset, count)
        if op == 27:  # READLINK
            name = BY_HANDLE[self.current][0]
            return self.result(op, 0, opaque(b"x" * 5000 if name == "long-link" else b""))
        if op == 26:  # READDIR
            cookie = r.u64()
            r.at += 8
            r.u32(), r.u32()
            return self.readdir(cookie, read_bitmap(r))
        if op == 13:  # LOCKT: the file is always locked by someone else, and the answer may lie
            r.u32(), r.u64(), r.u64(), r.u64(), r.opaque()
            name = BY_HANDLE[self.current][0]
            offset, kind = ((1 << 63) + 5, 2) if name == "far-lock" else (0, 9 if name == "bad-lock" else 1)
            self.results.append(u32(op) + u32(10010) + u64(offset) + u64((1 << 64) - 1) + u32(kind) + u64(7) + opaque(b"holder"))
            return False
        return self.result(op, 10004)  # NOTSUPP

    def lookup(self, name):
        if self.current == PSEUDO and name == "hostile":
            self.current = ROOT
            return self.result(15, 0)
        if self.current == ROOT and name == ".dpfs-hidden":
            self.current = HIDDEN
            return self.result(15, 0)
        if self.current == ROOT and name in FILES:
            self.current = FILES[name][0]
            self.names.add(name)
            return self.result(15, 0)
        return self.result(15, 2)

    def read(self, offset, count):
        name = BY_HANDLE[self.current][0]
        if name == "good":
            data = b"hello world"[offset:offset + count]
            return self.result(25, 0, u32(1) + opaque(data))
        if name == "long-read":
            return self.result(25, 0, u32(0) + opaque(b"L" * (count + 4096)))
        if name == "short-data":
            return self.result(25, 0, u32(0) + u32(4096) + b"s" * 12)
        return self.result(25, 0, u32(1) + opaque(b""))

    def readdir(self, cookie, wanted):
        def entry(name, handle, next_cookie):
            return u32(1) + u64(next_cookie) + opaque(name) + attributes(handle, wanted)
        if self.current == FILES["many"][0]:
            # Never at the end, always the same cookie: a server that loops.
            entries = b"".join(entry(b"same-%d" % i, FILES["good"][0], 7) for i in range(4))
            return self.result(26, 0, b"\0" * 8 + entries + u32(0) + u32(0))
        if cookie != 0:
            return self.result(26, 0, b"\0" * 8 + u32(0) + u32(1))
        names = [(b"bad/name", FILES["good"][0])] + [(n.encode(), h) for n, (h, *_rest) in FILES.items()]
        entries = b"".join(entry(name, handle, 100 + i) for i, (name, handle) in enumerate(names))
        return self.result(26, 0, b"\0" * 8 + entries + u32(0) + u32(1))


def compound(args):
    r = Reader(args)
    r.opaque()
    r.u32()
    evaluation = Compound()
    for _ in range(r.u32()):
        if not evaluation.run(r, r.u32()):
            break
    reply = evaluation.results
    if "wrong-session" in evaluation.names and reply and reply[0][:4] == u32(53):
        reply[0] = reply[0][:8] + b"X" * 16 + reply[0][24:]
    last = struct.unpack(">I", reply[-1][4:8])[0] if reply else 0
    return u32(last) + opaque(b"") + u32(len(reply)) + b"".join(reply)


def answer_v4(_program, proc, args):
    return b"" if proc == 0 else compound(args) if proc == 1 else None


if __name__ == "__main__":
    sys.exit(main(answer_v4, __doc__))
