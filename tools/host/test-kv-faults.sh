#!/usr/bin/env bash
# test-kv-faults.sh — redis-server killed and restarted under load, then stalled, with the
# key-value backend serving a host mount (tools/host/nfs_faults.py, the same loops and promises as
# for the NFS backend): every fsync that returned success is in the store after the restarts (the
# AOF is fsynced before every reply), every request during an outage completes after the reconnect
# or fails EIO within the timeout, and a second device of the same engine on another backend
# (passthrough) keeps serving meanwhile. What is in the store is read through a second engine that
# mounts the same store. Needs root and /dev/fuse. Exit status 0 when everything holds.
#   tools/host/test-kv-faults.sh [--timeout-ms MS]
set -uo pipefail
cd "$(dirname "$0")/../.."
timeout_ms=4000
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout-ms) timeout_ms=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "test-kv-faults: needs root"; exit 1; }
engine=.build/release/dpfs-engine
[ -x $engine ] || swift build -c release --product dpfs-engine || exit 1

work=$(mktemp -d /tmp/dpfs-kv-faults.XXXXXX)
chmod 755 "$work"
export DPFS_REDIS_STATE=$work/redis
mkdir -p "$work/other" "$work/mnt-kv" "$work/mnt-other" "$work/mnt-view"
engine_pid= view_pid=
cleanup() {
  tools/redis-server.sh resume 2>/dev/null
  for pid in $engine_pid $view_pid; do kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  umount -l "$work/mnt-kv" "$work/mnt-other" "$work/mnt-view" 2>/dev/null
  tools/redis-server.sh stop
  rm -rf "$work"
}
trap cleanup EXIT

url=$(tools/redis-server.sh start | grep '^unix://') || { echo "test-kv-faults: redis-server did not start"; exit 1; }
cat >"$work/engine.toml" <<TOML
[engine]
log_level = "info"

[[device]]
name = "kv"
transport = "fuse"
mount = "$work/mnt-kv"
backend = "kv"
kv_url = "$url"
kv_prefix = "faults"
kv_timeout_ms = $timeout_ms
cache = "never"

[[device]]
name = "local"
transport = "fuse"
mount = "$work/mnt-other"
backend = "passthrough"
shared_dir = "$work/other"
cache = "never"
TOML
$engine --config "$work/engine.toml" >"$work/engine.log" 2>&1 &
engine_pid=$!
for _ in $(seq 100); do
  [ "$(grep -c "INIT agreed" "$work/engine.log")" -ge 2 ] && break
  kill -0 $engine_pid 2>/dev/null || break
  sleep 0.1
done
if [ "$(grep -c "INIT agreed" "$work/engine.log")" -lt 2 ]; then
  echo "test-kv-faults: the engine did not serve both mounts"; cat "$work/engine.log"; exit 1
fi
# The second client of the store: what it reads at the end is what the server kept.
$engine --fuse-mount "$work/mnt-view" --backend kv --kv-url "$url" --kv-prefix faults --cache never --fuse-transport classic \
  --kv-timeout-ms 60000 >"$work/view.log" 2>&1 &
view_pid=$!
for _ in $(seq 100); do grep -q "INIT agreed" "$work/view.log" 2>/dev/null && break; sleep 0.1; done
status=0
python3 tools/host/nfs_faults.py --nfs-mount "$work/mnt-kv" --export "$work/mnt-view" --other-mount "$work/mnt-other" \
  --server tools/redis-server.sh --timeout-ms "$timeout_ms" || status=1
kill -TERM $engine_pid; wait $engine_pid 2>/dev/null; engine_pid=
report=$(grep "key-value server faults" "$work/engine.log" | sed 's/.*key-value server faults/key-value server faults/')
echo "test-kv-faults: engine: ${report:-no fault report}"
[ -n "$report" ] || { echo "test-kv-faults: FAIL the engine printed no fault report"; status=1; }
problems=$(redis-cli -s "${url#unix://}" FCALL dpfs_check 0 faults 2>&1)
if [ -n "$problems" ]; then echo "test-kv-faults: FAIL the store is not whole: $problems"; status=1; else echo "test-kv-faults: store whole (dpfs_check)"; fi
[ $status = 0 ] || { echo "--- engine log (last 40 lines)"; tail -40 "$work/engine.log"; }
exit $status
