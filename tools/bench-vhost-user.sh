#!/usr/bin/env bash
# Side-by-side vhost-user benchmark, measured in one run on the same machine: dpfs-engine (null
# backend) and the C virtiofsd shipped with Debian's QEMU (serving a tmpfs directory), each driven by
# the same load generator (dpfs-bench vhost-user plays QEMU and the guest). Extra arguments go to
# dpfs-bench, e.g. `--operations getattr statfs --depths 1 16 --requests 50000 --json`.
# `--backend passthrough` instead compares dpfs-engine's passthrough backend with virtiofsd over one
# tmpfs directory on real-file operations: tools/bench-passthrough.sh (the other arguments go to it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --backend ]; then
  case "${2:-}" in
    passthrough) shift 2; exec tools/bench-passthrough.sh "$@" ;;
    null) shift 2 ;;
    *) echo "--backend null|passthrough" >&2; exit 2 ;;
  esac
fi
tools/install-dependencies.sh guest   # QEMU's package carries the C virtiofsd
swift build -c release --product dpfs-engine >/dev/null
swift build -c release --product dpfs-bench >/dev/null

work=$(mktemp -d)
engine_pid=""
virtiofsd_pid=""
cleanup() {
  [ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null || true
  [ -n "$virtiofsd_pid" ] && kill "$virtiofsd_pid" 2>/dev/null || true
  umount "$work/share" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

.build/release/dpfs-engine --vhost-user-socket "$work/engine.sock" --log-level warning &
engine_pid=$!
.build/release/dpfs-bench vhost-user --socket "$work/engine.sock" --label dpfs-engine "$@"
# Each back-end runs alone, so neither competes with the other for the CPUs.
kill "$engine_pid"; wait "$engine_pid" 2>/dev/null || true; engine_pid=""

mkdir -p "$work/share"
mount -t tmpfs -o size=64m tmpfs "$work/share"
/usr/lib/qemu/virtiofsd --socket-path="$work/virtiofsd.sock" -o source="$work/share" -o cache=none >"$work/virtiofsd.log" 2>&1 &
virtiofsd_pid=$!
.build/release/dpfs-bench vhost-user --socket "$work/virtiofsd.sock" --label virtiofsd "$@"
