#!/usr/bin/env bash
# The engine's main job: dpfs-engine serves a real Linux guest that mounts it with the stock
# virtio-fs driver. Builds the engine, starts it on a socket (null backend), boots Debian's 6.1
# cloud kernel under QEMU with vhost-user-fs-pci, and inside the guest runs
# `mount -t virtiofs dpfs /mnt`, ls, stat and dd (tools/guest/workloads/null-basic.sh), then
# unmounts, powers the guest off and stops the engine. Everything it needs is installed and cached
# on the first run (Debian packages, the guest kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-dependencies.sh guest
swift build -c release --product dpfs-engine
work=$(mktemp -d)
.build/release/dpfs-engine --vhost-user-socket "$work/dpfs.sock" &
engine=$!
trap 'kill "$engine" 2>/dev/null; wait "$engine" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do [ -S "$work/dpfs.sock" ] && break; sleep 0.1; done
tools/guest/run-guest.sh --socket "$work/dpfs.sock" --kernel 6.1 --workload tools/guest/workloads/null-basic.sh "$@"
