#!/usr/bin/env bash
# test-nfs-faults.sh — nfs-ganesha killed and restarted under load (tools/host/nfs_faults.py): every
# fsync that returned success is durable in the export, every request during an outage completes
# after the reconnect or fails EIO within the timeout, and a second device of the same engine on
# another backend (passthrough) keeps serving meanwhile. One engine process serves both devices as
# host mounts (TOML: two [[device]] tables with transport = "fuse"); ganesha runs from
# tools/nfs-server.sh on loopback. Needs root and /dev/fuse. Exit status 0 when everything holds.
# --version 4.1 runs it over NFSv4.1: a restart makes the server forget the client, which the
# engine makes again (EXCHANGE_ID, sessions) before the waiting requests go.
#   tools/host/test-nfs-faults.sh [--timeout-ms MS] [--version 3|4.1|4.0]
set -uo pipefail
cd "$(dirname "$0")/../.."
timeout_ms=4000
version=3
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout-ms) timeout_ms=$2; shift ;;
    --version) version=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "test-nfs-faults: needs root"; exit 1; }
engine=.build/release/dpfs-engine
[ -x $engine ] || swift build -c release --product dpfs-engine || exit 1

work=$(mktemp -d /tmp/dpfs-nfs-faults.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/export" "$work/other" "$work/mnt-nfs" "$work/mnt-other"
engine_pid=
cleanup() {
  if [ -n "$engine_pid" ]; then kill -TERM "$engine_pid" 2>/dev/null; wait "$engine_pid" 2>/dev/null; fi
  umount -l "$work/mnt-nfs" "$work/mnt-other" 2>/dev/null
  tools/nfs-server.sh stop
  rm -rf "$work"
}
trap cleanup EXIT

urls=$(tools/nfs-server.sh start "$work/export") || { echo "test-nfs-faults: nfs-ganesha did not start"; exit 1; }
# With a grace period (DPFS_NFS_GRACE), a freshly started server refuses new state until it ends.
[ -n "${DPFS_NFS_GRACE:-}" ] && sleep "$DPFS_NFS_GRACE"
# NFSv4.1 (--version 4.1): the export's pseudo path, one connection per queue (its session binds it).
connections=2
if [ "$version" = 3 ]; then
  url=$(grep "version=3" <<<"$urls")
else
  url=$(grep "version=4" <<<"$urls" | sed "s/version=4&/version=$version\&/")
  connections=1
fi
cat >"$work/engine.toml" <<TOML
[engine]
log_level = "info"

[[device]]
name = "nfs"
transport = "fuse"
mount = "$work/mnt-nfs"
backend = "nfs"
nfs_url = "$url"
nfs_timeout_ms = $timeout_ms
# Two connections over v3: each is lost and re-made on its own.
nfs_connections = $connections
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
  echo "test-nfs-faults: the engine did not serve both mounts"; cat "$work/engine.log"; exit 1
fi
status=0
python3 tools/host/nfs_faults.py --nfs-mount "$work/mnt-nfs" --export "$work/export" --other-mount "$work/mnt-other" \
  --server tools/nfs-server.sh --timeout-ms "$timeout_ms" || status=1
kill -TERM $engine_pid; wait $engine_pid 2>/dev/null; engine_pid=
report=$(grep "NFS server faults" "$work/engine.log" | sed 's/.*NFS server faults/NFS server faults/')
echo "test-nfs-faults: engine: ${report:-no fault report}"
# (ganesha 4.3 here keeps its write verifier across most restarts, so how many writes the engine
# had to send again varies from run to run; the fsync checks above hold either way.)
[ -n "$report" ] || { echo "test-nfs-faults: FAIL the engine printed no fault report"; status=1; }
[ $status = 0 ] || { echo "--- engine log (last 40 lines)"; tail -40 "$work/engine.log"; }
exit $status
