#!/usr/bin/env python3
"""POSIX record locks between two processes, each on its own mount of one export (or both on one).

Why: a lock taken through one engine must hold against a process of another engine (or of the
same one): the NFSv4.1 backend sends LOCK/LOCKT/LOCKU, so the server arbitrates. Checks, in order:
  1. A write-locks [0,100); B's SETLK of [50,60) fails EAGAIN (or EACCES).
  2. B's GETLK of [0,10) reports the write lock over [0,100).
  3. B read-locks [200,300); A's GETLK of [250,260) reports a read lock.
  4. B's SETLKW of [0,100) waits; A unlocks; B gets it within 5 s.
  5. A's SETLKW of [0,10) waits; B closes its descriptor (POSIX drops its locks there); A gets it.
  6. B's SETLKW against A's lock ends when a signal interrupts it; after A unlocks, B's SETLK works
     at once (the interrupted wait left nothing behind).
  7. After A closes, B's GETLK of everything reports no lock.
  8. (Two mounts) B renames A's open file away and makes a new one of its name: A's lock takes
     the file it has open, or fails ENOLCK (NFSv4.0), never the new file.
With --restart-command: A holds a lock, the server restarts (and forgets it); A's next lock on
that file fails EIO until A closes it, B gets the range meanwhile, and A after reopening sees B's.
With --restart-command and --grace (a server with a grace period): A holds a write lock and a read
lock, the server restarts, A's engine reclaims both in the grace period: B is refused the write
lock's range and a write lock of the read lock's, may share the read lock, A's next lock works,
and once A unlocks B gets the range.
A's and B's processes are this script (B runs it with --worker, driven over a pipe).
Exit status: the number of failed checks (the control, tools/host/test-nfs4-locks.sh over NFSv3,
expects failures: there each kernel keeps its own locks).
"""
import argparse, errno, fcntl, json, os, signal, struct, subprocess, sys, time

FLOCK = "hhqqi"   # l_type, l_whence, l_start, l_len, l_pid (x86-64 struct flock, padded by struct)


def lock(fd, command, kind, start, length):
    data = struct.pack(FLOCK, kind, os.SEEK_SET, start, length, 0)
    result = fcntl.fcntl(fd, command, data)
    kind, _, start, length, pid = struct.unpack(FLOCK, result)
    return {"type": kind, "start": start, "len": length, "pid": pid}


def worker(path):
    """B: reads one JSON command a line, answers one JSON result a line."""
    fd = os.open(path, os.O_RDWR)
    interrupted = {"hit": False}

    def on_alarm(signum, frame):
        interrupted["hit"] = True
        raise InterruptedError("alarm")

    signal.signal(signal.SIGALRM, on_alarm)
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "close":
                os.close(fd)
                result = {"ok": True}
            elif op == "alarm":
                signal.setitimer(signal.ITIMER_REAL, command["seconds"])
                result = {"ok": True}
            else:
                cmd = {"setlk": fcntl.F_SETLK, "setlkw": fcntl.F_SETLKW, "getlk": fcntl.F_GETLK}[op]
                started = time.monotonic()
                got = lock(fd, cmd, command["type"], command["start"], command["len"])
                result = {"ok": True, "lock": got, "seconds": time.monotonic() - started}
        except InterruptedError:
            result = {"ok": False, "errno": errno.EINTR}
        except OSError as e:
            result = {"ok": False, "errno": e.errno}
        print(json.dumps(result), flush=True)


class Worker:
    def __init__(self, path):
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", path], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def send(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def answer(self, timeout):
        import select
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return json.loads(self.process.stdout.readline()) if ready else None

    def call(self, timeout=10, **command):
        self.send(**command)
        return self.answer(timeout)


def restart_and_wait(args, probe):
    """Restarts the server, then waits (60 s at most) until a lock on `probe` works: until then the
    engine is making its client again, and a server in its grace period may answer GRACE to new
    locks until every client says its reclaim is complete."""
    subprocess.run(args.restart_command, shell=True, check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with open(probe, "r+b") as p:
                lock(p.fileno(), fcntl.F_SETLK, fcntl.F_WRLCK, 0, 1)
            return
        except OSError:
            time.sleep(0.5)


def after_restart(args, check):
    """A holds a lock; the server restarts and forgets it. A's next lock on that file fails EIO
    (the guest cannot be told which locks it lost) until A closes it; B meanwhile gets the range."""
    name = f"restart-{os.getpid()}"
    path_a, path_b = os.path.join(args.mount_a, name), os.path.join(args.mount_b, name)
    probe = os.path.join(args.mount_a, f"probe-{os.getpid()}")
    for path in (path_a, probe):
        with open(path, "wb") as f:
            f.write(b"x" * 4096)
    fd = os.open(path_a, os.O_RDWR)
    lock(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 10)
    restart_and_wait(args, probe)
    try:
        lock(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 20, 10)
        check("lost-lock-eio", False, "A's lock after the restart succeeded")
    except OSError as e:
        check("lost-lock-eio", e.errno == errno.EIO, f"A's lock after the restart: {errno.errorcode.get(e.errno)}")
    b = Worker(path_b)
    got = b.call(op="setlk", type=fcntl.F_WRLCK, start=0, len=10)
    check("lost-lock-gone-on-server", got is not None and got["ok"], f"B's SETLK of A's old range: {got}")
    os.close(fd)
    fd = os.open(path_a, os.O_RDWR)
    try:
        lock(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 10)
        check("reopened-sees-conflict", False, "A locked B's range")
    except OSError as e:
        check("reopened-sees-conflict", e.errno in (errno.EAGAIN, errno.EACCES), f"A after reopening: {errno.errorcode.get(e.errno)}")
    b.call(op="close")
    try:
        lock(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 10)
        check("reopened-locks", True)
    except OSError as e:
        check("reopened-locks", False, f"A after B closed: {errno.errorcode.get(e.errno)}")
    os.close(fd)
    b.process.kill()
    for path in (path_a, probe):
        os.unlink(path)


def after_restart_in_grace(args, check):
    name = f"grace-{os.getpid()}"
    path_a, path_b = os.path.join(args.mount_a, name), os.path.join(args.mount_b, name)
    probe = os.path.join(args.mount_a, f"probe-{os.getpid()}")
    for path in (path_a, probe):
        with open(path, "wb") as f:
            f.write(b"x" * 4096)
    fd = os.open(path_a, os.O_RDWR)
    lock(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 10)
    lock(fd, fcntl.F_SETLK, fcntl.F_RDLCK, 100, 10)
    restart_and_wait(args, probe)
    try:
        lock(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 20, 10)
        check("reclaimed-owner-locks-on", True)
    except OSError as e:
        check("reclaimed-owner-locks-on", False, f"A's lock after the restart: {errno.errorcode.get(e.errno)}")
    b = Worker(path_b)
    refused = lambda got: got is not None and not got["ok"] and got["errno"] in (errno.EAGAIN, errno.EACCES)
    got = b.call(op="setlk", type=fcntl.F_WRLCK, start=0, len=10, timeout=40)
    check("reclaimed-write-lock-held", refused(got), f"B's SETLK of A's write range: {got}")
    got = b.call(op="setlk", type=fcntl.F_WRLCK, start=100, len=10, timeout=40)
    check("reclaimed-read-lock-held", refused(got), f"B's write SETLK of A's read range: {got}")
    got = b.call(op="setlk", type=fcntl.F_RDLCK, start=100, len=10, timeout=40)
    check("reclaimed-read-lock-shared", got is not None and got["ok"], f"B's read SETLK of A's read range: {got}")
    lock(fd, fcntl.F_SETLK, fcntl.F_UNLCK, 0, 10)
    got = b.call(op="setlk", type=fcntl.F_WRLCK, start=0, len=10, timeout=40)
    check("unlocked-after-reclaim", got is not None and got["ok"], f"B's SETLK after A unlocked: {got}")
    b.call(op="close")
    os.close(fd)
    b.process.kill()
    for path in (path_a, probe):
        os.unlink(path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--mount-a")
    parser.add_argument("--mount-b")
    parser.add_argument("--restart-command", help="restart the server, then check the lost-lock rules instead")
    parser.add_argument("--grace", action="store_true", help="with --restart-command: the server has a grace period (check the reclaim)")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    failures = 0

    def check(name, good, detail=""):
        nonlocal failures
        print(f"RESULT locks-{name}-{'ok' if good else 'FAILED'}{': ' + detail if detail and not good else ''}", flush=True)
        failures += 0 if good else 1

    if args.restart_command:
        (after_restart_in_grace if args.grace else after_restart)(args, check)
        return failures

    name = f"locks-{os.getpid()}"
    path_a, path_b = os.path.join(args.mount_a, name), os.path.join(args.mount_b, name)
    with open(path_a, "wb") as f:
        f.write(b"x" * 4096)
    for _ in range(50):   # the other mount sees the new file within its attribute time
        if os.path.exists(path_b):
            break
        time.sleep(0.1)
    fd = os.open(path_a, os.O_RDWR)
    b = Worker(path_b)
    lock(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 100)
    got = b.call(op="setlk", type=fcntl.F_WRLCK, start=50, len=10)
    check("setlk-conflict-eagain", got is not None and not got["ok"] and got["errno"] in (errno.EAGAIN, errno.EACCES), f"B's SETLK: {got}")
    got = b.call(op="getlk", type=fcntl.F_WRLCK, start=0, len=10)
    holder = got and got.get("lock")
    check("getlk-reports-holder", bool(holder) and holder["type"] == fcntl.F_WRLCK and holder["start"] == 0 and holder["len"] == 100,
          f"B's GETLK: {got}")
    got = b.call(op="setlk", type=fcntl.F_RDLCK, start=200, len=100)
    seen = lock(fd, fcntl.F_GETLK, fcntl.F_WRLCK, 250, 10) if got and got["ok"] else None
    check("getlk-reports-read-lock", bool(seen) and seen["type"] == fcntl.F_RDLCK and seen["start"] == 200, f"B's SETLK {got}, A's GETLK {seen}")
    b.send(op="setlkw", type=fcntl.F_WRLCK, start=0, len=100)
    waited = b.answer(1.5)
    check("setlkw-waits", waited is None, f"B's SETLKW returned at once: {waited}")
    lock(fd, fcntl.F_SETLK, fcntl.F_UNLCK, 0, 100)
    got = waited or b.answer(5)
    check("setlkw-wakes-on-unlock", got is not None and got["ok"], f"B's SETLKW after A's unlock: {got}")
    started = time.monotonic()
    b.send(op="close")
    lock(fd, fcntl.F_SETLKW, fcntl.F_WRLCK, 0, 10)
    check("setlkw-wakes-on-close", time.monotonic() - started < 5 and b.answer(5) is not None, f"{time.monotonic() - started:.1f} s")
    # B again, with a descriptor of its own, against A's lock: an interrupted wait.
    b2 = Worker(path_b)
    b2.call(op="alarm", seconds=1.0)
    got = b2.call(timeout=10, op="setlkw", type=fcntl.F_WRLCK, start=0, len=10)
    check("setlkw-interrupted", got is not None and not got["ok"] and got["errno"] == errno.EINTR, f"B's SETLKW with an alarm: {got}")
    lock(fd, fcntl.F_SETLK, fcntl.F_UNLCK, 0, 10)
    got = b2.call(op="setlk", type=fcntl.F_WRLCK, start=0, len=10)
    check("after-interrupt-lock-free", got is not None and got["ok"], f"B's SETLK after the interrupt: {got}")
    got = b2.call(op="setlk", type=fcntl.F_UNLCK, start=0, len=10)
    os.close(fd)
    got = b2.call(op="getlk", type=fcntl.F_WRLCK, start=0, len=0)
    check("closed-nothing-held", got is not None and got["ok"] and got["lock"]["type"] == fcntl.F_UNLCK, f"B's GETLK after A closed: {got}")
    b.process.kill()
    b2.process.kill()
    os.unlink(path_a)
    if args.mount_a != args.mount_b:
        stale_name(args, check)
    return failures


def stale_name(args, check):
    """8. A holds a descriptor of a file that another client renames away and replaces by a new file
    of the old name. A's lock takes the file A has open (over 4.1, opened by handle) or fails ENOLCK
    (over 4.0, whose open goes by the name the engine last saw, checked by fileid): never the new
    file, which B locks freely."""
    old_a = os.path.join(args.mount_a, f"stale-{os.getpid()}")
    old_b = os.path.join(args.mount_b, f"stale-{os.getpid()}")
    moved_b = os.path.join(args.mount_b, f"moved-{os.getpid()}")
    with open(old_a, "wb") as f:
        f.write(b"x" * 4096)
    fd = os.open(old_a, os.O_RDWR)
    for _ in range(50):
        if os.path.exists(old_b):
            break
        time.sleep(0.1)
    os.rename(old_b, moved_b)
    with open(old_b, "wb") as f:
        f.write(b"y" * 4096)
    fresh = Worker(old_b)
    moved = Worker(moved_b)
    try:
        lock(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 10)
        print("    A's lock after the rename: granted (the file A has open)", flush=True)
        got = moved.call(op="setlk", type=fcntl.F_WRLCK, start=0, len=10)
        check("stale-name-locks-the-open-file", got is not None and not got["ok"], f"A locked; B's SETLK of the renamed file: {got}")
    except OSError as e:
        print(f"    A's lock after the rename: {errno.errorcode.get(e.errno)}", flush=True)
        check("stale-name-locks-the-open-file", e.errno == errno.ENOLCK, f"A's lock after the rename: {errno.errorcode.get(e.errno)}")
    got = fresh.call(op="setlk", type=fcntl.F_WRLCK, start=0, len=10)
    check("stale-name-never-the-new-file", got is not None and got["ok"], f"B's SETLK of the new file of the old name: {got}")
    fresh.call(op="close")
    moved.call(op="close")
    os.close(fd)
    fresh.process.kill()
    moved.process.kill()
    os.unlink(old_b)
    os.unlink(moved_b)


if __name__ == "__main__":
    sys.exit(main())
