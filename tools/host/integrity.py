#!/usr/bin/env python3
"""integrity.py — random-operation data-integrity test: the same seeded random operations on two trees.

Why: a FUSE file system can lose or misplace data in ways a fixed test never hits: a write through
a descriptor kept open across a rename, a read of a page that a truncate just shrank, a hard link
that does not see a write through its other name, an append after a reopen, a file that was
unlinked while still open. Running a long random sequence of such operations on the subject (e.g.
a FUSE mount) and on a reference (a local directory) and comparing every result finds them, and
the seed makes any finding reproducible.

How: one random.Random(seed) chooses each operation and its arguments (paths, offsets, lengths,
and the written bytes themselves); the operation is performed on both trees and its outcome
("ok" or the errno name) and result (bytes read, bytes written, stat summary) must be equal.
Operations: create (O_CREAT|O_EXCL), pwrite at a random offset, pread (compared byte for byte),
truncate/ftruncate (grow and shrink), rename (within and across the four directories d0..d3 and
their subdirectories, sometimes onto a directory or into a missing one), link, unlink, fsync and
fdatasync (files and directories), mkdir/rmdir (also after unlinking a directory's files) and
directory rename, open with O_TRUNC, O_APPEND
writes, fallocate (allocate, keep size, punch a hole; --no-fallocate leaves it out), fstat/lstat/listdir, and closing and reopening descriptors (at most --fds open per tree;
they survive renames and unlinks of their file). After every operation that changes names, both
trees are scanned and their names and types compared (that also keeps the list of existing paths
the next choices are made from). Every 1000 steps and at the end, both trees are walked and every
entry's type, mode, size, nlink and (for files) SHA-256 of the contents compared. And before any
operation discards data (overwrites it, truncates it away, unlinks or renames over a file's last
name, closes an unlinked file's last descriptor), the bytes it discards are compared on both sides:
a corruption cannot be erased before it is seen. File sizes stay
below --size-max, so memory and disk use are bounded (about --files x --size-max per tree).

Usage:
  integrity.py --subject DIR_A --reference DIR_B --seed N --steps N [--files 64]
               [--size-max 1048576] [--fds 8] [--keep] [--self-test]
Each run works in DIR/integrity.<pid>/ on both sides and removes it at the end unless --keep.

Output: "integrity: step X/N" every 10%; on the first divergence the step, the seed, the operation
and both results, then exit status 1; on success the final line
"integrity: seed S, N steps, no difference".

--self-test: four short runs, each of which corrupts the subject tree behind the tool's back
(one flipped byte, one appended byte, an extra hard link, a flipped byte then read), and checks
that every corruption is reported.
"""
import argparse
import ctypes
import errno
import hashlib
import os
import random
import shutil
import signal
import stat
import sys
import time

TOP_DIRS = ["d0", "d1", "d2", "d3"]
SUBDIR_NAMES = ["s0", "s1", "s2"]
CHECK_EVERY = 1000
O = os

# operation name -> weight
WEIGHTS = {
    "create": 8, "pwrite": 20, "pread": 15, "truncate": 6, "rename": 6, "link": 4, "unlink": 5,
    "fsync": 3, "mkdir": 2, "rmdir": 2, "clear_dir": 1, "rename_dir": 1, "open_trunc": 3, "append": 6,
    "reopen": 5, "close": 2, "fstat": 3, "stat": 3, "listdir": 2, "fallocate": 4,
}

# fallocate(2) modes (linux/falloc.h): allocate, allocate without growing, punch a hole.
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def fallocate(fd, mode, offset, length):
    if _libc.fallocate(fd, mode, offset, length) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


class Divergence(Exception):
    def __init__(self, what, subject, reference, detail=""):
        super().__init__(what)
        self.what, self.subject, self.reference, self.detail = what, subject, reference, detail


def errname(num):
    return errno.errorcode.get(num, f"errno{num}")


def show(result):
    outcome, value = result
    if isinstance(value, bytes):
        value = repr(value) if len(value) <= 16 else f"{len(value)} bytes sha256:{hashlib.sha256(value).hexdigest()[:16]}"
    return outcome if value is None else f"{outcome} {value}"


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def first_differing_entries(a, b):
    """The first entries of two sorted listings that differ ("(nothing)" past the shorter end)."""
    i = first_difference(a, b)
    return (a[i] if i < len(a) else "(nothing)"), (b[i] if i < len(b) else "(nothing)")


def summary(st):
    """The comparable part of a stat result."""
    return (stat.filemode(st.st_mode), st.st_size if not stat.S_ISDIR(st.st_mode) else "-", st.st_nlink)


def file_hash(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:32]


def scan(root):
    """Sorted (relative path, type) of everything under root."""
    out = []

    def walk(rel):
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            p = f"{rel}/{e.name}" if rel else e.name
            kind = "dir" if e.is_dir(follow_symlinks=False) else "file" if e.is_file(follow_symlinks=False) else "other"
            out.append((p, kind))
            if kind == "dir":
                walk(p)
    walk("")
    return out


def tree_state(root):
    """Everything the periodic check compares: path, mode, size, nlink, contents hash."""
    state = []
    for rel, kind in scan(root):
        path = os.path.join(root, rel)
        st = os.lstat(path)
        state.append((rel, *summary(st), file_hash(path) if kind == "file" else ""))
    return state


class Slot:
    """A descriptor pair: the same file opened the same way on both sides."""

    def __init__(self, path, flags, fds):
        self.path, self.flags, self.fds = path, flags, fds

    def __str__(self):
        names = {O.O_RDONLY: "r", O.O_WRONLY: "w", O.O_RDWR: "rw"}[self.flags & O.O_ACCMODE]
        return f"fd[{self.path} {names}{'+append' if self.flags & O.O_APPEND else ''}]"


class Run:
    def __init__(self, args, roots, sabotage=None):
        self.rng = random.Random(args.seed)
        self.roots = roots  # [subject, reference]
        self.files_max, self.size_max, self.fds_max = args.files, args.size_max, args.fds
        self.files, self.dirs = [], list(TOP_DIRS)
        self.slots = []
        self.step_no = 0
        self.counts = {}  # operation kind -> times chosen
        self.outcomes = {}  # operation kind -> {outcome: calls on both sides}
        self.kind = "setup"
        self.sabotage = sabotage  # (step, kind) for --self-test
        self.weights = dict(WEIGHTS)
        if args.no_fallocate:
            self.weights["fallocate"] = 0
        for root in roots:
            for d in TOP_DIRS:
                os.mkdir(os.path.join(root, d))

    # --- performing one operation on both sides
    def both(self, what, fn):
        """fn(i, root) on the subject (i=0) and the reference (i=1); results must be equal."""
        results = []
        for i, root in enumerate(self.roots):
            try:
                results.append(("ok", fn(i, root)))
            except OSError as e:
                results.append((errname(e.errno), None))
        outcomes = self.outcomes.setdefault(self.kind, {})
        outcomes[results[0][0]] = outcomes.get(results[0][0], 0) + 1
        if results[0] != results[1]:
            detail = ""
            a, b = results[0][1], results[1][1]
            if isinstance(a, bytes) and isinstance(b, bytes):
                detail = f"first differing byte at offset +{first_difference(a, b)} of the read"
            raise Divergence(what, show(results[0]), show(results[1]), detail)
        return results[0]

    def rescan(self):
        """After a namespace change: both trees must have the same names; refresh the choices."""
        a, b = scan(self.roots[0]), scan(self.roots[1])
        if a != b:
            x, y = first_differing_entries(a, b)
            raise Divergence("names after the operation", str(x), str(y))
        self.files = [p for p, k in a if k == "file"]
        self.dirs = [p for p, k in a if k == "dir"]

    def full_check(self):
        a, b = tree_state(self.roots[0]), tree_state(self.roots[1])
        if a != b:
            x, y = first_differing_entries(a, b)
            fields = ("path", "mode", "size", "nlink", "sha256")
            differ = [f for f, u, v in zip(fields, x, y) if u != v] if isinstance(x, tuple) and isinstance(y, tuple) and x[0] == y[0] else ["path"]
            raise Divergence(f"tree check after step {self.step_no}", str(x), str(y),
                             f"(path, mode, size, nlink, sha256); differs in: {', '.join(differ)}")

    # --- random choices
    def length(self):
        r = self.rng.random()
        top = 512 if r < 0.5 else 65536 if r < 0.9 else 262144
        return self.rng.randrange(1, min(top, self.size_max) + 1)

    def random_path(self):
        if self.rng.random() < 0.05:
            d = self.rng.choice(TOP_DIRS) + "/missing"
        else:
            d = self.rng.choice(self.dirs)
        return f"{d}/f{self.rng.randrange(self.files_max)}"

    def pick_file(self):
        if self.files and self.rng.random() < 0.9:
            return self.rng.choice(self.files)
        return self.random_path()

    def random_subdir(self):
        return f"{self.rng.choice(TOP_DIRS)}/{self.rng.choice(SUBDIR_NAMES)}"

    def subject_size(self, path=None, slot=None):
        """The current size on the subject side (equal on both unless a divergence is pending)."""
        try:
            st = os.fstat(slot.fds[0]) if slot else os.stat(os.path.join(self.roots[0], path))
            return st.st_size
        except OSError:
            return 0

    def pick_slot(self, chance=0.6, access=None):
        """An open descriptor pair, or None. access "r"/"w": mostly one that allows it (sometimes
        any, so that EBADF and EINVAL are compared too)."""
        if not self.slots or self.rng.random() >= chance:
            return None
        usable = self.slots
        if access and self.rng.random() < 0.9:
            bad = O.O_WRONLY if access == "r" else O.O_RDONLY
            usable = [s for s in self.slots if s.flags & O.O_ACCMODE != bad] or self.slots
        return self.rng.choice(usable)

    def open_both(self, what, path, flags, keep):
        fds = [None, None]

        def opener(i, root):
            fds[i] = os.open(os.path.join(root, path), flags, 0o644)
        outcome, _ = self.both(what, opener)
        if outcome != "ok":
            return None
        if keep and len(self.slots) < self.fds_max:
            self.slots.append(Slot(path, flags, fds))
            return self.slots[-1]
        for fd in fds:
            os.close(fd)
        return None

    def close_slot(self, slot):
        self.slots.remove(slot)
        try:
            if os.fstat(slot.fds[0]).st_nlink == 0:
                self.verify(f"before closing unlinked {slot}", slot=slot)  # its data is about to go
        except OSError:
            pass
        self.both(f"close {slot}", lambda i, root: os.close(slot.fds[i]))

    # --- verify before destroy: bytes an operation is about to discard (overwrite, truncate away,
    # unlink the last name of) are compared first, so that a corruption cannot be erased unseen
    def verify(self, why, path=None, slot=None, start=0, end=None):
        saved, self.kind = self.kind, "verify"
        try:
            outcome, size = self.both(f"size of {slot or path} ({why})", lambda i, root: (
                os.fstat(slot.fds[i]) if slot else os.stat(os.path.join(root, path))).st_size)
            if outcome != "ok":
                return
            end = size if end is None else min(end, size)
            for off in range(start, end, 1 << 20):
                n = min(1 << 20, end - off)
                self.both(f"verify {slot or path} offset={off} len={n} ({why})",
                          lambda i, root: self.read_range(i, root, path, slot, off, n))
        finally:
            self.kind = saved

    @staticmethod
    def read_range(i, root, path, slot, off, n):
        # through the slot's file even if it was renamed, unlinked or opened write-only
        target = f"/proc/self/fd/{slot.fds[i]}" if slot else os.path.join(root, path)
        fd = os.open(target, O.O_RDONLY)
        try:
            return os.pread(fd, n, off)
        finally:
            os.close(fd)

    def verify_if_last_name(self, why, path):
        try:
            st = os.lstat(os.path.join(self.roots[0], path))
        except OSError:
            return
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            self.verify(why, path=path)

    # --- the operations
    def op_create(self):
        if len(self.files) >= self.files_max:
            return self.op_unlink()
        path = self.random_path()
        keep = self.rng.random() < 0.5
        self.open_both(f"create {path}", path, O.O_RDWR | O.O_CREAT | O.O_EXCL, keep)
        self.rescan()

    def op_pwrite(self):
        n = self.length()
        off = self.rng.randrange(0, self.size_max - n + 1)
        data = self.rng.randbytes(n)
        slot = self.pick_slot(access="w")
        if slot:
            if slot.flags & O.O_APPEND and self.subject_size(slot=slot) + n > self.size_max:
                return self.op_truncate(slot)  # an O_APPEND descriptor appends whatever the offset
            if not slot.flags & O.O_APPEND:
                self.verify("before overwriting", slot=slot, start=off, end=off + n)
            self.both(f"pwrite {slot} offset={off} len={n}", lambda i, root: os.pwrite(slot.fds[i], data, off))
            return
        path = self.pick_file()
        self.verify("before overwriting", path=path, start=off, end=off + n)

        def write(i, root):
            fd = os.open(os.path.join(root, path), O.O_WRONLY)
            try:
                return os.pwrite(fd, data, off)
            finally:
                os.close(fd)
        self.both(f"pwrite {path} offset={off} len={n}", write)

    def op_pread(self, path=None, off=None, n=None):
        slot = None if path else self.pick_slot(access="r")
        if path is None and slot is None:
            path = self.pick_file()
        if off is None:
            size = self.subject_size(path, slot)
            off = self.rng.randrange(0, size) if size and self.rng.random() < 0.8 else self.rng.randrange(0, self.size_max + 1)
            n = self.rng.randrange(1, 131073)
        if slot:
            self.both(f"pread {slot} offset={off} len={n}", lambda i, root: os.pread(slot.fds[i], n, off))
            return

        def read(i, root):
            fd = os.open(os.path.join(root, path), O.O_RDONLY)
            try:
                return os.pread(fd, n, off)
            finally:
                os.close(fd)
        self.both(f"pread {path} offset={off} len={n}", read)

    def op_truncate(self, slot=None):
        slot = slot or self.pick_slot(0.5, access="w")
        length = self.rng.randrange(0, self.size_max + 1) if self.rng.random() < 0.7 else self.rng.randrange(0, 4097)
        if slot:
            self.verify("before truncating", slot=slot, start=length)
            self.both(f"ftruncate {slot} {length}", lambda i, root: os.ftruncate(slot.fds[i], length))
            return
        path = self.pick_file()
        self.verify("before truncating", path=path, start=length)
        self.both(f"truncate {path} {length}", lambda i, root: os.truncate(os.path.join(root, path), length))

    def op_fallocate(self):
        """fallocate through a writable descriptor: allocate (growing the file, within --size-max),
        allocate keeping the size, or punch a hole (which discards bytes: compared first)."""
        slot = self.pick_slot(1.0, access="w")
        if slot is None or slot.flags & O.O_APPEND:
            return self.op_pwrite()
        mode = self.rng.choice([0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE])
        n = self.length()
        off = self.rng.randrange(0, self.size_max - n + 1)
        if mode & FALLOC_FL_PUNCH_HOLE:
            self.verify("before punching a hole", slot=slot, start=off, end=off + n)
        self.both(f"fallocate {slot} mode={mode:#x} offset={off} len={n}",
                  lambda i, root: fallocate(slot.fds[i], mode, off, n))

    def op_rename(self):
        src = self.pick_file()
        r = self.rng.random()
        dst = self.rng.choice(self.dirs) if r < 0.05 else self.random_path()  # onto a directory: EISDIR
        self.verify_if_last_name("before renaming over it", dst)
        self.both(f"rename {src} -> {dst}",
                  lambda i, root: os.rename(os.path.join(root, src), os.path.join(root, dst)))
        self.rescan()

    def op_link(self):
        if len(self.files) >= self.files_max:
            return self.op_unlink()
        src, dst = self.pick_file(), self.random_path()
        self.both(f"link {src} -> {dst}", lambda i, root: os.link(os.path.join(root, src), os.path.join(root, dst)))
        self.rescan()

    def op_unlink(self):
        path = self.pick_file()
        self.verify_if_last_name("before unlinking", path)
        self.both(f"unlink {path}", lambda i, root: os.unlink(os.path.join(root, path)))
        self.rescan()

    def op_fsync(self):
        slot = self.pick_slot()
        sync = os.fsync if self.rng.random() < 0.5 else os.fdatasync
        if slot:
            self.both(f"{sync.__name__} {slot}", lambda i, root: sync(slot.fds[i]))
            return
        if self.rng.random() < 0.3:
            path, flags = self.rng.choice(self.dirs), O.O_RDONLY | O.O_DIRECTORY
        else:
            path, flags = self.pick_file(), O.O_WRONLY

        def do(i, root):
            fd = os.open(os.path.join(root, path), flags)
            try:
                sync(fd)
            finally:
                os.close(fd)
        self.both(f"{sync.__name__} {path}", do)

    def op_mkdir(self):
        path = self.random_subdir()
        self.both(f"mkdir {path}", lambda i, root: os.mkdir(os.path.join(root, path)))
        self.rescan()

    def op_rmdir(self):
        empty = [d for d in self.dirs if d not in TOP_DIRS and not any(p.startswith(d + "/") for p in self.files)]
        path = self.rng.choice(empty) if empty and self.rng.random() < 0.7 else self.random_subdir()
        self.both(f"rmdir {path}", lambda i, root: os.rmdir(os.path.join(root, path)))
        self.rescan()

    def op_clear_dir(self):
        """Unlink every file of a subdirectory, then remove it (so that directories come and go)."""
        subdirs = [d for d in self.dirs if d not in TOP_DIRS]
        if not subdirs:
            return self.op_mkdir()
        path = self.rng.choice(subdirs)
        for victim in [p for p in self.files if p.startswith(path + "/")]:
            self.verify_if_last_name("before unlinking", victim)
            self.both(f"unlink {victim}", lambda i, root: os.unlink(os.path.join(root, victim)))
        self.both(f"rmdir {path}", lambda i, root: os.rmdir(os.path.join(root, path)))
        self.rescan()

    def op_rename_dir(self):
        subdirs = [d for d in self.dirs if d not in TOP_DIRS]
        src = self.rng.choice(subdirs) if subdirs else self.random_subdir()
        dst = self.random_subdir()
        self.both(f"rename dir {src} -> {dst}",
                  lambda i, root: os.rename(os.path.join(root, src), os.path.join(root, dst)))
        self.rescan()

    def op_open_trunc(self):
        path = self.pick_file()
        creat = self.rng.random() < 0.3
        flags = O.O_WRONLY | O.O_TRUNC | (O.O_CREAT if creat else 0)
        self.verify("before O_TRUNC", path=path)
        slot = self.open_both(f"open {path} O_TRUNC{'|O_CREAT' if creat else ''}", path, flags, keep=True)
        if creat:
            self.rescan()
        if slot and self.rng.random() < 0.7:
            data = self.rng.randbytes(self.length())
            self.both(f"write {slot} len={len(data)}", lambda i, root: os.write(slot.fds[i], data))

    def op_append(self):
        slot = self.pick_slot(0.4)
        if not (slot and slot.flags & O.O_APPEND):
            path = self.pick_file()
            slot = self.open_both(f"open {path} O_APPEND", path, O.O_WRONLY | O.O_APPEND, keep=True)
            if slot is None:
                return
        n = min(self.length(), self.size_max - self.subject_size(slot=slot))
        if n <= 0:
            return self.op_truncate(slot)
        data = self.rng.randbytes(n)
        self.both(f"append {slot} len={n}", lambda i, root: os.write(slot.fds[i], data))
        if self.rng.random() < 0.5:
            self.close_slot(slot)

    def op_reopen(self):
        if self.slots:
            self.close_slot(self.rng.choice(self.slots))
        path = self.pick_file()
        flags = self.rng.choice([O.O_RDONLY, O.O_RDWR, O.O_WRONLY | O.O_APPEND, O.O_RDWR | O.O_APPEND])
        self.open_both(f"open {path} {Slot(path, flags, None)}", path, flags, keep=True)

    def op_close(self):
        if self.slots:
            self.close_slot(self.rng.choice(self.slots))

    def op_fstat(self):
        slot = self.pick_slot(1.0)
        if slot:
            self.both(f"fstat {slot}", lambda i, root: summary(os.fstat(slot.fds[i])))

    def op_stat(self):
        path = self.pick_file()
        self.both(f"lstat {path}", lambda i, root: summary(os.lstat(os.path.join(root, path))))

    def op_listdir(self):
        path = self.rng.choice(self.dirs)
        self.both(f"listdir {path}", lambda i, root: sorted(os.listdir(os.path.join(root, path))))

    # --- the loop
    def run(self, steps, progress=True):
        names, weights = list(self.weights), list(self.weights.values())
        tick = max(1, steps // 10)
        for self.step_no in range(1, steps + 1):
            kind = self.kind = self.rng.choices(names, weights)[0]
            self.counts[kind] = self.counts.get(kind, 0) + 1
            getattr(self, "op_" + kind)()
            if self.sabotage and self.sabotage[0] == self.step_no:
                self.do_sabotage(self.sabotage[1])
            if self.step_no % CHECK_EVERY == 0:
                self.full_check()
            if progress and self.step_no % tick == 0:
                print(f"integrity: step {self.step_no}/{steps}", flush=True)
        for slot in list(self.slots):
            self.close_slot(slot)
        self.full_check()
        final = tree_state(self.roots[1])
        self.final_files = sum(1 for e in final if e[1].startswith("-"))
        self.final_bytes = sum(e[2] for e in final if e[1].startswith("-"))

    # --- --self-test only: change the subject tree behind the tool's back
    def do_sabotage(self, kind):
        victims = [p for p in self.files if self.subject_size(p) > 0]
        if not victims:
            self.sabotage = (self.step_no + 1, kind)  # try again after the next step
            return
        path = random.Random(self.step_no).choice(victims)
        full = os.path.join(self.roots[0], path)
        off = random.Random(self.step_no + 1).randrange(self.subject_size(path))
        if kind in ("flip", "flip_then_read"):
            fd = os.open(full, O.O_RDWR)
            os.pwrite(fd, bytes([os.pread(fd, 1, off)[0] ^ 0x5A]), off)
            os.close(fd)
        elif kind == "extend":
            with open(full, "ab") as f:
                f.write(b"!")
        elif kind == "link":
            os.link(full, full + "-extra")
        self.sabotaged = f"{kind} {path} offset {off}"
        if kind == "flip_then_read":
            self.op_pread(path, off, 1)


def make_roots(args):
    roots = []
    for base in (args.subject, args.reference):
        root = os.path.join(os.path.abspath(base), f"integrity.{os.getpid()}")
        shutil.rmtree(root, ignore_errors=True)
        os.mkdir(root)
        roots.append(root)
    return roots


def report_divergence(run, d, args):
    print(f"integrity: DIVERGENCE at step {run.step_no} (seed {args.seed})")
    print(f"  operation: {d.what}")
    print(f"  subject:   {d.subject}")
    print(f"  reference: {d.reference}")
    if d.detail:
        print(f"  {d.detail}")
    print(f"integrity: reproduce: {sys.argv[0]} --subject {args.subject} --reference {args.reference}"
          f" --seed {args.seed} --steps {run.step_no} --files {args.files} --size-max {args.size_max}"
          f" --fds {args.fds} --keep")


def run_once(args, sabotage=None, progress=True):
    """One run in fresh directories. Returns (run, divergence or None)."""
    roots = make_roots(args)
    run = Run(args, roots, sabotage)
    try:
        run.run(args.steps, progress)
        return run, None
    except Divergence as d:
        return run, d
    finally:
        for slot in run.slots:
            for fd in slot.fds:
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
        if args.keep:
            print(f"integrity: kept {roots[0]} and {roots[1]}")
        else:
            for root in roots:
                shutil.rmtree(root, ignore_errors=True)


def self_test(args):
    """Each corruption must be reported: at the tree check right after it, or (flip_then_read) by
    the read that follows it at once."""
    args.steps = 1200
    ok = True
    for kind in ("flip", "extend", "link", "flip_then_read"):
        run, d = run_once(args, sabotage=(CHECK_EVERY, kind), progress=False)
        if d is None:
            print(f"integrity: self-test FAILED: {kind} was not detected")
            ok = False
        else:
            print(f"integrity: self-test: {getattr(run, 'sabotaged', kind)} detected at step {run.step_no}:"
                  f" {d.what}: subject {d.subject}, reference {d.reference}")
    print(f"integrity: self-test {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subject", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--files", type=int, default=64, help="most file names at once (create and link stop there)")
    ap.add_argument("--size-max", type=int, default=1 << 20, help="largest file size in bytes")
    ap.add_argument("--fds", type=int, default=8, help="most descriptors kept open per tree")
    ap.add_argument("--keep", action="store_true", help="keep the integrity.<pid> directories")
    ap.add_argument("--self-test", action="store_true", help="check that corruption is detected")
    ap.add_argument("--no-fallocate", action="store_true",
                    help="leave fallocate out (a subject without it, e.g. NFSv3, answers EOPNOTSUPP)")
    args = ap.parse_args()
    if args.size_max < 4096 or args.files < 1 or args.steps < 0:
        ap.error("--size-max must be at least 4096, --files at least 1")
    os.umask(0o022)
    if args.self_test:
        return self_test(args)
    started = time.monotonic()
    run, d = run_once(args)
    if d:
        report_divergence(run, d, args)
        return 1
    for kind in sorted(set(run.counts) | set(run.outcomes) - {"setup"}):
        outcomes = ", ".join(f"{o} {n}" for o, n in sorted(run.outcomes.get(kind, {}).items(),
                                                          key=lambda item: -item[1]))
        chosen = f"{run.counts[kind]:>6} chosen" if kind in run.counts else "(before destroying data)"
        print(f"integrity:   {kind:<10} {chosen}; calls: {outcomes}")
    print(f"integrity: final trees: {run.final_files} files, {run.final_bytes} bytes;"
          f" {time.monotonic() - started:.1f} s")
    print(f"integrity: seed {args.seed}, {args.steps} steps, no difference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
