#!/usr/bin/env bash
# Instructions per request, counted by callgrind, for the request classes the backend kit's closing
# notes compare before and after a change: the core mix (null backend), a passthrough GETATTR and a
# passthrough READ 4 KiB. Instruction counts are stable where nanoseconds on these shared VMs are
# not. Each class runs twice (N and 2N requests, same warm-up) on a copy of the release dpfs-bench
# stripped of debug information; (Ir(2N) - Ir(N)) / N cancels start-up, set-up and warm-up.
# Debian 12's valgrind 3.19 does not know openat2 (the passthrough backend's every LOOKUP), so
# trixie's valgrind 3.24 is fetched into tools/.cache (tools/fetch-trixie.sh, nothing installed)
# and started through trixie's own loader.
#
#   tools/callgrind-cost.sh [--requests N] [--no-build] [--classes CLASS...]
set -euo pipefail
cd "$(dirname "$0")/.."

requests=5000
build=1
classes=(core-mix passthrough-getattr passthrough-read-4k)
while [ $# -gt 0 ]; do
  case $1 in
    --requests) requests=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --classes) shift; classes=(); while [ $# -gt 0 ] && [[ $1 != --* ]]; do classes+=("$1"); shift; done ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
trixie=$(tools/fetch-trixie.sh valgrind libc6)
valgrind=(env "VALGRIND_LIB=$trixie/usr/libexec/valgrind" "$trixie/usr/lib64/ld-linux-x86-64.so.2"
  --library-path "$trixie/usr/lib/x86_64-linux-gnu" "$trixie/usr/bin/valgrind.bin")
[ $build = 0 ] || swift build -c release --product dpfs-bench >&2
binary=$(swift build -c release --show-bin-path)
work=$(mktemp -d /tmp/dpfs-callgrind.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp "$binary/dpfs-bench" "$work/dpfs-bench"
strip --strip-debug "$work/dpfs-bench"

# Total instructions (Ir) of one run.
instructions() {
  local class=$1 count=$2 out="$work/callgrind.$1.$2"
  LD_LIBRARY_PATH="$binary" "${valgrind[@]}" --tool=callgrind --callgrind-out-file="$out" \
    "$work/dpfs-bench" cost --class "$class" --requests "$count" --warmup 500 >/dev/null 2>"$out.log" \
    || { cat "$out.log" >&2; exit 1; }
  awk '/^summary:/ { print $2 }' "$out"
}

printf '%-22s %14s\n' class instructions/request
for class in "${classes[@]}"; do
  single=$(instructions "$class" "$requests")
  double=$(instructions "$class" $((requests * 2)))
  per=$(( (double - single) / requests ))
  printf '%-22s %14d\n' "$class" "$per"
  echo "{\"benchmark\":\"callgrind-cost\",\"class\":\"$class\",\"requests\":$requests,\"instructions_per_request\":$per}" >&2
done
