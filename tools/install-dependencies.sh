#!/usr/bin/env bash
# Installs the Debian packages the engine and its checks need. Safe to run again: apt-get skips
# what is already installed. Needs root (the project's machines run as root).
#   tools/install-dependencies.sh          the engine, its tests and the spin model
#   tools/install-dependencies.sh guest    also QEMU and what the guest harness builds images from
set -euo pipefail

packages=(
  liburing-dev libnuma-dev libnfs-dev libibverbs-dev   # the engine's C libraries (Sources/CDPFS)
  spin gcc libc6-dev                                   # model checking Specs/slot-ring.pml; gcc and libc.a build the guest's static nfs-mount
  python3 fio                                          # host-mount checks (tools/host) and benchmarks
  redis-server                                         # the key-value backend's server (tools/redis-server.sh)
  prometheus                                           # promtool checks the engine's /metrics (tools/host/test-metrics.sh)
)
if [ "${1:-}" = guest ]; then
  packages+=(qemu-system-x86 busybox-static cpio)      # tools/guest: QEMU (and the C virtiofsd), initramfs
fi
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
fi
