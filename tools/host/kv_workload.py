#!/usr/bin/env python3
"""kv_workload.py — a namespace workload for the key-value backend's crash tests.

Several processes create, write, rename (plain, over files, RENAME_NOREPLACE, RENAME_EXCHANGE),
link, unlink, mkdir and rmdir in a small shared tree, and keep some files open while others unlink
them (so orphans exist when the engine dies). Errors the races bring (ENOENT, EEXIST, ENOTEMPTY,
EISDIR, ENOTDIR, EINVAL) are expected; ENOTCONN, ECONNABORTED and EIO mean the engine is gone and
end the process. Runs until killed or --seconds pass.

Usage: kv_workload.py --mount MNT [--processes 4] [--seconds 30] [--seed N]
"""
import argparse
import ctypes
import errno
import os
import random
import sys
import time

GONE = {errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENODEV}
_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100


def renameat2(old, new, flags):
    if _libc.renameat2(AT_FDCWD, old.encode(), AT_FDCWD, new.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def worker(root, seed, deadline):
    rng = random.Random(seed)
    dirs = [root] + [os.path.join(root, f"d{i}") for i in range(4)]
    names = [f"n{i}" for i in range(12)]
    held = []

    def path():
        return os.path.join(rng.choice(dirs), rng.choice(names))

    def step():
        kind = rng.randrange(10)
        if kind == 0:
            fd = os.open(path(), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
            os.write(fd, os.urandom(rng.randrange(1, 9000)))
            if len(held) < 4 and rng.random() < 0.5:
                held.append(fd)
            else:
                os.close(fd)
        elif kind == 1:
            os.rename(path(), path())
        elif kind == 2:
            renameat2(path(), path(), rng.choice([1, 2]))
        elif kind == 3:
            os.link(path(), path())
        elif kind in (4, 5):
            os.unlink(path())
        elif kind == 6:
            os.mkdir(os.path.join(rng.choice(dirs), f"s{rng.randrange(3)}"))
        elif kind == 7:
            os.rmdir(os.path.join(rng.choice(dirs), f"s{rng.randrange(3)}"))
        elif kind == 8 and held:
            fd = held.pop(rng.randrange(len(held)))
            os.write(fd, b"x" * rng.randrange(1, 100))
            os.close(fd)
        else:
            os.listdir(rng.choice(dirs))

    while time.monotonic() < deadline:
        try:
            step()
        except OSError as e:
            if e.errno in GONE:
                return 0
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mount", required=True)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    root = os.path.join(args.mount, "work")
    for d in [root] + [os.path.join(root, f"d{i}") for i in range(4)]:
        try:
            os.mkdir(d)
        except FileExistsError:
            pass
        except OSError as e:
            if e.errno in GONE:
                return 0
            raise
    deadline = time.monotonic() + args.seconds
    children = []
    for index in range(args.processes):
        pid = os.fork()
        if pid == 0:
            os._exit(worker(root, args.seed * 100 + index, deadline))
        children.append(pid)
    status = 0
    for pid in children:
        _, code = os.waitpid(pid, 0)
        status |= code
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main())
