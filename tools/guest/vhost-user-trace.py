#!/usr/bin/env python3
"""vhost-user-trace.py — a logging proxy between a vhost-user front-end (QEMU) and a back-end.

Why: to write a vhost-user back-end you need to know exactly which messages the front-end sends,
in which order, with which payloads and file descriptors. QEMU's own trace points only print
request numbers, and the C virtiofsd does not log them at all. This proxy sits on the control
socket, decodes every message in both directions (and on the back-end request channel that
SET_SLAVE_REQ_FD sets up), writes one line per message to a log, and forwards everything
unchanged, file descriptors included (they are passed on with SCM_RIGHTS, so guest memory and
kick/call eventfds go straight from QEMU to the back-end: the data plane does not pass through
the proxy).

Usage:
  vhost-user-trace.py --listen FRONT.sock --connect BACKEND.sock [--log FILE]
    QEMU connects to FRONT.sock (-chardev socket,path=FRONT.sock); for each QEMU connection the
    proxy connects to BACKEND.sock (where the real back-end listens). tools/guest/run-guest.sh
    --trace-vhost-user FILE does this for you.

Log line: <seconds since connect> <channel> <direction> <NAME>(<number>) flags=<...> size=<n>
fds=<n> <decoded payload>, where channel is 'ctl' or 'backend-req' and direction is 'F>B' (front-end
to back-end) or 'B>F'. Message numbers and layouts follow the vhost-user spec as of QEMU 7.2.
"""
import argparse
import array
import os
import select
import socket
import struct
import sys
import time

HDR = struct.Struct("<III")  # request, flags, size
MAX_FDS = 32

FRONT_REQUESTS = {
    1: "GET_FEATURES", 2: "SET_FEATURES", 3: "SET_OWNER", 4: "RESET_OWNER", 5: "SET_MEM_TABLE",
    6: "SET_LOG_BASE", 7: "SET_LOG_FD", 8: "SET_VRING_NUM", 9: "SET_VRING_ADDR",
    10: "SET_VRING_BASE", 11: "GET_VRING_BASE", 12: "SET_VRING_KICK", 13: "SET_VRING_CALL",
    14: "SET_VRING_ERR", 15: "GET_PROTOCOL_FEATURES", 16: "SET_PROTOCOL_FEATURES",
    17: "GET_QUEUE_NUM", 18: "SET_VRING_ENABLE", 19: "SEND_RARP", 20: "NET_SET_MTU",
    21: "SET_SLAVE_REQ_FD", 22: "IOTLB_MSG", 23: "SET_VRING_ENDIAN", 24: "GET_CONFIG",
    25: "SET_CONFIG", 26: "CREATE_CRYPTO_SESSION", 27: "CLOSE_CRYPTO_SESSION",
    28: "POSTCOPY_ADVISE", 29: "POSTCOPY_LISTEN", 30: "POSTCOPY_END", 31: "GET_INFLIGHT_FD",
    32: "SET_INFLIGHT_FD", 33: "GPU_SET_SOCKET", 34: "RESET_DEVICE", 35: "VRING_KICK",
    36: "GET_MAX_MEM_SLOTS", 37: "ADD_MEM_REG", 38: "REM_MEM_REG", 39: "SET_STATUS",
    40: "GET_STATUS",
}
BACKEND_REQUESTS = {
    1: "BACKEND_IOTLB_MSG", 2: "BACKEND_CONFIG_CHANGE_MSG", 3: "BACKEND_VRING_HOST_NOTIFIER_MSG",
}
VIRTIO_FEATURES = {
    24: "NOTIFY_ON_EMPTY", 26: "LOG_ALL", 27: "ANY_LAYOUT", 28: "RING_INDIRECT_DESC",
    29: "RING_EVENT_IDX", 30: "PROTOCOL_FEATURES", 32: "VERSION_1", 33: "ACCESS_PLATFORM",
    34: "RING_PACKED", 35: "IN_ORDER", 36: "ORDER_PLATFORM", 37: "SR_IOV",
    38: "NOTIFICATION_DATA", 40: "RING_RESET",
}
PROTOCOL_FEATURES = {
    0: "MQ", 1: "LOG_SHMFD", 2: "RARP", 3: "REPLY_ACK", 4: "NET_MTU", 5: "SLAVE_REQ",
    6: "CROSS_ENDIAN", 7: "CRYPTO_SESSION", 8: "PAGEFAULT", 9: "CONFIG", 10: "SLAVE_SEND_FD",
    11: "HOST_NOTIFIER", 12: "INFLIGHT_SHMFD", 13: "RESET_DEVICE", 14: "INBAND_NOTIFICATIONS",
    15: "CONFIGURE_MEM_SLOTS", 16: "STATUS", 17: "SHARED_OBJECT", 18: "DEVICE_STATE",
}
FEATURE_REQUESTS = {1, 2}
PROTOCOL_REQUESTS = {15, 16}
STATE_REQUESTS = {8, 10, 11, 18}  # struct vhost_vring_state {u32 index; u32 num}
FD_INDEX_REQUESTS = {12, 13, 14}  # u64: index | 0x100 when no fd (polling)


def bits(value, names):
    out = []
    for bit in range(64):
        if value & (1 << bit):
            out.append(names.get(bit, f"bit{bit}"))
    return "|".join(out) or "0"


def decode(request, flags, payload, channel):
    """A short human-readable rendering of the payload."""
    is_reply = bool(flags & 0x4)
    p = payload
    try:
        if channel == "backend-req":
            return p[:64].hex()
        if is_reply and len(p) == 8 and request not in FEATURE_REQUESTS | PROTOCOL_REQUESTS \
                and request not in STATE_REQUESTS and request not in (17, 36, 40):
            # REPLY_ACK answer (or another u64 reply)
            return f"u64={struct.unpack('<Q', p)[0]}"
        if request in FEATURE_REQUESTS and len(p) == 8:
            v = struct.unpack("<Q", p)[0]
            return f"0x{v:x} {bits(v, VIRTIO_FEATURES)}"
        if request in PROTOCOL_REQUESTS and len(p) == 8:
            v = struct.unpack("<Q", p)[0]
            return f"0x{v:x} {bits(v, PROTOCOL_FEATURES)}"
        if request in (17, 36, 39, 40) and len(p) == 8:
            return f"{struct.unpack('<Q', p)[0]}"
        if request in STATE_REQUESTS and len(p) >= 8:
            index, num = struct.unpack("<II", p[:8])
            return f"index={index} num={num}"
        if request in FD_INDEX_REQUESTS and len(p) == 8:
            v = struct.unpack("<Q", p)[0]
            return f"index={v & 0xff}" + (" NOFD(poll)" if v & 0x100 else "")
        if request == 9 and len(p) >= 40:
            index, fl, desc, used, avail, log = struct.unpack("<IIQQQQ", p[:40])
            return (f"index={index} flags=0x{fl:x} desc=0x{desc:x} used=0x{used:x} "
                    f"avail=0x{avail:x} log=0x{log:x}")
        if request == 5 and len(p) >= 8:
            n, _ = struct.unpack("<II", p[:8])
            regions = []
            for i in range(n):
                gpa, size, uva, off = struct.unpack("<QQQQ", p[8 + 32 * i: 8 + 32 * (i + 1)])
                regions.append(f"[gpa=0x{gpa:x} size=0x{size:x} uva=0x{uva:x} mmap_off=0x{off:x}]")
            return f"nregions={n} " + " ".join(regions)
        if request in (37, 38) and len(p) >= 40:
            gpa, size, uva, off = struct.unpack("<QQQQ", p[8:40])
            return f"[gpa=0x{gpa:x} size=0x{size:x} uva=0x{uva:x} mmap_off=0x{off:x}]"
        if request in (24, 25) and len(p) >= 12:
            off, size, fl = struct.unpack("<III", p[:12])
            return f"offset={off} size={size} flags={fl} data={p[12:12 + 64].hex()}"
        if request in (31, 32) and len(p) >= 20:
            msize, moff, nq, qs = struct.unpack("<QQHH", p[:20])
            return f"mmap_size={msize} mmap_offset={moff} num_queues={nq} queue_size={qs}"
    except struct.error:
        pass
    return p[:64].hex() + ("..." if len(p) > 64 else "")


def recv_exact(sock, n, fds):
    """Read exactly n bytes, collecting any SCM_RIGHTS fds into fds. b'' on EOF at start."""
    buf = b""
    while len(buf) < n:
        data, anc, _flags, _addr = sock.recvmsg(n - len(buf), socket.CMSG_LEN(MAX_FDS * 4))
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(cdata[: len(cdata) - (len(cdata) % arr.itemsize)])
                fds.extend(arr)
        if not data:
            if buf:
                raise EOFError("connection closed mid-message")
            return b""
        buf += data
    return buf


class Proxy:
    def __init__(self, log):
        self.log = log
        self.t0 = time.monotonic()
        # socket -> (peer socket, channel, direction, request names)
        self.routes = {}

    def add_pair(self, front, back, channel, names_f2b, names_b2f):
        self.routes[front] = (back, channel, "F>B", names_f2b)
        self.routes[back] = (front, channel, "B>F", names_b2f)

    def write(self, line):
        self.log.write(f"{time.monotonic() - self.t0:9.4f} {line}\n")
        self.log.flush()

    def forward_one(self, src):
        dst, channel, direction, names = self.routes[src]
        fds = []
        hdr = recv_exact(src, HDR.size, fds)
        if not hdr:
            return False
        request, flags, size = HDR.unpack(hdr)
        payload = recv_exact(src, size, fds) if size else b""
        if len(payload) != size:
            raise EOFError("connection closed mid-message")
        if flags & 0x4:
            # A reply travels opposite to the requests of its channel: name it by that channel.
            names = FRONT_REQUESTS if channel == "ctl" else BACKEND_REQUESTS
        name = names.get(request, "UNKNOWN")
        flag_names = [n for bit, n in ((0x4, "REPLY"), (0x8, "NEED_REPLY")) if flags & bit]
        flag_text = f"0x{flags:x}" + (f"({'|'.join(flag_names)})" if flag_names else "")
        self.write(f"{channel:11} {direction} {name}({request}) flags={flag_text} size={size} "
                   f"fds={len(fds)} {decode(request, flags, payload, channel)}")
        send_fds = fds
        if channel == "ctl" and direction == "F>B" and request == 21 and len(fds) == 1:
            # SET_SLAVE_REQ_FD: the back-end will send its own requests over this socket. Give the
            # back-end one end of a new pair and proxy between it and QEMU's socket, so that
            # channel gets traced too.
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            qemu_side = socket.socket(fileno=fds[0])
            # On this channel the back-end is the requester (B>F) and QEMU replies (F>B).
            self.routes[ours] = (qemu_side, "backend-req", "B>F", BACKEND_REQUESTS)
            self.routes[qemu_side] = (ours, "backend-req", "F>B", BACKEND_REQUESTS)
            send_fds = [theirs.fileno()]
            self.write("backend-req channel opened (proxied)")
            try:
                self._send(dst, hdr + payload, send_fds)
            finally:
                theirs.close()
            return True
        try:
            self._send(dst, hdr + payload, send_fds)
        finally:
            for fd in fds:
                os.close(fd)
        return True

    @staticmethod
    def _send(sock, data, fds):
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        sent = sock.sendmsg([data], anc)
        if sent < len(data):
            sock.sendall(data[sent:])

    def run(self):
        while self.routes:
            readable, _, _ = select.select(list(self.routes), [], [])
            for sock in readable:
                if sock not in self.routes:
                    continue
                try:
                    alive = self.forward_one(sock)
                except (OSError, EOFError) as e:
                    self.write(f"error on {self.routes[sock][1]} {self.routes[sock][2]}: {e}")
                    alive = False
                if not alive:
                    peer, channel, direction, _ = self.routes[sock]
                    self.write(f"{channel} closed by {'front-end' if direction == 'F>B' else 'back-end'}")
                    for s in (sock, peer):
                        self.routes.pop(s, None)
                        s.close()
                    if channel == "ctl":
                        # The control connection is gone: the whole session is over.
                        for s in list(self.routes):
                            s.close()
                        self.routes.clear()
                        return


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", required=True, help="socket path QEMU connects to")
    ap.add_argument("--connect", required=True, help="socket path of the real back-end")
    ap.add_argument("--log", help="log file (default stderr)")
    args = ap.parse_args()
    log = open(args.log, "a", buffering=1) if args.log else sys.stderr
    try:
        os.unlink(args.listen)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(args.listen)
    server.listen(1)
    session = 0
    while True:  # one QEMU connection at a time, for as long as we are running
        front, _ = server.accept()
        session += 1
        back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            back.connect(args.connect)
        except OSError as e:
            log.write(f"session {session}: cannot connect to back-end {args.connect}: {e}\n")
            front.close()
            back.close()
            continue
        proxy = Proxy(log)
        proxy.write(f"session {session}: front-end connected, back-end {args.connect}")
        proxy.add_pair(front, back, "ctl", FRONT_REQUESTS, {})
        proxy.run()
        proxy.write(f"session {session}: ended")


if __name__ == "__main__":
    main()
