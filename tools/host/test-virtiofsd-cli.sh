#!/usr/bin/env bash
# test-virtiofsd-cli.sh — dpfs-engine started the way launchers start virtiofsd (issue 11): each
# launcher's argument list that names a socket path starts a device the load generator (dpfs-bench
# vhost-user, playing QEMU and the guest) gets real answers from over a real share; the capabilities
# JSON is what the vhost-user back-end conventions require; libvirt's and Kata's lists, whose socket
# the launcher binds and hands over (--fd), serve the same way and leave the socket file to its
# owner; a descriptor that is no listening socket, an unknown option and a refused one end the
# engine at once with their reason.
# Exit status: the number of failed checks.
#   tools/host/test-virtiofsd-cli.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
swift build -c release --product dpfs-engine >/dev/null && swift build -c release --product dpfs-bench >/dev/null || exit 1
engine=.build/release/dpfs-engine
work=$(mktemp -d /tmp/dpfs-virtiofsd-cli.XXXXXX)
chmod 755 "$work"
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
failures=0
ok() { echo "RESULT $1-ok"; }
bad() { echo "RESULT $1-FAILED: $2"; failures=$((failures + 1)); }

caps=$($engine --print-capabilities)
if python3 -c 'import json,sys; c=json.loads(sys.argv[1]); assert c["type"]=="fs" and "migrate-precopy" not in c["features"]' "$caps"; then
  ok capabilities
else
  bad capabilities "$caps"
fi

# serves NAME SOCKET SHARE: the load generator reads and writes through the engine's socket, and its
# file is in the share.
serves() {
  local name=$1 sock=$2 share=$3
  # shellcheck disable=SC2086 # the operations are words
  if .build/release/dpfs-bench vhost-user --socket "$sock" --operations ${operations:-getattr-file lookup-file read-file write-file} ${bench_flags:-} \
      --requests 200 --warmup 20 --depths 1 >"$work/$name.bench" 2>&1 && [ -s "$share/dpfs-bench.dat" ]; then
    ok "$name"
  else
    bad "$name" "$(tail -3 "$work/$name.bench"; tail -3 "$work/$name.log")"
  fi
}

# launcher NAME ARGS...: the engine with these arguments (SOCKET and SHARE substituted) serves the load generator.
launcher() {
  local name=$1
  shift
  local sock=$work/$name.sock share=$work/share-$name args=()
  mkdir -p "$share"
  for a in "$@"; do a=${a//SOCKET/$sock}; args+=("${a//SHARE/$share}"); done
  $engine "${args[@]}" >"$work/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
  serves "$name" "$sock" "$share"
  kill -TERM $pid; wait $pid 2>/dev/null; pid=
}
launcher cloud-hypervisor --log-level debug --socket-path=SOCKET --shared-dir=SHARE --cache=never --thread-pool-size=4 --tag=myfs
launcher kata-path --socket-path SOCKET --shared-dir SHARE --cache auto --thread-pool-size=1 -o announce_submounts --xattr
launcher c-virtiofsd -o vhost_user_socket=SOCKET -o source=SHARE,cache=none -o log_level=info
# libvirt 9.0 and Kata: the launcher binds and listens, and hands the socket over by number.
fd_launcher() {
  local name=$1
  shift
  local sock=$work/$name.sock share=$work/share-$name
  mkdir -p "$share"
  python3 - "$engine" "$sock" "$share" "$@" >"$work/$name.log" 2>&1 <<'PY' &
import os, socket, sys
engine, path, share, *arguments = sys.argv[1:]
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen(1)
fd = listener.fileno()
os.set_inheritable(fd, True)
os.execv(engine, [engine] + [a.replace("FD", str(fd)).replace("SHARE", share) for a in arguments])
PY
  pid=$!
  for _ in $(seq 100); do grep -q "ready" "$work/$name.log" 2>/dev/null && break; sleep 0.05; done
  serves "$name" "$sock" "$share"
  if [ "${expect_root:-}" = share ]; then
    # sandbox=chroot: the engine's root is the share once it is set up.
    [ "$(readlink /proc/$pid/root)" = "$share" ] && ok "$name-chroot" || bad "$name-chroot" "root is $(readlink /proc/$pid/root)"
  fi
  kill -TERM $pid; wait $pid 2>/dev/null; pid=
  [ -S "$sock" ] && ok "$name-socket-left-to-its-owner" || bad "$name-socket-left-to-its-owner" "the engine removed the launcher's socket file"
}
fd_launcher libvirt-compat --fd=FD -o source=SHARE,cache=always,xattr
fd_launcher libvirt-separate --fd=FD --shared-dir SHARE --cache always --xattr --thread-pool-size=16
fd_launcher kata --syslog --cache=auto --shared-dir=SHARE --fd=FD --thread-pool-size=1 --announce-submounts
# libvirt 9.0 with every <binary> option of its domain XML set (as a probe saw it pass them).
expect_root=share fd_launcher libvirt-all-options --fd=FD -o source=SHARE,cache=always,sandbox=chroot,xattr,flock,posix_lock --thread-pool-size=16

# --readonly: reads are served, the load generator's writes fail, and the file is unchanged.
share=$work/share-readonly
mkdir -p "$share"
# The load generator's own fill: block i of 4 KiB is all bytes i mod 256.
python3 -c 'import sys; sys.stdout.buffer.write(b"".join(bytes([i % 256]) * 4096 for i in range(256)))' >"$share/dpfs-bench.dat"
before=$(md5sum <"$share/dpfs-bench.dat")
$engine --socket-path "$work/readonly.sock" --shared-dir "$share" --readonly >"$work/readonly.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$work/readonly.sock" ] && break; sleep 0.05; done
operations="getattr-file lookup-file read-file" bench_flags=--existing-file serves readonly-reads "$work/readonly.sock" "$share"
if .build/release/dpfs-bench vhost-user --socket "$work/readonly.sock" --operations write-file --requests 50 --warmup 0 --depths 1 \
    >"$work/readonly-write.bench" 2>&1; then
  bad readonly-writes-refused "the writes succeeded"
else
  ok readonly-writes-refused
fi
[ "$(md5sum <"$share/dpfs-bench.dat")" = "$before" ] && ok readonly-file-unchanged || bad readonly-file-unchanged "the file changed"
kill -TERM $pid; wait $pid 2>/dev/null; pid=
grep -q "accepted, no effect: --thread-pool-size=4" "$work/cloud-hypervisor.log" && ok ignored-option-logged \
  || bad ignored-option-logged "no line for --thread-pool-size"

# refused NAME REASON ARGS...: the engine ends at once, non-zero, saying why.
refused() {
  local name=$1 reason=$2
  shift 2
  local out status
  out=$(timeout 10 $engine "$@" 2>&1); status=$?
  if [ $status = 1 ] && grep -q "$reason" <<<"$out"; then ok "$name"; else bad "$name" "status $status: $out"; fi
}
refused fd-not-a-socket "is not a socket" --fd=0 --shared-dir="$work" --cache=auto </dev/null
refused unknown-option "unknown virtiofsd option --frobnicate" --socket-path="$work/x.sock" --shared-dir="$work" --frobnicate
refused sandbox-namespace "sandbox mode namespace is refused" --socket-path="$work/x.sock" --shared-dir="$work" --sandbox=namespace
# The vhost-user descriptor libvirt looks for: a file-system back-end naming this binary.
descriptor=$(tools/install-vhost-user-descriptor.sh --binary "$(pwd)/$engine" --directory "$work/vhost-user")
if python3 -c 'import json,os,sys; d=json.load(open(sys.argv[1])); assert d["type"]=="fs" and os.access(d["binary"], os.X_OK)' "$descriptor"; then
  ok descriptor
else
  bad descriptor "$(cat "$descriptor" 2>&1)"
fi
echo "test-virtiofsd-cli: $failures failure(s)"
exit $failures
