#!/usr/bin/env bash
# The NFS backend against its floor, measured in one run on one export: nfs-ganesha (FSAL_VFS,
# tools/nfs-server.sh) exports a directory on loopback;
#   1. dpfs-bench nfs-floor: a raw libnfs loop issuing the calls the engine makes (GETATTR, LOOKUP,
#      READ 4 KiB, WRITE 4 KiB UNSTABLE) with DEPTH calls outstanding — nothing of the engine runs;
#   2. dpfs-engine --backend nfs over vhost-user, driven by dpfs-bench vhost-user (the load generator
#      playing QEMU and the guest): getattr-file, lookup-file, read-file, write-file of the same file;
#   3. the same through a second engine speaking NFSv4.1 to the same export (its pseudo path),
#      and a third speaking NFSv4.0.
# Then one table: p50 of each, what the engine adds at p50, throughput and CPU per operation of
# each (the engine's: all its threads, from /proc). Each side runs alone (neither competes for the
# CPUs). Percentiles on both sides are the upper edges of the same log-linear histogram (≤ 1/32 high).
# DPFS_ENGINE_ARGS adds engine options (e.g. "--busy-poll-us 0"); DPFS_ENGINE_BINARY runs another build.
# The two sides alternate for --rounds rounds (default 3) and each figure is the median over them,
# so a drift of this shared VM during the run moves both sides alike.
#   tools/bench-nfs.sh [--depths "1 16 64"] [--requests N] [--warmup N] [--connections N] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
depths="1 16 64"
requests=20000
warmup=2000
connections=1
rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --depths) depths=$2; shift ;;
    --requests) requests=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --connections) connections=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
swift build -c release --product dpfs-engine >/dev/null
swift build -c release --product dpfs-bench >/dev/null

work=$(mktemp -d /tmp/dpfs-bench-nfs.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/export"
engine_pid=
engine4_pid=
engine40_pid=
cleanup() {
  [ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null
  [ -n "$engine4_pid" ] && kill "$engine4_pid" 2>/dev/null && wait "$engine4_pid" 2>/dev/null
  [ -n "$engine40_pid" ] && kill "$engine40_pid" 2>/dev/null && wait "$engine40_pid" 2>/dev/null
  tools/nfs-server.sh stop || true
  rm -rf "$work"
}
trap cleanup EXIT
urls=$(tools/nfs-server.sh start "$work/export")
url=$(grep "version=3" <<<"$urls")
url4=$(grep "version=4" <<<"$urls" | sed 's/version=4&/version=4.1\&/')
url40=$(grep "version=4" <<<"$urls" | sed 's/version=4&/version=4.0\&/')
common=(--requests "$requests" --warmup "$warmup" --depths $depths --json)

echo "machine: $(nproc) CPUs, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "server: nfs-ganesha $(dpkg-query -W -f='${Version}' nfs-ganesha 2>/dev/null) FSAL_VFS, export on $(stat -f -c %T "$work/export"), $url"
${DPFS_ENGINE_BINARY:-.build/release/dpfs-engine} --vhost-user-socket "$work/engine.sock" --backend nfs --nfs-url "$url" \
  --nfs-connections "$connections" --cache never --log-level warning ${DPFS_ENGINE_ARGS:-} >"$work/engine.log" 2>&1 &
engine_pid=$!
${DPFS_ENGINE_BINARY:-.build/release/dpfs-engine} --vhost-user-socket "$work/engine4.sock" --backend nfs --nfs-url "$url4" \
  --cache never --log-level warning ${DPFS_ENGINE_ARGS:-} >"$work/engine4.log" 2>&1 &
engine4_pid=$!
${DPFS_ENGINE_BINARY:-.build/release/dpfs-engine} --vhost-user-socket "$work/engine40.sock" --backend nfs --nfs-url "$url40" \
  --cache never --log-level warning ${DPFS_ENGINE_ARGS:-} >"$work/engine40.log" 2>&1 &
engine40_pid=$!
for _ in $(seq 100); do [ -S "$work/engine.sock" ] && [ -S "$work/engine4.sock" ] && [ -S "$work/engine40.sock" ] && break; sleep 0.1; done
# Depth 1 is latency: the generator spins for each answer, as the floor's poll loop has nothing else
# to do. Deeper is throughput: the generator sleeps on its call eventfd (a guest waiting for its
# interrupt), else its spinning takes one of the machine's CPUs from ganesha and the engine.
: >"$work/engine.json"
: >"$work/engine4.json"
: >"$work/engine40.json"
: >"$work/floor.json"
for round in $(seq "$rounds"); do
  echo "round $round of $rounds"
  .build/release/dpfs-bench nfs-floor --url "$url" --connections "$connections" "${common[@]}" >>"$work/floor.json"
  for depth in $depths; do
    sleep_flag=$([ "$depth" = 1 ] || echo --sleep-when-idle)
    engine_common=(--requests "$requests" --warmup "$warmup" --depths "$depth" --json)
    .build/release/dpfs-bench vhost-user --socket "$work/engine.sock" --label dpfs-engine-nfs --daemon-pid $engine_pid $sleep_flag \
      --operations getattr-file lookup-file read-file write-file "${engine_common[@]}" >>"$work/engine.json" 2>"$work/engine-bench.err" \
      || { cat "$work/engine-bench.err" "$work/engine.log"; exit 1; }
    .build/release/dpfs-bench vhost-user --socket "$work/engine4.sock" --label dpfs-engine-nfs4 --daemon-pid $engine4_pid $sleep_flag \
      --operations getattr-file lookup-file read-file write-file "${engine_common[@]}" >>"$work/engine4.json" 2>"$work/engine-bench.err" \
      || { cat "$work/engine-bench.err" "$work/engine4.log"; exit 1; }
    .build/release/dpfs-bench vhost-user --socket "$work/engine40.sock" --label dpfs-engine-nfs40 --daemon-pid $engine40_pid $sleep_flag \
      --operations getattr-file lookup-file read-file write-file "${engine_common[@]}" >>"$work/engine40.json" 2>"$work/engine-bench.err" \
      || { cat "$work/engine-bench.err" "$work/engine40.log"; exit 1; }
  done
done
kill "$engine_pid" "$engine4_pid" "$engine40_pid"; wait "$engine_pid" "$engine4_pid" "$engine40_pid" 2>/dev/null || true
engine_pid= engine4_pid= engine40_pid=

python3 - "$work/floor.json" "$work/engine.json" "$work/engine4.json" "$work/engine40.json" <<'PY'
import json, statistics, sys
def medians(path, rename):
    runs = {}
    for m in map(json.loads, open(path)):
        runs.setdefault((rename(m["operation"]), m["queue_depth"]), []).append(m)
    merged = {}
    for key, ms in runs.items():
        merged[key] = {field: statistics.median([m[field] for m in ms if m.get(field) is not None] or [0])
                       for field in ("p50_ns", "ops_per_second", "cpu_us_per_call", "daemon_cpu_us_per_op")}
        merged[key]["rounds"] = len(ms)
    return merged
floor = medians(sys.argv[1], lambda o: o)
engine = medians(sys.argv[2], lambda o: o.replace("-file", ""))
engine4 = medians(sys.argv[3], lambda o: o.replace("-file", ""))
engine40 = medians(sys.argv[4], lambda o: o.replace("-file", ""))
print(f"{'operation':10} {'depth':>5} {'floor p50 µs':>13} {'v3 p50 µs':>10} {'v4.1 p50 µs':>12} {'v4.0 p50 µs':>12} {'floor ops/s':>12} {'v3 ops/s':>9} {'v4.1 ops/s':>11} {'v4.0 ops/s':>11} {'v3/floor':>9} {'v4.1/v3':>8} {'v4.0/v3':>8} {'floor cpu µs/op':>16} {'v3 cpu µs/op':>13} {'v4.1 cpu µs/op':>15} {'v4.0 cpu µs/op':>15}")
for key in sorted(engine, key=lambda k: (["getattr", "lookup", "read", "write"].index(k[0]), k[1])):
    e, f, e4, e40 = engine[key], floor.get(key), engine4.get(key), engine40.get(key)
    if f is None or e4 is None or e40 is None:
        continue
    print(f"{key[0]:10} {key[1]:>5} {f['p50_ns'] / 1000:>13.1f} {e['p50_ns'] / 1000:>10.1f} {e4['p50_ns'] / 1000:>12.1f} {e40['p50_ns'] / 1000:>12.1f} "
          f"{f['ops_per_second']:>12.0f} {e['ops_per_second']:>9.0f} {e4['ops_per_second']:>11.0f} {e40['ops_per_second']:>11.0f} {e['ops_per_second'] / f['ops_per_second']:>9.2f} "
          f"{e4['ops_per_second'] / e['ops_per_second']:>8.2f} {e40['ops_per_second'] / e['ops_per_second']:>8.2f} {f['cpu_us_per_call']:>16.1f} {e['daemon_cpu_us_per_op']:>13.1f} "
          f"{e4['daemon_cpu_us_per_op']:>15.1f} {e40['daemon_cpu_us_per_op']:>15.1f}")
PY
