#!/usr/bin/env python3
"""nfs_crash.py — the workload of test-nfs-crash.sh: writes that a server crash really loses.

Through a host mount of the NFS backend (cache never, so every write is an UNSTABLE NFS WRITE the
server has only in its page cache), it creates --files files and says "created"; the driver makes the names durable
(a sync of the export's file system) and answers "go"; it writes --size bytes into each, keeps
them open, and says "written". The driver then crashes the server for real (ganesha
SIGKILLed, its ext4 shut down without flushing the log, remounted, ganesha started again with a new
write verifier) and writes "restarted" to our stdin. Then every file is fsync'ed through its still
open descriptor: the engine must find the verifier changed, resend what it journaled and COMMIT
again before answering. Finally each file in the export (--export, read directly) is compared byte
for byte with what was written.

Prints one JSON object: writes and bytes acknowledged, fsyncs acknowledged and failed (with their
errnos), files intact, and bytes lost — in files whose fsync succeeded (the claim's failure: data
acknowledged durable but gone) and in all files (what the crash destroyed). Exit status 0 when
every fsync succeeded and every file is intact; 1 otherwise; 2 on a setup error.
"""
import argparse
import errno
import json
import os
import random
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mount", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--size", type=int, default=256 * 1024)
    ap.add_argument("--chunk", type=int, default=32 * 1024)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    directory = os.path.join(args.mount, "crash")
    os.mkdir(directory)
    # The directory entry must survive the crash on its own: made durable before any data.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
    # Every name first, made durable by the driver (sync of the export's file system): the crash
    # should cost exactly the data written after that.
    opened = []
    for index in range(args.files):
        name = f"f{index:03d}"
        opened.append((name, os.open(os.path.join(directory, name), os.O_CREAT | os.O_RDWR, 0o644)))
    print("created", flush=True)
    if sys.stdin.readline().strip() != "go":
        print("nfs_crash: the driver did not answer go", file=sys.stderr)
        return 2
    files = []
    writes = 0
    for name, fd in opened:
        data = rng.randbytes(args.size)
        for offset in range(0, args.size, args.chunk):
            piece = data[offset:offset + args.chunk]
            if os.pwrite(fd, piece, offset) != len(piece):
                print(f"nfs_crash: short write to {name}", file=sys.stderr)
                return 2
            writes += 1
        files.append((name, fd, data))
    print("written", flush=True)
    if sys.stdin.readline().strip() != "restarted":
        print("nfs_crash: the driver did not restart the server", file=sys.stderr)
        return 2
    fsyncs_ok, fsync_errors, close_errors = 0, {}, {}
    synced = set()
    for name, fd, _ in files:
        try:
            os.fsync(fd)
            fsyncs_ok += 1
            synced.add(name)
        except OSError as error:
            key = errno.errorcode.get(error.errno, str(error.errno))
            fsync_errors[key] = fsync_errors.get(key, 0) + 1
        try:
            os.close(fd)
        except OSError as error:
            key = errno.errorcode.get(error.errno, str(error.errno))
            close_errors[key] = close_errors.get(key, 0) + 1
    intact, lost_synced, lost_all = 0, 0, 0
    for name, _, data in files:
        try:
            with open(os.path.join(args.export, "crash", name), "rb") as f:
                stored = f.read()
        except FileNotFoundError:
            stored = b""
        lost = sum(1 for a, b in zip(stored, data) if a != b) + max(0, len(data) - len(stored))
        lost_all += lost
        if name in synced:
            lost_synced += lost
        intact += lost == 0
    result = {
        "files": args.files, "writes_acknowledged": writes, "bytes_acknowledged": writes and args.files * args.size,
        "fsyncs_acknowledged": fsyncs_ok, "fsyncs_failed": fsync_errors, "closes_failed": close_errors,
        "files_intact": intact,
        "bytes_lost_after_successful_fsync": lost_synced, "bytes_lost_in_all_files": lost_all,
    }
    print(json.dumps(result), flush=True)
    return 0 if fsyncs_ok == args.files and not close_errors and lost_all == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
