#!/usr/bin/env bash
# test-nfs4-session.sh — the NFSv4.1 client layer against a real nfs-ganesha: our own XDR
# (NFSv4Wire) carried by libnfs's transport through the CDPFS_nfs4_* shim. `dpfs-bench nfs4-probe`:
#   1. EXCHANGE_ID, CREATE_SESSION, RECLAIM_COMPLETE; the export walked from the pseudo root; OPEN
#      GUARDED, WRITE 64 KiB, COMMIT (same verifier), READ back byte for byte, SETATTR + GETATTR,
#      CLOSE, CREATE of a directory, READDIR listing both, RENAME, LOOKUP NOENT, REMOVE, then
#      DESTROY_SESSION and DESTROY_CLIENTID — three times in a row (a new client each time);
#   2. --keep: the file the probe wrote is, on the server's disk, the pattern byte for byte;
#   3. --verify reads it back over NFSv4.1 in a new session;
# and controls that must fail: --verify after one byte was changed on the server's disk, and a
# URL for a version the probe does not speak.
# Needs root (ganesha). Uses .build/release/dpfs-bench (built if missing). Exit status: failed checks.
set -uo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "test-nfs4-session: needs root"; exit 1; }
bench=.build/release/dpfs-bench
[ -x $bench ] || swift build -c release --product dpfs-bench || exit 1

work=$(mktemp -d /tmp/dpfs-nfs4.XXXXXX)
chmod 755 "$work"
export DPFS_NFS_STATE=$work/nfs
share=$work/share
mkdir -p "$share"
failures=0
ok() { echo "RESULT $1-ok"; }
bad() { echo "RESULT $1-FAILED: $2"; failures=$((failures + 1)); }
cleanup() { tools/nfs-server.sh stop; rm -rf "$work"; }
trap cleanup EXIT

urls=$(tools/nfs-server.sh start "$share") || { echo "RESULT server-FAILED: nfs-ganesha did not start"; exit 1; }
url=$(grep "version=4" <<<"$urls" | sed 's/version=4/version=4.1/')
echo "server: $url"

for round in 1 2 3; do
  if timeout 120 $bench nfs4-probe --nfs-url "$url" >"$work/probe-$round.out" 2>&1; then
    ok "lifecycle-$round"
  else
    bad "lifecycle-$round" "$(tail -3 "$work/probe-$round.out")"
  fi
done
sed 's/^/    /' "$work/probe-1.out"
leftover=$(ls -A "$share")
[ -z "$leftover" ] && ok "nothing-left-behind" || bad "nothing-left-behind" "the export holds: $leftover"

# The pattern the probe writes: byte i is (i*131 + i>>8 + 7) mod 256.
python3 -c '
import sys
sys.stdout.buffer.write(bytes(((i * 131) + (i >> 8) + 7) & 0xff for i in range(65536)))' >"$work/pattern"
if timeout 120 $bench nfs4-probe --nfs-url "$url" --keep kept.dat >"$work/keep.out" 2>&1 && cmp -s "$work/pattern" "$share/kept.dat"; then
  ok "kept-file-on-disk-is-the-pattern"
else
  bad "kept-file-on-disk-is-the-pattern" "$(tail -2 "$work/keep.out"; cmp "$work/pattern" "$share/kept.dat" 2>&1)"
fi
timeout 120 $bench nfs4-probe --nfs-url "$url" --verify kept.dat >"$work/verify.out" 2>&1 \
  && ok "verify-in-a-new-session" || bad "verify-in-a-new-session" "$(tail -2 "$work/verify.out")"

# Control: one byte changed on the server's disk must be caught.
printf '\xff' | dd of="$share/kept.dat" bs=1 seek=40000 conv=notrunc status=none
if timeout 120 $bench nfs4-probe --nfs-url "$url" --verify kept.dat >"$work/control.out" 2>&1; then
  bad "control-changed-byte" "a changed byte was not noticed"
elif grep -q "differs at byte 40000" "$work/control.out"; then
  ok "control-changed-byte"
else
  bad "control-changed-byte" "failed, but not at the changed byte: $(tail -2 "$work/control.out")"
fi
# Control: the probe refuses a version it does not speak.
if timeout 30 $bench nfs4-probe --nfs-url "${url/version=4.1/version=4.0}" >"$work/v40.out" 2>&1; then
  bad "control-version" "the probe ran over NFSv4.0"
else
  ok "control-version"
fi

echo "test-nfs4-session: $failures failure(s)"
exit $failures
