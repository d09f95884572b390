#!/bin/sh
# dpfs-guest-needs: nfs-client
# nfs-client-cpu.sh — guest workload of tools/guest/bench-nfs-client.sh: the same fio jobs through
# virtio-fs (dpfs-engine's NFS backend, mounted on $DPFS_MNT by tools/guest/init) and through this
# guest's own kernel NFS client mounting the same ganesha export over QEMU's user network, with the
# whole guest's busy CPU counted around each job's I/O.
#
# Why the whole guest: the kernel client's work runs outside fio (rpciod, the socket's softirq),
# and virtio-fs's in the FUSE request path and the virtqueue's interrupt; /proc/stat sees both.
# fio's exec_prerun/exec_postrun take the samples inside the job, after fio has started and laid
# out its file, so process start-up is not counted.
#
# Kernel command line (run-guest.sh --append): dpfs.nfsvers=3|4.1 dpfs.nfsport=N dpfs.mountport=N
# dpfs.export=PATH (the v3 export path; v4.1 mounts the pseudo path /export) dpfs.ios=N (per job).
# Prints one line per job:
#   NFS-CPU target=engine|kernel rw=randread|randwrite qd=N ios=N busy_jiffies=N idle_jiffies=N centiseconds=N
# busy = user+nice+system+irq+softirq+steal of /proc/stat's cpu line (USER_HZ 100); exit status =
# failures.
set -u
mnt=${DPFS_MNT:-/mnt}
vers=4.1 port=2049 mountport=0 export=/export ios=2048
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    dpfs.nfsvers=*) vers=${arg#dpfs.nfsvers=} ;;
    dpfs.nfsport=*) port=${arg#dpfs.nfsport=} ;;
    dpfs.mountport=*) mountport=${arg#dpfs.mountport=} ;;
    dpfs.export=*) export=${arg#dpfs.export=} ;;
    dpfs.ios=*) ios=${arg#dpfs.ios=} ;;
  esac
done
failures=0
bad() { echo "RESULT $1-FAILED: $2"; failures=$((failures + 1)); }

for m in $(cat /etc/dpfs-nfs-modules); do
  insmod "/lib/modules/$m" || { echo "RESULT insmod-FAILED: $m"; exit 1; }
done
# QEMU's user network: the host's loopback is 10.0.2.2.
ip link set lo up && ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 \
  || { echo "RESULT network-FAILED"; exit 1; }
mkdir -p /nfs
if [ "$vers" = 3 ]; then
  nfs-mount "10.0.2.2:$export" /nfs nfs \
    "vers=3,proto=tcp,port=$port,mountport=$mountport,mountproto=tcp,mountaddr=10.0.2.2,addr=10.0.2.2,nolock" \
    || { echo "RESULT kernel-mount-FAILED"; exit 1; }
else
  nfs-mount 10.0.2.2:/export /nfs nfs4 "vers=$vers,proto=tcp,port=$port,addr=10.0.2.2,clientaddr=10.0.2.15" \
    || { echo "RESULT kernel-mount-FAILED"; exit 1; }
fi
echo "RESULT kernel-mount-ok: $(grep ' /nfs ' /proc/mounts)"

# fio runs exec_prerun/exec_postrun through system() with its own output redirection: the sample
# goes to the file named by the argument instead.
cat >/tmp/sample.sh <<'SAMPLE'
{ head -n 1 /proc/stat; cut -d' ' -f1 /proc/uptime; } >"$1"
SAMPLE
cd /tmp
busy() { echo "$1" | awk '{ print $2 + $3 + $4 + $7 + $8 + $9 }'; }
idle() { echo "$1" | awk '{ print $5 + $6 }'; }
# A file of 32 MiB per target, written once (sequentially, not measured), then read and overwritten
# at random 4 KiB places.
for target in engine kernel; do
  dir=$mnt; [ $target = kernel ] && dir=/nfs
  fio --name=layout --filename="$dir/cpu-$target" --rw=write --bs=1M --size=32M --direct=1 --ioengine=psync \
    --output=/dev/null || bad "$target-layout" "fio exited $?"
done
for rw in randread randwrite; do
  for qd in 1 16; do
    for target in engine kernel; do
      dir=$mnt; [ $target = kernel ] && dir=/nfs
      rm -f /tmp/before /tmp/after
      fio --name=cpu --filename="$dir/cpu-$target" --rw=$rw --bs=4k --size=32M --io_size=$((ios * 4))k --direct=1 \
        --ioengine=libaio --iodepth=$qd --norandommap --randrepeat=0 --output=/tmp/fio.out \
        --exec_prerun="sh /tmp/sample.sh /tmp/before" --exec_postrun="sh /tmp/sample.sh /tmp/after" \
        || { bad "$target-$rw-$qd" "fio exited $?: $(tail -n 3 /tmp/fio.out)"; continue; }
      [ -s /tmp/before ] && [ -s /tmp/after ] || { bad "$target-$rw-$qd" "no CPU samples"; continue; }
      b=$(head -n 1 /tmp/before) a=$(head -n 1 /tmp/after)
      t0=$(tail -n 1 /tmp/before) t1=$(tail -n 1 /tmp/after)
      echo "NFS-CPU target=$target rw=$rw qd=$qd ios=$ios busy_jiffies=$(($(busy "$a") - $(busy "$b"))) idle_jiffies=$(($(idle "$a") - $(idle "$b"))) centiseconds=$(echo "$t0 $t1" | awk '{ printf "%d", ($2 - $1) * 100 }')"
    done
  done
done
# Every job's I/O reached the server through the kernel client (O_DIRECT: no page cache between).
for op in READ WRITE; do
  sent=$(awk -v op="$op:" '/ mounted on \/nfs /{on=1} on && $1 == op { print $2; exit }' /proc/self/mountstats)
  if [ "${sent:-0}" -ge $((2 * ios)) ]; then echo "RESULT kernel-client-$op-sent-ok: $sent"; else bad kernel-client-$op-sent "${sent:-no} $op calls for $((2 * ios)) I/Os"; fi
done
rm -f "$mnt/cpu-engine" /nfs/cpu-kernel
umount /nfs || bad kernel-umount "umount /nfs exited $?"
exit $failures
