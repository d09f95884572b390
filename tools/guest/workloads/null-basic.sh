#!/bin/sh
# null-basic.sh — guest workload against dpfs-engine's null backend, run by tools/guest/init.
#
# Why: what a tenant does first with a mounted virtio-fs: list the root, stat the file, read and
# write it with dd, and (on multi-queue kernels) do so from every CPU at once so that requests
# travel on more than one request queue. The null backend has one file, /mnt/null, of 1 GiB (the
# engine's default); reads and writes succeed without touching data.
#
# busybox sh; 'RESULT <name>-ok' / 'RESULT <name>-FAILED' per check, exit status = failures.
set -u -o pipefail
mnt=${DPFS_MNT:-/mnt}
failures=0
ok() { echo "RESULT $1-ok"; }
bad() { echo "RESULT $1-FAILED: $2"; failures=$((failures + 1)); }

if listing=$(ls -la "$mnt"); then
  echo "$listing"
  case "$listing" in *" null"*) ok ls ;; *) bad ls "no 'null' entry" ;; esac
else
  bad ls "ls -la exited $?"
fi

if size=$(stat -c %s "$mnt/null"); then
  echo "stat size: $size"
  if [ "$size" = 1073741824 ]; then ok stat; else bad stat "size $size"; fi
else
  bad stat "stat failed"
fi

# 1 MiB in 4 KiB reads, then 1 MiB of 4 KiB writes (direct, so every block is a FUSE request).
if dd if="$mnt/null" of=/dev/null bs=4k count=256 2>/tmp/dd-read.txt; then
  cat /tmp/dd-read.txt
  if grep -q "256+0 records in" /tmp/dd-read.txt; then ok dd-read; else bad dd-read "short read"; fi
else
  bad dd-read "dd exited $?"
fi
if dd if=/dev/zero of="$mnt/null" bs=4k count=256 conv=notrunc 2>/tmp/dd-write.txt; then
  cat /tmp/dd-write.txt
  if grep -q "256+0 records out" /tmp/dd-write.txt; then ok dd-write; else bad dd-write "short write"; fi
else
  bad dd-write "dd exited $?"
fi

# One reader per CPU, each pinned: on a multi-queue kernel (6.11+) each CPU has its own request
# queue, so the engine sees traffic on every queue.
cpus=$(nproc)
echo "cpus: $cpus"
pids=""
cpu=0
while [ "$cpu" -lt "$cpus" ]; do
  taskset -c "$cpu" sh -c "i=0; while [ \$i -lt 200 ]; do stat $mnt/null >/dev/null || exit 1; dd if=$mnt/null of=/dev/null bs=4k count=4 skip=\$i 2>/dev/null || exit 1; i=\$((i + 1)); done" &
  pids="$pids $!"
  cpu=$((cpu + 1))
done
parallel_failures=0
for pid in $pids; do wait "$pid" || parallel_failures=$((parallel_failures + 1)); done
if [ "$parallel_failures" = 0 ]; then ok parallel; else bad parallel "$parallel_failures readers failed"; fi

if [ "$failures" = 0 ]; then echo "RESULT all-ok"; fi
exit "$failures"
