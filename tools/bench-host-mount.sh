#!/usr/bin/env bash
# bench-host-mount.sh — host applications on a dpfs-engine mount (/dev/fuse, passthrough backend)
# against the same tmpfs used directly, in one run on one machine, so every figure is also a ratio
# to native (this VM's absolute speed moves by 2x from day to day; ratios measured together do not).
#
#   tools/bench-host-mount.sh [--modes "classic uring passthrough"] [--runtime SECONDS] [--files N]
#                             [--classic "ENGINE ARGS"] [--no-build] [--keep DIR]
#
# Targets: native (the tmpfs itself), classic (/dev/fuse read/writev), uring (FUSE-over-io_uring),
# passthrough (FUSE-over-io_uring with kernel passthrough: reads and writes never leave the kernel).
# Load: fio 4 KiB random reads and writes on a 256 MiB file with O_DIRECT, at queue depth 1 (psync)
# and 16 (io_uring), each --runtime seconds; then `dpfs-bench metadata` creates, stats and unlinks
# --files files. The engine runs with its default cache mode (what a user gets).
#
# CPU placement, and why: a wake-up across CPUs costs ~30 µs on this VM, more than a whole request,
# so fio runs on CPU 0 and so do the engine's queues that serve it (classic: --queues 1 --cpus 0;
# io_uring: the kernel hands a request to the ring queue of the CPU it was issued on, and queue i
# runs on CPU i). --classic replaces the classic engine's placement ("--queues 1 --cpus 0"), e.g.
# "--queues 1 --cpus 1 --busy-poll-us 1000000" for a queue spinning on the other CPU. The engine sleeps as soon as it is idle (busy poll 0, the host-mount default):
# a spinning queue on fio's CPU would take the CPU from fio.
set -euo pipefail
cd "$(dirname "$0")/.."

modes="classic uring passthrough"
runtime=5
files=10000
build=1
keep=""
classic_args="--queues 1 --cpus 0"
while [ $# -gt 0 ]; do
  case $1 in
    --modes) modes=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --files) files=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --keep) keep=$2; shift 2 ;;
    --classic) classic_args=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "needs root (mount(2), kernel passthrough)" >&2; exit 2; }
command -v fio >/dev/null || tools/install-dependencies.sh
if [ $build = 1 ]; then
  swift build -c release --product dpfs-engine >/dev/null
  swift build -c release --product dpfs-bench >/dev/null
fi
bin=.build/release

work=$(mktemp -d /tmp/dpfs-host-bench.XXXXXX)
share=$work/share
engine_pid=""
stop_engine() {
  if [ -n "$engine_pid" ]; then
    kill -TERM "$engine_pid" 2>/dev/null || true
    wait "$engine_pid" 2>/dev/null || true
    engine_pid=""
  fi
}
cleanup() {
  stop_engine
  umount -l "$work"/mnt-* 2>/dev/null || true
  umount "$share" 2>/dev/null || true
  [ -n "$keep" ] && { mkdir -p "$keep"; cp "$work"/*.json "$work"/*.log "$keep"/ 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$share"
mount -t tmpfs -o size=512m tmpfs "$share"
# The file fio reads, written once (fio would otherwise lay it out through each mount).
dd if=/dev/urandom of="$share/fio.dat" bs=1M count=256 status=none

start_engine() {
  local mode=$1 mnt=$2 log=$3 args
  case $mode in
    classic) args="--fuse-transport classic $classic_args" ;;
    uring) args="--fuse-transport uring" ;;
    passthrough) args="--fuse-transport uring --fuse-passthrough" ;;
  esac
  mkdir -p "$mnt"
  # shellcheck disable=SC2086
  $bin/dpfs-engine --fuse-mount "$mnt" --backend passthrough --shared-dir "$share" $args >"$log" 2>&1 &
  engine_pid=$!
  for _ in $(seq 100); do
    grep -q "INIT agreed" "$log" 2>/dev/null && stat "$mnt/fio.dat" >/dev/null 2>&1 && return 0
    kill -0 $engine_pid 2>/dev/null || break
    sleep 0.1
  done
  cat "$log" >&2
  echo "engine did not serve $mnt" >&2
  return 1
}

# fio_run TARGET DIR: the four jobs, one JSON file each.
fio_run() {
  local target=$1 directory=$2 job rw engine depth
  for job in randread-qd1 randwrite-qd1 randread-qd16 randwrite-qd16; do
    rw=${job%-*}; depth=${job#*-qd}
    engine=$([ "$depth" = 1 ] && echo psync || echo io_uring)
    fio --name="$job" --filename="$directory/fio.dat" --rw="$rw" --bs=4k --size=256m --direct=1 \
        --ioengine="$engine" --iodepth="$depth" --time_based --runtime="$runtime" --ramp_time=1 \
        --cpus_allowed=0 --output-format=json >"$work/$target.$job.json"
  done
}

for target in native $modes; do
  echo "== $target" >&2
  if [ "$target" = native ]; then
    directory=$share
  else
    directory=$work/mnt-$target
    start_engine "$target" "$directory" "$work/engine-$target.log"
    grep -h "INIT agreed" "$work/engine-$target.log" | sed 's/^.*INIT agreed/    INIT agreed/' >&2
  fi
  fio_run "$target" "$directory"
  taskset -c 0 $bin/dpfs-bench metadata --directory "$directory" --files "$files" --label "$target" --json >"$work/$target.metadata.json"
  [ "$target" = native ] || stop_engine
done

python3 - "$work" "native $modes" <<'EOF'
import json, sys
work, targets = sys.argv[1], sys.argv[2].split()
jobs = ["randread-qd1", "randwrite-qd1", "randread-qd16", "randwrite-qd16"]
def fio(target, job):
    data = json.load(open(f"{work}/{target}.{job}.json"))["jobs"][0]
    side = data["read"] if "read" in job else data["write"]
    percentiles = side["clat_ns"].get("percentile", {})
    return side["iops"], percentiles.get("50.000000", 0) / 1e3, percentiles.get("99.000000", 0) / 1e3
def metadata(target):
    rows = [json.loads(line) for line in open(f"{work}/{target}.metadata.json")]
    return {row["phase"]: row["ops_per_second"] for row in rows}
print(f"{'target':<12} {'job':<15} {'IOPS/ops/s':>11} {'x native':>9} {'p50 µs':>8} {'p99 µs':>8}")
native = {job: fio("native", job) for job in jobs}
native_md = metadata("native")
for target in targets:
    for job in jobs:
        iops, p50, p99 = fio(target, job)
        print(f"{target:<12} {job:<15} {iops:>11.0f} {iops / native[job][0]:>9.2f} {p50:>8.1f} {p99:>8.1f}")
    for phase, ops in metadata(target).items():
        print(f"{target:<12} {phase:<15} {ops:>11.0f} {ops / native_md[phase]:>9.2f}")
for target in targets:
    qd1, qd16 = fio(target, "randread-qd1")[0], fio(target, "randread-qd16")[0]
    print(f"{target}: randread QD16/QD1 = {qd16 / qd1:.2f}")
EOF
