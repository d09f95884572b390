#!/usr/bin/env bash
# The key-value backend against the NFS backend, in one run on one machine (the original DPFS's
# Table 3 comparison, DPFS-KV against DPFS-NFS): dpfs-engine serves the same load generator
# (dpfs-bench vhost-user, playing QEMU and the guest kernel with its caches off) once with
# --backend kv against a redis-server (tools/redis-server.sh: unix socket, AOF fsynced before
# every reply) and once with --backend nfs against nfs-ganesha (tools/nfs-server.sh: FSAL_VFS,
# loopback), and prints one table of p50 latency and throughput per operation and depth, with the
# KV/NFS ratio. The operations:
#   open-read-close, open-write-close   a whole 4 KiB file as a program uses one: OPEN, READ or
#                                       WRITE 4 KiB, FLUSH, RELEASE (one operation)
#   getattr-file, lookup-file           one metadata request each
# The key-value side runs twice: with the server's `appendfsync always` (every acknowledged change
# is on disk before the reply: what the backend's FSYNC promises, and what the NFS side's COMMIT at
# close gives) and with `appendfsync everysec` (an acknowledged change survives a crash of the
# server, but an OS crash or power loss can take the last second: the durability of an in-memory
# store such as the original DPFS-KV's RAMCloud).
# Each engine runs alone (the other is stopped), the two alternate for --rounds rounds (default
# 3), and each figure is the median over the rounds, so a drift of this shared VM moves both alike.
# Depth 1 is latency (the generator spins for each answer); deeper is throughput (the generator
# sleeps on its interrupt eventfd, as a guest does, leaving the CPUs to the servers).
#   tools/bench-kv.sh [--depths "1 16"] [--requests N] [--warmup N] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
depths="1 16"
requests=10000
warmup=1000
rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --depths) depths=$2; shift ;;
    --requests) requests=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
swift build -c release --product dpfs-engine >/dev/null
swift build -c release --product dpfs-bench >/dev/null

work=$(mktemp -d /tmp/dpfs-bench-kv.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/export"
export DPFS_REDIS_STATE=$work/redis
engine_pid=
cleanup() {
  [ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null
  tools/nfs-server.sh stop >/dev/null 2>&1 || true
  tools/redis-server.sh stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
nfs_url=$(tools/nfs-server.sh start "$work/export" | grep "version=3")
kv_url=$(tools/redis-server.sh start | grep '^unix://')

echo "machine: $(nproc) CPUs, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "kv:  redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), appendfsync $(redis-cli -s "${kv_url#unix://}" CONFIG GET appendfsync | tail -1), $kv_url"
echo "nfs: nfs-ganesha $(dpkg-query -W -f='${Version}' nfs-ganesha 2>/dev/null) FSAL_VFS, export on $(stat -f -c %T "$work/export"), $nfs_url"

# run LABEL BACKEND-ARGS...: one engine, every operation at every depth, then stopped.
run() {
  local label=$1
  shift
  rm -f "$work/engine.sock"
  .build/release/dpfs-engine --vhost-user-socket "$work/engine.sock" "$@" --cache never --log-level warning \
    >"$work/engine-$label.log" 2>&1 &
  engine_pid=$!
  for _ in $(seq 100); do [ -S "$work/engine.sock" ] && break; sleep 0.1; done
  for depth in $depths; do
    sleep_flag=$([ "$depth" = 1 ] || echo --sleep-when-idle)
    .build/release/dpfs-bench vhost-user --socket "$work/engine.sock" --label "$label" --daemon-pid $engine_pid $sleep_flag \
      --operations open-read-close open-write-close getattr-file lookup-file \
      --requests "$requests" --warmup "$warmup" --depths "$depth" --json >>"$work/$label.json" 2>"$work/bench-$label.err" \
      || { cat "$work/bench-$label.err" "$work/engine-$label.log"; exit 1; }
  done
  kill "$engine_pid"; wait "$engine_pid" 2>/dev/null || true; engine_pid=
}
: >"$work/kv.json"
: >"$work/kv-everysec.json"
: >"$work/nfs.json"
appendfsync() { redis-cli -s "${kv_url#unix://}" CONFIG SET appendfsync "$1" >/dev/null; }
for round in $(seq "$rounds"); do
  echo "round $round of $rounds"
  appendfsync always
  run kv --backend kv --kv-url "$kv_url"
  appendfsync everysec
  run kv-everysec --backend kv --kv-url "$kv_url"
  appendfsync always
  run nfs --backend nfs --nfs-url "$nfs_url"
done

python3 - "$work/kv.json" "$work/kv-everysec.json" "$work/nfs.json" <<'PY'
import json, statistics, sys
def medians(path):
    runs = {}
    for m in map(json.loads, open(path)):
        runs.setdefault((m["operation"], m["queue_depth"]), []).append(m)
    return {key: {field: statistics.median([m[field] for m in ms if m.get(field) is not None] or [0])
                  for field in ("p50_ns", "p99_ns", "ops_per_second", "daemon_cpu_us_per_op")}
            for key, ms in runs.items()}
kv, lazy, nfs = medians(sys.argv[1]), medians(sys.argv[2]), medians(sys.argv[3])
order = ["open-read-close", "open-write-close", "getattr-file", "lookup-file"]
print("kv = appendfsync always, kv-es = appendfsync everysec; ratios are ops/s over NFS's")
print(f"{'operation':17} {'depth':>5} {'kv p50 µs':>10} {'kv-es p50 µs':>13} {'nfs p50 µs':>11} {'kv ops/s':>9} {'kv-es ops/s':>12} "
      f"{'nfs ops/s':>10} {'kv/nfs':>7} {'kv-es/nfs':>10} {'kv cpu µs/op':>13} {'nfs cpu µs/op':>14}")
for key in sorted(kv, key=lambda k: (order.index(k[0]), k[1])):
    k, e, n = kv[key], lazy.get(key), nfs.get(key)
    if n is None or e is None:
        continue
    print(f"{key[0]:17} {key[1]:>5} {k['p50_ns'] / 1000:>10.1f} {e['p50_ns'] / 1000:>13.1f} {n['p50_ns'] / 1000:>11.1f} "
          f"{k['ops_per_second']:>9.0f} {e['ops_per_second']:>12.0f} {n['ops_per_second']:>10.0f} "
          f"{k['ops_per_second'] / n['ops_per_second']:>7.2f} {e['ops_per_second'] / n['ops_per_second']:>10.2f} "
          f"{k['daemon_cpu_us_per_op']:>13.1f} {n['daemon_cpu_us_per_op']:>14.1f}")
PY
