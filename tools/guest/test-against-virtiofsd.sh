#!/usr/bin/env bash
# test-against-virtiofsd.sh — validate the guest harness against the reference C virtiofsd.
#
# Why: before our own engine speaks vhost-user, the harness itself must be proven: the same guest,
# workload and checks, served by QEMU's C virtiofsd, must pass. Later the same runs with our
# back-end behind --socket are the end-to-end test; when something fails there, running this
# script tells whether the harness or the back-end is at fault.
#
# Runs (each against a freshly started virtiofsd, since it exits when QEMU disconnects):
#   1. kernel 6.1, 1 queue, 1 boot, smoke workload; virtiofsd at log_level=debug, whose FUSE
#      requests are summarised in <logdir>/6.1-one-boot.fuse-opcodes
#   2. kernel 6.1, 1 queue, --boots 2 (the back-end must survive a guest reset)
#   3. kernel 6.12 (virtio-fs built in), 1 queue, 1 boot   (skipped with --quick)
# Every run's vhost-user control messages are decoded into <logdir>/<run>.vhost-user.trace (when
# python3 is there). After each run the host checks the file the guest wrote.
# Ends with 'virtiofsd: N passed, N failed'; exit status 0 only if all passed.
#
# Usage: tools/guest/test-against-virtiofsd.sh [--quick] [--virtiofsd PATH]
# Logs: tools/.cache/guest/logs/virtiofsd-<time>/ (console logs, run-guest output, virtiofsd
# logs, vhost-user trace); kept after the run.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
virtiofsd=/usr/lib/qemu/virtiofsd
quick=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --virtiofsd) virtiofsd=$2; shift 2 ;;
    *) echo "usage: $0 [--quick] [--virtiofsd PATH]" >&2; exit 2 ;;
  esac
done
[[ -x $virtiofsd ]] || { echo "no $virtiofsd (apt-get install -y qemu-system-x86)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/dpfs-virtiofsd-test.XXXXXX)
share="$tmp/share"
sock="$tmp/vhost-user.sock"
logdir="$repo/tools/.cache/guest/logs/virtiofsd-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$share" "$logdir"
echo "hello from the host" >"$share/hello.txt"

vfsd_pid=
stop_virtiofsd() {
  if [[ -n $vfsd_pid ]]; then
    kill "$vfsd_pid" 2>/dev/null || true
    wait "$vfsd_pid" 2>/dev/null || true
    vfsd_pid=
  fi
}
cleanup() {
  stop_virtiofsd
  rm -rf "$tmp"
}
trap cleanup EXIT

# The C virtiofsd serves one front-end connection and exits when it closes, so every run gets a
# fresh one. Its default sandbox (namespaces + pivot_root) needs privileges some containers lack;
# then fall back to its chroot sandbox.
start_virtiofsd() { # name [extra virtiofsd options...]
  local name=$1 sandbox
  shift
  for sandbox in namespace chroot; do
    rm -f "$sock"
    "$virtiofsd" --socket-path="$sock" -o source="$share" -o cache=none -o sandbox=$sandbox "$@" \
      >"$logdir/virtiofsd-$name.log" 2>&1 &
    vfsd_pid=$!
    for _ in $(seq 50); do
      [[ -S $sock ]] && return 0
      kill -0 "$vfsd_pid" 2>/dev/null || break
      sleep 0.1
    done
    stop_virtiofsd
    echo "virtiofsd with sandbox=$sandbox did not start: $(tail -n 1 "$logdir/virtiofsd-$name.log")" >&2
  done
  return 1
}

# The file the smoke workload writes must be visible on the host with the right size.
host_checks() {
  local f="$share/guest-written.bin" size
  size=$(stat -c %s "$f" 2>/dev/null || echo missing)
  if [[ $size != 1048576 ]]; then
    echo "host check: $f size $size, want 1048576"
    return 1
  fi
  if [[ $(cat "$share/hello.txt") != "hello from the host" ]]; then
    echo "host check: hello.txt changed"
    return 1
  fi
  echo "host check: guest-written.bin is 1048576 bytes; guest kernel $(cat "$share/guest-kernel.txt" 2>/dev/null || echo '?')"
}

passed=0
failed=0
summary=()
# The FUSE requests virtiofsd saw, in order, runs of the same opcode folded ('READx256'): what a
# back-end must answer for this workload.
fuse_opcodes() { # virtiofsd debug log -> one line
  grep -oE 'opcode: [A-Z_]+ \([0-9]+\)' "$1" | awk '{ print $2 $3 }' | uniq -c |
    awk '{ printf "%s%s ", $2, ($1 > 1 ? "x" $1 : "") } END { print "" }'
}

trace_args=()
run() { # name, run-guest arguments...
  local name=$1 started=$SECONDS status=0 vfsd_opts=()
  shift
  rm -f "$share/guest-written.bin" "$share/guest-kernel.txt"
  echo "==> $name"
  if [[ $name == 6.1-one-boot ]]; then vfsd_opts=(-o log_level=debug); fi
  trace_args=()
  if command -v python3 >/dev/null; then trace_args=(--trace-vhost-user "$logdir/$name.vhost-user.trace"); fi
  if ! start_virtiofsd "$name" "${vfsd_opts[@]}"; then
    failed=$((failed + 1))
    summary+=("FAIL $name: virtiofsd did not start")
    return
  fi
  "$here/run-guest.sh" --socket "$sock" --log "$logdir/$name.console.log" "${trace_args[@]}" "$@" \
    >"$logdir/$name.out" 2>&1 || status=$?
  # The verdict line, timing and the workload's RESULT lines; the rest is in the .out file.
  grep -E '^(RESULT |run-guest: (PASS|FAIL|timing)|=== boot)' "$logdir/$name.out" || true
  if [[ $status != 0 ]]; then
    tail -n 40 "$logdir/$name.out"
  elif ! host_checks; then
    status=1
  fi
  stop_virtiofsd
  if ((${#vfsd_opts[@]})); then
    fuse_opcodes "$logdir/virtiofsd-$name.log" >"$logdir/$name.fuse-opcodes"
    echo "FUSE requests: $(cut -c1-300 "$logdir/$name.fuse-opcodes")..."
  fi
  if [[ $status == 0 ]]; then
    passed=$((passed + 1))
    summary+=("ok   $name ($((SECONDS - started)) s)")
  else
    failed=$((failed + 1))
    summary+=("FAIL $name ($((SECONDS - started)) s): see $logdir/$name.out")
  fi
}

smoke="$here/workloads/virtiofsd-smoke.sh"
run 6.1-one-boot --kernel 6.1 --workload "$smoke" --queues 1 --boots 1 --timeout 300
run 6.1-two-boots --kernel 6.1 --workload "$smoke" --queues 1 --boots 2 --timeout 300
if [[ $quick == 0 ]]; then
  run 6.12-one-boot --kernel 6.12 --workload "$smoke" --queues 1 --boots 1 --timeout 900
fi

echo "--- summary (logs in $logdir)"
printf '%s\n' "${summary[@]}"
echo "virtiofsd: $passed passed, $failed failed"
((failed == 0))
