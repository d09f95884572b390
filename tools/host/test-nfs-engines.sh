#!/usr/bin/env bash
# test-nfs-engines.sh — several engines on one NFS export, the normal deployment (many hosts or DPUs,
# one NFS service), each serving a host mount through /dev/fuse. Against a real nfs-ganesha
# (tools/nfs-server.sh), for each round:
#   1. two engines start at the same instant on an export with no .dpfs-hidden yet: both serve
#      (both race to make it; the loser's MKDIR answers EXIST and it must use the winner's);
#   2. a file written and closed through one mount is read back, byte for byte, through the other,
#      both ways (cache never: every read reaches the server);
#   3. with cache auto (1 s attribute validity) a file changed through one mount shows its new size
#      through the other within 1 s plus a margin;
#   4. a file unlinked through engine A while A holds it open is kept under A's hidden name; engine
#      B restarting does not take it, and A still reads it whole;
# and, as controls that must fail: a .dpfs-hidden that is a regular file stops the start with a
# message naming it, and a read through B of a file A never wrote does not match.
# --version 4.1 runs it all over NFSv4.1 (the export's pseudo path): each engine is then a client
# of its own, with a session per queue.
# Needs root. Uses .build/release/dpfs-engine (built if missing). Exit status: failed checks.
#   tools/host/test-nfs-engines.sh [--rounds N] [--version 3|4.1|4.0]
set -uo pipefail
cd "$(dirname "$0")/../.."

rounds=4
version=3
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift ;;
    --version) version=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "test-nfs-engines: needs root"; exit 1; }
engine=${DPFS_ENGINE:-.build/release/dpfs-engine}
[ -x $engine ] || swift build -c release --product dpfs-engine || exit 1

work=$(mktemp -d /tmp/dpfs-engines.XXXXXX)
chmod 755 "$work"
export DPFS_NFS_STATE=$work/nfs
mkdir -p "$work/mnt-a" "$work/mnt-b"
failures=0
ok() { echo "RESULT $1-ok"; }
bad() { echo "RESULT $1-FAILED: $2"; failures=$((failures + 1)); }
declare -A pids=()

stop_engine() {
  local name=$1 pid=${pids[$1]:-}
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  pids[$name]=
}
cleanup() {
  exec 7<&- 2>/dev/null
  stop_engine a; stop_engine b
  tools/nfs-server.sh stop
  umount -l "$work/mnt-a" "$work/mnt-b" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# launch NAME CACHE: starts the engine serving $work/mnt-NAME (does not wait).
launch() {
  $engine --fuse-mount "$work/mnt-$1" --backend nfs --nfs-url "$nfs_url" --cache "$2" --fuse-transport uring \
    >"$work/engine-$1.log" 2>&1 &
  pids[$1]=$!
}
# serving NAME: waits until engine NAME agreed INIT and its mount answers.
serving() {
  for _ in $(seq 1 150); do
    if grep -q "INIT agreed" "$work/engine-$1.log" 2>/dev/null && stat "$work/mnt-$1" >/dev/null 2>&1; then return 0; fi
    kill -0 "${pids[$1]}" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}

# fresh_export NAME: ganesha (re)started exporting a new empty directory. A fresh export each time:
# a .dpfs-hidden removed or made behind ganesha's back stays in its cache under the old answer.
fresh_export() {
  share=$work/share-$1
  mkdir -p "$share"
  if ! urls=$(tools/nfs-server.sh start "$share"); then
    echo "RESULT server-FAILED: nfs-ganesha did not start"; exit 1
  fi
  if [ "$version" = 3 ]; then
    nfs_url=$(grep "version=3" <<<"$urls")
  else
    nfs_url=$(grep "version=4" <<<"$urls" | sed "s/version=4&/version=$version\&/")
  fi
}

for round in $(seq 1 "$rounds"); do
  echo "=== round $round"
  fresh_export "round$round"
  launch a never; launch b never   # forked a millisecond apart: both set up their device together
  if serving a && serving b; then
    ok "round$round-both-serve"
  else
    bad "round$round-both-serve" "$(grep -h -i -E "error|cannot|fail" "$work"/engine-*.log | head -5)"
    stop_engine a; stop_engine b; continue
  fi
  [ -d "$share/.dpfs-hidden" ] && [ "$(stat -c %a "$share/.dpfs-hidden")" = 1777 ] \
    && ok "round$round-hidden-directory" || bad "round$round-hidden-directory" "$(ls -ld "$share/.dpfs-hidden" 2>&1)"
  head -c $((1 << 20)) /dev/urandom >"$work/one"
  head -c $((1 << 20)) /dev/urandom >"$work/two"
  cp "$work/one" "$work/mnt-a/one-$round" && cmp -s "$work/one" "$work/mnt-b/one-$round" \
    && ok "round$round-a-to-b" || bad "round$round-a-to-b" "the file written through A reads differently through B"
  cp "$work/two" "$work/mnt-b/two-$round" && cmp -s "$work/two" "$work/mnt-a/two-$round" \
    && ok "round$round-b-to-a" || bad "round$round-b-to-a" "the file written through B reads differently through A"
  # Control: the comparison itself can fail.
  cmp -s "$work/one" "$work/mnt-b/two-$round" && bad "round$round-control-compare" "two different files compared equal"
  stop_engine a; stop_engine b
done

# 3. cache auto: a change through A is seen through B within the 1 s the cache mode promises.
fresh_export cache
launch a auto; launch b auto
if serving a && serving b; then
  printf 'short' >"$work/mnt-a/grows"
  stat -c %s "$work/mnt-b/grows" >/dev/null
  head -c 5000 /dev/urandom >>"$work/mnt-a/grows"
  seen=0
  for _ in $(seq 1 20); do
    [ "$(stat -c %s "$work/mnt-b/grows")" = 5005 ] && { seen=1; break; }
    sleep 0.1
  done
  [ $seen = 1 ] && ok "cache-auto-seen-within-2s" || bad "cache-auto-seen-within-2s" "B still reports $(stat -c %s "$work/mnt-b/grows") bytes"
else
  bad "cache-auto-start" "$(tail -3 "$work"/engine-*.log)"
fi

# 4. A's hidden file survives B's restart, and A still reads it.
head -c 300000 /dev/urandom >"$work/kept"
cp "$work/kept" "$work/mnt-a/kept"
exec 7<"$work/mnt-a/kept"
rm "$work/mnt-a/kept"
hidden=$(ls "$share/.dpfs-hidden" | wc -l)
stop_engine b; launch b auto
if serving b && [ "$hidden" -ge 1 ] && [ "$(ls "$share/.dpfs-hidden" | wc -l)" = "$hidden" ] && cmp -s "$work/kept" /dev/fd/7; then
  ok "hidden-kept-across-other-engine"
else
  bad "hidden-kept-across-other-engine" "hidden before: $hidden, after: $(ls "$share/.dpfs-hidden" | wc -l)"
fi
exec 7<&-
stop_engine a; stop_engine b

# Control: a .dpfs-hidden that is not a directory stops the start, and says so.
mkdir -p "$work/share-control"
echo "not a directory" >"$work/share-control/.dpfs-hidden"
fresh_export control
launch a never
if serving a; then
  bad "control-hidden-not-directory" "the engine served with .dpfs-hidden a regular file"
elif grep -q ".dpfs-hidden in the export is not a directory" "$work/engine-a.log"; then
  ok "control-hidden-not-directory"
else
  bad "control-hidden-not-directory" "$(tail -3 "$work/engine-a.log")"
fi
stop_engine a

echo "test-nfs-engines: $failures failure(s)"
exit $failures
