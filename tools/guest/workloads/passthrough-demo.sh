#!/bin/sh
# passthrough-demo.sh — the main job's guest side (tools/run-guest-demo.sh): the guest reads a file
# the host put into the shared directory, writes one back, and lists the share.
# busybox sh; 'RESULT <name>-ok' / 'RESULT <name>-FAILED' per check, exit status = failures.
set -u
mnt=${DPFS_MNT:-/mnt}
failures=0
ok() { echo "RESULT $1-ok"; }
bad() { echo "RESULT $1-FAILED: $2"; failures=$((failures + 1)); }

echo "guest: the host wrote:"
if cat "$mnt/hello-from-host.txt"; then ok read-host-file; else bad read-host-file "cat failed"; fi
echo "hello from a $(uname -r) guest, $(date -u)" >"$mnt/hello-from-guest.txt" && sync
if grep -q "hello from a" "$mnt/hello-from-guest.txt"; then ok write-guest-file; else bad write-guest-file "not read back"; fi
dd if=/dev/urandom of="$mnt/guest-random.bin" bs=64k count=16 2>/dev/null && (cd "$mnt" && md5sum guest-random.bin >guest-random.md5)
echo "guest: the share now holds:"
ls -la "$mnt"
df -h "$mnt"
[ "$failures" = 0 ] && echo "RESULT all-ok"
exit "$failures"
