#!/usr/bin/env bash
# fetch-kernel.sh — get a Debian cloud kernel (and, if needed, the virtio-fs modules) for the guest harness.
#
# Why: the guest tests boot a real Linux virtio-fs driver against our vhost-user back-end. We use
# Debian's own cloud kernels (small, virtio-centric, signed builds the CI machine can fetch through
# apt) instead of building a kernel. Nothing is installed on the host: the .deb is fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` into tools/.cache/guest/ (git-ignored), and
# re-used on later runs.
#
# Usage: tools/guest/fetch-kernel.sh [--refresh] 6.1|6.12
#   6.1   bookworm's linux-image-cloud-amd64 (resolved to its current linux-image-6.1.*-cloud-amd64)
#   6.12  bookworm-backports' cloud kernel, fetched with a private apt configuration (the host's
#         /etc/apt is never touched)
#   --refresh  re-resolve the package name through apt even when a cached kernel exists
#
# Output (stdout, one key=value per line, for run-guest.sh / build-initramfs.sh to read):
#   package=linux-image-...        the Debian package
#   release=6.1.0-NN-cloud-amd64   uname -r of the guest
#   vmlinuz=/abs/path/vmlinuz
#   modules_dir=/abs/path/modules  decompressed .ko files needed for virtio-fs (may be empty)
#   modules=a.ko b.ko ...          load order (dependencies first); empty if virtio-fs is built in
#   nfs_modules=c.ko d.ko ...      the guest's own NFS client and NIC (virtio_net, nfsv3, nfsv4 and
#                                  their dependencies not already above), loaded only by workloads
#                                  that ask for them (tools/guest/bench-nfs-client.sh)
# Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="$repo/tools/.cache/guest"

refresh=0
if [[ ${1:-} == --refresh ]]; then refresh=1; shift; fi
kernel=${1:-}
case "$kernel" in
  6.1 | 6.12) ;;
  *) echo "usage: $0 [--refresh] 6.1|6.12" >&2; exit 2 ;;
esac

log() { echo "fetch-kernel: $*" >&2; }
mkdir -p "$cache/debs" "$cache/kernel"

# A finished extraction leaves a 'result' file (the key=value output above). 'current-$kernel'
# points at the last one resolved, so repeated runs need neither apt nor the network.
current="$cache/current-$kernel"
# A result from before nfs_modules existed is extracted again.
complete() { [[ -f $1/result ]] && grep -q '^nfs_modules=' "$1/result"; }
if [[ $refresh == 0 ]] && complete "$current"; then
  cat "$current/result"
  exit 0
fi

# --- apt options ---------------------------------------------------------------------------------
# 6.1 uses the host's apt configuration as it is. 6.12 needs bookworm-backports, which the host's
# sources do not list: instead of editing /etc/apt we point apt at a private source list, private
# package lists and a private package cache (so the host's /var/cache/apt/pkgcache.bin is not
# rebuilt from our lists either). The host's dpkg status is only read.
apt_opts=(-o APT::Sandbox::User=root) # downloads go into our cache dir, which _apt cannot write
if [[ $kernel == 6.12 ]]; then
  priv="$cache/apt-backports"
  mkdir -p "$priv/lists/partial" "$priv/cache/archives/partial"
  echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main' \
    >"$priv/sources.list"
  apt_opts+=(-o "Dir::Etc::SourceList=$priv/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$priv/lists" -o "Dir::Cache=$priv/cache")
fi

# The meta-package depends on the real, versioned image package; resolve it.
resolve() {
  apt-cache "${apt_opts[@]}" depends linux-image-cloud-amd64 2>/dev/null |
    grep -oE 'linux-image-[0-9][^ <>]*-cloud-amd64' | head -n 1 || true
}
pkg=$(resolve)
if [[ -z $pkg ]]; then
  log "apt knows no linux-image-cloud-amd64 yet: running apt-get update"
  apt-get "${apt_opts[@]}" update >&2
  pkg=$(resolve)
fi
if [[ -z $pkg ]]; then
  log "cannot resolve linux-image-cloud-amd64 for kernel $kernel"
  exit 1
fi
case "$kernel:$pkg" in
  6.1:linux-image-6.1.* | 6.12:linux-image-6.12.*) ;;
  *) log "resolved $pkg, which is not a $kernel kernel"; exit 1 ;;
esac
log "kernel $kernel is $pkg"

dest="$cache/kernel/$pkg"
if complete "$dest"; then
  ln -sfn "kernel/$pkg" "$current"
  cat "$dest/result"
  exit 0
fi

# --- download (re-using a cached .deb of the same package) --------------------------------------
deb=$(ls "$cache/debs/${pkg}_"*.deb 2>/dev/null | head -n 1 || true)
if [[ -z $deb ]]; then
  log "downloading $pkg"
  if ! (cd "$cache/debs" && apt-get "${apt_opts[@]}" download "$pkg" >&2); then
    # Stale package lists name a version the mirror no longer has: refresh them, try once more.
    log "download failed: apt-get update, then retrying"
    apt-get "${apt_opts[@]}" update >&2
    (cd "$cache/debs" && apt-get "${apt_opts[@]}" download "$pkg" >&2)
  fi
  deb=$(ls "$cache/debs/${pkg}_"*.deb | head -n 1)
fi
log "using $deb"

# --- extract -------------------------------------------------------------------------------------
tmp="$dest.tmp.$$" # private to this process; renamed into place when complete
rm -rf "$tmp"
mkdir -p "$tmp/modules"
dpkg-deb -x "$deb" "$tmp/root"
release=$(ls "$tmp/root/lib/modules" | head -n 1)
cp "$tmp/root/boot/vmlinuz-$release" "$tmp/vmlinuz"
cp "$tmp/root/boot/config-$release" "$tmp/config"

# Which modules does virtio-fs need? Whatever of virtio_pci (to find the PCI device), fuse and
# virtiofs is not built in (=y), plus everything they depend on. The .deb ships no modules.dep
# (depmod makes it at install time, and kmod may not be on the host), so we read the same
# information from each module's own .modinfo section: the 'depends=' field modpost wrote.
modroot="$tmp/root/lib/modules/$release"
config_of() { grep -E "^CONFIG_$1=" "$tmp/config" | cut -d= -f2 || true; }
want=()
for pair in VIRTIO_PCI:virtio_pci FUSE_FS:fuse VIRTIO_FS:virtiofs; do
  case "$(config_of "${pair%%:*}")" in
    y) ;;
    m) want+=("${pair#*:}") ;;
    *) log "CONFIG_${pair%%:*} is neither y nor m in $release: virtio-fs cannot work"; exit 1 ;;
  esac
done

find_ko() { # module name -> path of its .ko / .ko.xz (names may use - or _)
  local alt=${1//_/-}
  find "$modroot" \( -name "$1.ko" -o -name "$1.ko.xz" -o -name "$alt.ko" -o -name "$alt.ko.xz" \) | head -n 1
}
depends_of() { # path -> space separated dependency names
  local f=$1
  if [[ $f == *.xz ]]; then xz -dc "$f"; else cat "$f"; fi |
    tr '\0' '\n' | grep -a '^depends=' | head -n 1 | cut -d= -f2 | tr ',' ' '
}
order=()
declare -A seen=()
visit() { # depth-first: dependencies are appended before the module itself
  local name=$1 path dep
  [[ -n ${seen[$name]:-} ]] && return 0
  seen[$name]=1
  path=$(find_ko "$name")
  if [[ -z $path ]]; then log "module $name not found in $pkg"; exit 1; fi
  for dep in $(depends_of "$path"); do visit "$dep"; done
  # busybox insmod cannot read .ko.xz: store them decompressed.
  if [[ $path == *.xz ]]; then
    xz -dc "$path" >"$tmp/modules/$name.ko"
  else
    cp "$path" "$tmp/modules/$name.ko"
  fi
  order+=("$name.ko")
}
for m in "${want[@]}"; do visit "$m"; done
if [[ ${#order[@]} == 0 ]]; then log "virtio-fs is built into $release: no modules needed"; fi
virtiofs_count=${#order[@]}
for pair in VIRTIO_NET:virtio_net NFS_FS:nfs NFS_V3:nfsv3 NFS_V4:nfsv4; do
  case "$(config_of "${pair%%:*}")" in
    y) ;;
    m) visit "${pair#*:}" ;;
    *) log "CONFIG_${pair%%:*} is neither y nor m in $release: the guest has no NFS client"; exit 1 ;;
  esac
done
nfs_order=("${order[@]:virtiofs_count}")
order=("${order[@]:0:virtiofs_count}")

rm -rf "$tmp/root" # ~200 MB of modules we do not need; the .deb stays cached
{
  echo "package=$pkg"
  echo "release=$release"
  echo "vmlinuz=$dest/vmlinuz"
  echo "modules_dir=$dest/modules"
  echo "modules=${order[*]}"
  echo "nfs_modules=${nfs_order[*]}"
} >"$tmp/result"
if complete "$dest"; then
  rm -rf "$tmp" # a concurrent run finished first; its result is identical
else
  rm -rf "$dest"
  mv "$tmp" "$dest"
fi
ln -sfn "kernel/$pkg" "$current"
cat "$dest/result"
