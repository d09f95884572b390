#!/usr/bin/env python3
"""posix_check.py — differential POSIX behaviour test of a directory tree (a FUSE mount or native).

Why: a FUSE file system (dpfs-engine --fuse-mount MNT --backend passthrough --shared-dir DIR) has
to give programs the same answers as a local file system: the same errno for the same mistake,
the same modes, owners, link counts, link targets, listings, contents and explicitly set times.
Comparing against a known-good local directory catches differences nobody thought to write a
test for; hard expectations on both sides catch the cases where both sides are wrong.

How: every case in CASES runs once in a fresh empty directory of the subject and once in one of
the reference, as each uid given with --uids (uid 0 is root; for another uid a forked child
drops to it with setgroups([SUPPLEMENTARY]), setgid(uid), setuid(uid); the uid need not exist in
/etc/passwd). Root prepares the case directory (owned by the uid, mode 0755) and any fixtures
(root-owned or other-owned files and directories for the EACCES/EPERM cases) before the child
starts. The case body performs operations through a Side object that records each outcome: "ok"
or the errno name (errno.errorcode), plus observations (a stat summary, a readlink target, a
sorted listing, file contents, explicitly set times). After the body, the final state of the
case directory is recorded too. The two records must be identical; hard expectations
(expect="EEXIST", nlink=2, want=b"...") are asserted on each side on its own.

Compared: outcome/errno of every operation; file type, permission bits (with setuid, setgid and
sticky), size (not for directories), nlink, uid, gid, rdev of devices; readlink targets; sorted
listings; contents; atime/mtime only right after they were set explicitly (to the nanosecond),
or as "within the call's time window" after UTIME_NOW.
Never compared: ctime, inode numbers, st_dev, st_blocks, directory st_size (ext4 reports 4096,
tmpfs 20 bytes per entry), atime/mtime that were not just set. Times outside 1901..2446 are not
used: ext4 clamps them, tmpfs stores them.

Usage:
  posix_check.py --subject DIR_A --reference DIR_B [--uids 0,1000,1001] [--verbose]
                 [--cases REGEX] [--trace] [--keep] [--self-test] [--semantics nfs3]
  posix_check.py --semantics nfs3 --list-semantics
Must run as root (fixtures are chowned, uids are switched). For a FUSE subject and non-zero uids
the mount needs allow_other, and every directory above DIR_A and DIR_B must be world-searchable.

Output: "FAIL u<uid>/<case> [<operation>]: subject <x>, reference <y>" for a difference,
"FAIL u<uid>/<case> [<operation>]: <side> expected <e>, got <g>" for a broken hard expectation,
"ok u<uid>/<case>" with --verbose, and finally "posix_check: N cases, M failed"; exit status 1 if
M > 0, 2 on a usage or setup error.

--self-test adds two deliberately broken cases (a fixture that differs between the sides, and a
fixture that breaks a hard expectation on both sides) and checks that both are reported.

Adding a case: write a body function taking a Side (and, if it needs root-made fixtures, a setup
function taking (me, other) owner pairs), then add a row to CASES.
"""
import argparse
import ctypes
import errno
import hashlib
import os
import pickle
import re
import shutil
import signal
import stat
import struct
import sys
import time
import traceback

OTHER = 4321  # owner of "someone else's" fixtures; must not be one of --uids
# Every unprivileged case runner holds this group as a supplementary group (never as its own gid),
# as a user in a project group does. A FUSE request carries only the caller's uid and gid; the
# kernel that sent it has checked the supplementary groups already (default_permissions).
SUPPLEMENTARY = 4343
ANY, ROOT, USER = "any", "root", "user"  # who a case runs as

# ------------------------------------------------------------------ libc calls os does not offer

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def _check(rc, path):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)


def _timespec(t):
    if t == "now":
        return _Timespec(0, UTIME_NOW)
    if t == "omit":
        return _Timespec(0, UTIME_OMIT)
    return _Timespec(t // 10**9, t % 10**9)  # floor division keeps tv_nsec in 0..999999999


def utimensat(path, atime, mtime, nofollow=False):
    """utimensat(2) at AT_FDCWD: atime/mtime are nanoseconds, "now" or "omit"; (None, None) is times=NULL."""
    times = None if atime is None and mtime is None else (_Timespec * 2)(_timespec(atime), _timespec(mtime))
    _check(_libc.utimensat(AT_FDCWD, os.fsencode(path), times, AT_SYMLINK_NOFOLLOW if nofollow else 0), path)


def renameat2(old, new, flags):
    _check(_libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags), old)


AT_SYMLINK_FOLLOW = 0x400
_libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]


def link_follow(src, dst):
    """linkat(AT_SYMLINK_FOLLOW): link what a symlink points to (link(2) links the symlink itself)."""
    _check(_libc.linkat(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), AT_SYMLINK_FOLLOW), src)


def rename_noreplace(old, new):
    renameat2(old, new, RENAME_NOREPLACE)


def rename_exchange(old, new):
    renameat2(old, new, RENAME_EXCHANGE)


def rename_noreplace_exchange(old, new):
    renameat2(old, new, RENAME_NOREPLACE | RENAME_EXCHANGE)


# ------------------------------------------------------------------ formatting

_OPEN_FLAGS = [(n, getattr(os, n)) for n in ("O_CREAT", "O_EXCL", "O_TRUNC", "O_APPEND", "O_DIRECTORY",
                                              "O_NOFOLLOW", "O_NONBLOCK", "O_PATH")]
_KINDS = {stat.S_IFREG: "reg", stat.S_IFDIR: "dir", stat.S_IFLNK: "lnk", stat.S_IFIFO: "fifo",
          stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFSOCK: "sock"}


def errname(num):
    return errno.errorcode.get(num, f"errno{num}")


def open_flags(flags):
    names = [("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE3")[flags & os.O_ACCMODE]]
    names += [n for n, v in _OPEN_FLAGS if flags & v == v]
    return "|".join(names)


def short(value):
    """A label-sized repr: long strings and bytes are abbreviated, modes stay readable."""
    if isinstance(value, (str, bytes)) and len(value) > 24:
        return f"{value[:12]!r}...({len(value)})"
    return repr(value)


def label(name, *args, **kw):
    parts = [short(a) for a in args] + [f"{k}={short(v)}" for k, v in kw.items()]
    return f"{name}({', '.join(parts)})"


def kind_of(st):
    return _KINDS.get(stat.S_IFMT(st.st_mode), "?")


def describe(st):
    """The comparable part of a stat result, as one string."""
    kind = kind_of(st)
    parts = [kind, f"{stat.S_IMODE(st.st_mode):04o}"]
    if kind != "dir":
        parts.append(f"size={st.st_size}")
    parts += [f"nlink={st.st_nlink}", f"uid={st.st_uid}", f"gid={st.st_gid}"]
    if kind in ("chr", "blk"):
        parts.append(f"rdev={os.major(st.st_rdev)},{os.minor(st.st_rdev)}")
    return " ".join(parts)


def digest(data):
    if len(data) <= 48:
        return repr(data)
    return f"{len(data)} bytes sha256:{hashlib.sha256(data).hexdigest()[:16]}"


# ------------------------------------------------------------------ one side of one case


class Side:
    """Runs operations relative to the current directory (the case directory) and records what
    happened. `expect` is a hard expectation: "ok" or an errno name; None means "just compare"."""

    TIME_SLACK_NS = 2 * 10**9  # file systems stamp "now" from a coarse clock

    def __init__(self, uid):
        self.uid = uid
        self.gid = uid
        self.root = uid == 0
        self.other = OTHER
        self.obs = []  # (label, outcome) in order
        self.violations = []  # (label, message)
        self.fds = []
        self.last_ok = False

    def priv(self, as_root, as_user):
        """The expectation that applies to this side's uid."""
        return as_root if self.root else as_user

    # --- recording
    def note(self, what, value):
        self.obs.append((what, value))

    def check(self, what, value, want):
        """Record an observation and assert it on this side."""
        self.note(what, value)
        if value != want:
            self.violations.append((what, f"expected {short(want)}, got {short(value)}"))

    def _outcome(self, what, expect, error, shown):
        got = errname(error.errno) if error else "ok"
        self.last_ok = error is None
        self.note(what, got if error else shown)
        if expect is not None and got != expect:
            self.violations.append((what, f"expected {expect}, got {got}"))

    def attempt(self, what, expect, fn, *args, show=None, **kw):
        """Call fn; record "ok" (or show(result)) or the errno name. Returns the result or None."""
        try:
            value = fn(*args, **kw)
        except OSError as e:
            self._outcome(what, expect, e, None)
            return None
        self._outcome(what, expect, None, show(value) if show else "ok")
        return value

    def do(self, fn, *args, expect=None):
        return self.attempt(label(fn.__name__, *args), expect, fn, *args)

    # --- namespace operations with readable labels
    def mkdir(self, path, mode=0o755, expect=None):
        return self.attempt(f"mkdir({path!r}, {mode:#o})", expect, os.mkdir, path, mode)

    def chmod(self, path, mode, expect=None):
        return self.attempt(f"chmod({path!r}, {mode:#o})", expect, os.chmod, path, mode)

    def chown(self, path, uid, gid, follow=True, expect=None):
        name = "chown" if follow else "lchown"
        return self.attempt(f"{name}({path!r}, {uid}, {gid})", expect, os.chown, path, uid, gid,
                            follow_symlinks=follow)

    def mkfifo(self, path, mode=0o644, expect=None):
        return self.attempt(f"mkfifo({path!r}, {mode:#o})", expect, os.mkfifo, path, mode)

    def mknod(self, path, mode, dev=0, expect=None):
        what = f"mknod({path!r}, {mode:#o}, {os.major(dev)},{os.minor(dev)})"
        return self.attempt(what, expect, os.mknod, path, mode, dev)

    def symlink(self, target, path, expect=None):
        return self.attempt(label("symlink", target, path), expect, os.symlink, target, path)

    def link(self, src, dst, follow=False, expect=None):
        """link(2), which on Linux does not follow a symlink; follow=True uses linkat(AT_SYMLINK_FOLLOW).
        (Python's os.link(follow_symlinks=True) calls plain link(2), so it does not follow either.)"""
        if follow:
            return self.attempt(label("link_follow", src, dst), expect, link_follow, src, dst)
        return self.attempt(label("link", src, dst), expect, os.link, src, dst)

    def umask(self, mask):
        os.umask(mask)
        self.note(f"umask({mask:#o})", "ok")

    def utimensat(self, path, atime, mtime, nofollow=False, expect=None):
        what = label("utimensat", path, atime, mtime) + (" nofollow" if nofollow else "")
        return self.attempt(what, expect, utimensat, path, atime, mtime, nofollow)

    # --- descriptors (labels say "fd", never the number, which may differ between sides)
    def open(self, path, flags, mode=0o644, expect=None):
        fd = self.attempt(f"open({path!r}, {open_flags(flags)}, {mode:#o})", expect, os.open, path, flags, mode)
        if fd is not None:
            self.fds.append(fd)
        return fd

    def close(self, fd):
        if fd is not None:
            self.fds.remove(fd)
            self.attempt("close(fd)", "ok", os.close, fd)

    def close_all(self):
        for fd in list(self.fds):
            self.close(fd)

    def fwrite(self, fd, data, expect=None):
        if fd is not None:
            self.attempt(label("write", "fd", data), expect, os.write, fd, data, show=str)

    def pwrite(self, fd, data, offset, expect=None):
        if fd is not None:
            self.attempt(label("pwrite", "fd", data, offset), expect, os.pwrite, fd, data, offset, show=str)

    def pread(self, fd, size, offset, want=None, expect="ok"):
        if fd is None:
            return None
        data = self.attempt(label("pread", "fd", size, offset), expect, os.pread, fd, size, offset, show=digest)
        if want is not None and data is not None and data != want:
            self.violations.append((f"pread at {offset}", f"expected {digest(want)}, got {digest(data)}"))
        return data

    def lseek(self, fd, offset, whence=os.SEEK_SET):
        if fd is not None:
            self.attempt(label("lseek", "fd", offset, whence), None, os.lseek, fd, offset, whence, show=str)

    def ftruncate(self, fd, length, expect=None):
        if fd is not None:
            self.attempt(label("ftruncate", "fd", length), expect, os.ftruncate, fd, length)

    def fstat(self, fd, **want):
        if fd is not None:
            st = self.attempt("fstat(fd)", "ok", os.fstat, fd, show=describe)
            self._want("fstat(fd)", st, want)

    # --- observations
    def _want(self, what, st, want):
        if st is None:
            return
        got = {"kind": kind_of(st), "mode": stat.S_IMODE(st.st_mode), "size": st.st_size,
               "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid}
        for key, value in want.items():
            if got[key] != value:
                shown = (lambda v: f"{v:#o}") if key == "mode" else str
                self.violations.append((what, f"expected {key}={shown(value)}, got {key}={shown(got[key])}"))

    def stat(self, path, follow=False, expect=None, **want):
        """lstat (or stat with follow=True); want: kind, mode, size, nlink, uid, gid."""
        what = label("stat" if follow else "lstat", path)
        st = self.attempt(what, expect, os.stat, path, follow_symlinks=follow, show=describe)
        self._want(what, st, want)
        return st

    def readlink(self, path, want=None, expect=None):
        target = self.attempt(label("readlink", path), expect, os.readlink, path, show=short)
        if want is not None and target is not None and target != want:
            self.violations.append((label("readlink", path), f"expected {short(want)}, got {short(target)}"))
        return target

    def listing(self, path=".", expect=None, count=None):
        def show(names):
            if len(names) > 20:
                return f"{len(names)} names sha256:" + hashlib.sha256("\0".join(names).encode()).hexdigest()[:16]
            return " ".join(n if len(n) <= 24 else f"{n[:12]}...({len(n)})" for n in names)
        names = self.attempt(label("listdir", path), expect, lambda p: sorted(os.listdir(p)), path, show=show)
        if count is not None and names is not None and len(names) != count:
            self.violations.append((label("listdir", path), f"expected {count} names, got {len(names)}"))
        return names

    def read(self, path, want=None, follow=False, expect=None):
        """Whole contents of a regular file (O_NONBLOCK so that a FIFO never blocks)."""
        def slurp(p):
            flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
            fd = os.open(p, flags)
            try:
                chunks = []
                while chunk := os.read(fd, 1 << 20):
                    chunks.append(chunk)
                return b"".join(chunks)
            finally:
                os.close(fd)
        data = self.attempt(label("read", path), expect, slurp, path, show=digest)
        if want is not None and data is not None and data != want:
            self.violations.append((label("read", path), f"expected {digest(want)}, got {digest(data)}"))
        return data

    def write(self, path, data, mode=0o644, expect=None):
        """Create or truncate a file and write data into it, as one recorded operation."""
        def put(p):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        return self.attempt(label("write_file", path, data), expect, put, path)

    def times(self, path, want, follow=False):
        """Assert (atime_ns, mtime_ns) right after setting them; "now" marks a time set by UTIME_NOW
        (checked against the window (after_ns - slack, now + slack)); None skips a field."""
        what = label("times", path) + ("" if follow else " nofollow")
        try:
            st = os.stat(path, follow_symlinks=follow)
        except OSError as e:
            self._outcome(what, "ok", e, None)
            return
        got = []
        for name, value, wanted in (("atime", st.st_atime_ns, want[0]), ("mtime", st.st_mtime_ns, want[1])):
            if wanted is None:
                continue
            if isinstance(wanted, tuple):  # ("now", t0)
                ok = wanted[1] - self.TIME_SLACK_NS <= value <= time.time_ns() + self.TIME_SLACK_NS
                got.append(f"{name}=now" if ok else f"{name}={value}(not now)")
            else:
                got.append(f"{name}={value}")
                ok = value == wanted
            if not ok:
                self.violations.append((what, f"expected {name}={wanted}, got {value}"))
        self.note(what, " ".join(got))

    def now(self):
        """A marker for times(): "set to the current time by a call made after this point"."""
        return ("now", time.time_ns())

    def same_file(self, a, b, want):
        what = label("same_file", a, b)
        try:
            sa, sb = os.stat(a), os.stat(b)
            self.check(what, (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino), want)
        except OSError as e:
            self.check(what, errname(e.errno), want)


def snapshot(s, path=".", depth=0):
    """Record the final state of the case directory: every entry's stat summary, every regular
    file's contents, every symlink's target. Runs as the case's uid, so errors are recorded too."""
    names = s.listing(path)
    for name in names or []:
        p = name if path == "." else f"{path}/{name}"
        st = s.stat(p)
        if st is None:
            continue
        if stat.S_ISREG(st.st_mode):
            s.read(p)
        elif stat.S_ISLNK(st.st_mode):
            s.readlink(p)
        elif stat.S_ISDIR(st.st_mode) and depth < 8:
            snapshot(s, p, depth + 1)


# ------------------------------------------------------------------ fixtures (run as root)


def fx_file(path, mode=0o644, owner=(0, 0), data=b""):
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, *owner)
    os.chmod(path, mode)  # after chown, which clears setuid/setgid


def fx_dir(path, mode=0o755, owner=(0, 0)):
    os.mkdir(path)
    os.chown(path, *owner)
    os.chmod(path, mode)


# ------------------------------------------------------------------ cases: EEXIST

O = os  # short alias for the flag constants below
RD, WR, RW = O.O_RDONLY, O.O_WRONLY, O.O_RDWR
CREAT, EXCL, TRUNC, APPEND = O.O_CREAT, O.O_EXCL, O.O_TRUNC, O.O_APPEND


def mkdir_existing(s):
    s.mkdir("d", expect="ok")
    s.mkdir("d", expect="EEXIST")
    s.write("f", b"x")
    s.mkdir("f", expect="EEXIST")
    s.symlink("nowhere", "dangling")
    s.mkdir("dangling", expect="EEXIST")
    s.stat("nowhere", expect="ENOENT")  # mkdir does not follow the dangling link


def open_excl_existing(s):
    s.close(s.open("f", WR | CREAT | EXCL, expect="ok"))
    s.open("f", WR | CREAT | EXCL, expect="EEXIST")
    s.mkdir("d")
    s.open("d", RD | CREAT | EXCL, expect="EEXIST")
    s.symlink("target", "l")
    s.open("l", WR | CREAT | EXCL, expect="EEXIST")  # O_EXCL never follows a symlink
    s.stat("target", expect="ENOENT")
    s.close(s.open("l", WR | CREAT, 0o600, expect="ok"))  # without O_EXCL it creates the target
    s.stat("target", expect="ok", kind="reg", mode=0o600)


def link_existing(s):
    s.write("f", b"one")
    s.write("g", b"two")
    s.mkdir("d")
    s.link("f", "h", expect="ok")
    s.link("f", "g", expect="EEXIST")
    s.link("f", "d", expect="EEXIST")
    s.link("f", "h", expect="EEXIST")
    s.stat("f", nlink=2)
    s.read("g", want=b"two")


def symlink_existing(s):
    s.write("f", b"x")
    s.mkdir("d")
    s.symlink("t", "l", expect="ok")
    s.symlink("t2", "l", expect="EEXIST")
    s.symlink("t", "f", expect="EEXIST")
    s.symlink("t", "d", expect="EEXIST")
    s.readlink("l", want="t")
    s.read("f", want=b"x")


# ------------------------------------------------------------------ cases: ENOENT ENOTDIR EISDIR ...


def enoent(s):
    s.mkdir("d")
    s.stat("missing", expect="ENOENT")
    s.stat("", expect="ENOENT")
    s.open("missing", RD, expect="ENOENT")
    s.open("no/f", WR | CREAT, expect="ENOENT")
    s.mkdir("no/d", expect="ENOENT")
    s.do(os.unlink, "missing", expect="ENOENT")
    s.do(os.rmdir, "missing", expect="ENOENT")
    s.do(os.rename, "missing", "x", expect="ENOENT")
    s.do(os.rename, "d", "no/d", expect="ENOENT")
    s.link("missing", "x", expect="ENOENT")
    s.symlink("t", "no/l", expect="ENOENT")
    s.chmod("missing", 0o644, expect="ENOENT")
    s.do(os.truncate, "missing", 0, expect="ENOENT")
    s.readlink("missing", expect="ENOENT")
    s.utimensat("missing", 10**9, 10**9, expect="ENOENT")
    s.symlink("nowhere", "dangling")
    s.stat("dangling", follow=True, expect="ENOENT")
    s.stat("dangling", expect="ok", kind="lnk")
    s.stat("d/missing/..", expect="ENOENT")  # ".." is not resolved lexically


def enotdir(s):
    s.write("f", b"x")
    s.symlink("f", "lf")
    s.stat("f/x", expect="ENOTDIR")
    s.stat("f/", expect="ENOTDIR")
    s.stat("lf/", expect="ENOTDIR")
    s.open("f/x", WR | CREAT, expect="ENOTDIR")
    s.open("f", RD | O.O_DIRECTORY, expect="ENOTDIR")
    s.mkdir("f/d", expect="ENOTDIR")
    s.do(os.rmdir, "f", expect="ENOTDIR")
    s.do(os.rmdir, "lf", expect="ENOTDIR")  # rmdir does not follow
    s.listing("f", expect="ENOTDIR")
    s.do(os.rename, "f", "f/g", expect="ENOTDIR")
    s.do(os.rename, "f", "g/", expect="ENOTDIR")  # a trailing slash needs a directory
    s.do(os.unlink, "f/", expect="ENOTDIR")
    s.stat("f", expect="ok")


def eisdir(s):
    s.mkdir("d")
    s.open("d", WR, expect="EISDIR")
    s.open("d", RW, expect="EISDIR")
    s.open("d", WR | CREAT, expect="EISDIR")
    s.close(s.open("d", RD, expect="ok"))
    s.do(os.unlink, "d", expect="EISDIR")
    s.do(os.truncate, "d", 0, expect="EISDIR")
    s.open("new/", WR | CREAT, expect="EISDIR")  # O_CREAT with a trailing slash
    s.stat("new", expect="ENOENT")
    s.write("f", b"x")
    s.do(os.rename, "f", "d", expect="EISDIR")
    s.stat("d", kind="dir")


def enotempty(s):
    s.mkdir("full")
    s.write("full/f", b"x")
    s.mkdir("src")
    s.mkdir("empty")
    s.mkdir("dironly")
    s.mkdir("dironly/sub")
    s.do(os.rmdir, "full", expect="ENOTEMPTY")
    s.do(os.rmdir, "dironly", expect="ENOTEMPTY")
    s.do(os.rename, "src", "full", expect="ENOTEMPTY")
    s.do(os.rename, "src", "empty", expect="ok")
    s.listing(".")


def eloop(s):
    s.write("f", b"x")
    s.symlink("f", "l")
    s.open("l", RD | O.O_NOFOLLOW, expect="ELOOP")
    s.open("l", WR | CREAT | O.O_NOFOLLOW, expect="ELOOP")
    s.close(s.open("f", RD | O.O_NOFOLLOW, expect="ok"))
    s.mkdir("d")
    s.write("d/g", b"g")
    s.symlink("d", "ld")
    s.close(s.open("ld/g", RD | O.O_NOFOLLOW, expect="ok"))  # O_NOFOLLOW is about the last component
    s.symlink("b", "a")
    s.symlink("a", "b")
    s.symlink("self", "self")
    s.stat("a", follow=True, expect="ELOOP")
    s.stat("self", follow=True, expect="ELOOP")
    s.open("a", RD, expect="ELOOP")
    s.open("a", WR | CREAT, expect="ELOOP")
    s.stat("a", expect="ok", kind="lnk")
    s.symlink("f", "c1")  # Linux follows at most 40 symlinks in one lookup
    for i in range(2, 42):
        os.symlink(f"c{i - 1}", f"c{i}")
    s.stat("c40", follow=True, expect="ok", kind="reg")
    s.stat("c41", follow=True, expect="ELOOP")


def enametoolong(s):
    n255, n256 = "a" * 255, "b" * 256
    s.close(s.open(n255, WR | CREAT, expect="ok"))
    s.stat(n255, expect="ok")
    s.open(n256, WR | CREAT, expect="ENAMETOOLONG")
    s.stat(n256, expect="ENAMETOOLONG")
    s.mkdir(n256, expect="ENAMETOOLONG")
    s.symlink("t", n256, expect="ENAMETOOLONG")
    s.link(n255, n256, expect="ENAMETOOLONG")
    s.do(os.rename, n255, n256, expect="ENAMETOOLONG")
    s.stat("./" * 2100 + n255, expect="ENAMETOOLONG")  # longer than PATH_MAX
    s.symlink("x" * 4095, "long", expect="ok")
    s.readlink("long", want="x" * 4095)
    s.symlink("x" * 4096, "toolong", expect="ENAMETOOLONG")
    s.listing(".")


def einval(s):
    s.mkdir("a")
    s.mkdir("a/b")
    s.do(os.rename, "a", "a/b/c", expect="EINVAL")
    s.do(os.rename, "a", "a/c", expect="EINVAL")
    s.do(os.rmdir, ".", expect="EINVAL")
    s.do(os.rmdir, "a/b/.", expect="EINVAL")
    s.write("f", b"x")
    s.readlink("f", expect="EINVAL")
    s.do(os.truncate, "f", -1, expect="EINVAL")
    s.do(rename_noreplace_exchange, "f", "a", expect="EINVAL")
    fd = s.open("f", RD)
    s.ftruncate(fd, 0, expect="EINVAL")  # a read-only descriptor
    s.close(fd)
    s.listing("a")


# ------------------------------------------------------------------ cases: permissions (EACCES, EPERM)


def setup_create_in_ro(me, other):
    fx_dir("ro", 0o555)
    fx_dir("ro_mine", 0o555, owner=me)
    fx_file("f", owner=me)


def eacces_create_in_ro(s):
    deny = s.priv("ok", "EACCES")
    for d in ("ro", "ro_mine"):  # the owner's own 0555 directory is read-only for the owner too
        s.close(s.open(f"{d}/new", WR | CREAT, expect=deny))
        s.mkdir(f"{d}/sub", expect=deny)
        s.symlink("t", f"{d}/sym", expect=deny)
        s.link("f", f"{d}/hard", expect=deny)
        s.mkfifo(f"{d}/fifo", expect=deny)
    s.do(os.rename, "f", "ro/moved", expect=deny)


def setup_open_modes(me, other):
    fx_file("zero", 0o000, data=b"secret")
    fx_file("zero_mine", 0o000, owner=me, data=b"secret")
    fx_file("owner_excluded", 0o077, owner=me, data=b"x")  # the owner class applies, not "others"
    fx_file("group_excluded", 0o707, owner=(0, me[1]), data=b"x")  # the group class applies
    fx_file("readonly", 0o444, owner=me, data=b"x")


def eacces_open(s):
    deny = s.priv("ok", "EACCES")
    for name in ("zero", "zero_mine", "owner_excluded", "group_excluded"):
        s.close(s.open(name, RD, expect=deny))
    s.close(s.open("zero", WR, expect=deny))
    s.close(s.open("readonly", WR, expect=deny))
    s.close(s.open("readonly", RD, expect="ok"))
    s.read("zero", want=s.priv(b"secret", None), expect=deny)


def setup_traverse(me, other):
    fx_dir("nox", 0o644)  # readable, not searchable
    fx_file("nox/f", data=b"x")
    fx_dir("xonly", 0o711)  # searchable, not readable
    fx_file("xonly/f", data=b"x")
    fx_dir("deep")
    fx_dir("deep/mid", 0o700)
    fx_dir("deep/mid/low")
    fx_file("deep/mid/low/f", data=b"x")
    fx_dir("mine_nox", 0o600, owner=me)
    fx_file("mine_nox/f", owner=me)


def eacces_traverse(s):
    deny = s.priv("ok", "EACCES")
    s.stat("nox/f", expect=deny)
    s.open("nox/f", RD, expect=deny)
    s.listing("nox", expect="ok")  # reading the names needs r only
    s.listing("xonly", expect=deny)
    s.stat("xonly/f", expect="ok")
    s.read("xonly/f", want=b"x")
    s.stat("deep/mid/low/f", expect=deny)
    s.close(s.open("deep/mid/low/new", WR | CREAT, expect=deny))
    s.mkdir("deep/mid/low/sub", expect=deny)
    s.do(os.unlink, "deep/mid/low/f", expect=deny)  # every operation resolves every component
    s.link("xonly/f", "nox/hard", expect=deny)
    s.chmod("nox/f", 0o600, expect=deny)
    s.utimensat("nox/f", None, None, expect=deny)
    s.readlink("nox/f", expect=s.priv("EINVAL", "EACCES"))
    s.do(os.rename, "nox/f", "moved", expect=deny)
    s.stat("mine_nox/f", expect=deny)  # also in one's own directory


def setup_unlink_in_ro(me, other):
    fx_dir("ro", 0o555)
    fx_file("ro/f", owner=me)
    fx_dir("ro/sub", owner=me)
    fx_dir("ro_mine", 0o555, owner=me)
    fx_file("ro_mine/f", owner=me)
    fx_file("ro_mine/g", owner=me)


def eacces_unlink_in_ro(s):
    deny = s.priv("ok", "EACCES")
    s.do(os.unlink, "ro/f", expect=deny)  # owning the file does not help
    s.do(os.rmdir, "ro/sub", expect=deny)
    s.do(os.unlink, "ro_mine/f", expect=deny)
    s.do(os.rename, "ro_mine/g", "moved", expect=deny)
    s.listing("ro")


def setup_root_files(me, other):
    fx_file("rootfile", 0o644, data=b"keep")
    fx_file("shared", 0o666, data=b"shared")
    fx_file("mine_ro", 0o444, owner=me)
    fx_file("mine", 0o644, owner=me)


def eacces_write_truncate(s):
    deny = s.priv("ok", "EACCES")
    s.close(s.open("rootfile", WR, expect=deny))
    s.close(s.open("rootfile", RD | TRUNC, expect=deny))  # O_TRUNC needs write permission
    s.do(os.truncate, "rootfile", 1, expect=deny)
    s.read("rootfile", want=s.priv(b"\0", b"keep"))  # root: emptied by O_TRUNC, then grown
    s.do(os.truncate, "shared", 2, expect="ok")
    s.close(s.open("mine_ro", WR, expect=deny))  # the owner too
    s.do(os.truncate, "mine_ro", 0, expect=deny)


def access_checks(s):
    for name, mode in (("rootfile", os.R_OK), ("rootfile", os.W_OK), ("rootfile", os.X_OK),
                       ("shared", os.W_OK), ("mine_ro", os.W_OK), ("mine", os.R_OK | os.W_OK)):
        want = {("rootfile", os.W_OK): s.priv(True, False), ("mine_ro", os.W_OK): s.priv(True, False),
                ("rootfile", os.X_OK): False}.get((name, mode), True)  # root needs an x bit to execute
        s.check(f"access({name!r}, {mode})", os.access(name, mode), want)


def utime_permissions(s):
    t1, t2 = 1_000_000_000_000_000_001, 1_100_000_000_000_000_002
    s.utimensat("rootfile", None, None, expect=s.priv("ok", "EACCES"))  # "now" needs write access
    s.utimensat("shared", None, None, expect="ok")  # ... which is enough without ownership
    s.utimensat("shared", "now", "now", expect="ok")
    s.utimensat("shared", t1, t2, expect=s.priv("ok", "EPERM"))  # explicit times need ownership
    s.utimensat("shared", "omit", t2, expect=s.priv("ok", "EPERM"))
    s.utimensat("rootfile", "omit", "omit", expect="ok")  # no change: no check
    s.utimensat("mine_ro", t1, t2, expect="ok")  # the owner may, even without write permission
    s.times("mine_ro", (t1, t2))


def eperm_chown(s):
    s.chown("mine", s.uid, s.gid, expect="ok")  # to itself
    s.chown("mine", -1, s.other, expect=s.priv("ok", "EPERM"))  # to a group it is not in
    s.chown("rootfile", s.uid, -1, expect=s.priv("ok", "EPERM"))
    s.chown("mine", s.other, -1, expect=s.priv("ok", "EPERM"))  # giving a file away
    s.chown("rootfile", -1, -1, expect="ok")  # no change: allowed for anyone
    s.stat("mine", uid=s.priv(s.other, s.uid), gid=s.priv(s.other, s.gid))
    s.stat("rootfile")


def eperm_chmod(s):
    s.chmod("rootfile", 0o777, expect=s.priv("ok", "EPERM"))
    s.chmod("shared", 0o600, expect=s.priv("ok", "EPERM"))
    s.chmod("mine_ro", 0o600, expect="ok")
    s.stat("rootfile", mode=s.priv(0o777, 0o644))
    s.stat("mine_ro", mode=0o600)


def setup_sticky(me, other):
    fx_dir("sticky", 0o1777)
    fx_file("sticky/theirs", owner=other)
    fx_file("sticky/theirs2", owner=other)
    fx_file("sticky/theirs3", owner=other)
    fx_file("sticky/mine", owner=me)
    fx_file("sticky/mine2", owner=me)
    fx_dir("sticky_mine", 0o1777, owner=me)
    fx_file("sticky_mine/theirs", owner=other)


def eperm_sticky(s):
    deny = s.priv("ok", "EPERM")
    s.do(os.unlink, "sticky/theirs", expect=deny)
    s.do(os.rename, "sticky/theirs2", "sticky/moved", expect=deny)
    s.do(os.rename, "sticky/mine2", "sticky/theirs3", expect=deny)  # replacing theirs
    s.do(os.unlink, "sticky/mine", expect="ok")
    s.do(os.unlink, "sticky_mine/theirs", expect="ok")  # the directory's owner may
    s.listing("sticky")


def setup_hardlink_protect(me, other):
    fx_file("rootfile", 0o644)
    fx_file("mine", 0o644, owner=me)


def _protected_hardlinks():
    try:
        with open("/proc/sys/fs/protected_hardlinks") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


PROTECTED_HARDLINKS = _protected_hardlinks()


def eperm_link(s):
    s.mkdir("d")
    s.link("d", "d2", expect="EPERM")  # no hard links to directories
    s.link("mine", "mine2", expect="ok")
    # fs.protected_hardlinks=1: no link to a file one neither owns nor may read and write
    s.link("rootfile", "rootlink", expect="EPERM" if PROTECTED_HARDLINKS and not s.root else "ok")
    s.stat("mine", nlink=2)


def setup_sgid(me, other):
    fx_file("foreign_group", 0o644, owner=(me[0], other[1]))
    fx_dir("sg", 0o2777, owner=(0, other[1]))


def setgid_rules(s):
    s.chmod("foreign_group", 0o2755, expect="ok")  # not in the group: setgid is dropped silently
    s.stat("foreign_group", mode=s.priv(0o2755, 0o755))
    s.close(s.open("sg/f", WR | CREAT, 0o644, expect="ok"))
    s.stat("sg/f", gid=s.other, mode=0o644)  # a setgid directory hands down its group
    s.mkdir("sg/d", 0o755, expect="ok")
    s.stat("sg/d", gid=s.other, mode=0o2755)  # ... and its setgid bit to subdirectories
    s.mkdir("sg/d/e", 0o755)
    s.stat("sg/d/e", gid=s.other, mode=0o2755)
    s.close(s.open("sg/g", WR | CREAT, 0o2755, expect="ok"))
    s.stat("sg/g", gid=s.other, mode=s.priv(0o2755, 0o755))  # not in the group: stripped on create


def setup_suid(me, other):
    for name in ("suid_write", "suid_trunc", "suid_sgid_noexec"):
        fx_file(name, 0o6755 if name != "suid_sgid_noexec" else 0o6644, owner=me, data=b"x")


def write_clears_suid(s):
    fd = s.open("suid_write", WR | APPEND)
    s.fwrite(fd, b"y")
    s.close(fd)
    s.stat("suid_write", mode=s.priv(0o6755, 0o755))  # root keeps them (CAP_FSETID)
    s.do(os.truncate, "suid_trunc", 0)
    s.stat("suid_trunc", mode=s.priv(0o6755, 0o755))
    fd = s.open("suid_sgid_noexec", WR | APPEND)
    s.fwrite(fd, b"y")
    s.close(fd)
    s.stat("suid_sgid_noexec", mode=s.priv(0o6644, 0o2644))  # setgid without group-x stays (in group)


def setup_other_setid(me, other):
    for name in ("other_setid_w", "other_setid_rw"):
        fx_file(name, 0o6777, owner=other, data=b"x")


def write_by_non_owner_clears_setid(s):
    # A write by someone else (no CAP_FSETID) succeeds and clears set-user-ID, and set-group-ID
    # with group execute; root keeps both.
    for name, flags in (("other_setid_w", WR), ("other_setid_rw", RW)):
        fd = s.open(name, flags, expect="ok")
        s.fwrite(fd, b"y", expect="ok")
        s.close(fd)
        s.stat(name, mode=s.priv(0o6777, 0o777))


# ------------------------------------------------------------------ cases: supplementary groups


def setup_supplementary(me, other):
    fx_file("mine", 0o644, owner=me, data=b"m")
    os.symlink("mine", "mine_link")
    os.lchown("mine_link", *me)
    fx_file("group_file", 0o640, owner=(other[0], SUPPLEMENTARY), data=b"group readable")
    fx_dir("group_dir", 0o770, owner=(other[0], SUPPLEMENTARY))
    fx_dir("sg", 0o2770, owner=(other[0], SUPPLEMENTARY))


def chgrp_supplementary(s):
    s.chown("mine", -1, SUPPLEMENTARY, expect="ok")  # one's own file, to a supplementary group
    s.stat("mine", gid=SUPPLEMENTARY)
    s.chown("mine_link", -1, SUPPLEMENTARY, follow=False, expect="ok")
    s.stat("mine_link", gid=SUPPLEMENTARY)
    s.chown("mine", -1, s.other, expect=s.priv("ok", "EPERM"))  # a group not held
    s.chown("group_file", -1, SUPPLEMENTARY, expect=s.priv("ok", "EPERM"))  # not the owner


def access_supplementary(s):
    s.read("group_file", want=b"group readable")  # group read, granted through the supplementary group
    s.check("access('group_file', R_OK)", os.access("group_file", os.R_OK), True)
    s.check("access('group_file', W_OK)", os.access("group_file", os.W_OK), s.root)
    s.close(s.open("group_file", WR, expect=s.priv("ok", "EACCES")))
    s.write("group_dir/new", b"n")  # created in a directory writable through the group
    s.stat("group_dir/new", gid=s.gid, mode=0o644)
    s.listing("group_dir")


def create_in_setgid_dir_supplementary(s):
    s.close(s.open("sg/f", WR | CREAT, 0o2755, expect="ok"))
    s.stat("sg/f", gid=SUPPLEMENTARY, mode=0o2755)  # in the group: the setgid bit is kept
    s.mkdir("sg/d", 0o755, expect="ok")
    s.stat("sg/d", gid=SUPPLEMENTARY, mode=0o2755)


# ------------------------------------------------------------------ cases: chmod, chown, link, mkdir ...


def chmod_modes(s):
    s.write("f", b"x")
    s.mkdir("d")
    s.symlink("f", "l")
    for mode in (0o000, 0o644, 0o755, 0o4755, 0o2755, 0o1644, 0o7777, 0o600):
        s.chmod("f", mode, expect="ok")
        s.stat("f", mode=mode)
    for mode in (0o1777, 0o2755, 0o3700, 0o000, 0o755):
        s.chmod("d", mode, expect="ok")
        s.stat("d", mode=mode)
    s.chmod("l", 0o640, expect="ok")  # follows the link
    s.stat("f", mode=0o640)
    s.stat("l", mode=0o777, kind="lnk")


def chown_root(s):
    s.write("f", b"x")
    s.symlink("f", "l")
    s.mkdir("d")
    s.chown("f", 1234, 5678, expect="ok")
    s.stat("f", uid=1234, gid=5678)
    s.chown("l", 2222, 3333, follow=False, expect="ok")
    s.stat("l", uid=2222, gid=3333)
    s.stat("f", uid=1234, gid=5678)
    s.chown("l", 4444, -1, expect="ok")
    s.stat("f", uid=4444, gid=5678)
    s.chown("d", 1234, 1234, expect="ok")
    s.stat("d", uid=1234, gid=1234)
    s.chown("f", -1, -1, expect="ok")
    s.stat("f", uid=4444, gid=5678)


def chown_clears_suid(s):
    s.write("f", b"x")
    s.chmod("f", 0o6755)
    s.chown("f", 1234, 1234)
    s.stat("f", mode=0o755)  # even root's chown clears them on a regular file
    s.write("g", b"x")
    s.chmod("g", 0o4755)
    s.chown("g", -1, -1)
    s.stat("g", mode=0o755)
    s.write("h", b"x")
    s.chmod("h", 0o2644)
    s.chown("h", 1234, 1234)
    s.stat("h")
    s.mkdir("d")
    s.chmod("d", 0o6755)
    s.chown("d", 1234, 1234)
    s.stat("d", mode=0o6755)  # not on a directory


def link_basic(s):
    s.write("f", b"shared")
    s.mkdir("d")
    s.link("f", "d/g", expect="ok")
    s.stat("f", nlink=2)
    s.stat("d/g", nlink=2)
    s.same_file("f", "d/g", True)
    fd = s.open("d/g", WR | APPEND)
    s.fwrite(fd, b"+")
    s.close(fd)
    s.read("f", want=b"shared+")
    s.do(os.unlink, "f", expect="ok")
    s.stat("d/g", nlink=1)
    s.symlink("d/g", "l")
    s.link("l", "hl", expect="ok")  # link(2): a hard link to the symlink itself
    s.stat("hl", kind="lnk", nlink=2)
    s.readlink("hl", want="d/g")
    s.link("l", "hf", follow=True, expect="ok")  # AT_SYMLINK_FOLLOW: to what it points to
    s.stat("hf", kind="reg", nlink=2)


def mkdir_basic(s):
    s.mkdir("a", 0o700, expect="ok")
    s.stat("a", kind="dir", mode=0o700, nlink=2)
    s.stat(".", nlink=3)
    s.mkdir("b", 0o1777, expect="ok")
    s.stat("b", mode=0o1755)  # umask 022; the sticky bit is kept
    s.mkdir("c", 0o2775, expect="ok")
    s.stat("c", mode=0o755)  # setgid is not taken from the mode argument
    s.mkdir("a/sub", expect="ok")
    s.stat("a", nlink=3)
    s.same_file("a/sub/..", "a", True)
    s.mkdir("a/sub/deeper/", expect="ok")  # a trailing slash is fine for mkdir
    s.stat(".", nlink=5)


def mkfifo_basic(s):
    s.mkfifo("p", 0o640, expect="ok")
    s.stat("p", kind="fifo", mode=0o640, size=0)
    s.mkfifo("p", expect="EEXIST")
    s.open("p", WR | O.O_NONBLOCK, expect="ENXIO")  # no reader
    rfd = s.open("p", RD | O.O_NONBLOCK, expect="ok")
    wfd = s.open("p", WR | O.O_NONBLOCK, expect="ok")
    s.fwrite(wfd, b"through the pipe")
    if rfd is not None:
        s.check("read(fifo)", os.read(rfd, 100), b"through the pipe")
    s.close(wfd)
    s.close(rfd)
    s.stat("p", size=0)


def mknod_types(s):
    s.mknod("fifo", stat.S_IFIFO | 0o600, expect="ok")
    s.stat("fifo", kind="fifo", mode=0o600)
    s.mknod("reg", stat.S_IFREG | 0o600, expect="ok")
    s.stat("reg", kind="reg", mode=0o600, size=0)
    s.mknod("plain", 0o600, expect="ok")  # file type 0 means a regular file
    s.stat("plain", kind="reg")
    s.mknod("sock", stat.S_IFSOCK | 0o600, expect="ok")
    s.stat("sock", kind="sock")
    s.mknod("dir", stat.S_IFDIR | 0o755, expect="EPERM")
    s.mknod("fifo", stat.S_IFIFO | 0o600, expect="EEXIST")
    s.mknod("chr", stat.S_IFCHR | 0o600, os.makedev(1, 3), expect=s.priv("ok", "EPERM"))
    s.mknod("blk", stat.S_IFBLK | 0o600, os.makedev(7, 200), expect=s.priv("ok", "EPERM"))
    s.stat("chr", expect=s.priv("ok", "ENOENT"))
    s.stat("blk", expect=s.priv("ok", "ENOENT"))


def open_trunc(s):
    s.write("f", b"hello world")
    fd = s.open("f", WR | TRUNC, expect="ok")
    s.fstat(fd, size=0)
    s.close(fd)
    s.read("f", want=b"")
    s.write("g", b"hello", mode=0o600)
    s.close(s.open("g", RD | TRUNC, expect="ok"))  # O_RDONLY|O_TRUNC truncates on Linux
    s.read("g", want=b"")
    s.write("h", b"data", mode=0o600)
    s.close(s.open("h", WR | CREAT | TRUNC, 0o777, expect="ok"))  # mode ignored: it exists
    s.stat("h", size=0, mode=0o600)


def open_append(s):
    s.write("f", b"abc")
    fd = s.open("f", WR | APPEND, expect="ok")
    s.lseek(fd, 0)
    s.fwrite(fd, b"def")
    s.pwrite(fd, b"X", 0)  # Linux: pwrite on an O_APPEND descriptor appends
    fd2 = s.open("f", WR | APPEND, expect="ok")
    s.fwrite(fd2, b"2")
    s.fwrite(fd, b"1")
    s.close(fd2)
    s.close(fd)
    s.read("f", want=b"abcdefX21")
    fd = s.open("f", RW)
    s.pwrite(fd, b"Z", 1)
    s.pread(fd, 3, 0, want=b"aZc")
    s.close(fd)


def open_directory_flag(s):
    s.mkdir("d")
    s.write("f", b"x")
    s.symlink("d", "ld")
    s.symlink("f", "lf")
    s.close(s.open("d", RD | O.O_DIRECTORY, expect="ok"))
    s.close(s.open("ld", RD | O.O_DIRECTORY, expect="ok"))
    s.close(s.open("d", RD | O.O_DIRECTORY | O.O_NOFOLLOW, expect="ok"))
    s.open("f", RD | O.O_DIRECTORY, expect="ENOTDIR")
    s.open("lf", RD | O.O_DIRECTORY, expect="ENOTDIR")
    s.close(s.open("ld", RD | O.O_DIRECTORY | O.O_NOFOLLOW))  # compared only
    s.close(s.open("new", RD | CREAT | O.O_DIRECTORY))  # EINVAL since Linux 6.4; compared only
    s.listing(".")


def open_create_mode0(s):
    fd = s.open("f", RW | CREAT | EXCL, 0o000, expect="ok")  # the creator may still use it
    s.fwrite(fd, b"data", expect="ok")
    s.pread(fd, 4, 0, want=b"data")
    s.close(fd)
    s.stat("f", mode=0o000, size=4)
    s.close(s.open("f", RD, expect=s.priv("ok", "EACCES")))


def rename_file_over_file(s):
    s.write("a", b"A")
    s.write("b", b"BB")
    fd = s.open("b", RD)
    s.do(os.rename, "a", "b", expect="ok")
    s.read("b", want=b"A")
    s.stat("b", nlink=1, size=1)
    s.pread(fd, 10, 0, want=b"BB")  # an open descriptor keeps the replaced file
    s.close(fd)
    s.write("c", b"C")
    s.link("c", "c2")
    s.do(os.rename, "c", "c2", expect="ok")  # the same inode: nothing happens, both names stay
    s.stat("c", nlink=2)
    s.do(os.rename, "b", "b", expect="ok")
    s.mkdir("d")
    s.do(os.rename, "b", "d/b", expect="ok")
    s.listing(".")
    s.listing("d")


def rename_type_mismatch(s):
    s.write("f", b"x")
    s.mkdir("d")
    s.mkdir("full")
    s.write("full/x", b"x")
    s.do(os.rename, "f", "d", expect="EISDIR")
    s.do(os.rename, "f", "full", expect="EISDIR")
    s.do(os.rename, "d", "f", expect="ENOTDIR")
    s.do(os.rename, "full", "f", expect="ENOTDIR")
    s.stat("f", kind="reg")
    s.stat("d", kind="dir")


def rename_dirs(s):
    s.mkdir("p1")
    s.mkdir("p2")
    s.mkdir("p1/c")
    s.write("p1/c/f", b"x")
    s.mkdir("empty")
    s.do(os.rename, "p1/c", "p2/c", expect="ok")
    s.stat("p1", nlink=2)
    s.stat("p2", nlink=3)
    s.read("p2/c/f", want=b"x")
    s.same_file("p2/c/..", "p2", True)  # ".." follows the move
    s.do(os.rename, "p2/c", "empty", expect="ok")  # over an empty directory
    s.read("empty/f", want=b"x")
    s.do(os.rename, "empty", "p1/moved/", expect="ok")  # trailing slash on a directory
    s.stat("p1", nlink=3)
    s.listing(".")


def rename_noreplace_case(s):
    s.write("a", b"A")
    s.write("b", b"B")
    s.mkdir("d")
    s.do(rename_noreplace, "a", "b", expect="EEXIST")
    s.read("b", want=b"B")
    s.do(rename_noreplace, "a", "d", expect="EEXIST")
    s.do(rename_noreplace, "a", "c", expect="ok")
    s.listing(".")


def rename_exchange_case(s):
    s.write("f", b"file")
    s.mkdir("d")
    s.write("d/inner", b"i")
    s.do(rename_exchange, "f", "d", expect="ok")
    s.stat("f", kind="dir")
    s.read("f/inner", want=b"i")
    s.read("d", want=b"file")
    s.do(rename_exchange, "d", "missing", expect="ENOENT")
    s.listing(".")


def rename_symlink(s):
    s.write("t", b"x")
    s.symlink("t", "l")
    s.mkdir("d")
    s.do(os.rename, "l", "d/l", expect="ok")  # moves the link, not the target
    s.readlink("d/l", want="t")
    s.stat("d/l", follow=True, expect="ENOENT")  # the relative target now dangles
    s.stat("t", expect="ok", kind="reg")


def rmdir_basic(s):
    s.mkdir("d")
    s.mkdir("d/e")
    s.stat("d", nlink=3)
    s.do(os.rmdir, "d/e", expect="ok")
    s.stat("d", nlink=2)
    s.symlink("d", "ld")
    s.do(os.rmdir, "ld", expect="ENOTDIR")
    s.do(os.rmdir, "d/", expect="ok")
    s.stat(".", nlink=2)
    s.listing(".")


def rmdir_open_directory(s, listing="ok"):
    # A directory removed while a process has it open lists as empty.
    s.mkdir("d")
    fd = s.open("d", os.O_RDONLY | os.O_DIRECTORY)
    s.do(os.rmdir, "d", expect="ok")
    if fd is not None:
        s.attempt("listdir(fd of the removed d)", listing, os.listdir, fd, show=sorted)
    s.close(fd)
    s.stat("d", expect="ENOENT")


def symlink_basic(s):
    s.write("t", b"target data")
    s.symlink("t", "l", expect="ok")
    s.stat("l", kind="lnk", size=1, mode=0o777)  # the size is the target's length; umask ignored
    s.readlink("l", want="t")
    s.stat("l", follow=True, kind="reg", size=11)
    s.read("l", follow=True, want=b"target data")
    s.mkdir("d")
    s.write("d/f", b"in d")
    s.symlink("d", "ld")
    s.listing("ld")
    s.read("ld/f", want=b"in d")
    s.symlink("../t", "d/up")
    s.read("d/up", follow=True, want=b"target data")
    s.symlink("/absolute/nowhere", "abs")
    s.readlink("abs", want="/absolute/nowhere")
    s.symlink("", "empty", expect="ENOENT")
    s.symlink("t", "slash/")  # compared only
    s.symlink("with\nnewline and ünïcödé", "odd")
    s.readlink("odd", want="with\nnewline and ünïcödé")


def truncate_grow_shrink(s):
    s.write("f", b"abcdef")
    s.do(os.truncate, "f", 3, expect="ok")
    s.read("f", want=b"abc")
    s.do(os.truncate, "f", 10, expect="ok")
    s.read("f", want=b"abc" + b"\0" * 7)
    s.do(os.truncate, "f", 0, expect="ok")
    s.read("f", want=b"")
    fd = s.open("g", RW | CREAT)
    s.fwrite(fd, b"x" * 8192)
    s.ftruncate(fd, 4097, expect="ok")  # shrink into a page ...
    s.ftruncate(fd, 8192, expect="ok")  # ... and grow: the tail must read as zeros
    s.pread(fd, 8192, 0, want=b"x" * 4097 + b"\0" * 4095)
    s.ftruncate(fd, 1 << 20, expect="ok")
    s.fstat(fd, size=1 << 20)
    s.pread(fd, 16, (1 << 20) - 16, want=b"\0" * 16)
    s.ftruncate(fd, 5, expect="ok")
    s.close(fd)
    s.read("g", want=b"xxxxx")


def unlink_basic(s):
    s.write("f", b"x")
    s.do(os.unlink, "f", expect="ok")
    s.stat("f", expect="ENOENT")
    s.write("t", b"x")
    s.symlink("t", "l")
    s.do(os.unlink, "l", expect="ok")  # removes the link, not the target
    s.stat("t", expect="ok")
    fd = s.open("open", RW | CREAT)
    s.do(os.unlink, "open", expect="ok")
    s.fwrite(fd, b"still here")  # an unlinked file lives on while open
    s.pread(fd, 100, 0, want=b"still here")
    s.fstat(fd, nlink=0, size=10)
    s.close(fd)
    s.write("h1", b"h")
    s.link("h1", "h2")
    s.do(os.unlink, "h1", expect="ok")
    s.stat("h2", nlink=1)
    s.do(os.unlink, ".")  # compared only
    s.listing(".")


T_A = 1_000_000_000_123_456_789  # 2001, odd nanoseconds
T_M = 1_500_000_000_987_654_321  # 2017
T_OLD = -1_000_000_000_500_000_000  # 1938
T_FAR = 4_102_444_800_000_000_001  # 2100 (beyond 32-bit seconds)


def utimensat_explicit(s):
    s.write("f", b"x")
    s.utimensat("f", T_A, T_M, expect="ok")
    s.times("f", (T_A, T_M))
    s.utimensat("f", T_OLD, T_FAR, expect="ok")
    s.times("f", (T_OLD, T_FAR))
    s.attempt("os.utime('f', ns=(T_M, T_A))", "ok", os.utime, "f", ns=(T_M, T_A))
    s.times("f", (T_M, T_A))
    fd = s.open("f", RD)
    if fd is not None:
        s.attempt("futimens(fd, T_A, T_M)", "ok", os.utime, fd, ns=(T_A, T_M))
        s.times("f", (T_A, T_M))
    s.close(fd)
    s.mkdir("d")
    s.utimensat("d", T_M, T_A, expect="ok")
    s.times("d", (T_M, T_A))
    s.symlink("f", "l")
    s.utimensat("l", T_OLD, T_M, nofollow=True, expect="ok")  # the link itself
    s.times("l", (T_OLD, T_M))
    s.times("f", (T_A, T_M))


def utimensat_now_omit(s):
    s.write("f", b"x")
    s.utimensat("f", T_A, T_M, expect="ok")
    s.utimensat("f", "omit", T_A, expect="ok")
    s.times("f", (T_A, T_A))
    s.utimensat("f", T_M, "omit", expect="ok")
    s.times("f", (T_M, T_A))
    s.utimensat("f", "omit", "omit", expect="ok")
    s.times("f", (T_M, T_A))
    now = s.now()
    s.utimensat("f", "now", "omit", expect="ok")
    s.times("f", (now, T_A))
    s.utimensat("f", T_OLD, T_FAR, expect="ok")
    now = s.now()
    s.utimensat("f", T_M, "now", expect="ok")
    s.times("f", (T_M, now))
    s.utimensat("f", T_OLD, T_FAR, expect="ok")
    now = s.now()
    s.utimensat("f", None, None, expect="ok")
    s.times("f", (now, now))


def umask_create(s):
    s.umask(0o027)
    s.close(s.open("f", WR | CREAT, 0o777))
    s.stat("f", mode=0o750)
    s.mkdir("d", 0o777)
    s.stat("d", mode=0o750)
    s.mkfifo("p", 0o666)
    s.stat("p", mode=0o640)
    s.mknod("n", stat.S_IFIFO | 0o666)
    s.stat("n", mode=0o640)
    s.symlink("f", "l")
    s.stat("l", mode=0o777)
    s.umask(0)
    s.close(s.open("g", WR | CREAT, 0o777))
    s.stat("g", mode=0o777)
    s.mkdir("e", 0o1777)
    s.stat("e", mode=0o1777)
    s.umask(0o777)
    fd = s.open("h", WR | CREAT, 0o666)
    s.fwrite(fd, b"ok", expect="ok")  # the creating descriptor still writes
    s.close(fd)
    s.stat("h", mode=0o000, size=2)
    s.umask(0o022)


def write_read(s):
    fd = s.open("f", RW | CREAT, expect="ok")
    s.pwrite(fd, b"end", 10000)
    s.fstat(fd, size=10003)
    s.pread(fd, 10003, 0, want=b"\0" * 10000 + b"end")  # the hole reads as zeros
    s.pwrite(fd, b"mid", 4094)  # across a page boundary
    s.pread(fd, 7, 4092, want=b"\0\0mid\0\0")
    s.pread(fd, 10, 20000, want=b"")  # beyond the end
    s.do(os.fsync, fd, expect="ok")
    s.do(os.fdatasync, fd, expect="ok")
    s.close(fd)
    pattern = bytes(range(256)) * 4100 + b"tail"  # about 1 MiB, written in odd chunks
    fd = s.open("big", WR | CREAT | EXCL)
    for off in range(0, len(pattern), 131073):
        s.pwrite(fd, pattern[off:off + 131073], off)
    s.close(fd)
    s.read("big", want=pattern)
    s.stat("big", size=len(pattern))


def fallocate_case(s):
    fd = s.open("f", RW | CREAT)
    s.fwrite(fd, b"head")
    if fd is not None:
        s.attempt("posix_fallocate(fd, 0, 10000)", None, os.posix_fallocate, fd, 0, 10000)
    s.fstat(fd)
    s.pread(fd, 10000, 0)
    s.close(fd)


def readdir_many(s):
    names = [f"entry-{i:03d}-" + "x" * 100 for i in range(300)]  # several getdents batches
    for name in names:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644))
    s.listing(".", count=300)
    for name in names[::2]:
        os.unlink(name)
    s.listing(".", count=150)


# ------------------------------------------------------------------ the case table

# name, who runs it (ANY: every uid; ROOT: uid 0 only; USER: non-zero uids only), setup, body
CASES = [
    ("mkdir_eexist", ANY, None, mkdir_existing),
    ("open_excl_eexist", ANY, None, open_excl_existing),
    ("link_eexist", ANY, None, link_existing),
    ("symlink_eexist", ANY, None, symlink_existing),
    ("enoent", ANY, None, enoent),
    ("enotdir", ANY, None, enotdir),
    ("eisdir", ANY, None, eisdir),
    ("enotempty", ANY, None, enotempty),
    ("eloop", ANY, None, eloop),
    ("enametoolong", ANY, None, enametoolong),
    ("einval", ANY, None, einval),
    ("eacces_create_in_0555", ANY, setup_create_in_ro, eacces_create_in_ro),
    ("eacces_open_modes", ANY, setup_open_modes, eacces_open),
    ("eacces_traverse", ANY, setup_traverse, eacces_traverse),
    ("eacces_unlink_in_0555", ANY, setup_unlink_in_ro, eacces_unlink_in_ro),
    ("eacces_write_truncate", ANY, setup_root_files, eacces_write_truncate),
    ("access", ANY, setup_root_files, access_checks),
    ("utime_permissions", ANY, setup_root_files, utime_permissions),
    ("eperm_chown", ANY, setup_root_files, eperm_chown),
    ("eperm_chmod", ANY, setup_root_files, eperm_chmod),
    ("eperm_sticky", ANY, setup_sticky, eperm_sticky),
    ("eperm_link", ANY, setup_hardlink_protect, eperm_link),
    ("setgid_rules", ANY, setup_sgid, setgid_rules),
    ("write_clears_suid", ANY, setup_suid, write_clears_suid),
    ("write_by_non_owner_clears_setid", ANY, setup_other_setid, write_by_non_owner_clears_setid),
    ("chgrp_supplementary", ANY, setup_supplementary, chgrp_supplementary),
    ("access_supplementary", ANY, setup_supplementary, access_supplementary),
    ("create_in_setgid_dir_supplementary", ANY, setup_supplementary, create_in_setgid_dir_supplementary),
    ("chmod_modes", ANY, None, chmod_modes),
    ("chown_root", ROOT, None, chown_root),
    ("chown_clears_suid", ROOT, None, chown_clears_suid),
    ("link_basic", ANY, None, link_basic),
    ("mkdir_basic", ANY, None, mkdir_basic),
    ("mkfifo_basic", ANY, None, mkfifo_basic),
    ("mknod_types", ANY, None, mknod_types),
    ("open_trunc", ANY, None, open_trunc),
    ("open_append", ANY, None, open_append),
    ("open_directory_flag", ANY, None, open_directory_flag),
    ("open_create_mode0", ANY, None, open_create_mode0),
    ("rename_file_over_file", ANY, None, rename_file_over_file),
    ("rename_type_mismatch", ANY, None, rename_type_mismatch),
    ("rename_dirs", ANY, None, rename_dirs),
    ("rename_noreplace", ANY, None, rename_noreplace_case),
    ("rename_exchange", ANY, None, rename_exchange_case),
    ("rename_symlink", ANY, None, rename_symlink),
    ("rmdir_basic", ANY, None, rmdir_basic),
    ("rmdir_open_directory", ANY, None, rmdir_open_directory),
    ("symlink_basic", ANY, None, symlink_basic),
    ("truncate_grow_shrink", ANY, None, truncate_grow_shrink),
    ("unlink_basic", ANY, None, unlink_basic),
    ("utimensat_explicit", ANY, None, utimensat_explicit),
    ("utimensat_now_omit", ANY, None, utimensat_now_omit),
    ("umask_create", ANY, None, umask_create),
    ("write_read", ANY, None, write_read),
    ("fallocate", ANY, None, fallocate_case),
    ("readdir_many", ANY, None, readdir_many),
]


# --- --self-test: two deliberately broken cases that must be reported

def setup_selftest_differs(me, other, side):
    fx_file("f", 0o644 if side == "subject" else 0o640, owner=me)  # the sides differ


setup_selftest_differs.wants_side = True


def selftest_differs(s):
    s.stat("f")


def setup_selftest_both_wrong(me, other, side):
    fx_file("f", owner=me)  # makes the O_EXCL below fail on both sides alike


setup_selftest_both_wrong.wants_side = True


def selftest_both_wrong(s):
    s.close(s.open("f", WR | CREAT | EXCL, expect="ok"))


# ------------------------------------------------------------------ documented semantics

# Where a subject is known to differ from a local file system by design (--semantics NAME): the
# case body below runs on the subject instead, with hard expectations of how that subject behaves;
# the reference still runs the original case and its own expectations. Nothing is compared for
# these cases: the differences are the point. Every entry is one row of Specs/nfs-semantics.md,
# and check-semantics-table (tools/host/test-host-mount.sh) keeps the two lists equal.


def nfs3_enametoolong(s):
    n255, n256 = "a" * 255, "b" * 256
    s.close(s.open(n255, WR | CREAT, expect="ok"))
    s.open(n256, WR | CREAT, expect="ENAMETOOLONG")
    s.mkdir(n256, expect="ENAMETOOLONG")
    s.symlink("x" * 3000, "long", expect="ok")
    s.readlink("long", want="x" * 3000)
    # libnfs 4.0 encodes every call into 4 KiB: a target near PATH_MAX does not fit.
    s.symlink("x" * 4095, "longest", expect="ENAMETOOLONG")
    s.stat("longest", expect="ENOENT")
    s.symlink("x" * 4096, "toolong", expect="ENAMETOOLONG")
    s.listing(".")


def nfs3_chgrp_supplementary(s):
    # AUTH_SYS carries the caller's uid and gid only: a group held only as a supplementary group
    # is unknown to the server, which refuses the chgrp to it.
    s.chown("mine", -1, SUPPLEMENTARY, expect=s.priv("ok", "EPERM"))
    s.stat("mine", gid=s.priv(SUPPLEMENTARY, s.gid))
    s.chown("mine_link", -1, SUPPLEMENTARY, follow=False, expect=s.priv("ok", "EPERM"))
    s.chown("mine", -1, s.other, expect=s.priv("ok", "EPERM"))
    s.chown("group_file", -1, SUPPLEMENTARY, expect=s.priv("ok", "EPERM"))


def nfs3_access_supplementary(s):
    # The kernel grants through the supplementary group (access(2) says so); the server, which
    # does not know it, refuses the reads and creates themselves.
    s.check("access('group_file', R_OK)", os.access("group_file", os.R_OK), True)
    s.read("group_file", want=s.priv(b"group readable", None), expect=s.priv("ok", "EACCES"))
    s.write("group_dir/new", b"n", expect=s.priv("ok", "EACCES"))
    s.listing("group_dir", expect=s.priv("ok", "EACCES"))


def nfs3_create_in_setgid_dir_supplementary(s):
    s.close(s.open("sg/f", WR | CREAT, 0o2755, expect=s.priv("ok", "EACCES")))
    s.mkdir("sg/d", 0o755, expect=s.priv("ok", "EACCES"))


def nfs3_rename_exchange(s):
    s.write("f", b"file")
    s.mkdir("d")
    # NFSv3 RENAME cannot swap two names: refused, nothing changes.
    s.do(rename_exchange, "f", "d", expect="EINVAL")
    s.stat("f", kind="reg")
    s.stat("d", kind="dir")
    s.listing(".")


def nfs3_utimensat_explicit(s):
    s.write("f", b"x")
    s.utimensat("f", T_A, T_M, expect="ok")
    s.times("f", (T_A, T_M))
    # NFSv3 times are unsigned 32-bit seconds: before 1970 is refused, not wrapped.
    s.utimensat("f", T_OLD, T_FAR, expect="EINVAL")
    s.times("f", (T_A, T_M))
    s.utimensat("f", T_M, T_FAR, expect="ok")
    s.times("f", (T_M, T_FAR))
    s.mkdir("d")
    s.utimensat("d", T_M, T_A, expect="ok")
    s.times("d", (T_M, T_A))
    s.symlink("f", "l")
    # nfs-ganesha's FSAL_VFS cannot set a symlink's own times: it stamps the current time.
    now = s.now()
    s.utimensat("l", T_A, T_M, nofollow=True, expect="ok")
    s.times("l", (now, now))
    s.times("f", (T_M, T_FAR))


def nfs3_utimensat_now_omit(s):
    s.write("f", b"x")
    s.utimensat("f", T_A, T_M, expect="ok")
    s.utimensat("f", "omit", T_A, expect="ok")
    s.times("f", (T_A, T_A))
    s.utimensat("f", T_M, "omit", expect="ok")
    s.times("f", (T_M, T_A))
    now = s.now()
    s.utimensat("f", "now", "omit", expect="ok")
    s.times("f", (now, T_A))
    s.utimensat("f", T_OLD, T_FAR, expect="EINVAL")  # before 1970: not an NFSv3 time
    now = s.now()
    s.utimensat("f", T_M, "now", expect="ok")
    s.times("f", (T_M, now))
    now = s.now()
    s.utimensat("f", None, None, expect="ok")
    s.times("f", (now, now))


def nfs3_rmdir_open_directory(s):
    # The server frees a directory with its last name; NFS keeps no "removed but open" directory
    # (silly rename is for files), so the open descriptor's handle is stale: fstat and a listing
    # fail ESTALE, as on Linux's own NFS client.
    rmdir_open_directory(s, listing="ESTALE")


def kv_rmdir_open_directory(s):
    # The store frees a directory with its last name (only files become orphans while open), so
    # the open descriptor names an inode that is gone: fstat, and so a listing, fail ENOENT.
    rmdir_open_directory(s, listing="ENOENT")


SEMANTICS = {
    "kv": {
        "rmdir_open_directory": kv_rmdir_open_directory,
    },
    "nfs3": {
        "rmdir_open_directory": nfs3_rmdir_open_directory,
        "utimensat_now_omit": nfs3_utimensat_now_omit,
        "enametoolong": nfs3_enametoolong,
        "rename_exchange": nfs3_rename_exchange,
        "chgrp_supplementary": nfs3_chgrp_supplementary,
        "access_supplementary": nfs3_access_supplementary,
        "create_in_setgid_dir_supplementary": nfs3_create_in_setgid_dir_supplementary,
        "utimensat_explicit": nfs3_utimensat_explicit,
    },
}


SELF_TEST_CASES = [
    ("selftest_fixture_differs", ANY, setup_selftest_differs, selftest_differs),
    ("selftest_both_wrong", ANY, setup_selftest_both_wrong, selftest_both_wrong),
]


# ------------------------------------------------------------------ running


def runs_as(who, uid):
    return who == ANY or (who == ROOT) == (uid == 0)


def prepare_case_dir(path, uid, setup, side):
    """As root: the case directory (owned by uid, 0755) and its fixtures."""
    os.mkdir(path)
    os.chown(path, uid, uid)
    os.chmod(path, 0o755)
    if setup is None:
        return
    cwd = os.getcwd()
    os.chdir(path)
    try:
        if getattr(setup, "wants_side", False):
            setup((uid, uid), (OTHER, OTHER), side)
        else:
            setup((uid, uid), (OTHER, OTHER))
    finally:
        os.chdir(cwd)


def run_body(body, case_dir, uid):
    """In the child: one case body on one side, then the final snapshot."""
    s = Side(uid)
    os.umask(0o022)
    try:
        os.chdir(case_dir)
        body(s)
        s.close_all()
        snapshot(s)
    except Exception as e:  # a bug in the case, or something the tool did not foresee
        s.violations.append(("exception", f"{type(e).__name__}: {e} at {traceback.format_tb(e.__traceback__)[-1].strip()}"))
    finally:
        for fd in s.fds:
            os.close(fd)
        os.umask(0o022)
        os.chdir("/")
    return s.obs, s.violations


def _send(fd, obj):
    data = pickle.dumps(obj)
    os.write(fd, struct.pack("<Q", len(data)))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _receive_all(fd):
    with os.fdopen(fd, "rb") as f:
        while header := f.read(8):
            yield pickle.loads(f.read(struct.unpack("<Q", header)[0]))


def run_child(uid, work, timeout):
    """Fork, switch to uid, run work = [(index, subject_body, reference_body, subject_dir,
    reference_dir)], and stream
    (index, subject_record, reference_record) back. Yields them as they arrive."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(rfd)
            if uid != 0:
                os.setgroups([SUPPLEMENTARY])
                os.setgid(uid)
                os.setuid(uid)
            signal.alarm(timeout)
            for index, subject_body, reference_body, sdir, rdir in work:
                _send(wfd, (index, run_body(subject_body, sdir, uid), run_body(reference_body, rdir, uid)))
        except BaseException:
            traceback.print_exc()
            status = 2
        os._exit(status)
    os.close(wfd)
    yield from _receive_all(rfd)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
        raise RuntimeError(f"the case runner (uid {uid}) ended with {how}")


def compare(subject, reference, limit=8, differences=True):
    """Problems of one case: hard-expectation violations of each side, then differences (not for
    a case the subject's --semantics replaces)."""
    problems = []
    for side, (_, violations) in (("subject", subject), ("reference", reference)):
        problems += [f"[{what}]: {side} {msg}" for what, msg in violations]
    a, b = (subject[0], reference[0]) if differences else ([], [])
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else ("(nothing more)", "")
        y = b[i] if i < len(b) else ("(nothing more)", "")
        if x == y:
            continue
        if x[0] == y[0]:
            problems.append(f"[{x[0]}]: subject {x[1]}, reference {y[1]}")
        else:  # the two runs went different ways: later entries would only repeat that
            problems.append(f"[step {i}]: subject {x[0]} -> {x[1]}, reference {y[0]} -> {y[1]}")
            break
    problems = list(dict.fromkeys(problems))  # the final snapshot often repeats a body observation
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit} more"]
    return problems


def print_trace(subject, reference):
    """--trace: every recorded operation and observation, one line each ("|" then the reference's
    outcome where it differs)."""
    a, b = subject[0], reference[0]
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else ("-", "-")
        y = b[i] if i < len(b) else ("-", "-")
        print(f"    {x[0]} -> {x[1]}" + ("" if x == y else f"   | reference: {y[0]} -> {y[1]}"))


def fs_type(path):
    """The type of the file system holding path, from /proc/self/mounts (longest mount point)."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            point = fields[1].encode().decode("unicode_escape")
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                best, kind = point, fields[2]
    return kind


def check_reachable(path):
    """Every directory from / down to path must be searchable by others, for unprivileged runs."""
    p = os.path.realpath(path)
    while True:
        if not os.stat(p).st_mode & stat.S_IXOTH:
            return p
        if p == "/":
            return None
        p = os.path.dirname(p)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subject", help="directory under test (e.g. a FUSE mount)")
    ap.add_argument("--reference", help="known-good directory (e.g. on ext4)")
    ap.add_argument("--uids", default="0", help="comma-separated uids to run the cases as (0 = root)")
    ap.add_argument("--cases", default="", help="only cases whose name matches this regular expression")
    ap.add_argument("--verbose", "-v", action="store_true", help="print 'ok <case>' for passing cases")
    ap.add_argument("--trace", action="store_true", help="print every operation and observation of each case")
    ap.add_argument("--keep", action="store_true", help="keep the per-run directories")
    ap.add_argument("--timeout", type=int, default=600, help="seconds for all cases of one uid")
    ap.add_argument("--self-test", action="store_true", help="also run two broken cases that must be reported")
    ap.add_argument("--semantics", default="", choices=[""] + sorted(SEMANTICS),
                    help="the subject's documented differences: those cases assert how it behaves instead")
    ap.add_argument("--list-semantics", action="store_true",
                    help="print the case names --semantics replaces and exit")
    args = ap.parse_args()
    if not args.list_semantics and (args.subject is None or args.reference is None):
        ap.error("--subject and --reference are required")
    args.variants = SEMANTICS.get(args.semantics, {})
    unknown = set(args.variants) - {c[0] for c in CASES}
    assert not unknown, f"semantics for cases that do not exist: {unknown}"
    try:
        args.uids = [int(u) for u in args.uids.split(",")]
    except ValueError:
        ap.error("--uids wants comma-separated numbers")
    if OTHER in args.uids:
        ap.error(f"uid {OTHER} is used for 'someone else's' fixtures")
    return args


def make_run_dirs(args):
    """<side>/posix_check.<pid>/u<uid>/ for each side and uid, world-searchable."""
    run = {}
    for side, base in (("subject", args.subject), ("reference", args.reference)):
        top = os.path.join(os.path.abspath(base), f"posix_check.{os.getpid()}")
        os.mkdir(top)
        os.chmod(top, 0o755)
        run[side] = top
        for uid in args.uids:
            os.mkdir(os.path.join(top, f"u{uid}"))
            os.chmod(os.path.join(top, f"u{uid}"), 0o755)
    return run


def run_uid(uid, cases, run, args):
    """Prepare, run and compare every case for one uid. Returns (cases run, names of failed ones)."""
    work, failed = [], []
    for index, (name, _, setup, body) in enumerate(cases):
        dirs = [os.path.join(run[side], f"u{uid}", name) for side in ("subject", "reference")]
        try:
            for side, d in zip(("subject", "reference"), dirs):
                prepare_case_dir(d, uid, setup, side)
        except OSError as e:
            print(f"FAIL u{uid}/{name} [setup]: {e}")
            failed.append(name)
            continue
        work.append((index, args.variants.get(name, body), body, *dirs))
    done = set()
    try:
        for index, subject, reference in run_child(uid, work, args.timeout):
            done.add(index)
            name = f"u{uid}/{cases[index][0]}"
            problems = compare(subject, reference, differences=cases[index][0] not in args.variants)
            for p in problems:
                print(f"FAIL {name} {p}")
            if problems:
                failed.append(cases[index][0])
            elif args.verbose:
                print(f"ok {name}" + (f" (as {args.semantics} behaves)" if cases[index][0] in args.variants else ""))
            if args.trace:
                print_trace(subject, reference)
            sys.stdout.flush()
    except RuntimeError as e:
        print(f"FAIL u{uid}: {e}")
    for index, *_ in work:
        if index not in done:
            print(f"FAIL u{uid}/{cases[index][0]}: did not finish (runner died or timed out)")
            failed.append(cases[index][0])
    return len(cases), failed


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    args = parse_args()
    if args.list_semantics:
        print("\n".join(sorted(args.variants)))
        return 0
    if os.geteuid() != 0:
        print("posix_check: must run as root (it prepares fixtures and switches uids)", file=sys.stderr)
        return 2
    for d in (args.subject, args.reference):
        if not os.path.isdir(d):
            print(f"posix_check: {d} is not a directory", file=sys.stderr)
            return 2
        blocked = check_reachable(d) if any(args.uids) else None
        if blocked:
            print(f"posix_check: {blocked} is not searchable by others; unprivileged uids cannot reach {d}",
                  file=sys.stderr)
            return 2
    print(f"posix_check: subject {args.subject} ({fs_type(args.subject)}), reference {args.reference}"
          f" ({fs_type(args.reference)}), uids {','.join(map(str, args.uids))}")
    os.umask(0o022)
    table = CASES + (SELF_TEST_CASES if args.self_test else [])
    table = [c for c in table if re.search(args.cases, c[0]) or c[0].startswith("selftest")]
    run = make_run_dirs(args)
    total, failed = 0, []
    started = time.monotonic()
    try:
        for uid in args.uids:
            cases = [c for c in table if runs_as(c[1], uid)]
            count, bad = run_uid(uid, cases, run, args)
            total += count
            failed += [f"u{uid}/{n}" for n in bad]
    finally:
        if not args.keep:
            for top in run.values():
                shutil.rmtree(top, ignore_errors=True)
        else:
            print(f"posix_check: kept {run['subject']} and {run['reference']}")
    if args.self_test:
        return self_test_verdict(args, total, failed, started)
    replaced = f", {len(args.variants)} asserted as {args.semantics} behaves" if args.variants else ""
    print(f"posix_check: {total} cases{replaced}, {len(failed)} failed ({time.monotonic() - started:.1f} s)")
    return 1 if failed else 0


def self_test_verdict(args, total, failed, started):
    """Self-test passes when exactly the two broken cases (per uid) are reported."""
    expected = {f"u{uid}/{name}" for uid in args.uids for name, *_ in SELF_TEST_CASES}
    missed = sorted(expected - set(failed))
    others = sorted(set(failed) - expected)
    print(f"posix_check: {total} cases, {len(failed)} failed ({time.monotonic() - started:.1f} s)")
    if missed:
        print(f"posix_check: self-test FAILED: not detected: {', '.join(missed)}")
        return 1
    print(f"posix_check: self-test ok: both deliberate breakages detected for every uid"
          + (f"; {len(others)} genuine failures too" if others else ""))
    return 1 if others else 0


if __name__ == "__main__":
    sys.exit(main())
