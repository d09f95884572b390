#!/bin/sh
# passthrough-basic.sh — guest workload for a passthrough virtio-fs back-end (a host directory
# shared with the guest), run by tools/guest/init; the host side is tools/guest/test-passthrough.sh.
#
# Why: a passthrough back-end's promise is that the guest and the host see the same files, byte for
# byte, with the same names, links, modes and times, and that this survives a guest reboot. This
# script does what a tenant does to files (write, read back, overwrite in place, rename, link,
# chmod, touch, truncate, large directories, deep trees) and leaves a known state behind that the
# host and a second boot check. It runs unchanged against the C virtiofsd, which is how the
# workload itself is proven independently of our engine.
#
# Phase, from the kernel command line (run-guest.sh --append 'dpfs.phase=...'):
#   dpfs.phase=write      (default) everything below; leaves guest-made/ behind
#   dpfs.phase=verify     a second boot on the same share: guest-made/ is still as phase write left it
#   dpfs.phase=isolation  the share must hold OWN-marker.txt ("device OWN") and must not show
#                         FOREIGN-marker.txt (the other device's), not even through a host-made
#                         escape-link; writes guest-made-OWN.txt for the host to look for.
#                         dpfs.own=OWN (default b), dpfs.foreign=FOREIGN (default a)
#   dpfs.groups-refused=read,create,chgrp  what a user holding a group only as a supplementary
#                         group is expected to be refused (default: nothing, as locally)
# Files it relies on (made by the host before boot): host-made/hello.txt ("hello from the host")
# and host-made/manifest (md5sum format, paths relative to the share).
# What it leaves (phase write), all paths relative to the share:
#   guest-made/manifest.md5  md5sum -c format: every regular file below with the checksum the guest
#                            computed from its own copy in /tmp before writing it
#   guest-made/expect        one fact per line, checked by phase verify (busybox stat) and the host
#                            (GNU stat): 'mode P OCTAL', 'nlink P N', 'inode-same P Q',
#                            'symlink P TARGET', 'mtime P SECONDS NANOSECONDS', 'absent P',
#                            'entries P N', 'size P BYTES', 'type P directory|fifo|...',
#                            'owner P UID GID'
#
# busybox sh; 'RESULT <name>-ok' / 'RESULT <name>-FAILED: why' per check, 'RESULT all-ok' at the
# end; exit status = number of failures (capped at 250). set -u and pipefail, not -e: every check
# reports on its own.
set -u -o pipefail
mnt=${DPFS_MNT:-/mnt}
failures=0
ok() { echo "RESULT $1-ok"; }
bad() { echo "RESULT $1-FAILED: $2"; failures=$((failures + 1)); }
md5() { md5sum <"$1" | cut -d' ' -f1; }
# Make the next read go to the back-end, not the guest page cache (needed for cache modes other
# than never/none; harmless there).
dropcaches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

phase=write own=b foreign=a groups_refused=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    dpfs.groups-refused=*) groups_refused=${arg#dpfs.groups-refused=} ;;
    dpfs.phase=*) phase=${arg#dpfs.phase=} ;;
    dpfs.own=*) own=${arg#dpfs.own=} ;;
    dpfs.foreign=*) foreign=${arg#dpfs.foreign=} ;;
  esac
done
# DPFS_PHASE overrides the command line (for a dry run on a host directory with busybox sh).
phase=${DPFS_PHASE:-$phase}
echo "phase: $phase, kernel $(uname -r), cpus $(nproc)"
cd "$mnt" || { echo "RESULT cd-FAILED: cannot cd $mnt"; exit 1; }

# --- the expectation list: checked in the guest (verify) and on the host ------------------------
# check_expect FILE: every line of FILE, checked with busybox stat/readlink/ls.
check_expect() {
  n=0
  while read -r what p a b; do
    n=$((n + 1))
    case "$what" in
      mode) got=$(stat -c %a "$p") ;;
      nlink) got=$(stat -c %h "$p") ;;
      inode-same) got=$(stat -c %i "$p"); a=$(stat -c %i "$a") ;;
      symlink) got=$(readlink "$p") ;;
      mtime) got="$(stat -c %Y "$p") $(stat -c %y "$p" | sed -n 's/.*:[0-9][0-9]\.\([0-9]*\) .*/\1/p')"; a="$a $b" ;;
      absent) if [ -e "$p" ] || [ -L "$p" ]; then got=present; else got=absent; fi; a=absent ;;
      entries) got=$(ls -A "$p" | wc -l) ;;
      size) got=$(stat -c %s "$p") ;;
      type) got=$(stat -c %F "$p"); a="$a${b:+ $b}" ;;
      owner) got=$(stat -c '%u %g' "$p"); a="$a $b" ;;
      *) got="unknown fact $what"; a="" ;;
    esac
    if [ "$got" = "$a" ]; then ok "expect-$what-$p"; else bad "expect-$what-$p" "got '$got', want '$a'"; fi
  done <"$1"
  [ "$n" -gt 0 ] || bad expect-list "$1 is empty"
}

# The host's files: content and checksums, as the host wrote them before boot.
check_host_made() {
  if [ "$(cat host-made/hello.txt 2>/dev/null)" = "hello from the host" ]; then ok host-hello; else bad host-hello "host-made/hello.txt: '$(cat host-made/hello.txt 2>&1)'"; fi
  if out=$(md5sum -c host-made/manifest 2>&1); then ok host-manifest; else bad host-manifest "$(echo "$out" | grep -v ': OK' | head -5 | tr '\n' ' ')"; fi
}

phase_isolation() {
  ls -la .
  m=$own-marker.txt f=$foreign-marker.txt
  if [ -f "$m" ] && [ "$(cat "$m")" = "device $own" ]; then ok own-marker; else bad own-marker "$m missing or wrong: '$(cat "$m" 2>&1)'"; fi
  if [ -e "$f" ]; then bad no-foreign-marker "$f (device $foreign's) is visible"; else ok no-foreign-marker; fi
  # A symlink the host planted, pointing at the other device's directory ('../share-$foreign/...'):
  # readable as a link, but following it must not reach the other tenant's file.
  if [ -L escape-link ]; then
    echo "escape-link -> $(readlink escape-link)"
    if [ "$(cat escape-link 2>/dev/null)" = "device $foreign" ]; then bad escape-link "reached device $foreign's marker"; else ok escape-link; fi
  else
    # The host planted it: missing, the check above could never fail.
    bad escape-link "the host-made escape-link is missing"
  fi
  # '..' of the mount's root must be the root itself as far as the back-end is concerned.
  if [ "$(stat -c %i "$mnt/.")" = "$(stat -c %i "$mnt")" ]; then ok root-inode; else bad root-inode "inode of . differs"; fi
  if echo "written by the guest on device $own" >"guest-made-$own.txt" && sync; then ok "write-$own"; else bad "write-$own" "cannot write guest-made-$own.txt"; fi
}

phase_verify() {
  ls -la . guest-made
  check_host_made
  dropcaches
  if out=$(md5sum -c guest-made/manifest.md5 2>&1); then
    ok "manifest($(grep -c . guest-made/manifest.md5) files)"
  else
    bad manifest "$(echo "$out" | grep -v ': OK' | head -5 | tr '\n' ' ')"
  fi
  check_expect guest-made/expect
  if [ "$(cat guest-made/sym 2>/dev/null)" = "$(cat guest-made/renamed.txt)" ]; then ok read-via-symlink; else bad read-via-symlink "content differs"; fi
  if [ "$(ls guest-made/bigdir | wc -l)" = 320 ] && ls -la guest-made/bigdir >/dev/null; then ok bigdir-persisted; else bad bigdir-persisted "$(ls guest-made/bigdir | wc -l) entries"; fi
  # The share stays writable after a reboot: a small file the host can look for.
  if echo "verify phase was here" >guest-made/verified.txt && sync; then ok verify-write; else bad verify-write "cannot write"; fi
}

phase_write() {
  ls -la .
  check_host_made
  rm -rf guest-made
  mkdir -p guest-made/sizes /tmp/pt || { bad mkdir "mkdir guest-made"; return; }
  man=guest-made/manifest.md5
  exp=guest-made/expect
  : >"$man"
  : >"$exp"
  record() { echo "$(md5 "/tmp/pt/$1")  guest-made/$1" >>"$man"; }

  # 1. files of several sizes: written from a /tmp copy, read back after dropping caches.
  for spec in f0:0 f1:1 f4k:4096 f4k1:4097 f1m123:1048699 f3m:3145728; do
    name=${spec%%:*} size=${spec#*:}
    head -c "$size" /dev/urandom >"/tmp/pt/sizes-$name"
    mkdir -p /tmp/pt/sizes
    mv "/tmp/pt/sizes-$name" "/tmp/pt/sizes/$name"
    if dd if="/tmp/pt/sizes/$name" of="guest-made/sizes/$name" bs=64k 2>/dev/null; then
      record "sizes/$name"
      echo "size guest-made/sizes/$name $size" >>"$exp"
    else
      bad "write-$name" "dd failed"
    fi
  done
  dropcaches
  for spec in f0:0 f1:1 f4k:4096 f4k1:4097 f1m123:1048699 f3m:3145728; do
    name=${spec%%:*} size=${spec#*:}
    want=$(md5 "/tmp/pt/sizes/$name") got=$(md5 "guest-made/sizes/$name") gsize=$(stat -c %s "guest-made/sizes/$name")
    if [ "$want" = "$got" ] && [ "$gsize" = "$size" ]; then ok "readback-$name"; else bad "readback-$name" "md5 $got want $want, size $gsize want $size"; fi
  done

  # 2. overwrites at unaligned offsets (and one past the end, leaving a hole), the same edits done
  #    on a tmpfs copy; the results must be identical.
  head -c 65536 /dev/urandom >/tmp/pt/edit.bin
  cp /tmp/pt/edit.bin guest-made/edit.bin
  head -c 5000 /dev/urandom >/tmp/pt/patch5000
  edit() { # file: the same three edits
    printf 'XYZ' | dd of="$1" bs=1 seek=7 count=3 conv=notrunc 2>/dev/null &&
      dd if=/tmp/pt/patch5000 of="$1" bs=5000 seek=12345 oflag=seek_bytes conv=notrunc 2>/dev/null &&
      dd if=/tmp/pt/patch5000 of="$1" bs=1000 seek=70001 oflag=seek_bytes count=5 conv=notrunc 2>/dev/null
  }
  if edit /tmp/pt/edit.bin && edit guest-made/edit.bin; then
    dropcaches
    if cmp /tmp/pt/edit.bin guest-made/edit.bin; then ok unaligned-overwrite; else bad unaligned-overwrite "differs from the tmpfs copy"; fi
    record edit.bin
    echo "size guest-made/edit.bin 75001" >>"$exp"
  else
    bad unaligned-overwrite "dd failed"
  fi
  if [ "$(dd if=guest-made/edit.bin bs=1 skip=65536 count=4465 2>/dev/null | tr -d '\000' | wc -c)" = 0 ]; then ok hole-reads-zero; else bad hole-reads-zero "non-zero bytes in the hole"; fi

  # 3. renames: a file, a directory with content, and a rename over an existing file.
  echo "renamed file content" >/tmp/pt/renamed.txt
  cp /tmp/pt/renamed.txt guest-made/before-rename.txt
  if mv guest-made/before-rename.txt guest-made/renamed.txt && [ ! -e guest-made/before-rename.txt ] &&
    [ "$(cat guest-made/renamed.txt)" = "renamed file content" ]; then ok rename-file; else bad rename-file "mv or content"; fi
  record renamed.txt
  echo "absent guest-made/before-rename.txt" >>"$exp"
  mkdir -p guest-made/dir-before/sub /tmp/pt/dir-renamed/sub
  echo "inside a renamed directory" >/tmp/pt/dir-renamed/sub/inner.txt
  cp /tmp/pt/dir-renamed/sub/inner.txt guest-made/dir-before/sub/inner.txt
  if mv guest-made/dir-before guest-made/dir-renamed && [ ! -e guest-made/dir-before ] &&
    cmp guest-made/dir-renamed/sub/inner.txt /tmp/pt/dir-renamed/sub/inner.txt; then ok rename-dir; else bad rename-dir "mv or content"; fi
  record dir-renamed/sub/inner.txt
  echo "absent guest-made/dir-before" >>"$exp"
  echo "type guest-made/dir-renamed directory" >>"$exp"
  echo "old victim" >guest-made/victim.txt
  echo "the winner replaced the victim" >/tmp/pt/victim.txt
  cp /tmp/pt/victim.txt guest-made/winner.txt
  if mv -f guest-made/winner.txt guest-made/victim.txt && [ ! -e guest-made/winner.txt ] &&
    cmp guest-made/victim.txt /tmp/pt/victim.txt; then ok rename-over-existing; else bad rename-over-existing "mv or content"; fi
  record victim.txt
  echo "absent guest-made/winner.txt" >>"$exp"

  # 4. hard link: two names, one inode, link count 2, same content through either name.
  head -c 10000 /dev/urandom >/tmp/pt/hl-a
  cp /tmp/pt/hl-a guest-made/hl-a
  cp /tmp/pt/hl-a /tmp/pt/hl-b
  if ln guest-made/hl-a guest-made/hl-b; then
    nl=$(stat -c %h guest-made/hl-a)
    if [ "$nl" = 2 ] && [ "$(stat -c %h guest-made/hl-b)" = 2 ]; then ok link-count; else bad link-count "nlink $nl"; fi
    if [ "$(stat -c %i guest-made/hl-a)" = "$(stat -c %i guest-made/hl-b)" ]; then ok link-inode; else bad link-inode "inodes differ"; fi
    if cmp guest-made/hl-a guest-made/hl-b; then ok link-content; else bad link-content "names differ"; fi
    # Written through one name, seen through the other.
    printf 'via b' | dd of=guest-made/hl-b bs=1 seek=100 conv=notrunc 2>/dev/null
    printf 'via b' | dd of=/tmp/pt/hl-a bs=1 seek=100 conv=notrunc 2>/dev/null
    cp /tmp/pt/hl-a /tmp/pt/hl-b
    dropcaches
    if cmp guest-made/hl-a /tmp/pt/hl-a; then ok link-shared-write; else bad link-shared-write "write via hl-b not seen via hl-a"; fi
    record hl-a
    record hl-b
    echo "nlink guest-made/hl-a 2" >>"$exp"
    echo "inode-same guest-made/hl-a guest-made/hl-b" >>"$exp"
  else
    bad link "ln failed"
  fi
  # A link that is removed again: the count goes back down.
  echo x >guest-made/hl-tmp && ln guest-made/hl-tmp guest-made/hl-tmp2 && rm guest-made/hl-tmp2
  if [ "$(stat -c %h guest-made/hl-tmp)" = 1 ]; then ok unlink-link-count; else bad unlink-link-count "nlink $(stat -c %h guest-made/hl-tmp)"; fi
  rm -f guest-made/hl-tmp

  # 5. symlinks: relative target, readlink, reading through it, a dangling one.
  if ln -s renamed.txt guest-made/sym && [ "$(readlink guest-made/sym)" = renamed.txt ]; then ok symlink; else bad symlink "readlink '$(readlink guest-made/sym)'"; fi
  if [ "$(cat guest-made/sym)" = "renamed file content" ]; then ok read-via-symlink; else bad read-via-symlink "'$(cat guest-made/sym 2>&1)'"; fi
  if [ "$(stat -c %F guest-made/sym)" = "symbolic link" ]; then ok symlink-type; else bad symlink-type "$(stat -c %F guest-made/sym)"; fi
  ln -s dir-renamed/sub guest-made/symdir
  if [ "$(cat guest-made/symdir/inner.txt)" = "inside a renamed directory" ]; then ok symlink-dir; else bad symlink-dir "via symdir"; fi
  ln -s does-not-exist guest-made/dangling
  if [ -L guest-made/dangling ] && [ ! -e guest-made/dangling ]; then ok symlink-dangling; else bad symlink-dangling "-L/-e"; fi
  echo "symlink guest-made/sym renamed.txt" >>"$exp"
  echo "symlink guest-made/symdir dir-renamed/sub" >>"$exp"
  echo "symlink guest-made/dangling does-not-exist" >>"$exp"

  # 6. chmod: files and a directory.
  echo "mode" >guest-made/mode640
  echo "#!/bin/sh" >guest-made/mode755
  if chmod 640 guest-made/mode640 && chmod 755 guest-made/mode755 && chmod 700 guest-made/dir-renamed; then
    m=$(stat -c %a guest-made/mode640) x=$(stat -c %a guest-made/mode755) d=$(stat -c %a guest-made/dir-renamed)
    if [ "$m $x $d" = "640 755 700" ]; then ok chmod; else bad chmod "modes $m $x $d"; fi
  else
    bad chmod "chmod failed"
  fi
  echo "mode guest-made/mode640 640" >>"$exp"
  echo "mode guest-made/mode755 755" >>"$exp"
  echo "mode guest-made/dir-renamed 700" >>"$exp"

  # 7. times: touch -d, touch -t (whole seconds), touch -r from a tmpfs file (nanoseconds).
  echo t >guest-made/times-d
  echo t >guest-made/times-t
  echo t >guest-made/times-ns
  touch /tmp/pt/ref
  ref_s=$(stat -c %Y /tmp/pt/ref)
  ref_ns=$(stat -c %y /tmp/pt/ref | sed -n 's/.*:[0-9][0-9]\.\([0-9]*\) .*/\1/p')
  touch -d '2021-03-04 05:06:07' guest-made/times-d
  touch -t 202001020304.05 guest-made/times-t
  touch -r /tmp/pt/ref guest-made/times-ns
  dropcaches
  if [ "$(stat -c %Y guest-made/times-d)" = 1614834367 ]; then ok touch-d; else bad touch-d "mtime $(stat -c %Y guest-made/times-d)"; fi
  if [ "$(stat -c %Y guest-made/times-t)" = 1577934245 ]; then ok touch-t; else bad touch-t "mtime $(stat -c %Y guest-made/times-t)"; fi
  got_ns=$(stat -c %y guest-made/times-ns | sed -n 's/.*:[0-9][0-9]\.\([0-9]*\) .*/\1/p')
  if [ "$(stat -c %Y guest-made/times-ns)" = "$ref_s" ] && [ "$got_ns" = "$ref_ns" ]; then
    ok "touch-nanoseconds($ref_s.$ref_ns)"
  else
    bad touch-nanoseconds "got $(stat -c %y guest-made/times-ns), want $(stat -c %y /tmp/pt/ref)"
  fi
  echo "mtime guest-made/times-d 1614834367 000000000" >>"$exp"
  echo "mtime guest-made/times-t 1577934245 000000000" >>"$exp"
  echo "mtime guest-made/times-ns $ref_s $ref_ns" >>"$exp"

  # 8. truncate: grow (the new part reads as zeros), shrink (a prefix remains).
  head -c 100 /dev/urandom >/tmp/pt/trunc-grow
  cp /tmp/pt/trunc-grow guest-made/trunc-grow
  truncate -s 10000 /tmp/pt/trunc-grow
  if truncate -s 10000 guest-made/trunc-grow; then
    dropcaches
    if [ "$(stat -c %s guest-made/trunc-grow)" = 10000 ] && cmp guest-made/trunc-grow /tmp/pt/trunc-grow &&
      [ "$(dd if=guest-made/trunc-grow bs=100 skip=1 2>/dev/null | tr -d '\000' | wc -c)" = 0 ]; then
      ok truncate-grow
    else
      bad truncate-grow "size $(stat -c %s guest-made/trunc-grow) or non-zero tail"
    fi
  else
    bad truncate-grow "truncate failed"
  fi
  head -c 1048576 /dev/urandom >/tmp/pt/trunc-shrink
  cp /tmp/pt/trunc-shrink guest-made/trunc-shrink
  truncate -s 777 /tmp/pt/trunc-shrink
  if truncate -s 777 guest-made/trunc-shrink; then
    dropcaches
    if [ "$(stat -c %s guest-made/trunc-shrink)" = 777 ] && cmp guest-made/trunc-shrink /tmp/pt/trunc-shrink; then ok truncate-shrink; else bad truncate-shrink "size $(stat -c %s guest-made/trunc-shrink) or content"; fi
  else
    bad truncate-shrink "truncate failed"
  fi
  record trunc-grow
  record trunc-shrink
  echo "size guest-made/trunc-grow 10000" >>"$exp"
  echo "size guest-made/trunc-shrink 777" >>"$exp"

  # 9. a directory with 320 entries (more than one READDIR reply), listed in full.
  mkdir guest-made/bigdir
  i=0
  while [ $i -lt 320 ]; do
    : >"guest-made/bigdir/entry-with-a-longish-name-$i"
    i=$((i + 1))
  done
  n=$(ls guest-made/bigdir | wc -l)
  if [ "$n" = 320 ]; then ok bigdir-ls; else bad bigdir-ls "$n entries"; fi
  # ls -la: one line per entry plus 'total', '.' and '..'.
  if la=$(ls -la guest-made/bigdir) && [ "$(echo "$la" | wc -l)" = 323 ]; then ok bigdir-ls-la; else bad bigdir-ls-la "$(echo "$la" | wc -l) lines"; fi
  if [ "$(ls guest-made/bigdir | sort | uniq | wc -l)" = 320 ]; then ok bigdir-unique; else bad bigdir-unique "duplicates in the listing"; fi
  echo "entries guest-made/bigdir 320" >>"$exp"

  # 10. a tree made with mkdir -p and removed with rm -rf.
  if mkdir -p guest-made/tree/a/b/c/d/e && echo leaf >guest-made/tree/a/b/c/d/e/leaf &&
    echo mid >guest-made/tree/a/b/mid && ln -s ../mid guest-made/tree/a/b/c/up; then
    if [ "$(cat guest-made/tree/a/b/c/up)" = mid ]; then ok tree-made; else bad tree-made "symlink in tree"; fi
  else
    bad tree-made "mkdir -p / write"
  fi
  if rm -rf guest-made/tree && [ ! -e guest-made/tree ]; then ok rm-rf; else bad rm-rf "tree still there: $(ls -R guest-made/tree 2>&1 | head -3)"; fi
  echo "absent guest-made/tree" >>"$exp"
  mkdir guest-made/emptydir && rmdir guest-made/emptydir && [ ! -e guest-made/emptydir ] && ok rmdir || bad rmdir "mkdir/rmdir"
  # A non-empty directory cannot be removed with rmdir.
  if rmdir guest-made/dir-renamed 2>/dev/null; then bad rmdir-nonempty "rmdir of a non-empty dir succeeded"; else ok rmdir-nonempty; fi

  # 11. ownership, append, a FIFO, a file read after its last name was removed.
  echo owner >guest-made/owned
  if chown 1234:5678 guest-made/owned && [ "$(stat -c '%u %g' guest-made/owned)" = "1234 5678" ]; then ok chown; else bad chown "owner '$(stat -c '%u %g' guest-made/owned)'"; fi
  echo "owner guest-made/owned 1234 5678" >>"$exp"
  printf 'one\n' >/tmp/pt/appended
  printf 'one\n' >guest-made/appended
  printf 'two\n' >>/tmp/pt/appended
  printf 'two\n' >>guest-made/appended
  printf 'three\n' | dd of=guest-made/appended oflag=append conv=notrunc 2>/dev/null
  printf 'three\n' >>/tmp/pt/appended
  dropcaches
  if cmp guest-made/appended /tmp/pt/appended; then ok append; else bad append "'$(cat guest-made/appended)'"; fi
  record appended
  if mkfifo guest-made/fifo && [ "$(stat -c %F guest-made/fifo)" = fifo ]; then ok mkfifo; else bad mkfifo "type '$(stat -c %F guest-made/fifo 2>&1)'"; fi
  echo "type guest-made/fifo fifo" >>"$exp"
  echo "still readable after unlink" >guest-made/unlinked
  exec 3<guest-made/unlinked
  rm guest-made/unlinked
  if [ ! -e guest-made/unlinked ] && [ "$(cat <&3)" = "still readable after unlink" ]; then ok read-after-unlink; else bad read-after-unlink "name still there or fd unreadable"; fi
  exec 3<&-
  echo "absent guest-made/unlinked" >>"$exp"

  # 12. one writer per CPU at once (on a multi-queue kernel each CPU has its own request queue).
  cpus=$(nproc) cpu=0 pids=""
  while [ "$cpu" -lt "$cpus" ]; do
    head -c 524288 /dev/urandom >"/tmp/pt/par-$cpu"
    taskset -c "$cpu" sh -c "dd if=/tmp/pt/par-$cpu of=guest-made/par-$cpu bs=4k 2>/dev/null && dd if=guest-made/par-$cpu bs=4k 2>/dev/null | cmp - /tmp/pt/par-$cpu" &
    pids="$pids $!"
    cpu=$((cpu + 1))
  done
  pfail=0
  for pid in $pids; do wait "$pid" || pfail=$((pfail + 1)); done
  if [ "$pfail" = 0 ]; then ok "parallel-writers($cpus)"; else bad parallel-writers "$pfail of $cpus failed"; fi
  cpu=0
  while [ "$cpu" -lt "$cpus" ]; do record "par-$cpu"; cpu=$((cpu + 1)); done

  # 14. a user in a project group, held as a supplementary group (FUSE sends only the caller's
  #     uid and gid; the guest kernel checked the rest), and a write by someone who does not own
  #     a set-ID file. Each of read, create (in a set-group-ID directory) and chgrp is granted as
  #     locally, unless dpfs.groups-refused lists it: a back-end that cannot know such groups
  #     (the NFS backend's AUTH_SYS: all three; QEMU 7.2's C virtiofsd: create) refuses it.
  grep -q '^tenant:' /etc/passwd 2>/dev/null || echo 'tenant:x:1000:1000:tenant:/:/bin/sh' >>/etc/passwd
  grep -q '^tenant:' /etc/group 2>/dev/null || echo 'tenant:x:1000:' >>/etc/group
  grep -q '^project:' /etc/group 2>/dev/null || echo 'project:x:4343:tenant' >>/etc/group
  as_tenant() { su -s /bin/sh -c "$1" tenant; }
  refused() { case ",$groups_refused," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
  # expect_group NAME STATUS DETAIL: STATUS 0 = the call and its effect as locally.
  expect_group() {
    if refused "$1"; then
      if [ "$2" != 0 ]; then ok "supplementary-$1-refused"; else bad "supplementary-$1-refused" "granted: $3"; fi
    else
      if [ "$2" = 0 ]; then ok "supplementary-$1"; else bad "supplementary-$1" "$3"; fi
    fi
  }
  mkdir guest-made/project && chown 4321:4343 guest-made/project && chmod 2770 guest-made/project
  echo "group readable" >guest-made/project-file && chown 4321:4343 guest-made/project-file && chmod 640 guest-made/project-file
  echo mine >guest-made/tenant-file && chown 1000:1000 guest-made/tenant-file
  echo x >guest-made/other-setid && chown 4321:4321 guest-made/other-setid && chmod 6777 guest-made/other-setid
  if [ "$(as_tenant 'id -G' 2>&1)" = "1000 4343" ]; then ok tenant-groups; else bad tenant-groups "id -G: '$(as_tenant 'id -G' 2>&1)'"; fi
  out=$(as_tenant 'cat guest-made/project-file' 2>&1)
  [ "$out" = "group readable" ]; expect_group read $? "'$out'"
  as_tenant 'echo n >guest-made/project/new' 2>/dev/null && [ "$(stat -c '%u %g %a' guest-made/project/new 2>&1)" = "1000 4343 644" ]
  expect_group create $? "'$(stat -c '%u %g %a' guest-made/project/new 2>&1)'"
  as_tenant 'chgrp 4343 guest-made/tenant-file' 2>/dev/null && [ "$(stat -c %g guest-made/tenant-file)" = 4343 ]
  expect_group chgrp $? "gid $(stat -c %g guest-made/tenant-file)"
  if as_tenant 'echo y >>guest-made/other-setid' && [ "$(stat -c %a guest-made/other-setid)" = 777 ] && [ "$(tr '\n' ' ' <guest-made/other-setid)" = "x y " ]; then
    ok non-owner-write-clears-setid
  else
    bad non-owner-write-clears-setid "mode $(stat -c %a guest-made/other-setid), '$(tr '\n' ' ' <guest-made/other-setid)'"
  fi

  # 13. df on the mount.
  if out=$(df "$mnt") && echo "$out" && [ "$(echo "$out" | tail -n 1 | awk '{ print $2 }')" -gt 0 ]; then ok df; else bad df "df failed or zero blocks"; fi

  # The manifest itself is checked by the host and by phase verify; check it here too.
  dropcaches
  if out=$(md5sum -c "$man" 2>&1); then ok "manifest($(grep -c . "$man") files)"; else bad manifest "$(echo "$out" | grep -v ': OK' | head -5 | tr '\n' ' ')"; fi
  check_expect "$exp"
  uname -r >guest-made/kernel.txt
  sync
  echo "--- guest-made/expect"
  cat "$exp"
}

case "$phase" in
  write) phase_write ;;
  verify) phase_verify ;;
  isolation) phase_isolation ;;
  *) bad phase "unknown dpfs.phase=$phase" ;;
esac

if [ "$failures" = 0 ]; then echo "RESULT all-ok"; else echo "RESULT $failures-failures"; fi
[ "$failures" -gt 250 ] && failures=250
exit "$failures"
