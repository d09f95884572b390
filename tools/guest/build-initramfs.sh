#!/usr/bin/env bash
# build-initramfs.sh — build the guest's initramfs: busybox + virtio-fs modules + /init + a workload.
#
# Why: the smallest guest that exercises the Linux virtio-fs driver against a vhost-user back-end.
# No disk image: the whole root file system is this cpio, and the only file system the guest
# touches besides it is the virtio-fs mount under test.
#
# Usage: tools/guest/build-initramfs.sh 6.1|6.12 WORKLOAD_SCRIPT OUTPUT.cpio.gz
#   The kernel is fetched (or taken from the cache) with fetch-kernel.sh, so its modules match.
#   WORKLOAD_SCRIPT is copied to /workload.sh and run by tools/guest/init with busybox sh.
# Requires: busybox-static (/bin/busybox), cpio, gzip; root (to create /dev/console in the archive).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [[ $# != 3 ]]; then
  echo "usage: $0 6.1|6.12 WORKLOAD_SCRIPT OUTPUT.cpio.gz" >&2
  exit 2
fi
kernel=$1
workload=$2
output=$3
[[ -f $workload ]] || { echo "build-initramfs: no workload script $workload" >&2; exit 2; }

# The static busybox: a dynamic one would need its libc in the initramfs.
busybox=/bin/busybox
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked' && ! ldd "$busybox" 2>&1 | grep -q 'not a dynamic'; then
  echo "build-initramfs: $busybox is not static; apt-get install -y busybox-static" >&2
  exit 1
fi

# Kernel facts (fetch-kernel.sh prints key=value lines): module directory and load order.
kinfo=$("$here/fetch-kernel.sh" "$kernel")
field() { sed -n "s/^$1=//p" <<<"$kinfo"; }
modules_dir=$(field modules_dir)
modules=$(field modules)
release=$(field release)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,mnt,tmp,etc,lib/modules}
cp "$busybox" "$stage/bin/busybox"
# Applet links at build time (not 'busybox --install' at boot): the image is then complete and
# inspectable with 'cpio -t', and boot does less work under slow TCG.
for applet in $("$busybox" --list); do
  [[ $applet == busybox ]] || ln -s busybox "$stage/bin/$applet"
done
ln -s bin "$stage/sbin"
mkdir -p "$stage/usr"
ln -s ../bin "$stage/usr/bin"
ln -s ../bin "$stage/usr/sbin"
# The kernel opens /dev/console for init before /init can mount devtmpfs: without the node the
# early output is lost. (The init redirects to it again after mounting devtmpfs.)
mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || echo "build-initramfs: cannot mknod /dev/console (not root?)" >&2

: >"$stage/etc/dpfs-modules"
for m in $modules; do
  cp "$modules_dir/$m" "$stage/lib/modules/$m"
  echo "$m" >>"$stage/etc/dpfs-modules"
done
echo "$release" >"$stage/etc/dpfs-kernel-release"

# A workload that says `# dpfs-guest-needs: nfs-client` also gets the guest's own NFS client (the
# NIC and NFS modules, listed in /etc/dpfs-nfs-modules for the workload to load), a static
# nfs-mount (busybox cannot mount NFSv4), and fio with every library it links.
if grep -q '^# dpfs-guest-needs: nfs-client' "$workload"; then
  : >"$stage/etc/dpfs-nfs-modules"
  for m in $(field nfs_modules); do
    cp "$modules_dir/$m" "$stage/lib/modules/$m"
    echo "$m" >>"$stage/etc/dpfs-nfs-modules"
  done
  cc -static -Os -o "$stage/bin/nfs-mount" "$here/nfs-mount.c"
  fio=$(command -v fio) || { echo "build-initramfs: no fio on the host; apt-get install -y fio" >&2; exit 1; }
  cp "$fio" "$stage/bin/fio"
  for library in $(ldd "$fio" | grep -oE '/[^ ]+'); do
    mkdir -p "$stage$(dirname "$library")"
    cp -L "$library" "$stage$library"
  done
fi

install -m 755 "$here/init" "$stage/init"
install -m 755 "$workload" "$stage/workload.sh"

mkdir -p "$(dirname "$output")"
# newc is the format the kernel unpacks; sorted names and owner root keep it reproducible-ish.
# Written under a temporary name and renamed: a concurrent run never sees half an archive.
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 >"$output.$$.tmp"
mv "$output.$$.tmp" "$output"
echo "build-initramfs: $output ($(du -k "$output" | cut -f1) KiB, kernel $release, modules: ${modules:-none})" >&2
