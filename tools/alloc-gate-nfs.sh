#!/usr/bin/env bash
# The allocation gate's NFS part: nfs-ganesha on loopback (tools/nfs-server.sh) exports a fresh
# directory, and `dpfs-bench alloc-gate --nfs-only` counts mallocs per GETATTR, LOOKUP, READ 4 KiB
# and WRITE 4 KiB through the NFS backend beside libnfs's own per call; the engine's share must be 0.
# Over NFSv3, then over NFSv4.1 and NFSv4.0 (the same export through its pseudo path; libnfs's own
# count there comes from a bare loop sending the very COMPOUNDs the engine sends).
#   tools/alloc-gate-nfs.sh [--requests N]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${2:-100000}
[ "${1:-}" = --requests ] || requests=100000
[ -x .build/release/dpfs-bench ] || swift build -c release --product dpfs-bench
export_dir=$(mktemp -d /tmp/dpfs-alloc-nfs.XXXXXX)
trap 'tools/nfs-server.sh stop; rm -rf "$export_dir"' EXIT
urls=$(tools/nfs-server.sh start "$export_dir")
echo "NFSv3:"
.build/release/dpfs-bench alloc-gate --nfs-only --nfs-url "$(grep "version=3" <<<"$urls")" --requests "$requests"
echo "NFSv4.1:"
.build/release/dpfs-bench alloc-gate --nfs-only --nfs-url "$(grep "version=4" <<<"$urls" | sed 's/version=4&/version=4.1\&/')" --requests "$requests"
echo "NFSv4.0:"
.build/release/dpfs-bench alloc-gate --nfs-only --nfs-url "$(grep "version=4" <<<"$urls" | sed 's/version=4&/version=4.0\&/')" --requests "$requests"
