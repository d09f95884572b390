#!/bin/sh
# libvirt-basic.sh — guest workload for the libvirt end-to-end test (run by tools/guest/init
# with busybox sh, DPFS_MNT=/mnt). Writes a file, reads it back, renames it, lists the directory,
# reads a host-made file. Prints 'RESULT <name>-ok|-FAILED'; 'RESULT all-ok' at the end;
# exit status = number of failures. The host checks renamed.txt afterwards.
set -u
mnt=${DPFS_MNT:-/mnt}
failures=0
ok() { echo "RESULT $1-ok"; }
bad() { echo "RESULT $1-FAILED: $2"; failures=$((failures + 1)); }

if c=$(cat "$mnt/host-made.txt") && [ "$c" = "from-the-host" ]; then ok host-read; else bad host-read "got '${c:-}'"; fi
if echo "written-by-guest-via-libvirt" >"$mnt/guest-file.txt"; then ok write; else bad write "echo >"; fi
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
if [ "$(cat "$mnt/guest-file.txt")" = "written-by-guest-via-libvirt" ]; then ok readback; else bad readback "content differs"; fi
if mv "$mnt/guest-file.txt" "$mnt/renamed.txt" && [ ! -e "$mnt/guest-file.txt" ] && [ -f "$mnt/renamed.txt" ]; then ok rename; else bad rename "mv"; fi
if ls -la "$mnt" && ls "$mnt" | grep -qx renamed.txt; then ok ls; else bad ls "renamed.txt not listed"; fi
if [ "$(cat "$mnt/renamed.txt")" = "written-by-guest-via-libvirt" ]; then ok renamed-read; else bad renamed-read "content differs"; fi
sync
if [ "$failures" = 0 ]; then echo "RESULT all-ok"; else echo "RESULT $failures-FAILED"; fi
exit "$failures"
