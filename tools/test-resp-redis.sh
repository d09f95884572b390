#!/usr/bin/env bash
# The RESP codec against a real redis-server: tools/redis-server.sh starts one (unix socket, AOF
# on) in a fresh state directory, and RESPRedisTests runs with DPFS_REDIS_SOCKET pointing at it
# (without the variable that test is off, since it has no server).
#   tools/test-resp-redis.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export DPFS_REDIS_STATE
DPFS_REDIS_STATE=$(mktemp -d /tmp/dpfs-resp-redis.XXXXXX)
log=$(mktemp /tmp/dpfs-resp-redis-log.XXXXXX)
trap 'tools/redis-server.sh stop; rm -rf "$DPFS_REDIS_STATE" "$log"' EXIT
socket=$(tools/redis-server.sh start | sed -n 's|^unix://||p')
DPFS_REDIS_SOCKET="$socket" swift test --filter RESP 2>&1 | tee "$log" | grep -E "✔|✘|passed|failed|error" || true
# Passed only when the real-server test ran and nothing failed.
grep -q 'Test "redis-server understands the commands' "$log" && grep -q 'Test "redis-server understands the commands.*" passed' "$log" \
  || { echo "the RESP test against redis-server did not pass" >&2; exit 1; }
! grep -q "✘" "$log"
