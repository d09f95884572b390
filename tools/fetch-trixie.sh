#!/usr/bin/env bash
# Fetches Debian trixie packages into tools/.cache/trixie/root without installing anything on the
# host: a private apt source list, private package lists and cache (the host's /etc/apt and dpkg
# state are never written), `apt-get download`, then `dpkg-deb -x`. For tools this Debian 12 has
# too old a version of (valgrind 3.19 does not know openat2, which the passthrough backend uses)
# and for the peers measured against (virtiofsd 1.13). Binaries that need trixie's glibc run
# through tools/.cache/trixie/root/usr/lib64/ld-linux-x86-64.so.2 --library-path ...
#
#   tools/fetch-trixie.sh PACKAGE...     prints the root directory on stdout
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: tools/fetch-trixie.sh PACKAGE..." >&2; exit 2; }
cache=$PWD/tools/.cache/trixie
priv=$cache/apt
mkdir -p "$priv/lists/partial" "$priv/cache/archives/partial" "$cache/debs" "$cache/root"
echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main' >"$priv/sources.list"
apt_opts=(-o APT::Sandbox::User=root -o "Dir::Etc::SourceList=$priv/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$priv/lists" -o "Dir::Cache=$priv/cache")
for package in "$@"; do
  [ -f "$cache/root/.done-$package" ] && continue
  deb=$(ls "$cache/debs/${package}_"*.deb 2>/dev/null | head -n 1 || true)
  if [ -z "$deb" ]; then
    if ! (cd "$cache/debs" && apt-get "${apt_opts[@]}" download "$package" >&2 2>/dev/null); then
      echo "fetch-trixie: refreshing trixie's package lists" >&2
      apt-get "${apt_opts[@]}" update >&2
      (cd "$cache/debs" && apt-get "${apt_opts[@]}" download "$package" >&2)
    fi
    deb=$(ls "$cache/debs/${package}_"*.deb | head -n 1)
  fi
  dpkg-deb -x "$deb" "$cache/root"
  touch "$cache/root/.done-$package"
  echo "fetch-trixie: $(basename "$deb")" >&2
done
echo "$cache/root"
