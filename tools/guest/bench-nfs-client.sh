#!/usr/bin/env bash
# bench-nfs-client.sh — the DPFS paper's headline, reproduced: CPU per I/O inside one guest through
# virtio-fs (dpfs-engine's NFS backend) against the same guest's own kernel NFS client, both on
# one nfs-ganesha export.
#
# Why: the point of serving NFS from the engine (on a DPU in production) is that the tenant's
# machine stops paying for the NFS client: the paper measured 4.4x less host CPU per I/O than the
# host's own NFS client. Here one guest runs fio 4 KiB randread and randwrite at QD1 and QD16 over
# both paths (tools/guest/workloads/nfs-client-cpu.sh) and counts the whole guest's busy CPU
# around each job's I/O (the NFS client's softirq and rpciod work runs outside fio). The kernel
# client reaches ganesha over QEMU's user network (10.0.2.2 is the host's loopback). Guests run
# under TCG here: the ratio between the two paths, measured in one run, is the figure; absolute
# microseconds are TCG's. The engine's own CPU (the DPU's, in production) is reported beside it.
#
# Usage: tools/guest/bench-nfs-client.sh [--kernel 6.1|6.12] [--version 3|4.1] [--ios N] [--smp N]
# Prints a table and `RATIO rw=… qd=… kernel_over_engine=…` lines; exit 0 when every job ran.
set -euo pipefail
cd "$(dirname "$0")/../.."
kernel=6.1 version=4.1 ios=2048 smp=1
while [ $# -gt 0 ]; do
  case "$1" in
    --kernel) kernel=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --ios) ios=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    *) echo "usage: $0 [--kernel 6.1|6.12] [--version 3|4.1] [--ios N] [--smp N]" >&2; exit 2 ;;
  esac
done
case "$version" in 3 | 4.1) ;; *) echo "bench-nfs-client: --version is 3 or 4.1" >&2; exit 2 ;; esac

engine=.build/release/dpfs-engine
[ -x $engine ] || swift build -c release --product dpfs-engine >&2
work=$(mktemp -d /tmp/dpfs-nfs-client.XXXXXX)
export DPFS_NFS_STATE=$work/nfs
engine_pid=
cleanup() {
  [ -n "$engine_pid" ] && kill -TERM "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null
  tools/nfs-server.sh stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

export_dir=$work/export
mkdir -p "$export_dir"
urls=$(tools/nfs-server.sh start "$export_dir") || { echo "bench-nfs-client: nfs-ganesha did not start" >&2; exit 1; }
url=$(grep "version=${version%.*}" <<<"$urls")
[ "$version" = 3 ] || url=$(sed "s/version=4&/version=$version\&/" <<<"$url")
nfs_port=$(sed -n 's/.*nfsport=\([0-9]*\).*/\1/p' <<<"$urls" | head -n 1)
mount_port=$(sed -n 's/.*mountport=\([0-9]*\).*/\1/p' <<<"$urls" | head -n 1)

sock=$work/vhost-user.sock
$engine --vhost-user-socket "$sock" --backend nfs --nfs-url "$url" --queues 1 --log-level info >"$work/engine.log" 2>&1 &
engine_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "bench-nfs-client: the engine did not start:"; cat "$work/engine.log"; exit 1; } >&2
engine_cpu() { awk '{ print $14 + $15 }' "/proc/$engine_pid/stat"; } # utime + stime, in clock ticks
engine_before=$(engine_cpu)

status=0
tools/guest/run-guest.sh --socket "$sock" --kernel "$kernel" --workload tools/guest/workloads/nfs-client-cpu.sh \
  --memory 1024 --smp "$smp" --timeout 900 \
  --append "dpfs.nfsvers=$version dpfs.nfsport=$nfs_port dpfs.mountport=$mount_port dpfs.export=$export_dir dpfs.ios=$ios" \
  --qemu-arg -netdev --qemu-arg user,id=net0 --qemu-arg -device --qemu-arg virtio-net-pci,netdev=net0 \
  >"$work/guest.out" 2>&1 || status=$?
engine_after=$(engine_cpu)
grep -E "RESULT|run-guest:" "$work/guest.out" | sed 's/^/    /'
[ $status = 0 ] || { echo "bench-nfs-client: the guest failed (status $status):"; tail -n 30 "$work/guest.out"; exit 1; }
# Every virtio-fs job's I/O went through the engine (O_DIRECT: none was served by a page cache).
kill -TERM "$engine_pid"; wait "$engine_pid" || { echo "bench-nfs-client: the engine did not end cleanly" >&2; exit 1; }
engine_pid=
served=$(grep -o 'engine served [0-9]* READ, [0-9]* WRITE' "$work/engine.log" | tail -n 1)
read -r reads writes < <(awk '{ print $3, $5 }' <<<"$served")
echo "    $served (the guest's jobs: $((2 * ios)) reads and $((2 * ios)) writes of 4 KiB)"
if [ "${reads:-0}" -lt $((2 * ios)) ] || [ "${writes:-0}" -lt $((2 * ios)) ]; then
  echo "bench-nfs-client: the engine served fewer requests than the guest's jobs made" >&2
  exit 1
fi

python3 - "$work/guest.out" "$kernel" "$version" "$((engine_after - engine_before))" "$(getconf CLK_TCK)" <<'PY'
import re, sys
path, kernel, version, engine_ticks, hz = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rows = {}
for line in open(path, errors="replace"):
    m = re.search(r"NFS-CPU target=(\w+) rw=(\w+) qd=(\d+) ios=(\d+) busy_jiffies=(-?\d+) idle_jiffies=(-?\d+) centiseconds=(\d+)", line)
    if m:
        t, rw, qd, ios, busy, idle, cs = m.groups()
        rows[(rw, int(qd), t)] = (int(ios), int(busy), int(cs))
jobs = sorted({(rw, qd) for rw, qd, _ in rows})
if len(rows) != 8:
    sys.exit(f"bench-nfs-client: {len(rows)} of 8 jobs reported")
print(f"guest kernel {kernel}, NFSv{version}, fio 4 KiB O_DIRECT libaio; guest CPU per I/O (whole guest, TCG microseconds)")
print(f"{'job':<16}{'engine us/IO':>14}{'kernel us/IO':>14}{'kernel/engine':>15}{'engine IOPS':>13}{'kernel IOPS':>13}")
engine_ios = 0
for rw, qd in jobs:
    (ei, eb, ec), (ki, kb, kc) = rows[(rw, qd, "engine")], rows[(rw, qd, "kernel")]
    engine_ios += ei
    eu, ku = eb * 10000 / ei, kb * 10000 / ki
    ratio = ku / eu if eu > 0 else float("inf")
    print(f"{rw + ' QD' + str(qd):<16}{eu:>14.0f}{ku:>14.0f}{ratio:>15.2f}{ei * 100 / max(ec, 1):>13.0f}{ki * 100 / max(kc, 1):>13.0f}")
    print(f"RATIO kernel={kernel} version={version} rw={rw} qd={qd} kernel_over_engine={ratio:.2f}")
print(f"the engine's own CPU on the host (the DPU's, in production), the whole run: {engine_ticks * 1e6 / hz / engine_ios:.0f} us per guest I/O "
      f"(layout and mount included, {engine_ticks / hz:.1f} s for {engine_ios} I/Os)")
PY
