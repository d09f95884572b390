#!/usr/bin/env bash
# The backend conformance suite against the NFS backend: nfs-ganesha on loopback (tools/nfs-server.sh)
# exports a fresh directory, and ConformanceTests runs with DPFS_CONFORMANCE_NFS_URL pointing at it
# (without the variable that one test is off, since it has no server), over NFSv3, NFSv4.1 and NFSv4.0.
#   tools/test-conformance-nfs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export_dir=$(mktemp -d /tmp/dpfs-conformance-nfs.XXXXXX)
log=$(mktemp /tmp/dpfs-conformance-nfs-log.XXXXXX)
trap 'tools/nfs-server.sh stop; rm -rf "$export_dir" "$log"' EXIT
urls=$(tools/nfs-server.sh start "$export_dir")
# The same export over NFSv3, NFSv4.1 and NFSv4.0 (its pseudo path).
for url in "$(grep "version=3" <<<"$urls")" "$(grep "version=4" <<<"$urls" | sed 's/version=4&/version=4.1\&/')" \
           "$(grep "version=4" <<<"$urls" | sed 's/version=4&/version=4.0\&/')"; do
  echo "=== $url"
  DPFS_CONFORMANCE_NFS_URL="$url" swift test --filter ConformanceTests 2>&1 | tee "$log" | grep -E "✔|✘|passed|failed|error" || true
  # Passed only when the NFS test ran and nothing failed.
  grep -q 'Test "the NFS backend conforms, against a real nfs-ganesha" passed' "$log" || { echo "the NFS conformance test did not pass over $url" >&2; exit 1; }
  ! grep -q "✘" "$log" || exit 1
done
