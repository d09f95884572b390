#!/bin/sh
# virtiofsd-smoke.sh — guest workload: basic virtio-fs operations on /mnt, run by tools/guest/init.
#
# Why: the first end-to-end proof that a back-end serves the Linux virtio-fs driver correctly:
# directory listing, reading a host-created file, a 1 MiB write in 4 KiB blocks read back and
# compared (md5sum and sha256sum), stat, sync. The host side (tools/guest/test-against-virtiofsd.sh)
# creates hello.txt and afterwards checks the file this script wrote (guest-written.bin, 1 MiB).
#
# Runs under busybox sh inside the guest (hence #!/bin/sh, no bash). Output: 'RESULT <name>-ok' or
# 'RESULT <name>-FAILED' per check, 'RESULT all-ok' at the end; exit status = number of failures.
# 'set -u -o pipefail' (busybox ash has both) but deliberately not -e: every step is checked
# explicitly so that all checks report, instead of the first failure silently ending the script.
set -u -o pipefail
mnt=${DPFS_MNT:-/mnt}
failures=0
ok() { echo "RESULT $1-ok"; }
bad() { echo "RESULT $1-FAILED: $2"; failures=$((failures + 1)); }

# 1. listing
if ls -la "$mnt"; then ok ls; else bad ls "ls -la exited $?"; fi

# 2. a file the host created
if content=$(cat "$mnt/hello.txt"); then
  echo "hello.txt: $content"
  if [ -n "$content" ]; then ok hello; else bad hello "empty"; fi
else
  bad hello "cat failed"
fi

# A file from an earlier boot of this run (--boots N): proves the data outlived the guest reset.
if [ -f "$mnt/guest-written.bin" ]; then
  echo "previous boot's guest-written.bin: $(stat -c %s "$mnt/guest-written.bin") bytes"
  ok previous-file-seen
fi

# 3. write 1 MiB (256 x 4 KiB) of non-trivial data, read it back through the mount, compare.
#    /dev/urandom rather than zeros so a back-end returning zeroed or stale pages is caught.
src=/tmp/source.bin
f="$mnt/guest-written.bin"
if dd if=/dev/urandom of="$src" bs=4k count=256 2>/dev/null &&
  dd if="$src" of="$f" bs=4k count=256 conv=fsync 2>&1; then
  ok write
else
  bad write "dd to $f failed"
fi
want=$(md5sum <"$src" | cut -d' ' -f1)
# Drop the guest page cache so the read-back really goes to the back-end (cache=none makes
# virtio-fs uncached anyway, this also covers other cache modes).
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
got=$(dd if="$f" bs=4k 2>/dev/null | md5sum | cut -d' ' -f1)
echo "md5 written $want read $got"
if [ -n "$want" ] && [ "$want" = "$got" ]; then ok readback; else bad readback "md5 mismatch"; fi
# A second, independent digest (this busybox has no cksum applet; sha256sum it has).
want256=$(sha256sum <"$src" | cut -d' ' -f1)
got256=$(sha256sum <"$f" | cut -d' ' -f1)
if [ -n "$want256" ] && [ "$want256" = "$got256" ]; then ok sha256; else bad sha256 "sha256 '$want256' vs '$got256'"; fi

# 4. stat: size and type as the back-end reports them
if st=$(stat -c '%s %F' "$f"); then
  echo "stat: $st"
  if [ "$st" = "1048576 regular file" ]; then ok stat; else bad stat "got '$st'"; fi
else
  bad stat "stat failed"
fi

# 5. sync (FUSE_FSYNC / FLUSH / SYNCFS paths)
if sync; then ok sync; else bad sync "sync failed"; fi

# Leave a marker naming the guest kernel for the host to see.
uname -r >"$mnt/guest-kernel.txt" 2>/dev/null || true

if [ "$failures" = 0 ]; then echo "RESULT all-ok"; else echo "RESULT $failures-failures"; fi
exit "$failures"
