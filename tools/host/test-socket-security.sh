#!/usr/bin/env bash
# test-socket-security.sh — who can reach a running dpfs-engine, tried as a local attacker would.
# Whoever connects to a device's vhost-user socket is its front-end: it writes the FUSE headers,
# uid 0 included, and the engine (root) acts on the share as that uid. So:
#   1. under umask 0 and umask 077, every thing the engine makes for itself has its documented mode:
#      vhost-user sockets 0600 (0660 and the group with socket_group), the NFS backend's
#      .dpfs-hidden directory 1777 (sticky), a host mount reachable by root only (no allow_other);
#   2. an unprivileged user (nobody) connecting to a socket gets EACCES and cannot read or change a
#      root-owned 0600 file in the share; the same front-end as a member of socket_group is served
#      (and, as the VMM is trusted, overwrites that file: the control that the attack works when
#      the socket lets it in);
#   3. a second engine on a live socket path fails with a clear error naming it, and the first
#      keeps serving; after the first is SIGKILLed, its stale sockets are replaced by the next start;
#   4. a symbolic link or a regular file at a socket path is refused, and left as it was.
# Needs root (setpriv, mounts), /dev/fuse, nfs-ganesha (tools/nfs-server.sh installs it). Uses
# .build/release (built if missing). Exit status: number of failed checks.
set -uo pipefail
cd "$(dirname "$0")/../.."

[ "$(id -u)" = 0 ] || { echo "test-socket-security: needs root"; exit 1; }
release=.build/release
[ -x $release/dpfs-engine ] && [ -x $release/dpfs-bench ] || swift build -c release || exit 1

work=$(mktemp -d /tmp/dpfs-socket-test.XXXXXX)
# Traversable by everyone: a refusal must come from the socket's own mode, not from its directory.
chmod 755 "$work"
mkdir -m 755 "$work/sockets" "$work/share" "$work/mnt" "$work/bin" "$work/export"
# The attacker's front-end, where nobody can run it (the checkout's directories may be private).
cp $release/dpfs-bench $release/libMallocInterposerSwift.so "$work/bin/"
chmod 755 "$work/bin"/*
vmm_group=4242          # a group id of this test's own; nothing on the host uses it
failures=0
engine_pid=

ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; [ -n "${2:-}" ] && echo "$2" | sed 's/^/    /'; failures=$((failures + 1)); }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }

export DPFS_NFS_STATE=$work/nfs
cleanup() {
  [ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null
  umount -l "$work/mnt" 2>/dev/null
  tools/nfs-server.sh stop >/dev/null 2>&1
  if [ $failures = 0 ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

tools/nfs-server.sh start "$work/export" >"$work/nfs-server.out" 2>&1 || { cat "$work/nfs-server.out"; echo "nfs-ganesha did not start"; exit 1; }
nfs_url=$(grep -m1 '^nfs://.*version=3' "$work/nfs-server.out")

secret_text="root's secret $(date +%s%N)"
printf '%s' "$secret_text" >"$work/secret.expected"
reset_secret() { cp "$work/secret.expected" "$work/share/secret"; chown 0:0 "$work/share/secret"; chmod 600 "$work/share/secret"; }
secret_intact() { cmp -s "$work/secret.expected" "$work/share/secret"; }

cat >"$work/engine.toml" <<EOF
[[device]]
name = "private"
socket = "$work/sockets/private.sock"
backend = "passthrough"
shared_dir = "$work/share"

[[device]]
name = "vmm-group"
socket = "$work/sockets/group.sock"
backend = "passthrough"
shared_dir = "$work/share"
socket_group = "$vmm_group"

[[device]]
name = "nfs"
socket = "$work/sockets/nfs.sock"
backend = "nfs"
nfs_url = "$nfs_url"

[[device]]
name = "mount"
transport = "fuse"
mount = "$work/mnt"
backend = "null"
EOF

# start_engine UMASK LOG: the engine on engine.toml with that umask; waits for "ready".
start_engine() {
  (umask "$1"; exec $release/dpfs-engine --config "$work/engine.toml") >"$2" 2>&1 &
  engine_pid=$!
  for _ in $(seq 1 150); do
    grep -q "ready" "$2" 2>/dev/null && return 0
    kill -0 $engine_pid 2>/dev/null || break
    sleep 0.1
  done
  echo "--- engine log"; cat "$2"
  return 1
}

stop_engine() { kill "$engine_pid" 2>/dev/null; wait "$engine_pid" 2>/dev/null; engine_pid=; }

# mode_is PATH "MODE OWNER GROUP TYPE": what stat says of it.
mode_is() {
  local got
  got=$(stat -c '%a %u %g %F' "$1" 2>&1)
  [ "$got" = "$2" ] || { echo "    $1: $got, expected $2"; return 1; }
}

# front_end WHO SOCKET: the attacker's vhost-user front-end (dpfs-bench playing QEMU + guest)
# as WHO (setpriv arguments), filling the file `secret` in the share through SOCKET.
front_end() {
  local who=$1 socket=$2
  setpriv $who env LD_LIBRARY_PATH="$work/bin" "$work/bin/dpfs-bench" vhost-user --socket "$socket" \
    --operations read-file --file secret --file-size 4096 --requests 20 --warmup 0 --depths 1 2>&1
}
nobody="--reuid=65534 --regid=65534 --clear-groups"
member="--reuid=65534 --regid=65534 --groups=$vmm_group"

# 1. Modes of what the engine makes for itself, whatever the umask it was started with.
for mask in 000 077; do
  log=$work/engine-umask-$mask.log
  reset_secret
  start_engine $mask "$log" || { bad "umask $mask: engine start"; continue; }
  check "umask $mask: private socket 0600 root" mode_is "$work/sockets/private.sock" "600 0 0 socket"
  check "umask $mask: socket_group socket 0660 group $vmm_group" mode_is "$work/sockets/group.sock" "660 0 $vmm_group socket"
  check "umask $mask: NFS device socket 0600 root" mode_is "$work/sockets/nfs.sock" "600 0 0 socket"
  check "umask $mask: .dpfs-hidden in the export 1777 root" mode_is "$work/export/.dpfs-hidden" "1777 0 0 directory"
  check "umask $mask: host mount reachable by root" stat "$work/mnt" >/dev/null
  out=$(setpriv $nobody stat "$work/mnt" 2>&1)
  if [[ "$out" == *"Permission denied"* ]]; then ok "umask $mask: host mount refuses nobody (no allow_other)"; else bad "umask $mask: host mount refuses nobody" "$out"; fi
  check "umask $mask: the start-up line names each socket's mode" grep -q "private.sock (mode 600 owner only)" "$log"
  stop_engine
  check "umask $mask: the sockets are removed at a clean stop" test ! -e "$work/sockets/private.sock" -a ! -e "$work/sockets/group.sock"
  # The next run must make it again: gone from the export, and from ganesha's cache.
  rmdir "$work/export/.dpfs-hidden" 2>/dev/null
  tools/nfs-server.sh restart >/dev/null 2>&1 || bad "nfs-ganesha restart"
done

# 2. The attack: nobody, then a socket_group member, connect and try the secret.
reset_secret
start_engine 022 "$work/engine.log" || { bad "engine start"; exit 1; }
out=$(front_end "$nobody" "$work/sockets/private.sock")
if [[ "$out" == *"Permission denied"* ]] && secret_intact; then ok "nobody: EACCES on the private socket, the secret untouched"
else bad "nobody: EACCES on the private socket, the secret untouched" "$out"; fi
out=$(front_end "$nobody" "$work/sockets/group.sock")
if [[ "$out" == *"Permission denied"* ]] && secret_intact; then ok "nobody: EACCES on the socket_group socket (not a member)"
else bad "nobody: EACCES on the socket_group socket" "$out"; fi
out=$(front_end "$member" "$work/sockets/private.sock")
if [[ "$out" == *"Permission denied"* ]] && secret_intact; then ok "a group $vmm_group member: EACCES on the private socket"
else bad "a group $vmm_group member: EACCES on the private socket" "$out"; fi
out=$(front_end "$member" "$work/sockets/group.sock")
if [[ "$out" == *"ops/s"* || "$out" == *"p50"* ]] && ! secret_intact; then ok "a group $vmm_group member is served (and, as root in the share, overwrites the secret)"
else bad "a group $vmm_group member is served" "$out"; fi

# 3. No takeover of a live socket; a stale one is replaced.
reset_secret
second=$(timeout 30 $release/dpfs-engine --vhost-user-socket "$work/sockets/private.sock" --backend null 2>&1)
status=$?
if [ $status != 0 ] && [[ "$second" == *"private.sock is in use"* ]]; then ok "a second engine on a live socket fails, naming it"
else bad "a second engine on a live socket fails, naming it" "exit $status: $second"; fi
out=$(front_end "" "$work/sockets/private.sock")
if [[ "$out" == *"p50"* ]] && kill -0 "$engine_pid" 2>/dev/null; then ok "the first engine still serves its socket"
else bad "the first engine still serves its socket" "$out"; fi
kill -KILL "$engine_pid"; wait "$engine_pid" 2>/dev/null; engine_pid=
umount -l "$work/mnt" 2>/dev/null
check "SIGKILL leaves stale sockets behind" test -S "$work/sockets/private.sock" -a -S "$work/sockets/group.sock"
if start_engine 022 "$work/engine-restarted.log"; then
  out=$(front_end "" "$work/sockets/private.sock")
  if [[ "$out" == *"p50"* ]]; then ok "the next start replaces the stale sockets and serves"; else bad "the next start serves" "$out"; fi
else
  bad "the next start replaces the stale sockets"
fi
stop_engine

# 4. A symbolic link or a regular file where the socket should be: refused, left alone.
printf keep >"$work/victim"
ln -s "$work/victim" "$work/sockets/link.sock"
out=$(timeout 30 $release/dpfs-engine --vhost-user-socket "$work/sockets/link.sock" --backend null 2>&1)
if [[ "$out" == *"is a symbolic link"* ]] && [ -L "$work/sockets/link.sock" ] && [ "$(cat "$work/victim")" = keep ]; then
  ok "a symbolic link at the socket path is refused and not followed"
else bad "a symbolic link at the socket path is refused" "$out"; fi
out=$(timeout 30 $release/dpfs-engine --vhost-user-socket "$work/victim" --backend null 2>&1)
if [[ "$out" == *"is not a socket"* ]] && [ "$(cat "$work/victim")" = keep ]; then ok "a regular file at the socket path is refused and kept"
else bad "a regular file at the socket path is refused" "$out"; fi

echo "test-socket-security: $failures failed"
exit $failures
