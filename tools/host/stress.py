#!/usr/bin/env python3
"""stress.py — concurrent stress of a mount, then the mount's view must equal the backing directory's.

Why: races are where a FUSE server loses data or corrupts its inode table: two processes creating
the same name with O_EXCL, a rename while another process reads the file, a hard link to a file
being unlinked, rmdir racing with a create inside. After such a storm the mount must still show
exactly what the backing directory holds (dpfs-engine --fuse-mount MNT --backend passthrough
--shared-dir DIR: MNT/x is DIR/x), and no file may be torn.

How: --processes worker processes (os.fork) share the directories MNT/stress/d0..d7 (and
subdirectories dN/s0, dN/s1 that come and go) and a small set of file names f0..f{names-1}, so
they collide all the time. Every file is self-describing: a 52-byte header (magic, payload length,
writer id, SHA-256 of the payload) and the payload. A writer creates it with O_EXCL and mode 0600,
writes the chunks in random order, sometimes fsyncs, and "seals" it with fchmod 0644 when it is
complete; either directly under a shared name (O_EXCL races with other writers: EEXIST is
expected), or under a private temporary name that it then renames or hard-links to a shared name.
Readers open a shared name (ENOENT is expected: others rename and unlink), and if fstat says it is
sealed, the file must be complete and its checksum right. Other operations: rename between
directories, link, unlink, mkdir/rmdir of the subdirectories (rmdir often after unlinking what it
lists, while others keep creating there), lstat, listdir. Expected race
errors (ENOENT, EEXIST, ENOTEMPTY where the operation can meet them) are counted; any other error
or a torn sealed file is a failure.
After all workers stop: MNT/stress and DIR/stress are walked and must be equal (names, types,
modes, sizes, nlinks, contents), no temporary file may be left, and every file must be sealed and
pass its self-check.

Usage:
  stress.py --mount MNT --backing DIR [--processes 6] [--seconds 20] [--seed N] [--names 64] [--semantics nfs3]
            [--size-max 262144] [--keep] [--self-test]
Without a FUSE mount, pass one native directory as both --mount and --backing (the views are
then trivially equal, the concurrency is still exercised), or bind-mount it (mount --bind DIR MNT).
The tool works in MNT/stress (a stale one from --keep is removed; it carries a marker file) and
removes it at the end unless --keep.

Output: operation counts per kind with their outcomes, failures as "FAIL ...", and on success
"stress: equal views, K files"; exit status 1 on any failure, 2 on a setup error.

--self-test: after the run, checks that the final checks can fail: an exact copy of the tree
(hard links kept) must compare equal, the same copy with one byte changed must be reported as a
different view, and a byte flipped in a file through the backing directory must be reported by the
self-check.
"""
import argparse
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import struct
import sys
import time

TOP = "stress"
MARKER = ".stress-marker"
DIRS = [f"d{i}" for i in range(8)]
SUBS = ["s0", "s1"]
HEADER = struct.Struct("<4sQQ32s")  # magic, payload length, writer id, sha256(payload)
MAGIC = b"STRS"
TMP_PREFIX = ".tmp-"
FAILURES_MAX = 20

# operation -> (weight, errnos that are an expected race for it)
OPS = {
    "create_excl": (10, {"EEXIST", "ENOENT"}),
    "create_tmp": (10, {"EEXIST", "ENOENT"}),  # the errors are those of publishing (link/rename)
    "read": (25, {"ENOENT"}),
    "rename": (12, {"ENOENT"}),
    "link": (6, {"ENOENT", "EEXIST"}),
    "unlink": (10, {"ENOENT"}),
    "mkdir": (3, {"EEXIST"}),
    "rmdir": (3, {"ENOENT", "ENOTEMPTY"}),
    "stat": (8, {"ENOENT"}),
    "listdir": (4, {"ENOENT"}),
}

# --semantics nfs3: a directory another worker removes between a listing's open and its read is
# gone on the server, and NFS has no removed-but-open directory: the listing fails ESTALE
# (Specs/nfs-semantics.md, case rmdir_open_directory), as on Linux's own NFS client.
SEMANTICS_RACES = {"nfs3": {"listdir": {"ESTALE"}}}


def errname(num):
    return errno.errorcode.get(num, f"errno{num}")


def make_content(rng, writer, size_max):
    payload = rng.randbytes(rng.randrange(0, size_max + 1))
    return HEADER.pack(MAGIC, len(payload), writer, hashlib.sha256(payload).digest()) + payload


def self_check(data):
    """None if data is a complete self-describing file, else what is wrong with it."""
    if len(data) < HEADER.size:
        return f"{len(data)} bytes: shorter than the header"
    magic, length, writer, digest = HEADER.unpack_from(data)
    if magic != MAGIC:
        return f"bad magic {magic!r}"
    if len(data) != HEADER.size + length:
        return f"{len(data)} bytes, header says {HEADER.size + length} (writer {writer:#x})"
    if hashlib.sha256(data[HEADER.size:]).digest() != digest:
        return f"checksum mismatch (writer {writer:#x}, {length} payload bytes)"
    return None


def read_all(fd):
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


class Worker:
    """One process's loop of random operations on the shared tree."""

    def __init__(self, index, root, args):
        self.index, self.root, self.args = index, root, args
        self.rng = random.Random(f"{args.seed}-{index}")
        self.counts = {}  # op -> {outcome: n}
        self.failures = []
        self.seq = 0

    def count(self, op, outcome):
        by = self.counts.setdefault(op, {})
        by[outcome] = by.get(outcome, 0) + 1

    def fail(self, message):
        if len(self.failures) < FAILURES_MAX:
            self.failures.append(f"worker {self.index}: {message}")

    def outcome(self, op, error, what):
        """Count an OSError: an expected race, or a failure."""
        name = errname(error.errno)
        self.count(op, name)
        if name not in OPS[op][1]:
            self.fail(f"{what}: unexpected {name} ({error.strerror})")

    def path(self, rel):
        return os.path.join(self.root, rel)

    def shared_dir(self):
        d = self.rng.choice(DIRS)
        return d if self.rng.random() < 0.7 else f"{d}/{self.rng.choice(SUBS)}"

    def shared_name(self):
        return f"{self.shared_dir()}/f{self.rng.randrange(self.args.names)}"

    def write_sealed(self, fd, data):
        """Write data in chunks in random order, maybe fsync, then seal (mode 0644)."""
        cuts = sorted(self.rng.sample(range(1, len(data)), min(len(data) - 1, self.rng.randrange(1, 9))))
        pieces = list(zip([0] + cuts, cuts + [len(data)]))
        self.rng.shuffle(pieces)
        for start, end in pieces:
            view = memoryview(data)[start:end]
            off = start
            while view:
                n = os.pwrite(fd, view, off)
                view, off = view[n:], off + n
        if self.rng.random() < 0.3:
            os.fsync(fd)
        os.fchmod(fd, 0o644)

    def writer_id(self):
        self.seq += 1
        return (self.index << 40) | self.seq

    # --- operations
    def op_create_excl(self):
        name = self.shared_name()
        try:
            fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            return self.outcome("create_excl", e, f"create {name}")
        try:
            self.write_sealed(fd, make_content(self.rng, self.writer_id(), self.args.size_max))
        except OSError as e:  # writing through our own descriptor must work, whatever others do
            self.fail(f"write {name}: {errname(e.errno)}")
        finally:
            os.close(fd)
        self.count("create_excl", "ok")

    def op_create_tmp(self):
        tmp = f"{self.rng.choice(DIRS)}/{TMP_PREFIX}w{self.index}-{self.seq}"
        final = self.shared_name()
        try:
            fd = os.open(self.path(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            self.count("create_tmp", errname(e.errno))
            return self.fail(f"create private {tmp}: {errname(e.errno)}")  # nobody else uses it
        try:
            self.write_sealed(fd, make_content(self.rng, self.writer_id(), self.args.size_max))
        except OSError as e:
            self.fail(f"write {tmp}: {errname(e.errno)}")
        finally:
            os.close(fd)
        publish = os.link if self.rng.random() < 0.5 else os.rename
        try:
            publish(self.path(tmp), self.path(final))
            self.count("create_tmp", "ok")
        except OSError as e:
            self.outcome("create_tmp", e, f"{publish.__name__} {tmp} -> {final}")
        if publish is os.link or os.path.lexists(self.path(tmp)):
            try:
                os.unlink(self.path(tmp))
            except OSError as e:
                self.fail(f"unlink private {tmp}: {errname(e.errno)}")

    def op_read(self):
        name = self.shared_name()
        try:
            fd = os.open(self.path(name), os.O_RDONLY)
        except OSError as e:
            return self.outcome("read", e, f"open {name}")
        try:
            sealed = stat.S_IMODE(os.fstat(fd).st_mode) == 0o644
            data = read_all(fd)  # must work even if the file is renamed or unlinked meanwhile
        except OSError as e:
            self.count("read", errname(e.errno))
            return self.fail(f"read {name} (open descriptor): {errname(e.errno)}")
        finally:
            os.close(fd)
        if not sealed:
            return self.count("read", "unsealed")
        problem = self_check(data)
        if problem:
            self.count("read", "TORN")
            return self.fail(f"read {name}: sealed file is torn: {problem}")
        self.count("read", "ok")

    def op_rename(self):
        src, dst = self.shared_name(), self.shared_name()
        self.simple("rename", f"rename {src} -> {dst}", os.rename, self.path(src), self.path(dst))

    def op_link(self):
        src, dst = self.shared_name(), self.shared_name()
        self.simple("link", f"link {src} -> {dst}", os.link, self.path(src), self.path(dst))

    def op_unlink(self):
        name = self.shared_name()
        self.simple("unlink", f"unlink {name}", os.unlink, self.path(name))

    def op_mkdir(self):
        d = f"{self.rng.choice(DIRS)}/{self.rng.choice(SUBS)}"
        self.simple("mkdir", f"mkdir {d}", os.mkdir, self.path(d))

    def op_rmdir(self):
        """Half of the time empty the subdirectory first (racing with creators), then rmdir it."""
        d = f"{self.rng.choice(DIRS)}/{self.rng.choice(SUBS)}"
        if self.rng.random() < 0.5:
            try:
                names = os.listdir(self.path(d))
            except OSError as e:
                names = []
                self.outcome("listdir", e, f"listdir {d}")
            for name in names:
                if not name.startswith(TMP_PREFIX):
                    self.simple("unlink", f"unlink {d}/{name}", os.unlink, self.path(f"{d}/{name}"))
        self.simple("rmdir", f"rmdir {d}", os.rmdir, self.path(d))

    def op_stat(self):
        name = self.shared_name()
        self.simple("stat", f"lstat {name}", os.lstat, self.path(name))

    def op_listdir(self):
        d = self.shared_dir()
        self.simple("listdir", f"listdir {d}", os.listdir, self.path(d))

    def simple(self, op, what, fn, *args):
        try:
            fn(*args)
            self.count(op, "ok")
        except OSError as e:
            self.outcome(op, e, what)

    def run(self, deadline):
        names = list(OPS)
        weights = [OPS[n][0] for n in names]
        while time.monotonic() < deadline:
            op = self.rng.choices(names, weights)[0]
            try:
                getattr(self, "op_" + op)()
            except OSError as e:  # an operation's own bookkeeping failed
                self.fail(f"{op}: {errname(e.errno)} {e.filename}")


# ------------------------------------------------------------------ the parent


def start_workers(root, args):
    deadline = time.monotonic() + args.seconds
    children = []
    for index in range(args.processes):
        rfd, wfd = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            status = 0
            try:
                signal.alarm(int(args.seconds) + 120)  # a hung file system must not hang the tool forever
                worker = Worker(index, root, args)
                worker.run(deadline)
                report = {"counts": worker.counts, "failures": worker.failures}
            except BaseException as e:
                report = {"counts": {}, "failures": [f"worker {index}: crashed: {e!r}"]}
                status = 2
            with os.fdopen(wfd, "w") as f:
                json.dump(report, f)
            os._exit(status)
        os.close(wfd)
        children.append((pid, rfd))
    return children


def collect(children):
    counts, failures = {}, []
    for index, (pid, rfd) in enumerate(children):
        with os.fdopen(rfd) as f:
            text = f.read()
        _, status = os.waitpid(pid, 0)
        if not text:
            failures.append(f"worker {index}: died without a report (wait status {status:#x})")
            continue
        report = json.loads(text)
        failures += report["failures"]
        for op, by in report["counts"].items():
            mine = counts.setdefault(op, {})
            for outcome, n in by.items():
                mine[outcome] = mine.get(outcome, 0) + n
    return counts, failures


def walk(root):
    """Sorted (path, type+mode, size, nlink, sha256) of everything under root but the marker."""
    entries = []

    def visit(rel):
        for name in sorted(os.listdir(os.path.join(root, rel) if rel else root)):
            p = f"{rel}/{name}" if rel else name
            if p == MARKER:
                continue
            full = os.path.join(root, p)
            st = os.lstat(full)
            digest = ""
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb", buffering=0) as f:
                    digest = hashlib.sha256(read_all(f.fileno())).hexdigest()[:32]
            entries.append((p, stat.filemode(st.st_mode), st.st_size if not stat.S_ISDIR(st.st_mode) else "-",
                            st.st_nlink, digest))
            if stat.S_ISDIR(st.st_mode):
                visit(p)
    visit("")
    return entries


def compare_views(mount_root, backing_root, limit=10):
    """Differences between the two walks, as printable lines."""
    a = {e[0]: e for e in walk(mount_root)}
    b = {e[0]: e for e in walk(backing_root)}
    problems = []
    for path in sorted(set(a) | set(b)):
        if a.get(path) != b.get(path):
            problems.append(f"view differs at {path}: mount {a.get(path, 'missing')}, backing {b.get(path, 'missing')}")
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit} more differences"]
    return problems, len(a)


def check_files(root, limit=10):
    """Every remaining file: sealed, complete, checksum right; no temporary file left."""
    problems, files = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if rel == MARKER:
                continue
            files += 1
            if name.startswith(TMP_PREFIX):
                problems.append(f"{rel}: a temporary file was left behind")
                continue
            mode = stat.S_IMODE(os.lstat(full).st_mode)
            with open(full, "rb", buffering=0) as f:
                problem = self_check(read_all(f.fileno()))
            if mode != 0o644:
                problems.append(f"{rel}: not sealed (mode {mode:04o})")
            elif problem:
                problems.append(f"{rel}: {problem}")
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit} more"]
    return problems, files


def prepare(args):
    """MNT/stress with d0..d7 and a marker whose token must show up in DIR/stress."""
    root = os.path.join(os.path.abspath(args.mount), TOP)
    backing = os.path.join(os.path.abspath(args.backing), TOP)
    if os.path.lexists(root):
        if not os.path.exists(os.path.join(root, MARKER)):
            return setup_error(f"{root} exists and is not a stress tree; remove it first")
        shutil.rmtree(root)
    os.mkdir(root)
    token = f"{os.getpid()} {time.time_ns()}"
    with open(os.path.join(root, MARKER), "w") as f:
        f.write(token)
    for d in DIRS:
        os.mkdir(os.path.join(root, d))
    try:
        with open(os.path.join(backing, MARKER)) as f:
            seen = f.read()
    except OSError:
        seen = None
    if seen != token:
        shutil.rmtree(root)
        return setup_error(f"{backing} does not show what was written to {root}:"
                           " --backing must be the directory the mount serves")
    return root, backing


def setup_error(message):
    print(f"stress: {message}", file=sys.stderr)
    sys.exit(2)


def print_counts(counts):
    print("stress: operations (outcome counts; expected races are not failures):")
    for op in OPS:
        by = counts.get(op, {})
        total = sum(by.values())
        detail = ", ".join(f"{o} {n}" for o, n in sorted(by.items(), key=lambda item: -item[1]))
        print(f"stress:   {op:<12} {total:>7}  {detail}")


def copy_tree(src, dst):
    """A copy that keeps hard links (so that it walks exactly like the original)."""
    seen = {}
    os.mkdir(dst)
    shutil.copystat(src, dst)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        for name in sorted(dirnames):
            os.mkdir(os.path.join(dst, rel, name))
            shutil.copystat(os.path.join(dirpath, name), os.path.join(dst, rel, name))
        for name in sorted(filenames):
            source, target = os.path.join(dirpath, name), os.path.join(dst, rel, name)
            key = (os.lstat(source).st_dev, os.lstat(source).st_ino)
            if key in seen:
                os.link(seen[key], target)
            else:
                shutil.copy2(source, target)
                seen[key] = target


def self_test(root, backing):
    """The final checks must be able to fail. Returns the list of detections that did not happen."""
    missed = []
    copy = backing + ".selftest-copy"
    shutil.rmtree(copy, ignore_errors=True)
    copy_tree(backing, copy)
    same, _ = compare_views(root, copy)
    victims = sorted(os.path.relpath(os.path.join(dp, n), copy) for dp, _, names in os.walk(copy)
                     for n in names if n != MARKER and os.path.getsize(os.path.join(dp, n)) > HEADER.size)
    if not victims:
        shutil.rmtree(copy, ignore_errors=True)
        return ["(no file to corrupt)"]
    with open(os.path.join(copy, victims[0]), "r+b") as f:
        f.seek(HEADER.size)
        byte = f.read(1)
        f.seek(HEADER.size)
        f.write(bytes([byte[0] ^ 1]))
    problems, _ = compare_views(root, copy)
    shutil.rmtree(copy, ignore_errors=True)
    print(f"stress: self-test: an exact copy: {len(same)} differences; the copy with one byte of"
          f" {victims[0]} changed: {len(problems)} reported" + (f": {problems[0]}" if problems else ""))
    if same or not any(victims[0] in p for p in problems):
        missed.append("view difference")
    victims = [os.path.join(dp, n) for dp, _, names in os.walk(backing) for n in names
               if n != MARKER and os.path.getsize(os.path.join(dp, n)) > HEADER.size]
    if not victims:
        return missed + ["(no file to corrupt)"]
    fd = os.open(victims[-1], os.O_RDWR)  # through the backing directory, behind the mount's back
    last = os.fstat(fd).st_size - 1
    os.pwrite(fd, bytes([os.pread(fd, 1, last)[0] ^ 0x80]), last)
    os.close(fd)
    problems, _ = check_files(backing)  # (the mount might still serve its cached copy)
    print(f"stress: self-test: a flipped byte in {os.path.relpath(victims[-1], backing)}:"
          f" {len(problems)} problems reported" + (f", first: {problems[0]}" if problems else ""))
    if not problems:
        missed.append("self-check")
    return missed


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mount", required=True, help="the mount point (or a native directory)")
    ap.add_argument("--backing", required=True, help="the directory the mount serves")
    ap.add_argument("--processes", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--names", type=int, default=64, help="shared file names per directory")
    ap.add_argument("--size-max", type=int, default=256 * 1024, help="largest payload in bytes")
    ap.add_argument("--keep", action="store_true", help="keep MNT/stress")
    ap.add_argument("--self-test", action="store_true", help="also check that the final checks can fail")
    ap.add_argument("--semantics", choices=sorted(SEMANTICS_RACES),
                    help="the subject's documented differences: more errnos count as expected races")
    args = ap.parse_args()
    # The workers are forked: they see the widened table.
    for op, extra in SEMANTICS_RACES.get(args.semantics, {}).items():
        OPS[op] = (OPS[op][0], OPS[op][1] | extra)
    if args.processes < 1 or args.seconds <= 0 or args.names < 1:
        ap.error("--processes, --seconds and --names must be positive")
    os.umask(0o022)
    root, backing = prepare(args)
    print(f"stress: {args.processes} processes for {args.seconds:g} s in {root} (seed {args.seed})", flush=True)
    started = time.monotonic()
    try:
        counts, failures = collect(start_workers(root, args))
        ran = time.monotonic() - started
        print_counts(counts)
        view_problems, entries = compare_views(root, backing)
        file_problems, files = check_files(root)
        failures += view_problems + file_problems
        for f in failures:
            print(f"FAIL {f}")
        print(f"stress: {sum(sum(by.values()) for by in counts.values())} operations in {ran:.1f} s;"
              f" {entries} entries, {files} files at the end")
        missed = self_test(root, backing) if args.self_test else []
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.self_test:
        if missed:
            print(f"stress: self-test FAILED: not detected: {', '.join(missed)}")
        else:
            print("stress: self-test ok: both corruptions detected")
    if failures:
        print(f"stress: {len(failures)} failures")
        return 1
    print(f"stress: equal views, {files} files")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
