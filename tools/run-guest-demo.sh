#!/usr/bin/env bash
# The engine's main job: dpfs-engine shares a real host directory with a real Linux guest, which
# mounts it with the stock virtio-fs driver. Builds the engine, makes a share with a file from the
# host, starts the engine on a socket (passthrough backend), boots Debian's 6.1 cloud kernel under
# QEMU with vhost-user-fs-pci, and inside the guest runs `mount -t virtiofs dpfs /mnt`, reads the
# host's file and writes files back (tools/guest/workloads/passthrough-demo.sh); then the host shows
# and checks what the guest wrote. Everything it needs is installed and cached on the first run
# (Debian packages, the guest kernel). Extra arguments go to tools/guest/run-guest.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-dependencies.sh guest
swift build -c release --product dpfs-engine
work=$(mktemp -d)
share="$work/share"
mkdir -p "$share"
echo "hello from the host, $(date -u)" >"$share/hello-from-host.txt"
.build/release/dpfs-engine --vhost-user-socket "$work/dpfs.sock" --backend passthrough --shared-dir "$share" &
engine=$!
trap 'kill "$engine" 2>/dev/null; wait "$engine" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do [ -S "$work/dpfs.sock" ] && break; sleep 0.1; done
tools/guest/run-guest.sh --socket "$work/dpfs.sock" --kernel 6.1 --workload tools/guest/workloads/passthrough-demo.sh "$@"
echo "host: the guest wrote:"
cat "$share/hello-from-guest.txt"
(cd "$share" && md5sum -c guest-random.md5)
ls -la "$share"
