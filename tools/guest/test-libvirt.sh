#!/usr/bin/env bash
# test-libvirt.sh — end-to-end check that libvirt (Debian 12: libvirt 9.0, QEMU 7.2) runs dpfs-engine
# as the virtio-fs back-end of a domain, the way it runs virtiofsd.
#
# Two runs of the same TCG guest (direct kernel + initramfs from tools/guest/, serial console to a
# file, memfd shared memory), each mounting the tag and running tools/guest/workloads/libvirt-basic.sh:
#   binary      <filesystem> names the engine with <binary path=...>
#   descriptor  no <binary>: libvirt picks the engine from /usr/share/qemu/vhost-user/40-dpfs-engine.json
#               (tools/install-vhost-user-descriptor.sh --first), ahead of Debian's 50-qemu-virtiofsd.json
#   control     the binary case with the null backend behind libvirt's --fd: must fail
# The engine is reached through a wrapper that logs its argv, so the test also checks what libvirt
# passed (--fd=N -o source=DIR) and, in the descriptor case, that the engine (not virtiofsd) ran.
#
# Usage (root): test-libvirt.sh [--repo DIR] [--engine PATH] [--kernel 6.1|6.12] [--timeout S]
#                               [--only binary|descriptor|control] [--keep]
#   --repo     the dpfs checkout (default: ../.. of this script if it holds Package.swift, else $PWD)
#   --engine   default REPO/.build/release/dpfs-engine (built here when missing)
#   --keep     keep the work directory (logs, XML) instead of deleting it
# Installs libvirt-daemon-system (and qemu-system-x86 busybox-static cpio) with apt-get if missing.
# If no libvirtd answers on qemu:///system, starts virtlogd + libvirtd by hand (no systemd needed)
# and stops them again at exit; a daemon that was already running is used and left running.
# Exit 0 only if every case passed. Last line: 'test-libvirt: PASS ...' or 'test-libvirt: FAIL ...'.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo='' engine='' kernel=6.1 timeout=240 only='' keep=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --repo) repo=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    --kernel) kernel=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "test-libvirt: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z $repo ]]; then
  if [[ -f $here/../../Package.swift ]]; then repo=$(cd "$here/../.." && pwd); else repo=$PWD; fi
fi
[[ -f $repo/Package.swift && -x $repo/tools/guest/fetch-kernel.sh ]] || { echo "test-libvirt: $repo is not the dpfs checkout (--repo)" >&2; exit 2; }
engine=${engine:-$repo/.build/release/dpfs-engine}
workload_src=$repo/tools/guest/workloads/libvirt-basic.sh
[[ $(id -u) == 0 ]] || { echo "test-libvirt: must run as root (installs packages, starts libvirtd)" >&2; exit 2; }
[[ -x $engine ]] || (cd "$repo" && swift build -c release --product dpfs-engine >&2)
[[ -x $engine ]] || { echo "test-libvirt: no engine at $engine (swift build -c release first)" >&2; exit 2; }
[[ -f $workload_src ]] || { echo "test-libvirt: no guest workload $workload_src" >&2; exit 2; }

say() { echo "test-libvirt: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
URI=qemu:///system
V() { virsh -q -c "$URI" "$@"; }
t_all=$(now)

# --- packages ------------------------------------------------------------------------------------
need=()
command -v libvirtd >/dev/null || need+=(libvirt-daemon-system)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[[ -x /bin/busybox ]] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if ((${#need[@]})); then
  say "apt-get install ${need[*]}"
  t=$(now)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  say "packages installed in $(since "$t") s"
fi

# --- state to undo -------------------------------------------------------------------------------
work=$(mktemp -d /tmp/dpfs-libvirt.XXXXXX)
chmod 755 "$work" # QEMU runs as libvirt-qemu: it must reach the kernel and initrd in here
started_libvirtd='' started_virtlogd='' started_systemd_unit=''
descriptor_dir=/usr/share/qemu/vhost-user
descriptor=$descriptor_dir/40-dpfs-engine.json
descriptor_installed=0 descriptor_backup=''
domains=()
failed=0

cleanup() {
  local status=$?
  set +e
  for d in "${domains[@]}"; do
    if V dominfo "$d" >/dev/null 2>&1; then
      V destroy "$d" >/dev/null 2>&1
      V undefine "$d" >/dev/null 2>&1
    fi
    rm -f "/var/log/libvirt/qemu/$d.log" "/var/log/libvirt/qemu/$d-fs0-virtiofsd.log"
  done
  if ((descriptor_installed)); then
    rm -f "$descriptor"
    if [[ -n $descriptor_backup ]]; then mv "$descriptor_backup" "$descriptor"; fi
  fi
  if [[ -n $started_libvirtd ]]; then
    kill "$started_libvirtd" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$started_libvirtd" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$started_libvirtd" 2>/dev/null && kill -9 "$started_libvirtd"
  fi
  if [[ -n $started_virtlogd ]]; then
    kill "$started_virtlogd" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$started_virtlogd" 2>/dev/null || break; sleep 0.2; done
  fi
  if [[ -n $started_systemd_unit ]]; then systemctl stop "$started_systemd_unit"; fi
  if ((keep)); then say "work directory kept: $work"; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- daemon --------------------------------------------------------------------------------------
if V version >/dev/null 2>&1; then
  say "using the libvirtd that already answers on $URI"
elif [[ -d /run/systemd/system ]]; then
  say "systemd: systemctl start libvirtd"
  systemctl start libvirtd && started_systemd_unit=libvirtd
else
  # No systemd (container): start the daemons by hand. virtlogd is required: without it
  # 'virsh start' fails with "Failed to connect socket to '/run/libvirt/virtlogd-sock'".
  if ! { [[ -s /run/virtlogd.pid ]] && kill -0 "$(cat /run/virtlogd.pid)" 2>/dev/null; }; then
    (cd / && virtlogd -d -p /run/virtlogd.pid)
    started_virtlogd=$(cat /run/virtlogd.pid)
  fi
  (cd / && LIBVIRT_LOG_OUTPUTS="3:file:$work/libvirtd.log" libvirtd -d -p /run/libvirtd.pid)
  started_libvirtd=$(cat /run/libvirtd.pid)
  say "started virtlogd ${started_virtlogd:-(already running)} and libvirtd $started_libvirtd by hand"
fi
for _ in $(seq 100); do V version >/dev/null 2>&1 && break; sleep 0.1; done
V version >/dev/null || { say "libvirtd does not answer on $URI"; exit 1; }
say "$(virsh -c "$URI" version | grep -E 'libvirt|hypervisor' | paste -sd';' -)"

# --- guest kernel, initramfs, engine wrapper -----------------------------------------------------
kinfo=$("$repo/tools/guest/fetch-kernel.sh" "$kernel")
vmlinuz=$(sed -n 's/^vmlinuz=//p' <<<"$kinfo")
cp "$vmlinuz" "$work/vmlinuz"
"$repo/tools/guest/build-initramfs.sh" "$kernel" "$workload_src" "$work/initrd.cpio.gz" >&2
cp "$engine" "$work/dpfs-engine"
# libvirt starts the back-end as root (QEMU as libvirt-qemu). The wrapper records argv and the pid
# (exec keeps it: that pid is the engine), then becomes the engine.
cat >"$work/dpfs-engine-wrapper" <<EOF
#!/bin/sh
{ echo "=== pid \$\$ uid \$(id -u)"; for a in "\$@"; do printf 'ARG %s\n' "\$a"; done; } >>"$work/argv.log"
exec "$work/dpfs-engine" "\$@"
EOF
chmod 755 "$work/dpfs-engine" "$work/dpfs-engine-wrapper"

domain_xml() { # name share console binary-element
  cat <<EOF
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$work/vmlinuz</kernel>
    <initrd>$work/initrd.cpio.gz</initrd>
    <cmdline>console=ttyS0 panic=-1 dpfs.tag=dpfs</cmdline>
  </os>
  <!-- TCG: hide CMPXCHG16B (tools/guest/README.md: QEMU 7.2 TCG + cx16 oopses 6.12 guests) -->
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>qemu64</model>
    <feature policy='disable' name='cx16'/>
  </cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs'/>
      $4
      <source dir='$2'/>
      <target dir='dpfs'/>
    </filesystem>
    <serial type='file'>
      <source path='$3'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

kernel_errors() { # same patterns as tools/guest/run-guest.sh
  grep -aE '^(\[ *[0-9]+\.[0-9]+\] |DPFS-GUEST: )' "$1" |
    grep -aE 'Kernel panic|Oops:|BUG:|Call Trace:|traps: |[Vv]irtio-?fs.*([Ee]rror|[Ff]ail|not found)|insmod .* failed' || true
}

results=()
run_case() { # case-name binary-element
  local name=$1 binary_el=$2 dom="dpfs-libvirt-$1-$$" share="$work/share-$1" console="$work/console-$1.log"
  local reason='' t state engine_pid t_started='' t_poweroff=''
  mkdir -p "$share"
  echo from-the-host >"$share/host-made.txt"
  : >"$work/argv.log"
  rm -f "$console" # libvirt opens serial files with append=on
  domain_xml "$dom" "$share" "$console" "$binary_el" >"$work/$dom.xml"
  domains+=("$dom")
  V define "$work/$dom.xml" >/dev/null
  say "[$name] virsh start $dom"
  t=$(now)
  # 'virsh start' returns only once QEMU answers on its monitor, and QEMU 7.2 finishes the
  # vhost-user handshake (GET_FEATURES ...) before that: a back-end that accepts the connection but
  # never answers leaves 'virsh start' hanging (seen: over 10 minutes), hence the timeout.
  local start_status=0
  timeout -k 5 "$timeout" virsh -q -c "$URI" start "$dom" >"$work/start-$name.err" 2>&1 || start_status=$?
  if ((start_status == 124 || start_status == 137)); then
    reason="virsh start hung for ${timeout}s (QEMU waits for the back-end's vhost-user replies before its monitor answers)"
    V destroy "$dom" >/dev/null 2>&1 || true
  elif ((start_status != 0)); then
    reason="virsh start failed: $(tr '\n' ' ' <"$work/start-$name.err")"
  else
    t_started=$(since "$t")
    # on_poweroff=destroy: the domain is 'shut off' once the guest's init has powered off.
    while :; do
      if [[ -z $t_poweroff ]] && grep -aq 'DPFS-GUEST: poweroff' "$console" 2>/dev/null; then t_poweroff=$(since "$t"); fi
      state=$(V domstate "$dom" 2>/dev/null || echo gone)
      [[ $state == 'shut off' ]] && break
      if (($(awk -v a="$t" -v b="$(now)" -v l="$timeout" 'BEGIN { print (b - a > l) }'))); then
        reason="timeout after ${timeout}s (state $state)"
        V destroy "$dom" >/dev/null 2>&1 || true
        break
      fi
      sleep 0.5
    done
  fi
  local secs
  secs=$(since "$t")
  if [[ -z $reason ]]; then
    if ! grep -aq 'RESULT all-ok' "$console"; then reason="workload did not print 'RESULT all-ok'"
    elif ! grep -aq 'DPFS-GUEST: workload exit 0' "$console"; then reason="workload exit status not 0"
    elif ! grep -aq 'DPFS-GUEST: umount exit 0' "$console"; then reason="umount failed"
    elif [[ -n $(kernel_errors "$console") ]]; then reason="kernel errors: $(kernel_errors "$console" | head -3 | tr '\n' ' ')"
    elif [[ $(cat "$share/renamed.txt" 2>/dev/null) != written-by-guest-via-libvirt || -e $share/guest-file.txt ]]; then
      reason="host does not see the guest's renamed file"
    elif ! grep -qx 'ARG --fd=[0-9]*' "$work/argv.log"; then reason="engine not started by libvirt with --fd=N (argv.log empty: another back-end ran?)"
    elif ! grep -q "^ARG source=$share\(,\|\$\)" "$work/argv.log"; then reason="engine argv lacks source=$share"
    fi
  fi
  # libvirt stops the back-end when the domain stops; give it a moment.
  engine_pid=$(sed -n 's/^=== pid \([0-9]*\).*/\1/p' "$work/argv.log" | head -n 1)
  if [[ -n $engine_pid ]]; then
    for _ in $(seq 50); do kill -0 "$engine_pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$engine_pid" 2>/dev/null && [[ -z $reason ]]; then reason="engine pid $engine_pid still running after the domain stopped"; fi
  fi
  local argv
  argv=$(sed -n 's/^ARG //p' "$work/argv.log" | paste -sd' ' -)
  local boot
  boot=$(grep -aoE 'DPFS-GUEST: booted \(uptime [0-9.]+' "$console" 2>/dev/null | awk '{ print $4 }' || true)
  if [[ -z $reason ]]; then
    say "[$name] PASS in ${secs}s (virsh start -> shut off; start returned ${t_started}s, poweroff marker ${t_poweroff:-?}s, guest uptime at init ${boot:-?}s); engine argv: $argv"
    results+=("$name=PASS(${secs}s)")
  else
    failed=1
    say "[$name] FAIL: $reason (after ${secs}s); engine argv: ${argv:-none}"
    results+=("$name=FAIL")
    echo "--- [$name] console (tail) ---"; tail -n 30 "$console" 2>/dev/null | tr -d '\r' || true
    echo "--- [$name] /var/log/libvirt/qemu/$dom.log (tail) ---"; tail -n 15 "/var/log/libvirt/qemu/$dom.log" 2>/dev/null || true
    echo "--- [$name] back-end log ---"; tail -n 20 "/var/log/libvirt/qemu/$dom-fs0-virtiofsd.log" 2>/dev/null || true
    if [[ -f $work/libvirtd.log ]]; then echo "--- libvirtd.log (tail) ---"; tail -n 10 "$work/libvirtd.log"; fi
  fi
  cp "$work/argv.log" "$work/argv-$name.log"
  V undefine "$dom" >/dev/null 2>&1 || true
}

if [[ -z $only || $only == binary ]]; then
  run_case binary "<binary path='$work/dpfs-engine-wrapper'/>"
fi
if [[ -z $only || $only == descriptor ]]; then
  # libvirt reads /etc/qemu/vhost-user, /usr/share/qemu/vhost-user and ~/.config/qemu/vhost-user,
  # merged by file name; the first "type": "fs" descriptor wins. Warn about any that sorts before ours.
  for f in /etc/qemu/vhost-user/*.json /usr/share/qemu/vhost-user/*.json "$HOME"/.config/qemu/vhost-user/*.json; do
    [[ -f $f ]] || continue
    b=$(basename "$f")
    if [[ $b < 40-dpfs-engine.json ]] && grep -q '"fs"' "$f"; then say "warning: $f may be chosen before our descriptor"; fi
  done
  if [[ -e $descriptor ]]; then descriptor_backup="$work/40-dpfs-engine.json.orig"; cp -p "$descriptor" "$descriptor_backup"; fi
  descriptor_installed=1
  "$repo/tools/install-vhost-user-descriptor.sh" --first --binary "$work/dpfs-engine-wrapper" >/dev/null
  run_case descriptor ""
fi

# Control: the same domain with a back-end that stores nothing (the null backend behind libvirt's
# --fd) must fail the checks above, or they could not tell a working share from any answer.
if [[ -z $only || $only == control ]]; then
  cat >"$work/null-wrapper" <<EOF
#!/bin/sh
{ echo "=== pid \$\$ uid \$(id -u)"; for a in "\$@"; do printf 'ARG %s\n' "\$a"; done; } >>"$work/argv.log"
exec "$work/dpfs-engine" --vhost-user-fd "\${1#--fd=}" --backend null
EOF
  chmod 755 "$work/null-wrapper"
  failed_before=$failed
  run_case control-null "<binary path='$work/null-wrapper'/>" >"$work/control.out" 2>&1
  if [[ ${results[-1]} == control-null=FAIL ]]; then
    failed=$failed_before
    results[-1]="control-null=FAILED-AS-IT-MUST"
    say "[control-null] failed as it must: $(grep -a 'RESULT .*FAILED' "$work/console-control-null.log" | head -2 | tr -d '\r' | paste -sd' ' -)"
  else
    failed=1
    results[-1]="control-null=PASSED(WRONG)"
    say "[control-null] a back-end that stores nothing passed the checks"
  fi
fi

if ((failed)); then
  echo "test-libvirt: FAIL ${results[*]} total=$(since "$t_all")s"
  exit 1
fi
echo "test-libvirt: PASS ${results[*]} kernel=$kernel total=$(since "$t_all")s"
