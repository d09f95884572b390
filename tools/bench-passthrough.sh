#!/usr/bin/env bash
# dpfs-engine's passthrough backend against the C virtiofsd, over the same tmpfs directory, with the
# same load generator (dpfs-bench vhost-user plays QEMU and the guest), in one run on one machine.
# Each back-end runs alone; its CPU time (user + system, every thread and forked child) is sampled
# around each measurement (--daemon-pid). Prints both tables and the ratios per row.
#
#   tools/bench-passthrough.sh [--operations OP...] [--depths N...] [--requests N] [--warmup N]
#                              [--scratch-path DIR] [--no-build] [--keep-json DIR] [--busy-poll-us N]
#                              [--only dpfs-engine|virtiofsd] [--rounds N] [other dpfs-bench vhost-user options]
#
# Defaults: --operations getattr-file lookup-file read-file write-file create-unlink --depths 1 16.
# The engine runs with --cache never and virtiofsd with -o cache=none, so neither side lets the
# guest cache (the load generator has no page cache anyway; the mode only changes what the replies
# say). The C virtiofsd exits when its front-end disconnects: one dpfs-bench run measures every
# operation and depth over one connection. With --rounds N the two back-ends take turns N times and
# every figure is the median of the N rounds (this VM's speed drifts by ±10% and more).
set -euo pipefail
cd "$(dirname "$0")/.."

operations=(getattr-file lookup-file read-file write-file create-unlink)
depths=(1 16)
scratch=.build
build=1
keep=""
only=""
rounds=1
engine_args=()
bench_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --operations|--depths)
      option=$1; shift; values=()
      while [ $# -gt 0 ] && [[ $1 != --* ]]; do values+=("$1"); shift; done
      [ ${#values[@]} -gt 0 ] || { echo "$option needs values" >&2; exit 2; }
      if [ "$option" = --operations ]; then operations=("${values[@]}"); else depths=("${values[@]}"); fi ;;
    --scratch-path) scratch=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --keep-json) keep=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --busy-poll-us) engine_args+=(--busy-poll-us "$2"); shift 2 ;;
    --json|--socket|--in-process-engine|--label|--daemon-pid) echo "$1 is set by this script" >&2; exit 2 ;;
    *) bench_args+=("$1"); shift ;;
  esac
done

virtiofsd=/usr/lib/qemu/virtiofsd
[ -x "$virtiofsd" ] || tools/install-dependencies.sh guest   # QEMU's package carries the C virtiofsd
if [ $build = 1 ]; then
  [ "$only" = virtiofsd ] || swift build -c release --product dpfs-engine --scratch-path "$scratch" >/dev/null
  swift build -c release --product dpfs-bench --scratch-path "$scratch" >/dev/null
fi
bin="$scratch/release"

work=$(mktemp -d)
share="$work/share"
engine_pid=""
virtiofsd_pid=""
cleanup() {
  [ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null || true
  [ -n "$virtiofsd_pid" ] && kill "$virtiofsd_pid" 2>/dev/null || true
  umount "$share" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$share"
mount -t tmpfs -o size=256m tmpfs "$share"

wait_for_socket() {
  for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
  echo "no socket at $1 after 5 s" >&2; return 1
}

# One dpfs-bench run: label, socket, daemon pid, round; JSON rows to $work/label.round.json.
bench() {
  local label=$1 socket=$2 pid=$3 round=$4
  if ! "$bin/dpfs-bench" vhost-user --socket "$socket" --label "$label" --daemon-pid "$pid" --json \
       --operations "${operations[@]}" --depths "${depths[@]}" "${bench_args[@]}" >"$work/$label.$round.json"; then
    echo "dpfs-bench against $label failed (see above)" >&2
    return 1
  fi
}

run_engine() {
  "$bin/dpfs-engine" --vhost-user-socket "$work/engine.sock" --backend passthrough --shared-dir "$share" --cache never \
    --log-level warning "${engine_args[@]}" >"$work/engine.log" 2>&1 &
  engine_pid=$!
  wait_for_socket "$work/engine.sock"
  bench dpfs-engine "$work/engine.sock" "$engine_pid" "$1" || status=1
  kill "$engine_pid"; wait "$engine_pid" 2>/dev/null || true; engine_pid=""
  rm -f "$work/engine.sock"
  if [ -s "$work/engine.log" ]; then echo "dpfs-engine log:"; sed 's/^/  /' "$work/engine.log"; fi
}

run_virtiofsd() {
  "$virtiofsd" --socket-path="$work/virtiofsd.sock" -o source="$share" -o cache=none >"$work/virtiofsd.log" 2>&1 &
  virtiofsd_pid=$!
  wait_for_socket "$work/virtiofsd.sock"
  bench virtiofsd "$work/virtiofsd.sock" "$virtiofsd_pid" "$1" || status=1
  # It exits once the front-end disconnects.
  for _ in $(seq 50); do kill -0 "$virtiofsd_pid" 2>/dev/null || break; sleep 0.1; done
  kill "$virtiofsd_pid" 2>/dev/null || true; wait "$virtiofsd_pid" 2>/dev/null || true; virtiofsd_pid=""
  rm -f "$work/virtiofsd.sock"
}

status=0
for round in $(seq "$rounds"); do
  # The same directory, emptied before each back-end, so both start from a fresh tree (the
  # benchmark file is created and filled again).
  find "$share" -mindepth 1 -delete
  [ "$only" = virtiofsd ] || run_engine "$round"
  find "$share" -mindepth 1 -delete
  [ "$only" = dpfs-engine ] || run_virtiofsd "$round"
done

[ -n "$keep" ] && { mkdir -p "$keep"; cp "$work"/*.json "$keep"/; }

# Tables and ratios from the JSON rows (flat objects, one per line); medians over the rounds.
[ "$rounds" -gt 1 ] && echo "every figure: the median of $rounds rounds"
awk -v rounds="$rounds" '
function field(line, name,   pattern, value) {
  pattern = "\"" name "\":"
  if (!index(line, pattern)) return ""
  value = substr(line, index(line, pattern) + length(pattern))
  sub(/[,}].*/, "", value); gsub(/"/, "", value)
  return value
}
function add(metric, b, key, value) { count[metric, b, key]++; values[metric, b, key, count[metric, b, key]] = value + 0 }
function median(metric, b, key,   n, i, j, t, a) {
  n = count[metric, b, key]
  if (n == 0) return ""
  for (i = 1; i <= n; i++) a[i] = values[metric, b, key, i]
  for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
  return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function ns(value) {
  value = value + 0
  if (value >= 1000000) return sprintf("%.2f ms", value / 1000000)
  return value >= 10000 ? sprintf("%.1f us", value / 1000) : sprintf("%d ns", value)
}
function ratio(a, b) { a += 0; b += 0; return (a > 0 && b > 0) ? sprintf("%.2fx", a / b) : "-" }
/^\{/ {
  b = field($0, "backend"); key = field($0, "operation") SUBSEP field($0, "queue_depth")
  if (!(key in seen)) { seen[key] = 1; order[++rows] = key }
  add("ops", b, key, field($0, "ops_per_second")); add("p50", b, key, field($0, "p50_ns"))
  add("p99", b, key, field($0, "p99_ns")); add("p999", b, key, field($0, "p999_ns"))
  add("cpu", b, key, field($0, "daemon_cpu_us_per_op")); add("kicks", b, key, field($0, "kicks_per_request"))
  bad[b, key] += field($0, "unexpected_replies")
}
END {
  backends[1] = "dpfs-engine"; backends[2] = "virtiofsd"
  printf "| back-end | operation | queue depth | ops/s | p50 | p99 | p99.9 | back-end CPU per op | kicks per op | failures |\n"
  printf "|---|---|---|---|---|---|---|---|---|---|\n"
  for (i = 1; i <= 2; i++) for (r = 1; r <= rows; r++) {
    b = backends[i]; key = order[r]; split(key, part, SUBSEP)
    if (count["ops", b, key] == 0) { printf "| %s | %s | %s | (no result) | | | | | | |\n", b, part[1], part[2]; continue }
    printf "| %s | %s | %s | %d | %s | %s | %s | %.2f us | %.4f | %d |\n", b, part[1], part[2], median("ops", b, key),
           ns(median("p50", b, key)), ns(median("p99", b, key)), ns(median("p999", b, key)), median("cpu", b, key),
           median("kicks", b, key), bad[b, key]
  }
  printf "\nRatios, dpfs-engine against virtiofsd (above 1: dpfs-engine better): ops/s = engine / virtiofsd;\n"
  printf "p50, p99 and CPU per op = virtiofsd / engine.\n\n"
  printf "| operation | queue depth | ops/s | p50 | p99 | CPU per op |\n|---|---|---|---|---|---|\n"
  e = "dpfs-engine"; v = "virtiofsd"
  for (r = 1; r <= rows; r++) {
    key = order[r]; split(key, part, SUBSEP)
    printf "| %s | %s | %s | %s | %s | %s |\n", part[1], part[2], ratio(median("ops", e, key), median("ops", v, key)),
           ratio(median("p50", v, key), median("p50", e, key)), ratio(median("p99", v, key), median("p99", e, key)),
           ratio(median("cpu", v, key), median("cpu", e, key))
  }
}' /dev/null $(ls "$work"/*.json 2>/dev/null)
exit $status
