#!/usr/bin/env bash
# run-guest.sh — boot a tiny Linux guest whose virtio-fs device is served by a vhost-user back-end,
# run a workload on the mounted file system, and report the outcome to the host.
#
# Why: unit tests can fake a driver; this is the real one. QEMU is the vhost-user front-end, the
# back-end (our engine, or the C virtiofsd as reference) listens on --socket, the guest's Linux
# virtio-fs driver mounts the tag and runs a shell workload. Everything the guest prints goes to a
# console log that this script parses (markers written by tools/guest/init).
#
# Usage:
#   tools/guest/run-guest.sh --socket PATH --kernel 6.1|6.12 --workload FILE
#       [--tag TAG]          virtio-fs tag (default dpfs)
#       [--queues N]         virtio-fs request queues (default 1; >1 also gives the guest 2 CPUs)
#       [--boots N]          boot N times: the guest reboots after each workload (default 1)
#       [--memory MiB]       guest memory (default 512)
#       [--timeout SECONDS]  kill QEMU after this long (default 300)
#       [--log FILE]         console log (default tools/.cache/guest/logs/<time>-<pid>.log)
#       [--trace-vhost-user FILE]  put tools/guest/vhost-user-trace.py between QEMU and the
#                            back-end and write the decoded vhost-user messages to FILE
#       [--smp N]            guest CPUs (default: 1, or 2 when --queues > 1)
#       [--append ARGS]      extra kernel command-line arguments
#       [--qemu-arg ARG]     extra QEMU argument (repeatable)
#   Environment: DPFS_GUEST_ACCEL=kvm|tcg (or a full -accel value such as tcg,thread=multi)
#   skips the cached KVM probe.
#
# Output: the workload's output of each boot (between '=== boot N workload output ===' lines, so a
# caller can grep it), timings, then one verdict line:
#   run-guest: PASS kernel=6.1 accel=tcg boots=2/2 workload=0,0 umount=0,0 time=8.6s log=PATH
#   run-guest: FAIL <reason> ... log=PATH
# Exit status 0 only if N boots happened, every workload and umount exit status was 0 and the
# kernel printed no panic, Oops, BUG or virtio-fs error.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="$repo/tools/.cache/guest"

usage() {
  sed -n '/^# Usage:/,/^# Output:/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

socket='' kernel='' workload='' log='' trace='' smp='' append=''
tag=dpfs queues=1 boots=1 memory=512 timeout=300
qemu_extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --socket) socket=$2; shift 2 ;;
    --kernel) kernel=$2; shift 2 ;;
    --workload) workload=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --queues) queues=$2; shift 2 ;;
    --boots) boots=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --trace-vhost-user) trace=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    --qemu-arg) qemu_extra+=("$2"); shift 2 ;;
    -h | --help) usage ;;
    *) echo "run-guest: unknown argument $1" >&2; usage ;;
  esac
done
[[ -n $socket && -n $kernel && -n $workload ]] || usage
[[ $kernel == 6.1 || $kernel == 6.12 ]] || { echo "run-guest: --kernel must be 6.1 or 6.12" >&2; exit 2; }
[[ -f $workload ]] || { echo "run-guest: no workload $workload" >&2; exit 2; }
for n in queues boots memory timeout; do
  [[ ${!n} =~ ^[1-9][0-9]*$ ]] || { echo "run-guest: --$n must be a positive integer" >&2; exit 2; }
done
if [[ -z $smp ]]; then
  # Linux's virtio-fs spreads request queues over CPUs; with one CPU only one queue gets used.
  # The machine has 2 cores, so more than 2 vCPUs would only slow TCG down.
  if ((queues > 1)); then smp=2; else smp=1; fi
fi

say() { echo "run-guest: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
t_start=$(now)

mkdir -p "$cache/logs" "$cache/initramfs"
if [[ -z $log ]]; then log="$cache/logs/$(date +%Y%m%d-%H%M%S)-$$.log"; fi
mkdir -p "$(dirname "$log")"
: >"$log"
qemu_err="$log.qemu-stderr"

# --- kernel and initramfs ------------------------------------------------------------------------
kinfo=$("$here/fetch-kernel.sh" "$kernel")
vmlinuz=$(sed -n 's/^vmlinuz=//p' <<<"$kinfo")

# The initramfs is cached under a hash of everything that goes into it, so a repeated run with the
# same kernel/workload/init costs nothing; changing any of them rebuilds it.
initrd_for() { # workload -> cached initramfs path (built if missing)
  local wl=$1 key out
  key=$({
    echo "$kinfo"
    sha256sum "$wl" "$here/init" "$here/build-initramfs.sh" "$here/nfs-mount.c" /bin/busybox | cut -d' ' -f1
  } | sha256sum | cut -c1-16)
  out="$cache/initramfs/$kernel-$key.cpio.gz"
  if [[ ! -f $out ]]; then "$here/build-initramfs.sh" "$kernel" "$wl" "$out"; fi
  echo "$out"
}
initrd=$(initrd_for "$workload")

# --- accelerator ---------------------------------------------------------------------------------
# KVM only if it really boots a guest here: on nested or sandboxed hosts /dev/kvm can exist and
# still hang the guest or abort QEMU. The verdict is probed once (a device-less boot of the
# requested kernel that must print the 'booted' marker) and cached in tools/.cache/guest/accel.
probe_kvm() {
  [[ -r /dev/kvm && -w /dev/kvm ]] || { echo "tcg (no usable /dev/kvm)"; return; }
  local wl plog initrd_p
  wl=$(mktemp) plog=$(mktemp)
  echo 'true' >"$wl"
  initrd_p=$(initrd_for "$wl")
  timeout -k 5 20 qemu-system-x86_64 -machine q35 -accel kvm -m 256 -nodefaults -no-user-config \
    -display none -monitor none -serial "file:$plog" -no-reboot \
    -kernel "$vmlinuz" -initrd "$initrd_p" -append "console=ttyS0 panic=-1" >/dev/null 2>&1 || true
  if grep -q 'DPFS-GUEST: booted' "$plog"; then echo "kvm (probe booted)"; else echo "tcg (kvm probe did not boot)"; fi
  rm -f "$wl" "$plog"
}
if [[ -n ${DPFS_GUEST_ACCEL:-} ]]; then
  accel=$DPFS_GUEST_ACCEL
else
  if [[ ! -s "$cache/accel" ]]; then
    say "probing whether KVM can boot a guest here (once; cached in $cache/accel)"
    probe_kvm >"$cache/accel.$$" && mv "$cache/accel.$$" "$cache/accel"
  fi
  accel=$(cut -d' ' -f1 "$cache/accel")
fi
case "$accel" in
  *,*) accel_arg=$accel ;; # a full -accel value from DPFS_GUEST_ACCEL, e.g. tcg,thread=multi
  kvm) accel_arg=kvm ;;
  # 6.12 runs on single-threaded TCG as a precaution (QEMU 7.2's multi-threaded TCG was reported
  # unreliable with it; with the CPU model below multi-threaded also passed in our tests).
  tcg) if [[ $kernel == 6.12 ]]; then accel_arg=tcg,thread=single; else accel_arg=tcg; fi ;;
  *) echo "run-guest: unknown accelerator $accel" >&2; exit 2 ;;
esac
cpu_args=()
if [[ $accel_arg == tcg* ]]; then
  # Hide CMPXCHG16B from the guest. QEMU 7.2's TCG emulation of it corrupts SLUB's per-CPU
  # freelists (the kernel's fast path is 'cmpxchg16b %gs:(...)'): 6.12 double-faulted in
  # kmem_cache_alloc or oopsed elsewhere in about 40% of boots, single- or multi-threaded TCG.
  # Without CX16 the kernel uses its software fallback and every boot passed (0 failures in 30+).
  # shellcheck disable=SC2054 # the comma belongs to QEMU's argument
  cpu_args=(-cpu qemu64,-cx16)
fi

# --- optional vhost-user trace proxy -------------------------------------------------------------
proxy_pid=
tmpdir=$(mktemp -d)
qemu_pid=
cleanup() {
  if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then kill -9 "$qemu_pid" 2>/dev/null || true; fi
  if [[ -n $proxy_pid ]]; then kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; fi
  rm -rf "$tmpdir"
}
trap cleanup EXIT

[[ -S $socket ]] || { echo "run-guest: $socket is not a socket (is the back-end listening?)" >&2; exit 1; }
qemu_socket=$socket
if [[ -n $trace ]]; then
  qemu_socket="$tmpdir/trace.sock"
  : >"$trace"
  python3 "$here/vhost-user-trace.py" --listen "$qemu_socket" --connect "$socket" --log "$trace" &
  proxy_pid=$!
  for _ in $(seq 50); do [[ -S $qemu_socket ]] && break; sleep 0.1; done
  [[ -S $qemu_socket ]] || { echo "run-guest: trace proxy did not start" >&2; exit 1; }
fi

# --- QEMU ----------------------------------------------------------------------------------------
# share=on memfd memory: the back-end maps guest RAM from the fds QEMU sends (ADD_MEM_REG when the
# back-end offers CONFIGURE_MEM_SLOTS, else SET_MEM_TABLE); a private mapping would not show the
# guest's writes to the back-end or the back-end's to the guest. -nodefaults: no NIC/VGA to probe, faster boot.
# The console goes to a file that we poll; QEMU's own messages to $log.qemu-stderr.
fs_dev="vhost-user-fs-pci,chardev=vfs,tag=$tag,queue-size=128"
if ((queues > 1)); then fs_dev+=",num-request-queues=$queues"; fi
cmdline="console=ttyS0 panic=-1 dpfs.tag=$tag"
if ((boots > 1)); then cmdline+=" dpfs.reboot=1"; fi
if [[ -n $append ]]; then cmdline+=" $append"; fi
# shellcheck disable=SC2054 # commas inside QEMU arguments
qemu=(qemu-system-x86_64 -machine q35 -accel "$accel_arg" "${cpu_args[@]}" -smp "$smp" -m "$memory"
  -object "memory-backend-memfd,id=mem,size=${memory}M,share=on" -numa node,memdev=mem
  -chardev "socket,id=vfs,path=$qemu_socket" -device "$fs_dev"
  -kernel "$vmlinuz" -initrd "$initrd" -append "$cmdline"
  -nodefaults -no-user-config -display none -monitor none -serial "file:$log")
# A single boot ends with poweroff; -no-reboot also turns a panic-reboot (panic=-1) into an exit.
if ((boots == 1)); then qemu+=(-no-reboot); fi
qemu+=("${qemu_extra[@]}")

echo "run-guest: kernel $kernel ($(sed -n 's/^release=//p' <<<"$kinfo")), accel $accel_arg, smp $smp, queues $queues, boots $boots, log $log" >&2
shown= # the command line, copy-pasteable (arguments with spaces quoted)
for a in "${qemu[@]}"; do if [[ $a == *' '* ]]; then shown+="'$a' "; else shown+="$a "; fi; done
echo "run-guest: $shown" >&2
t_qemu=$(now)
"${qemu[@]}" </dev/null >"$qemu_err" 2>&1 &
qemu_pid=$!

# --- watch the console ---------------------------------------------------------------------------
# Only kernel lines (printk's '[ seconds ]' prefix) and our markers are checked for errors, so a
# workload that prints the word 'error' does not fail the run by itself. Case-sensitive on purpose:
# 'Oops' must not match the harmless 'loops_per_jiffy'. 'traps:' is a user process (busybox)
# killed by a CPU exception: a sign of broken CPU emulation, not of a workload failure.
kernel_errors() {
  grep -aE '^(\[ *[0-9]+\.[0-9]+\] |DPFS-GUEST: )' "$log" |
    grep -aE 'Kernel panic|Oops:|BUG:|Call Trace:|traps: |[Vv]irtio-?fs.*([Ee]rror|[Ff]ail|not found)|insmod .* failed' || true
}
count() { grep -ac "$1" "$log" || true; }

reason=
first_boot_wall=
while :; do
  if [[ -z $first_boot_wall ]] && grep -aq 'DPFS-GUEST: booted' "$log"; then
    first_boot_wall=$(elapsed "$t_qemu")
  fi
  if ! kill -0 "$qemu_pid" 2>/dev/null; then break; fi
  if [[ -n $(kernel_errors) ]]; then
    reason="kernel error"
    sleep 1 # let the rest of the Oops/panic report reach the log before QEMU is stopped
    break
  fi
  # With --boots N > 1 the guest reboots forever: stop it once the N-th workload has unmounted.
  if ((boots > 1)) && (($(count 'DPFS-GUEST: umount exit') >= boots)); then break; fi
  if (($(awk -v a="$t_qemu" -v b="$(now)" -v t="$timeout" 'BEGIN { print (b - a > t) }'))); then
    reason="timeout after ${timeout}s"
    # QEMU talks vhost-user (GET_FEATURES ...) before the guest starts: a back-end that accepted
    # the connection but does not answer leaves the console empty.
    if [[ ! -s $log ]]; then reason+=" (empty console: QEMU is likely still waiting for a vhost-user reply)"; fi
    break
  fi
  sleep 0.2
done
if kill -0 "$qemu_pid" 2>/dev/null; then
  kill -TERM "$qemu_pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$qemu_pid" 2>/dev/null && kill -9 "$qemu_pid" 2>/dev/null || true
fi
qemu_status=0
wait "$qemu_pid" || qemu_status=$?
qemu_pid=
t_total=$(elapsed "$t_start")
t_qemu_total=$(elapsed "$t_qemu")

# --- report --------------------------------------------------------------------------------------
# Workload output of each boot, between the init's markers, for callers to grep.
awk '
  /DPFS-GUEST: workload begin/ { n++; print "=== boot " n " workload output ==="; inside = 1; next }
  /DPFS-GUEST: workload exit/  { if (inside) print "=== boot " n " end (" $0 ") ==="; inside = 0; next }
  inside { sub(/\r$/, ""); print }
' "$log"

booted=$(count 'DPFS-GUEST: booted')
statuses() { grep -aoE "DPFS-GUEST: $1 exit [0-9]+" "$log" | awk '{ print $4 }' | paste -sd, - || true; }
wl=$(statuses workload)
um=$(statuses umount)
wl_n=$(count 'DPFS-GUEST: workload exit')
errors=$(kernel_errors)
guest_uptimes=$(grep -aoE 'DPFS-GUEST: booted \(uptime [0-9.]+' "$log" | awk '{ print $4 }' | paste -sd, - || true)

if [[ -z $reason ]]; then
  if ((wl_n < boots)); then
    reason="only $wl_n of $boots workload runs finished"
    if [[ -s $qemu_err ]]; then reason+=" (qemu: $(tail -n 1 "$qemu_err"))"; fi
  elif [[ -n $errors ]]; then
    reason="kernel error"
  elif [[ -n $(tr -d '0,' <<<"$wl$um") ]] || [[ $(tr -cd ',' <<<"$um") != $(tr -cd ',' <<<"$wl") ]]; then
    reason="non-zero workload/umount status"
  fi
fi
if [[ -n $errors ]]; then
  echo "--- kernel errors ---"
  echo "$errors"
fi
echo "run-guest: timing: qemu start -> first 'booted' marker ${first_boot_wall:-never} s (guest uptime at boot marker: ${guest_uptimes:-none} s), qemu total ${t_qemu_total} s, script total ${t_total} s"
summary="kernel=$kernel accel=$accel_arg boots=$booted/$boots workload=${wl:-none} umount=${um:-none} time=${t_total}s log=$log"
if [[ -n $trace ]]; then summary+=" trace=$trace"; fi
if [[ -z $reason ]]; then
  echo "run-guest: PASS $summary"
  exit 0
fi
echo "run-guest: FAIL $reason; $summary"
if [[ -s $qemu_err ]]; then
  echo "--- qemu stderr (exit $qemu_status) ---"
  tail -n 20 "$qemu_err"
fi
echo "--- console tail ---"
tail -n 30 "$log" | tr -d '\r'
exit 1
