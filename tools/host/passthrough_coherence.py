#!/usr/bin/env python3
"""Kernel passthrough coherence: the bytes every path to one file shows are the same bytes.

With FUSE passthrough the kernel reads and writes an open file's backing file itself; the engine
sees no READ or WRITE. What a user must still get is one file: whatever is written through the
passthrough mount, through a second mount of the same share that does not use passthrough (the
engine serves those reads and writes, uncached), through the share itself on the host, or through
a shared mapping, is what every other path reads next — at once, with no cache to drop.

Usage: passthrough_coherence.py --mount MNT --plain-mount MNT2 --backing DIR
  MNT   the mount with --fuse-passthrough; MNT2 a mount of the same share without it (optional);
  DIR   the shared directory itself.
Exit status 0 when every check holds; prints 'FAIL <check>: ...' for each that does not.
"""
import argparse
import mmap
import os
import sys

failures = 0


def check(name, condition, detail=""):
    global failures
    if condition:
        print(f"ok {name}")
    else:
        failures += 1
        print(f"FAIL {name}: {detail}")


def pattern(tag, size):
    """Distinct bytes per writer, so a stale read cannot pass by accident."""
    unit = (tag * 97 + 13) & 0xFF
    return bytes((unit + i) & 0xFF for i in range(size))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mount", required=True)
    ap.add_argument("--plain-mount", default="")
    ap.add_argument("--backing", required=True)
    args = ap.parse_args()
    name = "coherence.dat"
    size = 1 << 20
    through_mount = os.path.join(args.mount, name)
    through_share = os.path.join(args.backing, name)

    with open(through_share, "wb") as f:
        f.write(pattern(1, size))
    mount_fd = os.open(through_mount, os.O_RDWR)
    share_fd = os.open(through_share, os.O_RDWR)
    try:
        # The host writes; the open passthrough file reads it at once (no page cache of its own).
        os.pwrite(share_fd, pattern(2, 4096), 8192)
        check("host-write-seen-by-passthrough-read", os.pread(mount_fd, 4096, 8192) == pattern(2, 4096))
        # The passthrough file writes; the host reads it at once.
        os.pwrite(mount_fd, pattern(3, 65536), 131072)
        check("passthrough-write-seen-by-host", os.pread(share_fd, 65536, 131072) == pattern(3, 65536))
        # Two passthrough opens of one inode.
        second_fd = os.open(through_mount, os.O_RDONLY)
        os.pwrite(mount_fd, pattern(4, 4096), 0)
        check("two-passthrough-opens-agree", os.pread(second_fd, 4096, 0) == pattern(4, 4096))
        os.close(second_fd)
        # A shared mapping through the mount writes the backing file.
        with mmap.mmap(mount_fd, size) as mapped:
            mapped[262144:262144 + 4096] = pattern(5, 4096)
            mapped.flush()
        check("mapped-write-seen-by-host", os.pread(share_fd, 4096, 262144) == pattern(5, 4096))
        # Size changes through either path show on the other.
        os.ftruncate(mount_fd, size // 2)
        check("truncate-through-passthrough", os.fstat(share_fd).st_size == size // 2)
        os.pwrite(share_fd, b"tail", size // 2)
        check("append-by-host-seen", os.fstat(mount_fd).st_size == size // 2 + 4 and os.pread(mount_fd, 4, size // 2) == b"tail",
              f"size {os.fstat(mount_fd).st_size}")

        # The same file open without passthrough (a second mount of the share) at the same time.
        if args.plain_mount:
            plain_fd = os.open(os.path.join(args.plain_mount, name), os.O_RDWR)
            try:
                os.pwrite(mount_fd, pattern(6, 4096), 4096)
                check("passthrough-write-seen-by-plain-open", os.pread(plain_fd, 4096, 4096) == pattern(6, 4096))
                os.pwrite(plain_fd, pattern(7, 4096), 12288)
                check("plain-write-seen-by-passthrough-open", os.pread(mount_fd, 4096, 12288) == pattern(7, 4096))
                check("sizes-agree", os.fstat(plain_fd).st_size == os.fstat(mount_fd).st_size == os.fstat(share_fd).st_size)
            finally:
                os.close(plain_fd)
    finally:
        os.close(mount_fd)
        os.close(share_fd)
        os.unlink(through_share)
    checks = 9 if args.plain_mount else 6
    print(f"passthrough_coherence: {checks} checks, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
