#!/usr/bin/env python3
"""nfs_faults.py — the NFS server crashes under load; what a user was promised must still hold.

Three loops run at once while this script SIGKILLs nfs-ganesha and starts it again (twice: once
for less than the engine's request timeout, once for longer), and then stalls it (SIGSTOP for
longer than the timeout: its connections stay open and nothing is answered, then SIGCONT):
  data      on the NFS mount: a new file per step, written, fsync'ed; a step counts as promised
            only when fsync returned success;
  metadata  on the NFS mount: mkdir, create, rename, unlink, rmdir chains on fresh names;
  other     on a second device of the same engine with another backend (passthrough): small
            writes and reads that must all succeed, and keep going during the outages.
Afterwards:
  - every promised file is in the export, byte for byte (read from the export directory itself);
  - every failed system call on the NFS mount failed EIO (the engine's word for "the server may or
    may not have done it" and "no answer in time"), nothing else, and none took longer than
    twice the request timeout plus slack (one system call may be two FUSE requests);
  - the mount's view of the metadata directory equals the export's;
  - the other device served during each outage and never failed.
Exit status 0 when all hold. Prints what it measured.

  nfs_faults.py --nfs-mount M --export E --other-mount O --server tools/nfs-server.sh --timeout-ms T
"""
import argparse
import errno
import hashlib
import os
import subprocess
import sys
import threading
import time

FILE_BYTES = 96 * 1024


def content(step):
    # Deterministic bytes per step, different for each, so a lost or stale file cannot pass.
    seed = hashlib.sha256(b"nfs-faults-%d" % step).digest()
    return (seed * (FILE_BYTES // len(seed) + 1))[:FILE_BYTES]


class Loop:
    def __init__(self, name):
        self.name = name
        self.calls = 0
        self.failures = {}  # errno name -> count
        self.latency_max = 0.0
        self.latency_max_call = ""
        self.stop = threading.Event()
        self.completions = []  # monotonic times of successful steps

    def call(self, what, function, *arguments):
        started = time.monotonic()
        try:
            return function(*arguments)
        except OSError as failure:
            name = errno.errorcode.get(failure.errno, str(failure.errno))
            self.failures[name] = self.failures.get(name, 0) + 1
            raise
        finally:
            elapsed = time.monotonic() - started
            self.calls += 1
            if elapsed > self.latency_max:
                self.latency_max, self.latency_max_call = elapsed, what


def data_loop(loop, mount, promised):
    directory = os.path.join(mount, "data")
    os.makedirs(directory, exist_ok=True)
    step = 0
    while not loop.stop.is_set():
        step += 1
        path = os.path.join(directory, "f%06d" % step)
        try:
            fd = loop.call("open", os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError:
            continue
        try:
            loop.call("write", os.write, fd, content(step))
            loop.call("fsync", os.fsync, fd)
            promised.append(step)
            loop.completions.append(time.monotonic())
        except OSError:
            pass
        finally:
            try:
                loop.call("close", os.close, fd)
            except OSError:
                pass


def metadata_loop(loop, mount):
    top = os.path.join(mount, "meta")
    os.makedirs(top, exist_ok=True)
    step = 0
    while not loop.stop.is_set():
        step += 1
        d = os.path.join(top, "d%06d" % step)
        try:
            loop.call("mkdir", os.mkdir, d)
            fd = loop.call("create", os.open, os.path.join(d, "f"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            loop.call("close", os.close, fd)
            loop.call("rename", os.rename, os.path.join(d, "f"), os.path.join(d, "g"))
            loop.call("stat", os.stat, os.path.join(d, "g"))
            loop.call("unlink", os.unlink, os.path.join(d, "g"))
            if step % 2 == 0:
                loop.call("rmdir", os.rmdir, d)
            loop.completions.append(time.monotonic())
        except OSError:
            # A chain whose step failed EIO may have been done by the server or not: it stops there.
            pass


def other_loop(loop, mount):
    path = os.path.join(mount, "other-device.txt")
    step = 0
    while not loop.stop.is_set():
        step += 1
        body = b"step %d\n" % step
        try:
            fd = loop.call("open", os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            loop.call("write", os.write, fd, body)
            loop.call("close", os.close, fd)
            # Through loop.call too: a failing read-back is a failure of the other device, counted.
            if loop.call("read-back", read_whole, path) != body:
                loop.failures["wrong-bytes"] = loop.failures.get("wrong-bytes", 0) + 1
            loop.completions.append(time.monotonic())
        except OSError:
            pass  # counted by loop.call; the loop goes on
        time.sleep(0.005)


def read_whole(path):
    with open(path, "rb") as f:
        return f.read()


def listing(root):
    found = []
    for directory, names, files in os.walk(root):
        names[:] = sorted(n for n in names if not n.startswith(".dpfs-hidden"))
        for name in sorted(names + [f for f in files if not f.startswith(".dpfs-hidden")]):
            found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nfs-mount", required=True)
    parser.add_argument("--export", required=True)
    parser.add_argument("--other-mount", required=True)
    parser.add_argument("--server", required=True, help="tools/nfs-server.sh")
    parser.add_argument("--timeout-ms", type=int, required=True, help="the engine's nfs_timeout_ms")
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    args = parser.parse_args()
    timeout = args.timeout_ms / 1000.0
    # Shorter than the timeout: requests wait and complete after the reconnect. Longer: they fail
    # EIO when their deadline passes.
    outages = [("crash", timeout * 0.5), ("crash", timeout * 1.6), ("stall", timeout * 1.6)]

    promised = []
    data, meta, other = Loop("data"), Loop("metadata"), Loop("other device")
    threads = [threading.Thread(target=data_loop, args=(data, args.nfs_mount, promised)),
               threading.Thread(target=metadata_loop, args=(meta, args.nfs_mount)),
               threading.Thread(target=other_loop, args=(other, args.other_mount))]
    for thread in threads:
        thread.start()
    windows = []
    time.sleep(args.warmup_seconds)
    # Written UNSTABLE before the crash, fsync'ed after the restart: the server's write verifier
    # changed, so the engine must write it again before the fsync may succeed.
    pending_path = os.path.join(args.nfs_mount, "pending.bin")
    pending_bytes = b"".join(content(100000 + i) for i in range(8))
    pending_fd = os.open(pending_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(pending_fd, pending_bytes)
    pending_result = "not tried"
    for index, (kind, seconds) in enumerate(outages):
        began = time.monotonic()
        subprocess.run([args.server, "kill" if kind == "crash" else "pause"], check=True)
        time.sleep(seconds)
        subprocess.run([args.server, "restart" if kind == "crash" else "resume"], check=True, stdout=subprocess.DEVNULL)
        windows.append((began, time.monotonic()))
        print(f"nfs_faults: server {'down' if kind == 'crash' else 'stalled'} {time.monotonic() - began:.1f} s (timeout {timeout:.1f} s)")
        time.sleep(args.warmup_seconds + timeout)
        if index == 0:
            try:
                os.fsync(pending_fd)
                pending_result = "ok"
            except OSError as failure:
                pending_result = errno.errorcode.get(failure.errno, str(failure.errno))
            os.close(pending_fd)
            print(f"nfs_faults: fsync of data written before the crash, after the restart: {pending_result}")
    for loop in (data, meta, other):
        loop.stop.set()
    for thread in threads:
        thread.join(timeout=4 * timeout + 30)
    bad = []
    if any(thread.is_alive() for thread in threads):
        bad.append("a loop is still blocked in a system call after the end")

    # Every fsync that succeeded is durable in the export.
    lost = []
    for step in promised:
        try:
            with open(os.path.join(args.export, "data", "f%06d" % step), "rb") as f:
                if f.read() != content(step):
                    lost.append(step)
        except OSError:
            lost.append(step)
    print(f"nfs_faults: data: {len(promised)} files promised by fsync, {len(lost)} not in the export intact")
    if lost:
        bad.append(f"fsync'ed files lost or wrong in the export: {lost[:10]}")
    if pending_result != "ok":
        bad.append(f"fsync of data written before the first crash failed after the restart: {pending_result}")
    else:
        with open(os.path.join(args.export, "pending.bin"), "rb") as f:
            if f.read() != pending_bytes:
                bad.append("pending.bin is not intact in the export after its fsync succeeded")
    after = [t for t in data.completions if t > windows[-1][1]]
    if not after:
        bad.append("no data step succeeded after the last restart")

    slack = 3.0
    for loop in (data, meta):
        print(f"nfs_faults: {loop.name}: {loop.calls} calls, failures {loop.failures or 'none'}, "
              f"slowest {loop.latency_max:.2f} s ({loop.latency_max_call})")
        unexpected = {k: v for k, v in loop.failures.items() if k != "EIO"}
        if unexpected:
            bad.append(f"{loop.name}: failures other than EIO: {unexpected}")
        if loop.latency_max > 2 * timeout + slack:
            bad.append(f"{loop.name}: a {loop.latency_max_call} took {loop.latency_max:.1f} s, over 2 × timeout + {slack:.0f} s")
        if not loop.completions:
            bad.append(f"{loop.name}: no step ever succeeded")
    if not any(t > windows[-1][1] for t in meta.completions):
        bad.append("no metadata chain succeeded after the last restart")

    # The mount's view of the metadata directory equals the export's.
    seen, truth = listing(os.path.join(args.nfs_mount, "meta")), listing(os.path.join(args.export, "meta"))
    print(f"nfs_faults: metadata: {len(seen)} names through the mount, {len(truth)} in the export")
    if seen != truth:
        bad.append(f"mount and export differ: only in mount {sorted(set(seen) - set(truth))[:5]}, "
                   f"only in export {sorted(set(truth) - set(seen))[:5]}")

    # The other device kept serving, with no failure.
    print(f"nfs_faults: other device: {other.calls} calls, failures {other.failures or 'none'}, "
          f"slowest {other.latency_max * 1000:.0f} ms ({other.latency_max_call})")
    if other.failures:
        bad.append(f"other device failed: {other.failures}")
    for index, (began, ended) in enumerate(windows):
        during = sum(1 for t in other.completions if began <= t <= ended)
        print(f"nfs_faults: other device: {during} steps during outage {index + 1}")
        if during == 0:
            bad.append(f"other device did nothing during outage {index + 1}")
    # Blocked behind the NFS device, a call would last about as long as an outage; half the
    # shortest outage tells that apart from a slow moment of a two-core machine restarting a server.
    limit = min(ended - began for began, ended in windows) / 2
    if other.latency_max > limit:
        bad.append(f"other device: a {other.latency_max_call} took {other.latency_max:.2f} s (limit {limit:.1f} s,"
                   f" half the shortest outage)")

    for line in bad:
        print(f"nfs_faults: FAIL {line}")
    print(f"nfs_faults: {'all hold' if not bad else f'{len(bad)} failed'}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
