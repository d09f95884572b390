#!/usr/bin/env bash
# test-nfs4-locks.sh — POSIX locks over the NFS backend's NFSv4.1 (LOCK, LOCKT, LOCKU), against a
# real nfs-ganesha (tools/nfs-server.sh): tools/host/nfs_locks.py's conflicts, GETLK holders,
# SETLKW woken by an unlock and by a close, and an interrupted SETLKW, between two processes
#   1. on two mounts served by two engines (two NFSv4.1 clients of one export: the server decides);
#   2. on one mount (both processes' locks still go to the server);
#   3. an engine told to stop while a SETLKW waits on it stops (the wait ends EINTR);
#   4. across a server restart, which forgets them: the holder's next lock on the file fails EIO
#      until it closes the file, and the other engine's process gets the range meanwhile;
#   5. across a restart of a server with a grace period (15 s, lease 10 s): the holder's engine
#      reclaims its locks (OPEN CLAIM_PREVIOUS, LOCK with reclaim set) before RECLAIM_COMPLETE, so
#      the other engine's process is still refused them, and the holder unlocks as usual;
# and the controls, which must fail: step 5 with the reclaim turned off (DPFS_TEST_NFS4_NO_RECLAIM),
# and the same checks over NFSv3, where the guest's kernel keeps locks (no NLM), so a lock through
# one engine is not seen through the other.
# Needs root. Uses .build/release/dpfs-engine (built if missing). Exit status: failed checks.
set -uo pipefail
cd "$(dirname "$0")/../.."
# --version 4.0: the same over NFSv4.0 (opens by name, per-pair owners and seqids; the reclaim of
# step 5 by OPEN CLAIM_PREVIOUS, OPEN_CONFIRM and LOCK with reclaim set, and a 4.0 client holds the
# grace period for all of it).
version=4.1
[ "${1:-}" = --version ] && { version=$2; shift 2; }
case $version in 4.1|4.0) ;; *) echo "usage: $0 [--version 4.1|4.0]" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "test-nfs4-locks: needs root"; exit 1; }
engine=${DPFS_ENGINE:-.build/release/dpfs-engine}
[ -x $engine ] || swift build -c release --product dpfs-engine || exit 1

work=$(mktemp -d /tmp/dpfs-locks.XXXXXX)
chmod 755 "$work"
export DPFS_NFS_STATE=$work/nfs
mkdir -p "$work/mnt-a" "$work/mnt-b" "$work/share"
failures=0
ok() { echo "RESULT $1-ok"; }
bad() { echo "RESULT $1-FAILED: $2"; failures=$((failures + 1)); }
pids=()
stop_engines() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  pids=()
  umount -l "$work/mnt-a" "$work/mnt-b" 2>/dev/null
}
cleanup() {
  stop_engines
  tools/nfs-server.sh stop >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

urls=$(tools/nfs-server.sh start "$work/share") || { echo "RESULT server-FAILED: nfs-ganesha did not start"; exit 1; }
# engines VERSION: two engines, one per mount, on the export.
engines() {
  local url
  if [ "$1" = 3 ]; then url=$(grep "version=3" <<<"$urls"); else url=$(grep "version=4" <<<"$urls" | sed "s/version=4&/version=$1\&/"); fi
  for name in a b; do
    env ${engine_env:-} $engine --fuse-mount "$work/mnt-$name" --backend nfs --nfs-url "$url" --cache never --fuse-transport uring \
      >"$work/engine-$name-$1.log" 2>&1 &
    pids+=($!)
  done
  for name in a b; do
    for _ in $(seq 1 150); do grep -q "INIT agreed" "$work/engine-$name-$1.log" 2>/dev/null && break; sleep 0.1; done
    grep -q "INIT agreed" "$work/engine-$name-$1.log" || { bad "engine-$name-v$1" "did not serve: $(tail -3 "$work/engine-$name-$1.log")"; return 1; }
  done
  grep -o "INIT agreed.*flags [^ ]*" "$work/engine-a-$1.log" | head -1 | sed 's/^/    /'
}

if engines $version; then
  if python3 tools/host/nfs_locks.py --mount-a "$work/mnt-a" --mount-b "$work/mnt-b"; then ok two-engines; else bad two-engines "see above"; fi
  if python3 tools/host/nfs_locks.py --mount-a "$work/mnt-a" --mount-b "$work/mnt-a"; then ok one-engine; else bad one-engine "see above"; fi
  # An engine told to stop while a SETLKW waits on it ends the wait rather than hang its stop.
  touch "$work/mnt-a/held"
  python3 -c 'import fcntl, sys, time; f = open(sys.argv[1], "r+"); fcntl.lockf(f, fcntl.LOCK_EX); time.sleep(60)' "$work/mnt-a/held" &
  holder=$!
  sleep 1
  python3 -c 'import fcntl, sys; f = open(sys.argv[1], "r+"); fcntl.lockf(f, fcntl.LOCK_EX)' "$work/mnt-b/held" >/dev/null 2>&1 &
  waiter=$!
  sleep 1
  if kill -0 $waiter 2>/dev/null; then
    started=$SECONDS
    kill -TERM "${pids[1]}"
    for _ in $(seq 1 100); do kill -0 "${pids[1]}" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "${pids[1]}" 2>/dev/null; then bad stop-ends-setlkw "engine b still runs 10 s after SIGTERM with a SETLKW waiting"; else ok stop-ends-setlkw; fi
    wait "${pids[1]}" 2>/dev/null
    $engine --fuse-mount "$work/mnt-b" --backend nfs --nfs-url "$(grep "version=4" <<<"$urls" | sed "s/version=4&/version=$version\&/")" --cache never --fuse-transport uring \
      >"$work/engine-b2.log" 2>&1 &
    pids[1]=$!
    for _ in $(seq 1 150); do grep -q "INIT agreed" "$work/engine-b2.log" 2>/dev/null && break; sleep 0.1; done
  else
    bad stop-ends-setlkw "the SETLKW did not wait (the holder's lock was not seen)"
  fi
  kill $holder $waiter 2>/dev/null; wait $holder $waiter 2>/dev/null
  # The server restarts (Graceless: it forgets every lock at once): a lock held through it is lost.
  if python3 tools/host/nfs_locks.py --mount-a "$work/mnt-a" --mount-b "$work/mnt-b" --restart-command "tools/nfs-server.sh restart"; then
    ok lost-on-restart
  else
    bad lost-on-restart "see above"
  fi
fi
stop_engines
grep -h "NFS server faults\|lock" "$work"/engine-a-$version.log | tail -2 | sed 's/^/    /'
# 5. The same export from a server with a grace period: a restart lets the engines reclaim.
tools/nfs-server.sh stop
urls=$(DPFS_NFS_GRACE=15 DPFS_NFS_LEASE=10 tools/nfs-server.sh start "$work/share") \
  || { bad grace-server "nfs-ganesha did not start with a grace period"; urls=; }
if [ -n "$urls" ] && engines $version; then
  if python3 tools/host/nfs_locks.py --mount-a "$work/mnt-a" --mount-b "$work/mnt-b" --restart-command "tools/nfs-server.sh restart" --grace; then
    ok reclaimed-in-grace
  else
    bad reclaimed-in-grace "see above"
  fi
  stop_engines
  grep -o "[0-9]* lock owner(s) reclaimed after a restart ([0-9]* refused)" "$work/engine-a-$version.log" | tail -1 | sed 's/^/    engine a: /'
  # Control: the holder's engine does not reclaim; the other engine's process must get the ranges.
  if engine_env=DPFS_TEST_NFS4_NO_RECLAIM=1 engines $version; then
    if python3 tools/host/nfs_locks.py --mount-a "$work/mnt-a" --mount-b "$work/mnt-b" --restart-command "tools/nfs-server.sh restart" --grace \
        >"$work/control-grace.out" 2>&1; then
      bad control-no-reclaim-fails "the reclaim checks passed with the reclaim turned off"
    else
      ok control-no-reclaim-fails
      grep -m1 FAILED "$work/control-grace.out" | sed 's/^/    /'
    fi
  fi
  stop_engines
fi
# The control: over NFSv3 the same checks must fail (each engine's kernel keeps its own locks).
if engines 3; then
  if python3 tools/host/nfs_locks.py --mount-a "$work/mnt-a" --mount-b "$work/mnt-b" >"$work/control.out" 2>&1; then
    bad control-v3-fails "the lock checks passed over NFSv3, where no lock reaches the server"
  else
    ok control-v3-fails
    grep -m1 FAILED "$work/control.out" | sed 's/^/    /'
  fi
fi
stop_engines
echo "test-nfs4-locks: $failures failure(s)"
exit $failures
