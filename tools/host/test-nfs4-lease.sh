#!/usr/bin/env bash
# test-nfs4-lease.sh — an NFSv4 device's client (and over 4.1 its sessions) over time, against
# nfs-ganesha with a 10 s lease (DPFS_NFS_LEASE=10, tools/nfs-server.sh):
#   1. a file kept open, then 30 s with nothing sent: it still reads, a new open reads it, a new
#      file is made, and the engine never had to make its client again (the lease was renewed: over
#      4.1 a SEQUENCE from idle queues each third of it, over 4.0 a RENEW);
#   2. 64 processes each making, writing, reading, closing and removing a file, over and over for
#      10 s: no error, and the server refused no SEQUENCE (4.1: no slot or session out of step) and
#      no seqid (4.0: BAD_SEQID, each engine slot being its own open-owner);
# and the control that must fail: with renewals turned off (DPFS_TEST_NFS4_NO_RENEWAL) the same 30 s
# idle lets the client expire, and the engine reports making it again.
# Needs root and /dev/fuse. Uses .build/release/dpfs-engine (built if missing). Exit status: failed checks.
#   tools/host/test-nfs4-lease.sh [--version 4.1|4.0]
set -uo pipefail
cd "$(dirname "$0")/../.."
version=4.1
[ "${1:-}" = --version ] && { version=$2; shift 2; }
case $version in 4.1|4.0) ;; *) echo "usage: $0 [--version 4.1|4.0]" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "test-nfs4-lease: needs root"; exit 1; }
engine=.build/release/dpfs-engine
[ -x $engine ] || swift build -c release --product dpfs-engine || exit 1
work=$(mktemp -d /tmp/dpfs-nfs4-lease.XXXXXX)
chmod 755 "$work"
export DPFS_NFS_STATE=$work/nfs DPFS_NFS_LEASE=10
mkdir -p "$work/share" "$work/mnt"
failures=0
ok() { echo "RESULT $1-ok"; }
bad() { echo "RESULT $1-FAILED: $2"; failures=$((failures + 1)); }
engine_pid=
stop_engine() {
  [ -n "$engine_pid" ] || return 0
  kill -TERM "$engine_pid" 2>/dev/null; wait "$engine_pid" 2>/dev/null; engine_pid=
}
cleanup() { exec 7<&- 2>/dev/null; stop_engine; umount -l "$work/mnt" 2>/dev/null; tools/nfs-server.sh stop; rm -rf "$work"; }
trap cleanup EXIT

url=$(tools/nfs-server.sh start "$work/share" | grep "version=4" | sed "s/version=4&/version=$version\&/") \
  || { echo "RESULT server-FAILED: nfs-ganesha did not start"; exit 1; }
echo "server: $url (lease 10 s)"

# start LOG [ENV...]: the engine serving $work/mnt over NFSv$version.
start() {
  local log=$1; shift
  env "$@" $engine --fuse-mount "$work/mnt" --backend nfs --nfs-url "$url" --cache never --fuse-transport uring >"$log" 2>&1 &
  engine_pid=$!
  for _ in $(seq 100); do grep -q "INIT agreed" "$log" && return 0; sleep 0.1; done
  return 1
}
# report LOG: the engine's NFSv4 stop line.
report() { grep -o "NFSv$version: .*" "$1" | tail -1; }

# 1. Idle for three leases with a file open.
start "$work/engine.log" || { bad start "$(tail -3 "$work/engine.log")"; exit 1; }
head -c 100000 /dev/urandom >"$work/data"
cp "$work/data" "$work/mnt/kept"
exec 7<"$work/mnt/kept"
sleep 30
if cmp -s "$work/data" /dev/fd/7 && cmp -s "$work/data" "$work/mnt/kept"; then ok "reads-after-30s-idle"; else bad "reads-after-30s-idle" "the kept file no longer reads"; fi
exec 7<&-
# A new file needs the client (an OPEN names it): made without making the client again (below).
echo made >"$work/mnt/made-after-idle" && [ "$(cat "$work/mnt/made-after-idle")" = made ] \
  && ok "creates-after-30s-idle" || bad "creates-after-30s-idle" "a file made after the idle time does not read back"

# 2. 64 processes at once.
python3 - "$work/mnt" <<'PY' >"$work/loops.out" 2>&1
import os, sys, time, multiprocessing
root = sys.argv[1]
def loop(n):
    errors = 0
    end = time.time() + 10
    path = os.path.join(root, f"loop-{n}")
    count = 0
    while time.time() < end:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            os.pwrite(fd, n.to_bytes(4, "little") * 256, 0)
            data = os.pread(fd, 1024, 0)
            os.close(fd)
            os.unlink(path)
            if data != n.to_bytes(4, "little") * 256: errors += 1
            count += 1
        except OSError as error:
            errors += 1
    return count, errors
with multiprocessing.Pool(64) as pool:
    results = pool.map(loop, range(64))
print("loops:", sum(c for c, _ in results), "cycles,", sum(e for _, e in results), "errors")
PY
cat "$work/loops.out"
grep -q ", 0 errors" "$work/loops.out" && ok "64-open-close-loops" || bad "64-open-close-loops" "$(tail -2 "$work/loops.out")"
stop_engine
line=$(report "$work/engine.log")
echo "    engine: $line"
if [ $version = 4.1 ]; then
  case "$line" in
    *" 0 SEQUENCE(s) refused, client made again 0 time(s)"*) ok "no-session-trouble" ;;
    *) bad "no-session-trouble" "${line:-no NFSv4.1 report}" ;;
  esac
  renewals=$(sed -n 's/.*NFSv4.1: \([0-9]*\) lease renewal.*/\1/p' <<<"$line")
else
  case "$line" in
    *" 0 call(s) refused STALE_CLIENTID or EXPIRED, client made again 0 time(s), 0 BAD_SEQID(s), 0 create open(s) left to the lease"*) ok "no-client-or-seqid-trouble" ;;
    *) bad "no-client-or-seqid-trouble" "${line:-no NFSv4.0 report}" ;;
  esac
  renewals=$(sed -n 's/.*NFSv4.0: \([0-9]*\) RENEW.*/\1/p' <<<"$line")
fi
[ "${renewals:-0}" -ge 2 ] && ok "lease-renewed" || bad "lease-renewed" "${renewals:-0} renewals in 30 s of a 10 s lease"

# Control: no renewals, the same idle time: the client expires and is made again.
start "$work/control.log" DPFS_TEST_NFS4_NO_RENEWAL=1 || { bad control-start "$(tail -3 "$work/control.log")"; exit 1; }
cat "$work/mnt/kept" >/dev/null
sleep 30
cmp -s "$work/data" "$work/mnt/kept" || echo "    (control: the read after expiry failed)"
echo made >"$work/mnt/made-after-expiry" || echo "    (control: the file made after expiry failed)"
stop_engine
line=$(report "$work/control.log")
echo "    control engine: $line"
case "$line" in
  *"client made again 0 time(s)"*) bad "control-expiry" "without renewals the client did not expire: the check above proves nothing" ;;
  *"client made again"*) ok "control-expiry" ;;
  *) bad "control-expiry" "${line:-no NFSv$version report}" ;;
esac
echo "test-nfs4-lease: $failures failure(s)"
exit $failures
