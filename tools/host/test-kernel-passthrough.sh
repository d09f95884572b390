#!/usr/bin/env bash
# test-kernel-passthrough.sh — the claim "with kernel passthrough, an open file's reads and writes
# never leave the kernel", checked by counting: a workload writes, reads back (whole, at offsets,
# through a shared mapping) and rewrites files through a host mount with --fuse-passthrough, checks
# every byte against the share, and stops the engine, whose stop line says how many READ and WRITE
# requests it served itself. The claim holds only if both are 0.
#
#   tools/host/test-kernel-passthrough.sh                        the check (exit 0 when it holds)
#   tools/host/test-kernel-passthrough.sh --without-passthrough  the negative control: the same
#       run with passthrough off must make the check fail (exit 1), proving the count can see I/O
# Exit status: 0 the engine served no READ/WRITE; 1 it served some; 2 a setup error (the engine did
# not start, the data differed, no stop line). Needs root and /dev/fuse.
set -uo pipefail
cd "$(dirname "$0")/../.."

passthrough=--fuse-passthrough
[ "${1:-}" = --without-passthrough ] && passthrough=
[ "$(id -u)" = 0 ] || { echo "test-kernel-passthrough: needs root"; exit 2; }
engine=.build/release/dpfs-engine
[ -x $engine ] || swift build -c release --product dpfs-engine || exit 2

work=$(mktemp -d /tmp/dpfs-kpt.XXXXXX)
mkdir -m 755 "$work/share" "$work/mnt"
engine_pid=
cleanup() {
  [ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null
  umount -l "$work/mnt" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

$engine --fuse-mount "$work/mnt" --backend passthrough --shared-dir "$work/share" --cache auto \
  --fuse-transport uring $passthrough >"$work/engine.log" 2>&1 &
engine_pid=$!
for _ in $(seq 1 100); do
  grep -q "INIT agreed" "$work/engine.log" 2>/dev/null && stat "$work/mnt" >/dev/null 2>&1 && break
  kill -0 $engine_pid 2>/dev/null || break
  sleep 0.1
done
grep -q "INIT agreed" "$work/engine.log" || { cat "$work/engine.log"; echo "test-kernel-passthrough: the engine did not serve"; exit 2; }
if [ -n "$passthrough" ] && ! grep -q "kernel passthrough on" "$work/engine.log"; then
  cat "$work/engine.log"; echo "test-kernel-passthrough: the kernel did not agree passthrough"; exit 2
fi

python3 - "$work/mnt" "$work/share" <<'EOF' || { echo "test-kernel-passthrough: the workload failed"; exit 2; }
import mmap, os, random, sys
mnt, share = sys.argv[1:]
rng = random.Random(1234)
for name in ("a.bin", "b.bin"):
    data = bytearray(rng.randbytes(4 << 20))
    fd = os.open(os.path.join(mnt, name), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    for off in range(0, len(data), 65536):
        assert os.write(fd, data[off:off + 65536]) == 65536
    os.fsync(fd)
    os.close(fd)
    fd = os.open(os.path.join(mnt, name), os.O_RDWR)
    for _ in range(64):                                   # rewrites and reads at random offsets
        off = rng.randrange(0, len(data) - 5000)
        patch = rng.randbytes(rng.randrange(1, 5000))
        assert os.pwrite(fd, patch, off) == len(patch)
        data[off:off + len(patch)] = patch
        assert os.pread(fd, 4096, off) == bytes(data[off:off + 4096])
    os.close(fd)
    with open(os.path.join(mnt, name), "rb") as f:        # whole file, and through a mapping
        assert f.read() == bytes(data), f"{name}: read back differs"
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert m[:] == bytes(data), f"{name}: mapping differs"
    with open(os.path.join(share, name), "rb") as f:
        assert f.read() == bytes(data), f"{name}: the share holds other bytes"
print("workload: 2 files × 4 MiB written, rewritten at 128 offsets, read back whole and mapped; the share agrees")
EOF

kill -TERM $engine_pid
wait $engine_pid
engine_pid=
line=$(grep -o "engine served [0-9]* READ, [0-9]* WRITE" "$work/engine.log")
[ -n "$line" ] || { cat "$work/engine.log"; echo "test-kernel-passthrough: no stop line"; exit 2; }
reads=$(echo "$line" | awk '{print $3}')
writes=$(echo "$line" | awk '{print $5}')
echo "test-kernel-passthrough ($([ -n "$passthrough" ] && echo "passthrough on" || echo "passthrough off")): $line"
if [ "$reads" = 0 ] && [ "$writes" = 0 ]; then
  echo "test-kernel-passthrough: ok, no READ or WRITE reached the engine"
  exit 0
fi
echo "test-kernel-passthrough: FAIL, the engine served $reads READ and $writes WRITE"
exit 1
