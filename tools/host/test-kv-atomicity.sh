#!/usr/bin/env bash
# test-kv-atomicity.sh — the key-value backend killed mid-change, again and again: every change is
# one Redis function call, so a SIGKILL of the engine at any moment must leave a whole store.
#
# A real redis-server (tools/redis-server.sh, AOF on) and dpfs-engine mounting it on this host.
# Each round: the engine starts (and reclaims the orphans the last round's open files left), a
# namespace workload (tools/host/kv_workload.py: creates, renames over files, NOREPLACE and
# EXCHANGE, links, unlinks, mkdir/rmdir, files held open while others unlink them) runs on 4
# processes, and after a random 50-500 ms the engine is SIGKILLed. Then the store's consistency
# check (dpfs_check: no dangling entry, no inode that nothing names and no orphan list holds, link
# counts and parents that match) must find nothing. Every 25th round the server itself is killed
# too and restarted from its AOF, and the check runs on what it read back.
# At the end, the checks that can fail: a torn change planted by hand (an entry removed without
# its link count) must be reported, or the run fails.
# Needs root (mount(2)). Exit status: the number of failed checks.
#   tools/host/test-kv-atomicity.sh [--rounds 100]
set -uo pipefail
cd "$(dirname "$0")/../.."

rounds=100
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "test-kv-atomicity: needs root (mount(2))"; exit 1; }
engine=.build/release/dpfs-engine
[ -x $engine ] || swift build -c release --product dpfs-engine || exit 1

work=$(mktemp -d /tmp/dpfs-kv-atomicity.XXXXXX)
export DPFS_REDIS_STATE=$work/redis
mnt=$work/mnt
mkdir -p "$mnt"
engine_pid=
cleanup() {
  [ -n "$engine_pid" ] && kill -KILL "$engine_pid" 2>/dev/null
  umount -l "$mnt" 2>/dev/null
  tools/redis-server.sh stop >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
urls=$(tools/redis-server.sh start) || { echo "test-kv-atomicity: redis-server did not start"; exit 1; }
url=$(grep '^unix://' <<<"$urls")
socket=${url#unix://}
prefix=atomicity
check() { redis-cli -s "$socket" FCALL dpfs_check 0 $prefix 2>&1; }

failures=0 kills=0 server_kills=0 orphans_seen=0
for round in $(seq 1 "$rounds"); do
  umount -l "$mnt" 2>/dev/null
  $engine --fuse-mount "$mnt" --backend kv --kv-url "$url" --kv-prefix $prefix --cache never --fuse-transport classic \
    >"$work/engine.log" 2>&1 &
  engine_pid=$!
  for _ in $(seq 1 100); do grep -q "INIT agreed" "$work/engine.log" 2>/dev/null && break; sleep 0.05; done
  if ! grep -q "INIT agreed" "$work/engine.log"; then
    echo "round $round: the engine did not start:"; cat "$work/engine.log"
    failures=$((failures + 1)); break
  fi
  python3 tools/host/kv_workload.py --mount "$mnt" --processes 4 --seconds 30 --seed "$round" &
  workload=$!
  sleep "0.$(printf '%03d' $((50 + RANDOM % 450)))"
  kill -KILL "$engine_pid"; wait "$engine_pid" 2>/dev/null; engine_pid=
  kills=$((kills + 1))
  for _ in $(seq 1 100); do kill -0 $workload 2>/dev/null || break; sleep 0.1; done
  kill -KILL $workload 2>/dev/null; wait $workload 2>/dev/null
  orphans=$(redis-cli -s "$socket" SCARD $prefix:orphans)
  [ "${orphans:-0}" -gt 0 ] && orphans_seen=$((orphans_seen + 1))
  if [ $((round % 25)) = 0 ]; then
    tools/redis-server.sh kill >/dev/null
    tools/redis-server.sh restart >/dev/null || { echo "round $round: redis-server did not restart"; failures=$((failures + 1)); break; }
    server_kills=$((server_kills + 1))
  fi
  problems=$(check)
  if [ -n "$problems" ]; then
    echo "round $round: the store is not whole after the SIGKILL: $problems"
    failures=$((failures + 1))
  fi
done
umount -l "$mnt" 2>/dev/null
entries=$(redis-cli -s "$socket" --scan --pattern "$prefix:i:*" | wc -l)
echo "test-kv-atomicity: $kills engine SIGKILLs ($server_kills with the server killed too), $orphans_seen left open files as orphans; $entries inodes in the store"
[ $failures = 0 ] && echo "RESULT kv-atomicity-ok" || echo "RESULT kv-atomicity-FAILED"

# The check can fail: an entry removed by hand without its link count, as a non-atomic unlink
# killed halfway would leave it.
victim=$(redis-cli -s "$socket" --scan --pattern "$prefix:d:*" | while read -r key; do
  name=$(redis-cli -s "$socket" HRANDFIELD "$key"); [ -n "$name" ] && { echo "$key $name"; break; }; done)
if [ -n "$victim" ]; then
  redis-cli -s "$socket" HDEL $victim >/dev/null
  if [ -n "$(check)" ]; then echo "RESULT kv-atomicity-check-can-fail-ok"
  else echo "RESULT kv-atomicity-check-can-fail-FAILED: a torn unlink went unnoticed"; failures=$((failures + 1)); fi
else
  echo "RESULT kv-atomicity-check-can-fail-FAILED: no entry left to tear"; failures=$((failures + 1))
fi
exit $failures
