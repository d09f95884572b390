#!/usr/bin/env bash
# Installs the vhost-user back-end descriptor that lets libvirt find dpfs-engine by itself (QEMU's
# docs/interop/vhost-user.json: a file in /usr/share/qemu/vhost-user/ naming a back-end of "type":
# "fs" and its binary). libvirt then runs the engine for a <filesystem type='mount'> with
# <driver type='virtiofs'/> and no <binary path=...>, asks it --print-capabilities, and passes the
# virtiofsd command line the engine reads (docs/configuration.md, "virtiofsd's command line").
#   tools/install-vhost-user-descriptor.sh [--binary PATH] [--directory DIR] [--first]   (defaults:
#   the release build's dpfs-engine, /usr/share/qemu/vhost-user); prints the file it wrote.
# Descriptors are taken in file-name order and the first file-system back-end wins: the file is
# 60-dpfs-engine.json, after Debian's 50-qemu-virtiofsd.json, so installing it changes nothing for
# guests that expect virtiofsd (name the engine in the domain's <binary path=...> to choose it);
# --first writes 40-dpfs-engine.json, which libvirt then picks for every virtio-fs share.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(pwd)/.build/release/dpfs-engine
directory=/usr/share/qemu/vhost-user
order=60
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift ;;
    --directory) directory=$2; shift ;;
    --first) order=40 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$binary" ] || { echo "no executable $binary (swift build -c release first)" >&2; exit 1; }
"$binary" --print-capabilities | python3 -c 'import json,sys; assert json.load(sys.stdin)["type"] == "fs"' \
  || { echo "$binary does not answer --print-capabilities as a file-system back-end" >&2; exit 1; }
mkdir -p "$directory"
file=$directory/$order-dpfs-engine.json
python3 - "$binary" >"$file" <<'PY'
import json, sys
print(json.dumps({"description": "dpfs-engine: virtio-fs back-end (DPFS in Swift)", "type": "fs", "binary": sys.argv[1]}, indent=2))
PY
echo "$file"
