#!/usr/bin/env bash
# The key-value backend's parts against a real redis-server: tools/redis-server.sh starts one (unix
# socket and loopback TCP, AOF on) in a fresh state directory, and the suites of the RESP codec, the
# Redis functions, the connection and the backend's conformance (RESPRedisTests, KVFunctionsTests,
# KVConnectionTests, ConformanceTests' key-value test) run with
# DPFS_REDIS_SOCKET and DPFS_REDIS_URL pointing at it (without the variables those suites are off,
# since they have no server).
#   tools/test-kv-redis.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export DPFS_REDIS_STATE
DPFS_REDIS_STATE=$(mktemp -d /tmp/dpfs-kv-redis.XXXXXX)
log=$(mktemp /tmp/dpfs-kv-redis-log.XXXXXX)
trap 'tools/redis-server.sh stop; rm -rf "$DPFS_REDIS_STATE" "$log"' EXIT
urls=$(tools/redis-server.sh start)
socket=$(sed -n 's|^unix://||p' <<<"$urls")
url=$(grep '^redis://' <<<"$urls")
DPFS_REDIS_URL="$url" DPFS_REDIS_SOCKET="$socket" swift test --filter 'RESP|KVFunctions|KVConnection|KVBackendTests|ConformanceTests' 2>&1 | tee "$log" | grep -E "✔|✘|passed|failed|error" || true
# Passed only when the suites that need the server ran, none of their tests was skipped (a suite
# whose server tests are off still "passes"), and nothing failed.
for suite in RESPRedisTests KVFunctionsTests KVConnectionTests KVBackendTests; do
  grep -q "Suite $suite passed" "$log" || { echo "$suite did not pass against redis-server" >&2; exit 1; }
done
grep -q 'Test "the key-value backend conforms, against a real redis-server" passed' "$log" || { echo "the key-value conformance test did not pass" >&2; exit 1; }
if grep "skipped" "$log" | grep -v "NFS backend conforms"; then echo "a test that needs redis-server was skipped:" >&2; grep "skipped" "$log" >&2; exit 1; fi
! grep -q "✘" "$log"
