#!/usr/bin/env bash
# test-nfs-hostile.sh — the NFS backend against a server that lies (tools/host/hostile_nfs_server.py:
# a handle longer than NFSv3 allows, a name with '/', a READ answering more than asked or less
# than it claims, symlink targets empty and longer than PATH_MAX, nanoseconds past a second, a
# listing that never ends). Through a host mount: each lie is an error for its own system call
# (EIO, ENAMETOOLONG, ELOOP) or is left out, never a crash, never a hang past the timeout, and
# the honest file still reads afterwards. Needs root and /dev/fuse.
# --version 4.1: the same lies told over NFSv4.1 (tools/host/hostile_nfs4_server.py), and three of
# v4's own: an attribute not asked for, a result labelled with another operation, and SEQUENCE
# echoing another session: each fails its own call EIO.
# --version 4.0: the same over NFSv4.0 (no SEQUENCE, no locks on the server), and two of 4.0's own:
# an OPEN refusing a new owner's first seqid (the create fails EIO, no retry loop) and an
# OPEN_CONFIRM refused (the file is made; its open is left to the lease, and the engine says so).
set -uo pipefail
cd "$(dirname "$0")/../.."
version=3
[ "${1:-}" = --version ] && version=$2
engine=.build/release/dpfs-engine
[ -x $engine ] || swift build -c release --product dpfs-engine || exit 1
port=${DPFS_HOSTILE_PORT:-0}   # 0: the server binds a free port and says which
work=$(mktemp -d /tmp/dpfs-nfs-hostile.XXXXXX)
mkdir -p "$work/mnt"
server_pid= engine_pid=
cleanup() {
  [ -n "$engine_pid" ] && kill -TERM "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null
  umount -l "$work/mnt" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
server=tools/host/hostile_nfs_server.py
[ "$version" = 3 ] || server=tools/host/hostile_nfs4_server.py
python3 $server --port "$port" --ready "$work/ready" &
server_pid=$!
for _ in $(seq 50); do [ -s "$work/ready" ] && break; sleep 0.1; done
port=$(cat "$work/ready" 2>/dev/null)
[ -n "$port" ] && kill -0 "$server_pid" 2>/dev/null || { echo "test-nfs-hostile: the test server did not start"; exit 1; }
url="nfs://127.0.0.1/hostile?version=3&nfsport=$port&mountport=$port"
[ "$version" = 3 ] || url="nfs://127.0.0.1/hostile?version=$version&nfsport=$port"
$engine --fuse-mount "$work/mnt" --backend nfs --cache never --nfs-timeout-ms 2000 \
  --nfs-url "$url" >"$work/engine.log" 2>&1 &
engine_pid=$!
for _ in $(seq 100); do grep -q "INIT agreed" "$work/engine.log" 2>/dev/null && break; kill -0 $engine_pid 2>/dev/null || break; sleep 0.1; done
grep -q "INIT agreed" "$work/engine.log" || { echo "test-nfs-hostile: the engine did not mount"; cat "$work/engine.log"; exit 1; }
status=0
python3 - "$work/mnt" "$version" <<'PY' || status=1
import errno, os, sys, time
mnt = sys.argv[1]
v4 = sys.argv[2] != "3"
v40 = sys.argv[2] == "4.0"
bad = []
def expect(what, function, want):
    started = time.monotonic()
    try:
        got = ("ok", function())
    except OSError as failure:
        got = (errno.errorcode.get(failure.errno, str(failure.errno)), None)
    elapsed = time.monotonic() - started
    verdict = "ok" if (got[0] == want if isinstance(want, str) else got == ("ok", want)) else "FAIL"
    print(f"test-nfs-hostile: {verdict} {what}: {got[0] if got[0] != 'ok' else repr(got[1])[:60]} ({elapsed:.2f} s)")
    if verdict != "ok":
        bad.append(what)
    if elapsed > 2 * 2.0 + 2:
        bad.append(f"{what} took {elapsed:.1f} s")
def read(name):
    with open(os.path.join(mnt, name), "rb") as f:
        return f.read()
expect("the honest file reads", lambda: read("good"), b"hello world")
expect("a READ answering more than asked", lambda: read("long-read"), "EIO")
expect("a READ claiming more than it sends", lambda: read("short-data"), "EIO")
expect("a 5000-byte symlink target", lambda: os.readlink(os.path.join(mnt, "long-link")), "ENAMETOOLONG")
expect("an empty symlink target", lambda: os.readlink(os.path.join(mnt, "empty-link")), "EIO")
if v4:
    # NFSv4's reader refuses the reply whole (an nfstime4 past a second is no time at all).
    expect("nanoseconds past a second", lambda: os.stat(os.path.join(mnt, "odd-times")), "EIO")
    expect("a 129-byte handle", lambda: os.stat(os.path.join(mnt, "badhandle")), "EIO")
    expect("an attribute not asked for", lambda: os.stat(os.path.join(mnt, "unasked")), "EIO")
    expect("a result labelled with another operation", lambda: os.stat(os.path.join(mnt, "wrong-op")), "EIO")
if v4 and not v40:
    expect("SEQUENCE echoing another session", lambda: os.stat(os.path.join(mnt, "wrong-session")), "EIO")
if v40:
    def make(name):
        os.close(os.open(os.path.join(mnt, name), os.O_CREAT | os.O_WRONLY, 0o644))
        return True
    expect("OPEN refusing a new owner's first seqid", lambda: make("seqid-liar"), "EIO")
    expect("OPEN_CONFIRM refused: the file is made all the same", lambda: make("confirm-fails"), True)
if v4:
    import fcntl, struct
    def getlk(name):
        with open(os.path.join(mnt, name), "rb") as f:
            kind, _, start, length, _ = struct.unpack("hhqqi", fcntl.fcntl(f, fcntl.F_GETLK, struct.pack("hhqqi", fcntl.F_RDLCK, 0, 0, 0, 0)))
            return (kind, start, length)
    expect("GETLK: another client's read lock of everything", lambda: getlk("good"), (fcntl.F_RDLCK, 0, 0))
    expect("GETLK: a lock past any offset is clamped to OFFSET_MAX", lambda: getlk("far-lock"), (fcntl.F_WRLCK, (1 << 63) - 1, 0))
    expect("GETLK: a lock type outside 1-4", lambda: getlk("bad-lock"), "EIO")
if not v4:
    expect("nanoseconds past a second are clamped", lambda: os.stat(os.path.join(mnt, "odd-times")).st_mtime_ns % 1_000_000_000,
           999_999_999)
    expect("a 65-byte handle", lambda: os.stat(os.path.join(mnt, "badhandle")), "EIO")
# Listed last: READDIRPLUS hands the kernel entries it may then use instead of a LOOKUP.
expect("the listing leaves out the name with '/'", lambda: sorted(os.listdir(mnt)),
       sorted(["good", "long-read", "short-data", "long-link", "empty-link", "odd-times", "badhandle", "many"]
              + (["unasked", "wrong-op", "wrong-session", "far-lock", "bad-lock"] if v4 else [])))
expect("a listing that never ends", lambda: len(os.listdir(os.path.join(mnt, "many"))), "ELOOP")
expect("the honest file still reads", lambda: read("good"), b"hello world")
print(f"test-nfs-hostile: {'all hold' if not bad else f'{len(bad)} failed: {bad}'}")
sys.exit(1 if bad else 0)
PY
kill -0 $engine_pid 2>/dev/null || { echo "test-nfs-hostile: FAIL the engine died"; status=1; }
if [ "$version" = 4.0 ]; then
  kill -TERM $engine_pid 2>/dev/null; wait $engine_pid 2>/dev/null
  if grep -q "1 BAD_SEQID(s), 1 create open(s) left to the lease" "$work/engine.log"; then
    echo "test-nfs-hostile: ok the engine reports the refused seqid and the open left to the lease"
  else
    echo "test-nfs-hostile: FAIL the engine's 4.0 report: $(grep -o "NFSv4.0: .*" "$work/engine.log")"; status=1
  fi
fi
[ $status = 0 ] || tail -20 "$work/engine.log"
exit $status
