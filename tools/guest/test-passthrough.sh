#!/usr/bin/env bash
# test-passthrough.sh — end-to-end: real Linux guests use a host directory through dpfs-engine's
# passthrough backend, and the host checks what they did.
#
# Why: a passthrough file system is only right if the guest and the host agree on every byte, name,
# link, mode and time, across guest reboots, and if one tenant's directory is invisible to
# another's. The guest half is tools/guest/workloads/passthrough-basic.sh (phases write, verify,
# isolation); this script prepares the shares, runs the back-end and checks the host side.
#   a. 6.1 guest, phase write, in a fresh share with host-made files; then on the host: every
#      file in the guest's manifest has the guest's md5sum, and every fact in guest-made/expect
#      (symlink targets, link counts, same inode, modes, mtimes with nanoseconds, sizes, absent
#      names, directory entry counts) holds, plus a few fixed values checked independently.
#   b. a second boot against the same engine process, phase verify: the state persisted.
#      The engine must then stop cleanly on SIGTERM and have seen two connections.
#   c. 6.12 guest with two request queues (engine --queues 2 --cache auto), phase write in a fresh
#      share, host checks again; both request queues must have carried requests. (--quick skips it)
#   d. two devices from one TOML file with different shared directories (cache never and auto),
#      a guest on each at once: each sees its own marker and not the other's (not even through a
#      host-made symlink into the other directory), and each directory changes only by its own
#      guest's file.
#   e. 6.1 guest, phase write with --cache always in a fresh share, host checks. (--quick skips it)
# With --virtiofsd the same guest runs are served by the C virtiofsd (restarted per boot, since it
# exits when QEMU disconnects; cache=none): the proof that the workload and these checks are right
# independently of our engine. (c) then runs 6.12 with one queue (virtiofsd has only one), (e) uses
# virtiofsd's cache=always, and (d) and the SIGTERM/connection checks are skipped (engine features).
#
# With --nfs the engine serves the guests through its NFS backend (NFSv3; --nfs4: NFSv4.1; --nfs40: NFSv4.0) from a real nfs-ganesha
# exporting each share (tools/nfs-server.sh): the same workload and host checks, (a), (b) and (c);
# (d) and (e) are passthrough-backend features and are skipped.
#
# With --kv the engine serves the guests through its key-value backend from a real redis-server
# (tools/redis-server.sh, AOF fsynced per write), one key prefix per share; each share is a host
# mount of the same store by a second engine (cache never), through which the host-made files are
# written and every host check reads. Between (a) and (b) the server is SIGKILLed and restarted
# from its AOF: the second boot must find everything. (d) and (e) are skipped as for --nfs.
#
# With --null-control the engine serves (a) from the null backend, which stores nothing: the negative
# control of this harness. It ends with 'control: ...' and exits 0 only when the guest ran its
# workload and the checks reported failures, as they must when nothing is stored.
#
# Usage: tools/guest/test-passthrough.sh [--quick] [--virtiofsd | --nfs | --nfs4 | --nfs40 | --kv | --null-control]
# Ends with 'guest-passthrough: N passed, N failed'; exit status 0 only if none failed.
# Logs (console, run-guest output, engine/virtiofsd logs): tools/.cache/guest/logs/passthrough-<time>/,
# kept. The shares are in a mktemp directory, removed at the end unless something failed.
# Needs: root, qemu-system-x86, busybox-static, cpio (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
quick=0
mode=engine
nfs_version=3
virtiofsd=/usr/lib/qemu/virtiofsd
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --virtiofsd) mode=virtiofsd; shift ;;
    --nfs) mode=nfs; shift ;;
    --nfs4) mode=nfs; nfs_version=4.1; shift ;;
    --nfs40) mode=nfs; nfs_version=4.0; shift ;;
    --kv) mode=kv; shift ;;
    --null-control) mode=null; shift ;;
    *) echo "usage: $0 [--quick] [--virtiofsd | --nfs | --nfs4 | --nfs40 | --kv | --null-control]" >&2; exit 2 ;;
  esac
done

tools/install-dependencies.sh guest
engine_binary=.build/release/dpfs-engine
if [ $mode != virtiofsd ]; then
  swift build -c release --product dpfs-engine >/dev/null
else
  [ -x "$virtiofsd" ] || { echo "no $virtiofsd (apt-get install -y qemu-system-x86)" >&2; exit 1; }
fi
workload=tools/guest/workloads/passthrough-basic.sh

work=$(mktemp -d /tmp/dpfs-passthrough.XXXXXX)
logdir="tools/.cache/guest/logs/passthrough-$(date +%Y%m%d-%H%M%S)-$mode"
mkdir -p "$logdir"
server_pid=""   # the engine or virtiofsd
server_log=""
view_pids=()   # --kv: the host-side engines that mount each share's store
passed=0
failed=0
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ $mode = nfs ]; then tools/nfs-server.sh stop || true; fi
  if [ $mode = kv ]; then
    for pid in "${view_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    for m in "$work"/share-*; do umount -l "$m" 2>/dev/null || true; done
    tools/redis-server.sh stop || true
  fi
  if [ "$failed" = 0 ] || [ $mode = null ]; then rm -rf "$work"; else echo "shares kept in $work"; fi
}
trap cleanup EXIT

check() {
  local name=$1
  shift
  echo "--- $name"
  if "$@"; then
    passed=$((passed + 1))
    echo "--- $name: ok"
  else
    failed=$((failed + 1))
    echo "--- $name: FAILED"
    if [ -n "$server_log" ] && [ -s "$server_log" ]; then
      echo "--- $mode log ($server_log, last 80 lines)"
      tail -n 80 "$server_log"
    fi
  fi
}
skip() { echo "--- $1: skipped ($2)"; }

# --- shares --------------------------------------------------------------------------------------
# host-made/: files the guest must see byte for byte, with an md5sum manifest it checks.
populate_share() {
  local share=$1
  [ $mode = kv ] && { start_view "$share" || return 1; }
  mkdir -p "$share/host-made/nested/deeper"
  echo "hello from the host" >"$share/host-made/hello.txt"
  head -c 200003 /dev/urandom >"$share/host-made/random.bin"
  printf 'nested\n' >"$share/host-made/nested/deeper/file.txt"
  : >"$share/host-made/empty"
  (cd "$share" && md5sum host-made/hello.txt host-made/random.bin host-made/nested/deeper/file.txt host-made/empty >host-made/manifest)
}

# --- back-ends -----------------------------------------------------------------------------------
if [ $mode = kv ]; then
  export DPFS_REDIS_STATE=$work/redis
  kv_url=$(tools/redis-server.sh start | grep '^unix://') || { echo "redis-server did not start"; exit 1; }
fi
# --kv: a host mount of the share's store (prefix = the share's name), by an engine of its own.
start_view() { # share
  local share=$1 log="$logdir/view-$(basename "$1").log"
  mkdir -p "$share"
  "$engine_binary" --fuse-mount "$share" --backend kv --kv-url "$kv_url" --kv-prefix "$(basename "$share")" \
    --cache never --fuse-transport classic >"$log" 2>&1 &
  view_pids+=($!)
  for _ in $(seq 100); do grep -q "INIT agreed" "$log" 2>/dev/null && return 0; sleep 0.1; done
  echo "the host view of $share did not start:"; cat "$log"
  return 1
}
sock="$work/vhost-user.sock"
wait_socket() { # pid socket...: every socket appears while pid lives
  local pid=$1 s all
  shift
  for _ in $(seq 100); do
    all=1
    for s in "$@"; do [ -S "$s" ] || all=0; done
    [ $all = 1 ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}
start_engine() { # name share queues cache
  local name=$1 share=$2 queues=$3 cache=$4
  rm -f "$sock"
  server_log="$logdir/engine-$name.log"
  local backend=(--backend passthrough --shared-dir "$share" --cache "$cache")
  if [ $mode = nfs ]; then
    # ganesha exports the share; the engine is its NFSv3 (or, with --nfs4, NFSv4.1; --nfs40, NFSv4.0) client.
    local url
    url=$(tools/nfs-server.sh start "$share" | grep "version=${nfs_version%.*}") || { echo "nfs-ganesha did not start"; return 1; }
    [ "$nfs_version" = 3 ] || url=$(sed "s/version=4&/version=$nfs_version\&/" <<<"$url")
    echo "nfs server: $url" >"$server_log"
    backend=(--backend nfs --nfs-url "$url" --cache "$cache")
  fi
  [ $mode = kv ] && backend=(--backend kv --kv-url "$kv_url" --kv-prefix "$(basename "$share")" --cache "$cache")
  # The null backend caches nothing of its own and takes no cache setting.
  [ $mode = null ] && backend=(--backend null)
  "$engine_binary" --vhost-user-socket "$sock" "${backend[@]}" \
    --queues "$queues" --log-level info >>"$server_log" 2>&1 &
  server_pid=$!
  wait_socket "$server_pid" "$sock" && return 0
  echo "engine did not create its socket:"; cat "$server_log"
  return 1
}
stop_engine() {
  local status=0
  kill -TERM "$server_pid"
  wait "$server_pid" || status=$? # a clean exit on SIGTERM is part of the test
  server_pid=""
  echo "engine exit status $status"
  return $status
}
vfsd_cache=none
# The C virtiofsd: one front-end connection per process. Its namespace sandbox needs privileges
# some containers lack; then its chroot sandbox.
start_virtiofsd() { # name share
  local name=$1 share=$2 sandbox
  for sandbox in namespace chroot; do
    rm -f "$sock"
    server_log="$logdir/virtiofsd-$name.log"
    "$virtiofsd" --socket-path="$sock" -o source="$share" -o cache=$vfsd_cache -o sandbox=$sandbox >"$server_log" 2>&1 &
    server_pid=$!
    wait_socket "$server_pid" "$sock" && return 0
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    echo "virtiofsd with sandbox=$sandbox did not start: $(tail -n 1 "$server_log")"
  done
  return 1
}
stop_virtiofsd() {
  if [ -n "$server_pid" ]; then
    # It exits by itself once QEMU is gone; give it a moment, then stop it.
    for _ in $(seq 20); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}

# --- a guest run ---------------------------------------------------------------------------------
guest() { # name socket phase run-guest-arguments...
  local name=$1 socket=$2 phase=$3 status=0
  shift 3
  # Rights held through a supplementary group: NFS's AUTH_SYS carries no such groups
  # (Specs/nfs-semantics.md); QEMU 7.2's C virtiofsd creates with the caller's ids and no groups.
  local refused=none
  [ $mode = nfs ] && refused=read,create,chgrp
  [ $mode = virtiofsd ] && refused=create
  tools/guest/run-guest.sh --socket "$socket" --workload "$workload" --append "dpfs.phase=$phase dpfs.groups-refused=$refused" \
    --log "$logdir/$name.console.log" "$@" >"$logdir/$name.out" 2>&1 || status=$?
  # The failed checks, the summary and the verdict; the rest is in the .out file.
  grep -E '^(RESULT .*FAILED|RESULT all-ok|RESULT [0-9]+-failures|run-guest: (PASS|FAIL|timing))' "$logdir/$name.out" || true
  echo "RESULT lines: $(grep -c '^RESULT .*-ok' "$logdir/$name.out" || true) ok, $(grep -c '^RESULT .*-FAILED' "$logdir/$name.out" || true) failed; full output $logdir/$name.out"
  if [ $status != 0 ]; then
    echo "--- run-guest output (last 60 lines)"
    tail -n 60 "$logdir/$name.out"
  fi
  return $status
}
# One guest run with the back-end the mode calls for: virtiofsd gets started for it and stopped
# after it; the engine is already running.
guest_run() { # name share phase run-guest-arguments...
  local name=$1 share=$2 phase=$3 status=0
  shift 3
  if [ $mode = virtiofsd ]; then start_virtiofsd "$name" "$share" || return 1; fi
  guest "$name" "$sock" "$phase" "$@" || status=$?
  if [ $mode = virtiofsd ]; then stop_virtiofsd; fi
  return $status
}

# --- host-side checks ----------------------------------------------------------------------------
manifest_matches() { # share: the guest's checksums, computed from its own copies, hold on the host
  local share=$1 n
  n=$(grep -c . "$share/guest-made/manifest.md5" 2>/dev/null || true)
  echo "guest manifest: ${n:-0} files"
  [ "${n:-0}" -ge 14 ] || { echo "manifest missing or short"; return 1; }
  (cd "$share" && md5sum --quiet -c guest-made/manifest.md5)
}
host_made_unchanged() { (cd "$1" && md5sum --quiet -c host-made/manifest); }
ns_of() { stat -c %y "$1" | sed -n 's/.*:[0-9][0-9]\.\([0-9]*\) .*/\1/p'; }
# Every line of guest-made/expect, checked with GNU stat: the same facts the guest saw.
expect_holds() { # share
  local share=$1 what p a b got want bad=0 n=0
  [ -s "$share/guest-made/expect" ] || { echo "no guest-made/expect"; return 1; }
  while read -r what p a b; do
    n=$((n + 1))
    want=$a
    case "$what" in
      mode) got=$(stat -c %a "$share/$p") ;;
      nlink) got=$(stat -c %h "$share/$p") ;;
      inode-same) got=$(stat -c %i "$share/$p"); want=$(stat -c %i "$share/$a") ;;
      symlink) got=$(readlink "$share/$p") ;;
      mtime) got="$(stat -c %Y "$share/$p") $(ns_of "$share/$p")"; want="$a $b" ;;
      absent) if [ -e "$share/$p" ] || [ -L "$share/$p" ]; then got=present; else got=absent; fi; want=absent ;;
      entries) got=$(ls -A "$share/$p" | wc -l) ;;
      size) got=$(stat -c %s "$share/$p") ;;
      type) got=$(stat -c %F "$share/$p"); want="$a${b:+ $b}" ;;
      owner) got=$(stat -c '%u %g' "$share/$p"); want="$a $b" ;;
      *) got="unknown fact '$what'"; want="" ;;
    esac
    if [ "$got" != "$want" ]; then echo "host: $what $p: got '$got', want '$want'"; bad=$((bad + 1)); fi
  done <"$share/guest-made/expect"
  echo "host: $n facts from guest-made/expect, $bad wrong"
  [ $bad = 0 ] && [ $n -ge 20 ]
}
# A few values fixed by the workload, checked without trusting its expect file.
fixed_facts() { # share
  local g=$1/guest-made bad=0
  want() { if [ "$2" != "$3" ]; then echo "host: $1: got '$2', want '$3'"; bad=$((bad + 1)); fi; }
  want "sym target" "$(readlink "$g/sym" 2>&1)" renamed.txt
  want "sym reads" "$(cat "$g/sym" 2>&1)" "renamed file content"
  want "hl-a links" "$(stat -c %h "$g/hl-a" 2>&1)" 2
  want "hl-a/hl-b inode" "$(stat -c %i "$g/hl-a" 2>&1)" "$(stat -c %i "$g/hl-b" 2>&1)"
  want "mode640" "$(stat -c %a "$g/mode640" 2>&1)" 640
  want "dir-renamed mode" "$(stat -c %a "$g/dir-renamed" 2>&1)" 700
  want "times-d mtime" "$(stat -c %Y "$g/times-d" 2>&1)" 1614834367
  want "times-t mtime" "$(stat -c %Y "$g/times-t" 2>&1)" 1577934245
  want "edit.bin size" "$(stat -c %s "$g/edit.bin" 2>&1)" 75001
  want "edit.bin bytes 7..9" "$(dd if="$g/edit.bin" bs=1 skip=7 count=3 2>/dev/null)" XYZ
  want "edit.bin hole" "$(dd if="$g/edit.bin" bs=1 skip=65536 count=4465 2>/dev/null | tr -d '\000' | wc -c)" 0
  want "trunc-grow tail" "$(tail -c +101 "$g/trunc-grow" | tr -d '\000' | wc -c)" 0
  want "trunc-shrink size" "$(stat -c %s "$g/trunc-shrink" 2>&1)" 777
  want "bigdir entries" "$(ls -A "$g/bigdir" | wc -l)" 320
  want "f3m size" "$(stat -c %s "$g/sizes/f3m" 2>&1)" 3145728
  want "renamed away" "$(ls "$g" | grep -cE '^(before-rename.txt|dir-before|winner.txt|tree)$' || true)" 0
  want "owned uid gid" "$(stat -c '%u %g' "$g/owned" 2>&1)" "1234 5678"
  want "fifo type" "$(stat -c %F "$g/fifo" 2>&1)" fifo
  want "appended" "$(cat "$g/appended" 2>&1 | tr '\n' ' ')" "one two three "
  want "victim content" "$(cat "$g/victim.txt" 2>&1)" "the winner replaced the victim"
  [ $bad = 0 ]
}
kernel_was() { # share prefix: the guest that wrote the share ran that kernel
  local k
  k=$(cat "$1/guest-made/kernel.txt" 2>/dev/null || echo none)
  echo "guest kernel: $k"
  case "$k" in "$2"*) return 0 ;; *) return 1 ;; esac
}
host_checks() { # label share kernel-prefix
  check "$1: host sees the guest's bytes (manifest md5s)" manifest_matches "$2"
  check "$1: host sees the guest's links, modes, times, sizes (guest-made/expect)" expect_holds "$2"
  check "$1: fixed facts on the host" fixed_facts "$2"
  check "$1: host-made files unchanged" host_made_unchanged "$2"
  check "$1: written by kernel $3" kernel_was "$2" "$3"
}

# --- a + b: 6.1 write, then verify on a second connection ----------------------------------------
share1="$work/share-1"
populate_share "$share1"
if [ $mode != virtiofsd ]; then start_engine one-queue "$share1" 1 never; fi
check "a: 6.1 guest, phase write" guest_run a-6.1-write "$share1" write --kernel 6.1 --timeout 600
host_checks a "$share1" 6.1.
if [ $mode = null ]; then
  # The workload must have run (it prints RESULT lines) and found what a store that keeps nothing
  # does wrong; the host checks must have found nothing of the guest's in the share.
  results=$(grep -c '^RESULT ' "$logdir/a-6.1-write.out" || true)
  echo "logs: $logdir"
  if [ "${results:-0}" -gt 0 ] && [ "$failed" -ge 5 ]; then
    echo "control: against the null backend the guest ran ($results RESULT lines) and $failed of $((passed + failed)) checks failed, as they must"
    exit 0
  fi
  echo "control: FAILED, the harness did not catch a backend that stores nothing (RESULT lines ${results:-0}, $failed of $((passed + failed)) checks failed)"
  exit 1
fi
if [ $mode = kv ]; then
  # A crash of the server between the boots: what it acknowledged is in its AOF.
  restart_server() { tools/redis-server.sh kill && tools/redis-server.sh restart >/dev/null; }
  check "kv: redis-server SIGKILLed and restarted from its AOF between the boots" restart_server
fi
check "b: 6.1 guest, phase verify (second boot, same $mode share)" guest_run b-6.1-verify "$share1" verify --kernel 6.1 --timeout 600
verified() { [ "$(cat "$share1/guest-made/verified.txt" 2>&1)" = "verify phase was here" ]; }
check "b: host sees the verify phase's file" verified
check "b: manifest still holds on the host" manifest_matches "$share1"
if [ $mode != virtiofsd ]; then
  check "engine stops cleanly on SIGTERM" stop_engine
  check "engine saw two connections" grep -q "connection 2)" "$server_log"
else
  skip "engine stops cleanly on SIGTERM" "virtiofsd mode: virtiofsd exits with its QEMU"
fi

# --- c: 6.12, two request queues -----------------------------------------------------------------
if [ $quick = 1 ]; then
  skip "c: 6.12 guest" "--quick"
else
  share2="$work/share-2"
  populate_share "$share2"
  if [ $mode != virtiofsd ]; then
    if start_engine two-queues "$share2" 2 auto; then
      check "c: 6.12 guest, two request queues, cache auto, phase write" guest_run c-6.12-write "$share2" write --kernel 6.12 --queues 2 --timeout 900
    else
      check "c: engine with --queues 2 --cache auto starts" false
    fi
    host_checks c "$share2" 6.12.
    check "c: engine stops cleanly on SIGTERM" stop_engine
    both_queues() {
      local line
      line=$(grep "requests so far" "$logdir/engine-two-queues.log" | tail -1)
      echo "$line"
      echo "$line" | grep -Eq "queue 1: [1-9]" && echo "$line" | grep -Eq "queue 2: [1-9]"
    }
    check "c: both request queues carried requests" both_queues
  else
    echo "--- c: virtiofsd mode: 6.12 with one request queue (the C virtiofsd serves only one)"
    check "c: 6.12 guest, one request queue, phase write" guest_run c-6.12-write "$share2" write --kernel 6.12 --timeout 900
    host_checks c "$share2" 6.12.
  fi
fi

# --- d: two tenants, two directories -------------------------------------------------------------
if [ $mode = nfs ] || [ $mode = kv ]; then
  skip "d: two devices from one TOML file, isolation" "$mode mode: the passthrough backend's directories"
elif [ $mode = virtiofsd ]; then
  skip "d: two devices from one TOML file, isolation" "virtiofsd mode: one device per process; this is the engine's configuration"
else
  share_a="$work/share-a" share_b="$work/share-b"
  mkdir -p "$share_a" "$share_b"
  echo "device a" >"$share_a/a-marker.txt"
  echo "device b" >"$share_b/b-marker.txt"
  # Symlinks a tenant could use to reach the other's directory if the back-end followed them.
  ln -s ../share-b/b-marker.txt "$share_a/escape-link"
  ln -s ../share-a/a-marker.txt "$share_b/escape-link"
  cat >"$work/two-devices.toml" <<TOML
[engine]
log_level = "info"

[[device]]
name = "tenant-a"
socket = "$work/a.sock"
backend = "passthrough"
shared_dir = "$share_a"
cache = "never"

[[device]]
name = "tenant-b"
socket = "$work/b.sock"
backend = "passthrough"
shared_dir = "$share_b"
cache = "auto"
TOML
  snapshot() { (cd "$1" && find . -mindepth 1 -printf '%p %y %s %T@ %m\n' | LC_ALL=C sort); }
  snapshot "$share_a" >"$work/a.before"
  snapshot "$share_b" >"$work/b.before"
  server_log="$logdir/engine-two-devices.log"
  "$engine_binary" --config "$work/two-devices.toml" >"$server_log" 2>&1 &
  server_pid=$!
  if wait_socket "$server_pid" "$work/a.sock" "$work/b.sock"; then
    # Both tenants at once, each in its own directory.
    two_tenants() {
      local pa pb sa=0 sb=0
      guest d-isolation-a "$work/a.sock" "isolation dpfs.own=a dpfs.foreign=b" --kernel 6.1 --timeout 600 >"$work/d-a.txt" 2>&1 &
      pa=$!
      guest d-isolation-b "$work/b.sock" "isolation dpfs.own=b dpfs.foreign=a" --kernel 6.1 --timeout 600 >"$work/d-b.txt" 2>&1 &
      pb=$!
      wait $pa || sa=$?
      wait $pb || sb=$?
      echo "device a guest (exit $sa):"; cat "$work/d-a.txt"
      echo "device b guest (exit $sb):"; cat "$work/d-b.txt"
      [ $sa = 0 ] && [ $sb = 0 ]
    }
    check "d: guests on devices a and b at once, phase isolation" two_tenants
    # Each directory changed by exactly its own guest's file.
    only_own_write() { # own foreign
      local dir="$work/share-$1"
      [ "$(cat "$dir/guest-made-$1.txt" 2>&1)" = "written by the guest on device $1" ] || { echo "guest-made-$1.txt missing in share-$1"; return 1; }
      snapshot "$dir" | grep -v "^./guest-made-$1.txt " >"$work/$1.after"
      diff "$work/$1.before" "$work/$1.after" || { echo "share-$1 changed beyond guest-made-$1.txt"; return 1; }
      [ ! -e "$work/share-$2/guest-made-$1.txt" ] || { echo "device $1's file appeared in share-$2"; return 1; }
    }
    check "d: device a's directory has a's file and nothing of b's" only_own_write a b
    check "d: device b's directory has b's file and nothing of a's" only_own_write b a
    check "d: engine with two devices stops cleanly on SIGTERM" stop_engine
  else
    echo "engine did not create both sockets:"; cat "$server_log"
    check "d: engine with two passthrough devices starts" false
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
  grep -E "device tenant-(a|b)" "$server_log" || true
fi

# --- e: the guest caching everything -------------------------------------------------------------
# cache always: the guest keeps attributes, names and pages as long as it likes; what it wrote
# must still be on the host byte for byte once it unmounted.
if [ $quick = 1 ]; then
  skip "e: cache always" "--quick"
elif [ $mode = nfs ] || [ $mode = kv ]; then
  skip "e: cache always" "$mode mode: covered by the passthrough runs"
else
  share3="$work/share-3"
  populate_share "$share3"
  if [ $mode = engine ]; then
    start_engine cache-always "$share3" 1 always || check "e: engine with --cache always starts" false
  fi
  vfsd_cache=always
  check "e: 6.1 guest, cache always, phase write" guest_run e-6.1-cache-always "$share3" write --kernel 6.1 --timeout 600
  vfsd_cache=none
  host_checks e "$share3" 6.1.
  if [ $mode = engine ]; then check "e: engine stops cleanly on SIGTERM" stop_engine; fi
fi

echo "logs: $logdir"
echo "guest-passthrough: $passed passed, $failed failed"
[ "$failed" = 0 ]
