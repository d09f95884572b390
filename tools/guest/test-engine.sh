#!/usr/bin/env bash
# test-engine.sh — end-to-end: real Linux guests mount dpfs-engine (null backend) over virtio-fs.
#
# Why: the project's central promise, checked the way a tenant meets it. Runs against long-lived
# engine processes:
#   1. Debian's 6.1 kernel, one request queue: list, stat, dd read/write, clean unmount.
#   2. The same engine again, the guest rebooting once (--boots 2): a second front-end connection
#      and a guest reboot (new rings, new INIT) without restarting the engine.
#   3. Two devices from one TOML file: a guest on one, a load generator on the other.
#   4. bookworm-backports' 6.12 kernel (multi-queue virtio-fs built in) with two request queues and
#      two vCPUs: the engine's log must show requests on both request queues.
# Usage: tools/guest/test-engine.sh [--quick]   (--quick: skip the 6.12 run)
# Needs: root, qemu-system-x86, busybox-static, cpio (installed here if missing); network to the
# Debian mirror the first time (kernels are cached in tools/.cache/guest).
set -euo pipefail
cd "$(dirname "$0")/../.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1

tools/install-dependencies.sh guest
swift build -c release --product dpfs-engine >/dev/null
engine_binary=.build/release/dpfs-engine

work=$(mktemp -d)
engine_pid=""
cleanup() {
  [ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
check() {
  local name=$1
  shift
  echo "--- $name"
  if "$@"; then passed=$((passed + 1)); echo "--- $name: ok"; else failed=$((failed + 1)); echo "--- $name: FAILED"; fi
}

start_engine() {
  local queues=$1
  "$engine_binary" --vhost-user-socket "$work/engine.sock" --queues "$queues" --log-level info >"$work/engine-$queues.log" 2>&1 &
  engine_pid=$!
  for _ in $(seq 50); do [ -S "$work/engine.sock" ] && return 0; sleep 0.1; done
  echo "engine did not create its socket"; cat "$work/engine-$queues.log"; return 1
}

stop_engine() {
  kill -TERM "$engine_pid"
  wait "$engine_pid"     # a clean exit on SIGTERM is part of the test
  local status=$?
  engine_pid=""
  return $status
}

guest() {
  tools/guest/run-guest.sh --socket "$work/engine.sock" --workload tools/guest/workloads/null-basic.sh "$@"
}

# 1 and 2: one engine, three guest boots over two connections.
start_engine 1
check "6.1 guest, one queue" guest --kernel 6.1
check "6.1 guest rebooting once, same engine" guest --kernel 6.1 --boots 2
check "engine stops cleanly on SIGTERM" stop_engine
echo "engine log (one queue):"; cat "$work/engine-1.log"
check "engine saw two connections" grep -q "connection 2)" "$work/engine-1.log"

# Two tenants from one TOML file: a guest on the second device while a load generator drives the
# first; both are served by the same engine process.
cat >"$work/two-devices.toml" <<TOML
[engine]
log_level = "info"

[[device]]
name = "tenant-a"
socket = "$work/a.sock"

[[device]]
name = "tenant-b"
socket = "$work/engine.sock"
request_queues = 1
TOML
"$engine_binary" --config "$work/two-devices.toml" >"$work/engine-config.log" 2>&1 &
engine_pid=$!
for _ in $(seq 50); do [ -S "$work/engine.sock" ] && [ -S "$work/a.sock" ] && break; sleep 0.1; done
swift build -c release --product dpfs-bench >/dev/null
check "config file: guest on device b" guest --kernel 6.1
check "config file: device a serves a load generator" \
  .build/release/dpfs-bench vhost-user --socket "$work/a.sock" --label tenant-a --requests 2000 --warmup 200 --depths 1 4
check "engine with two devices stops cleanly on SIGTERM" stop_engine
grep -E "device tenant-(a|b)" "$work/engine-config.log" || true

if [ $quick = 0 ]; then
  start_engine 2
  check "6.12 guest, two request queues" guest --kernel 6.12 --queues 2
  stop_engine || true
  echo "engine log (two queues):"; cat "$work/engine-2.log"
  # The last per-queue line: queue 1 and queue 2 (the request queues) must both be non-zero.
  both_queues() {
    local line
    line=$(grep "requests so far" "$work/engine-2.log" | tail -1)
    echo "$line"
    echo "$line" | grep -Eq "queue 1: [1-9]" && echo "$line" | grep -Eq "queue 2: [1-9]"
  }
  check "both request queues carried requests" both_queues
fi

echo "guest-engine: $passed passed, $failed failed"
[ "$failed" = 0 ]
