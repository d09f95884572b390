#!/usr/bin/env bash
# test-host-mount.sh — dpfs-engine serving a real mount on this host through /dev/fuse, checked the
# way a user checks a file system. For each transport the kernel allows (classic /dev/fuse,
# FUSE-over-io_uring, and io_uring with kernel passthrough):
#   1. POSIX behaviour: tools/host/posix_check.py runs the same cases on the mount and on a native
#      directory of the file system the share lives on, as root and as two unprivileged uids (each
#      holding a supplementary group), and requires the same outcome (success, or the same errno)
#      and the same observable result; classic and passthrough run them again with cache auto on a
#      second mount; posix_check, integrity and stress run their --self-test too (deliberate
#      breakages must be reported);
#   2. data integrity: tools/host/integrity.py, random operations on the mount and on a reference
#      directory side by side, contents compared byte for byte;
#   3. concurrent stress: tools/host/stress.py, several processes creating, writing, renaming,
#      linking and unlinking in shared directories; the mount's view must equal the share's;
#   4. (passthrough) a file written through the share is read back through an open passthrough
#      file, and a file opened for passthrough and one opened while passthrough is refused stay
#      coherent (the engine answers those uncached);
# and then, on the classic and the io_uring transports:
#   5. SIGKILL of the engine mid-workload: the workload ends (ENOTCONN, no process hangs), and the
#      next engine start detaches the dead mount and serves again with no manual clean-up;
#   6. an unmount from outside ends the engine by itself.
# Mode `nfs` runs 1-3, 5 and 6 with the NFS backend (NFSv3; mode `nfs4`: NFSv4.1; `nfs40`: NFSv4.0) against a real nfs-ganesha exporting the
# share (tools/nfs-server.sh, started and stopped here): posix_check with --semantics nfs3 (the
# documented differences, Specs/nfs-semantics.md, asserted as NFS behaves), and integrity and stress
# unchanged, since the backend keeps unlinked open files alive as a local file system does.
# Mode `kv` runs 1-3, 5 and 6 with the key-value backend against a real redis-server
# (tools/redis-server.sh, started and stopped here): posix_check with --semantics kv
# (Specs/kv-semantics.md), integrity unchanged, stress with a second engine on the same store as the
# "backing" view (two clients of one store must agree), orphans (none left after the stress, one
# while a file unlinked while open is held, none once it is closed), and the store's own
# consistency check (dpfs_check) after the SIGKILL.
# Needs root (mount(2), setuid children) and /dev/fuse. Uses .build/release/dpfs-engine (built if
# missing). Exit status: number of failed checks.
#   tools/host/test-host-mount.sh [--quick] [--modes "classic uring passthrough nfs nfs4 nfs40 kv"] [--integrity-steps N]
set -uo pipefail
cd "$(dirname "$0")/../.."

quick=0
integrity_steps=
modes="classic uring passthrough"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --modes) modes=$2; shift ;;
    --integrity-steps) integrity_steps=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
steps=${integrity_steps:-$([ $quick = 1 ] && echo 5000 || echo 30000)}
stress_seconds=$([ $quick = 1 ] && echo 5 || echo 15)

[ "$(id -u)" = 0 ] || { echo "test-host-mount: needs root (mount(2))"; exit 1; }
[ -c /dev/fuse ] || { echo "test-host-mount: no /dev/fuse"; exit 1; }
engine=.build/release/dpfs-engine
[ -x $engine ] || swift build -c release --product dpfs-engine || exit 1

work=$(mktemp -d /tmp/dpfs-host-test.XXXXXX)
chmod 755 "$work"
# The shares and the POSIX references live on an ext4 image of this test's own: the reference is
# ext4 wherever /tmp is (tmpfs, overlayfs, xfs), and posix_check says which file system it compared.
truncate -s 3G "$work/fs.img"
mkfs.ext4 -q -F "$work/fs.img" || { echo "test-host-mount: mkfs.ext4 failed"; exit 1; }
mkdir "$work/fs"
mount -o loop "$work/fs.img" "$work/fs" || { echo "test-host-mount: cannot loop-mount the ext4 image"; exit 1; }
chmod 755 "$work/fs"
failures=0
engine_pid=
ok() { echo "RESULT $1-ok"; }
bad() { echo "RESULT $1-FAILED: $2"; failures=$((failures + 1)); }

stop_engine() {
  if [ -n "$engine_pid" ] && kill -0 "$engine_pid" 2>/dev/null; then
    kill -TERM "$engine_pid"
    for _ in $(seq 1 100); do kill -0 "$engine_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$engine_pid" 2>/dev/null
  fi
  wait "$engine_pid" 2>/dev/null
  engine_pid=
}
nfs_started=0 kv_started=0 view_pid=
cleanup() {
  stop_engine
  [ -n "$view_pid" ] && { kill -TERM "$view_pid" 2>/dev/null; wait "$view_pid" 2>/dev/null; }
  [ $nfs_started = 1 ] && tools/nfs-server.sh stop
  [ $kv_started = 1 ] && tools/redis-server.sh stop
  for m in "$work"/mnt-*; do umount -l "$m" 2>/dev/null; done
  umount "$work/fs" 2>/dev/null || umount -l "$work/fs" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# start_engine MODE SHARE MNT LOG: starts the engine and waits until the mount answers.
start_engine() {
  local mode=$1 share=$2 mnt=$3 log=$4 args
  case $mode in
    classic) args="--fuse-transport classic" ;;
    uring) args="--fuse-transport uring" ;;
    passthrough) args="--fuse-transport uring --fuse-passthrough" ;;
    nfs|nfs4|nfs40|kv) args="--fuse-transport uring" ;;
  esac
  local backend="--backend passthrough --shared-dir $share"
  case $mode in nfs|nfs4|nfs40) backend="--backend nfs --nfs-url $nfs_url" ;; esac
  [ $mode = kv ] && backend="--backend kv --kv-url $kv_url --kv-prefix host-test"
  # cache never: every operation reaches the engine (what these checks are about). allow_other:
  # the checks run as three uids, each with its own permissions (default_permissions is always on).
  $engine --fuse-mount "$mnt" $backend --cache never --fuse-allow-other $args >"$log" 2>&1 &
  engine_pid=$!
  for _ in $(seq 1 100); do
    if grep -q "INIT agreed" "$log" 2>/dev/null && stat "$mnt" >/dev/null 2>&1; then return 0; fi
    kill -0 $engine_pid 2>/dev/null || break
    sleep 0.1
  done
  echo "--- engine log"; cat "$log"
  return 1
}

for mode in $modes; do
  share=$work/fs/share-$mode mnt=$work/mnt-$mode reference=$work/fs/reference-$mode log=$work/engine-$mode.log
  mkdir -p "$share" "$mnt" "$reference"
  chmod 755 "$share" "$reference"
  echo "=== $mode: share $share (on $(stat -f -c %T "$share")), mount $mnt"
  semantics= integrity_flags=
  if [ $mode = nfs ] || [ $mode = nfs4 ] || [ $mode = nfs40 ]; then
    integrity_flags=--no-fallocate   # no ALLOCATE is sent: the backend answers ENOSYS (Specs/nfs-semantics.md)
    # ganesha exports the share itself; the engine reaches it over NFSv3 (mode nfs), NFSv4.1
    # (mode nfs4, the export's pseudo path) or NFSv4.0 (mode nfs40) on loopback.
    if [ $mode = nfs ]; then pick=version=3; else pick=version=4; fi
    if ! nfs_url=$(tools/nfs-server.sh start "$share" | grep "$pick"); then bad "$mode-server" "nfs-ganesha did not start"; continue; fi
    if [ $mode = nfs40 ]; then minor=4.0; else minor=4.1; fi
    nfs_url=$(sed "s/version=4&/version=$minor\&/" <<<"$nfs_url")
    nfs_started=1
    semantics="--semantics nfs3"
    echo "    server: $nfs_url"
  fi
  if [ $mode = kv ]; then
    export DPFS_REDIS_STATE=$work/redis
    if ! kv_urls=$(tools/redis-server.sh start); then bad "$mode-server" "redis-server did not start"; continue; fi
    kv_started=1
    kv_url=$(grep '^unix://' <<<"$kv_urls")
    semantics="--semantics kv"
    echo "    server: $kv_url"
  fi
  if ! start_engine $mode "$share" "$mnt" "$log"; then bad "$mode-start" "engine did not serve the mount"; continue; fi
  grep -E "INIT agreed|mount " "$log" | sed 's/^/    /'
  case $mode in
    uring|passthrough)
      grep -q "requests through io_uring" "$log" || bad "$mode-io-uring-agreed" "the kernel did not agree FUSE-over-io_uring" ;;
  esac
  [ $mode = passthrough ] && { grep -q "kernel passthrough on" "$log" || bad "$mode-passthrough-agreed" "the kernel did not agree passthrough"; }

  # 1. POSIX behaviour against the share's own file system, root and two unprivileged uids. The
  #    checkers check themselves too (--self-test): deliberate breakages must be reported, on this
  #    very mount, or the run fails — a checker that cannot fail proves nothing.
  if python3 tools/host/posix_check.py --subject "$mnt" --reference "$reference" --uids 0,1000,1001 $semantics --self-test >"$work/posix-$mode.out" 2>&1; then
    ok "$mode-posix"; tail -1 "$work/posix-$mode.out" | sed 's/^/    /'
  else
    bad "$mode-posix" "$(grep -E 'FAIL|posix_check:' "$work/posix-$mode.out" | head -20)"
  fi
  # 1b. The same cases with the kernel caching (cache auto), on a second mount of the share: writes
  #     then go through the page cache, and set-ID bits are dropped by a SETATTR the kernel sends
  #     for the writer, who need not own the file (cache never sends them with the WRITE instead).
  if [ $mode = classic ] || [ $mode = passthrough ]; then
    cached=$work/mnt-cached-$mode
    mkdir -p "$cached" "$work/fs/reference-cached-$mode"
    chmod 755 "$work/fs/reference-cached-$mode"
    flags="--fuse-transport classic"
    [ $mode = passthrough ] && flags="--fuse-transport uring --fuse-passthrough"
    $engine --fuse-mount "$cached" --backend passthrough --shared-dir "$share" --cache auto --fuse-allow-other $flags \
      >"$work/engine-cached-$mode.log" 2>&1 &
    cached_pid=$!
    for _ in $(seq 1 100); do grep -q "INIT agreed" "$work/engine-cached-$mode.log" 2>/dev/null && break; sleep 0.1; done
    if python3 tools/host/posix_check.py --subject "$cached" --reference "$work/fs/reference-cached-$mode" --uids 0,1000,1001 \
        >"$work/posix-cached-$mode.out" 2>&1; then
      ok "$mode-posix-cache-auto"; tail -1 "$work/posix-cached-$mode.out" | sed 's/^/    /'
    else
      bad "$mode-posix-cache-auto" "$(grep -E 'FAIL|posix_check:' "$work/posix-cached-$mode.out" | head -20)"
    fi
    kill -TERM $cached_pid; wait $cached_pid 2>/dev/null
  fi
  # 2. Data integrity, a fresh seed each run (printed, so a failure can be replayed).
  seed=${DPFS_INTEGRITY_SEED:-$(( $(date +%s) % 1000000 ))}
  if python3 tools/host/integrity.py --subject "$mnt" --reference "$reference" --seed $seed --steps $steps $integrity_flags >"$work/integrity-$mode.out" 2>&1; then
    ok "$mode-integrity"; tail -1 "$work/integrity-$mode.out" | sed 's/^/    /'
  else
    bad "$mode-integrity" "seed $seed: $(tail -5 "$work/integrity-$mode.out")"
  fi
  if python3 tools/host/integrity.py --subject "$mnt" --reference "$reference" --seed $seed --steps 1200 --self-test $integrity_flags >"$work/integrity-self-$mode.out" 2>&1; then
    ok "$mode-integrity-self-test"; tail -1 "$work/integrity-self-$mode.out" | sed 's/^/    /'
  else
    bad "$mode-integrity-self-test" "seed $seed: $(tail -6 "$work/integrity-self-$mode.out")"
  fi
  # 3. Concurrent stress: the mount's view equals the share's afterwards.
  # (Over NFS the share holds the engine's .dpfs-hidden directory: stress works one level down.)
  stress_mount=$mnt stress_share=$share stress_semantics=$semantics
  # The key-value store serves races as a local file system does: stress has no kv variants.
  [ $mode = kv ] && stress_semantics=
  if [ $mode = nfs ] || [ $mode = nfs4 ] || [ $mode = nfs40 ]; then mkdir -p "$mnt/stress"; stress_mount=$mnt/stress stress_share=$share/stress; fi
  if [ $mode = kv ]; then
    # The store has no directory of its own to compare with: a second engine serving the same
    # store shows what the first one wrote.
    view=$work/mnt-kv-view
    mkdir -p "$view"
    $engine --fuse-mount "$view" --backend kv --kv-url "$kv_url" --kv-prefix host-test --cache never --fuse-transport classic \
      >"$work/engine-kv-view.log" 2>&1 &
    view_pid=$!
    for _ in $(seq 1 100); do grep -q "INIT agreed" "$work/engine-kv-view.log" 2>/dev/null && break; sleep 0.1; done
    stress_share=$view
  fi
  if python3 tools/host/stress.py --mount "$stress_mount" --backing "$stress_share" --processes 4 --seconds $stress_seconds --seed $seed $stress_semantics --self-test >"$work/stress-$mode.out" 2>&1; then
    ok "$mode-stress"; tail -1 "$work/stress-$mode.out" | sed 's/^/    /'
  else
    bad "$mode-stress" "$(tail -8 "$work/stress-$mode.out")"
  fi
  if [ -n "$view_pid" ]; then kill -TERM "$view_pid"; wait "$view_pid" 2>/dev/null; view_pid=; fi
  if [ $mode = kv ]; then
    # An orphan lives while open and goes once the kernel lets go of it (last RELEASE and FORGET):
    # nothing the stress unlinked is left, and a file unlinked while open reads until it is closed.
    orphans() { redis-cli -s "${kv_url#unix://}" SCARD host-test:orphans; }
    settled() { for _ in $(seq 1 50); do [ "$(orphans)" = "$1" ] && return 0; sleep 0.1; done; return 1; }
    if settled 0 && python3 - "$mnt" "${kv_url#unix://}" <<'PY'
import os, subprocess, sys, time
mnt, socket = sys.argv[1:]
count = lambda: subprocess.run(["redis-cli", "-s", socket, "SCARD", "host-test:orphans"], capture_output=True, text=True).stdout.strip()
path = os.path.join(mnt, "orphan-held")
with open(path, "wb") as f: f.write(b"held" * 1000)
fd = os.open(path, os.O_RDONLY)
os.unlink(path)
assert count() == "1", f"unlinked while open: {count()} orphans listed, not 1"
assert os.pread(fd, 8, 3996) == b"held", "not readable through its descriptor"
os.close(fd)
PY
    then
      if settled 0; then ok "$mode-orphans-reclaimed"; else bad "$mode-orphans-reclaimed" "$(orphans) orphan(s) 5 s after the last close"; fi
    else
      bad "$mode-orphans-reclaimed" "orphans before: $(orphans) (the stress left them), or the held file failed (above)"
    fi
  fi
  # 4. Kernel passthrough: data the host writes is what an open passthrough file reads, both ways.
  #    A second engine mounts the same share without passthrough, so the file is open both ways at once.
  if [ $mode = passthrough ]; then
    plain=$work/mnt-plain
    mkdir -p "$plain"
    $engine --fuse-mount "$plain" --backend passthrough --shared-dir "$share" --cache never --fuse-transport classic \
      >"$work/engine-plain.log" 2>&1 &
    plain_pid=$!
    for _ in $(seq 1 100); do grep -q "INIT agreed" "$work/engine-plain.log" 2>/dev/null && break; sleep 0.1; done
    if python3 tools/host/passthrough_coherence.py --mount "$mnt" --plain-mount "$plain" --backing "$share" >"$work/coherence.out" 2>&1; then
      ok "$mode-coherence"; tail -1 "$work/coherence.out" | sed 's/^/    /'
    else
      bad "$mode-coherence" "$(grep -E 'FAIL|coherence:' "$work/coherence.out"; tail -3 "$work/coherence.out")"
    fi
    kill -TERM $plain_pid; wait $plain_pid 2>/dev/null
  fi
  stop_engine
  if mountpoint -q "$mnt"; then bad "$mode-unmounted-on-sigterm" "$mnt still mounted after SIGTERM"; else ok "$mode-unmounted-on-sigterm"; fi
  grep -E "unmounted|requests read" "$log" | tail -1 | sed 's/^/    /'

  # 5. SIGKILL mid-workload, then a plain restart (classic and io_uring; passthrough shares uring's transport).
  [ $mode = passthrough ] && continue
  start_engine $mode "$share" "$mnt" "$log" || { bad "$mode-restart" "no second start"; continue; }
  ( while :; do dd if=/dev/zero of="$mnt/kill-workload" bs=64k count=64 conv=fsync status=none || exit 0; \
      cat "$mnt/kill-workload" >/dev/null || exit 0; done ) &
  workload=$!
  sleep 1
  kill -KILL "$engine_pid"; wait "$engine_pid" 2>/dev/null; engine_pid=
  ended=0
  for _ in $(seq 1 100); do kill -0 $workload 2>/dev/null || { ended=1; break; }; sleep 0.1; done
  if [ $ended = 1 ]; then ok "$mode-sigkill-no-hang"; else bad "$mode-sigkill-no-hang" "the workload still runs 10 s after the engine died"; kill -KILL $workload; fi
  wait $workload 2>/dev/null
  error=$(stat "$mnt" 2>&1 >/dev/null)
  case "$error" in
    # ENOTCONN once the connection is gone; ECONNABORTED while a FUSE-over-io_uring connection is
    # still being torn down by the kernel (seen on 6.18): both say the dead daemon answers nothing.
    *"not connected"*|*"connection abort"*) ok "$mode-sigkill-enotconn" ;;
    *) bad "$mode-sigkill-enotconn" "stat of the dead mount said: ${error:-success}" ;;
  esac
  if start_engine $mode "$share" "$mnt" "$log"; then
    grep -q "detached a dead FUSE mount" "$log" && ok "$mode-stale-mount-detached" || bad "$mode-stale-mount-detached" "no report of the dead mount"
    if [ $mode = kv ]; then reread=$mnt/after-restart; else reread=$share/after-restart; fi
    if echo served-again >"$mnt/after-restart" && [ "$(cat "$reread")" = served-again ]; then
      ok "$mode-serves-after-restart"
    else
      bad "$mode-serves-after-restart" "write through the new mount did not reach the share"
    fi
  else
    bad "$mode-serves-after-restart" "the engine did not start on the dead mount"
  fi
  # 6. Unmounted from outside: the engine ends by itself.
  umount "$mnt"
  gone=0
  for _ in $(seq 1 50); do kill -0 "$engine_pid" 2>/dev/null || { gone=1; break; }; sleep 0.1; done
  if [ $gone = 1 ]; then ok "$mode-external-unmount-ends-engine"; else bad "$mode-external-unmount-ends-engine" "engine still running 5 s after umount"; fi
  stop_engine
  if [ $mode = kv ]; then
    # Everything above, SIGKILL included, left a whole store: no dangling entry, no unlisted
    # orphan, link counts that match.
    problems=$(redis-cli -s "${kv_url#unix://}" FCALL dpfs_check 0 host-test 2>&1)
    if [ -z "$problems" ]; then ok "$mode-store-consistent"; else bad "$mode-store-consistent" "$problems"; fi
  fi
done

echo "test-host-mount: $failures failure(s)"
[ $failures -eq 0 ] && echo "RESULT all-ok"
exit $(( failures > 250 ? 250 : failures ))
