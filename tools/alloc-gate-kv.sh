#!/usr/bin/env bash
# The allocation gate's key-value part: a throw-away redis-server (tools/redis-server.sh), and
# `dpfs-bench alloc-gate --kv-only` counts mallocs per GETATTR, LOOKUP, READ 4 KiB, WRITE 4 KiB,
# OPEN + RELEASE, READDIRPLUS and CREATE + UNLINK through the key-value backend: every class must
# be 0 (the backend speaks RESP itself; no client library allocates for it).
#   tools/alloc-gate-kv.sh [--requests N]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=100000
[ "${1:-}" = --requests ] && requests=$2
swift build -c release --product dpfs-bench >/dev/null
export DPFS_REDIS_STATE
DPFS_REDIS_STATE=$(mktemp -d /tmp/dpfs-alloc-kv.XXXXXX)
trap 'tools/redis-server.sh stop; rm -rf "$DPFS_REDIS_STATE"' EXIT
url=$(tools/redis-server.sh start | grep '^unix://')
.build/release/dpfs-bench alloc-gate --kv-only --kv-url "$url" --requests "$requests"
