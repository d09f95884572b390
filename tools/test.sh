#!/usr/bin/env bash
# The whole test suite: what CI runs (.ci/run) and what a developer runs before pushing.
#   1. release build (it enforces @_noAllocation/@_noLocks on the hot path)
#   2. every unit, model-based and end-to-end test (swift test), including the allocation gate
#   3. the allocation gate again against the release build, and over the NFS backend against a real
#      nfs-ganesha (libnfs's own mallocs counted and reported apart from the engine's, which are 0)
#   4. the multi-threaded completion path under ThreadSanitizer
#   5. hostile-input tests under AddressSanitizer
#   6. the spin model of the slot/completion-ring protocol
#   7. real Linux guests (QEMU) mounting dpfs-engine over virtio-fs, and the same harness against
#      the C virtiofsd (so a harness bug cannot pass as an engine success); guests storing files
#      through the passthrough backend, checked byte for byte on the host
#   8. host mounts through /dev/fuse (classic, FUSE-over-io_uring, kernel passthrough): POSIX
#      behaviour as three uids against ext4, data integrity, concurrent stress, passthrough
#      coherence, SIGTERM/SIGKILL/stale-mount recovery
#   9. the NFS backend mounted on this host against a real nfs-ganesha on loopback: the same POSIX
#      (with the documented NFS differences asserted), integrity, stress and crash checks
#      and guests storing files through it (6.1, reboot, 6.12 multi-queue); ganesha killed and
#      restarted under load (fsync'ed data durable, EIO within the timeout, a second device serving);
#      a test double of a server that lies in its answers
#  10. who can reach the engine: every socket owner-only (or its group's) under umask 0 and 077, an
#      unprivileged user refused with EACCES, a second engine refused on a live socket path
#  11. a short dpfs-bench core run and a vhost-user run (they must work; speed is reported, not gated)
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
step() {
  local name=$1
  shift
  echo "==> $name"
  local started=$SECONDS
  if "$@"; then
    passed=$((passed + 1))
    echo "==> $name: ok ($((SECONDS - started)) s)"
  else
    failed=$((failed + 1))
    echo "==> $name: FAILED ($((SECONDS - started)) s)"
    echo "checks: $passed passed, $failed failed"
    exit 1
  fi
}

step "install dependencies" tools/install-dependencies.sh guest
step "release build" swift build -c release
step "swift test" swift test
step "allocation gate (release)" .build/release/dpfs-bench alloc-gate --requests 100000
step "allocation gate, NFS data path over NFSv3, NFSv4.1 and NFSv4.0 (the engine's mallocs beside libnfs's own)" tools/alloc-gate-nfs.sh --requests 20000
step "allocation gate, key-value data path (GETATTR, LOOKUP, READ, WRITE, OPEN+RELEASE, READDIRPLUS, CREATE+UNLINK: 0 each)" tools/alloc-gate-kv.sh --requests 20000
step "ThreadSanitizer" tools/sanitizer-tests.sh thread .build-tsan \
  "concurrentProducers|ModelTests|asynchronousCompletion|PollerLoopTests|PassthroughSharedTableTests"
# Leak checking is off: the only leaks LeakSanitizer reports are XCTest's own runner objects, and
# this step is about out-of-bounds access on hostile input.
step "AddressSanitizer" env ASAN_OPTIONS=detect_leaks=0 tools/sanitizer-tests.sh address .build-asan \
  "VirtqueueTests|DecoderTests|EngineTests|ReplyEncodingTests|VhostUserTests|PassthroughTests|PassthroughSharedTableTests|PollerLoopTests|QuiesceTests|SocketListenerTests"
step "spin model" tools/check-spin-model.sh
step "the NFS differences documented (Specs/nfs-semantics.md) are exactly those posix_check asserts, and the check can fail" \
  bash -c 'python3 tools/host/check-semantics-table.py && python3 tools/host/check-semantics-table.py --self-test && python3 tools/host/check-semantics-table.py --spec Specs/kv-semantics.md --semantics kv'
step "who can reach the engine: sockets 0600/0660 under any umask, nobody gets EACCES, no takeover of a live socket" \
  tools/host/test-socket-security.sh
step "dpfs-engine started as launchers start virtiofsd (cloud-hypervisor, Kata, the C virtiofsd's -o): a working device; --print-capabilities; refusals" \
  tools/host/test-virtiofsd-cli.sh
step "/metrics while serving: promtool accepts every scrape, counters match the load sent, controls fail" \
  tools/host/test-metrics.sh
step "live reload: ten SIGHUPs add, change and remove devices beside a busy one (0 failed, none of its requests 10 ms late); a bad file changes nothing" \
  tools/host/test-reload.sh
step "guests mount dpfs-engine (6.1, reboot, reconnect, 6.12 multi-queue)" tools/guest/test-engine.sh
step "libvirt 9.0 runs dpfs-engine as a domain's virtio-fs back-end (<binary path>, then the vhost-user descriptor alone); control: the null backend behind libvirt fails" \
  tools/guest/test-libvirt.sh
step "guest harness against the C virtiofsd" tools/guest/test-against-virtiofsd.sh --quick
step "guests store files through the passthrough backend (6.1, reboot, 6.12 multi-queue, two tenants)" tools/guest/test-passthrough.sh
step "the same guest workload and host checks pass on the C virtiofsd (the harness is right on a known-good server)" \
  tools/guest/test-passthrough.sh --virtiofsd
step "control: the same harness against the null backend, which stores nothing, must report failures" \
  tools/guest/test-passthrough.sh --null-control
step "host mounts through /dev/fuse (classic, io_uring, kernel passthrough)" tools/host/test-host-mount.sh
step "kernel passthrough: an open file's reads and writes never reach the engine (counted)" tools/host/test-kernel-passthrough.sh
step "control: with passthrough off the same count sees the engine serve READ and WRITE (the check must fail)" \
  bash -c 'tools/host/test-kernel-passthrough.sh --without-passthrough; [ $? = 1 ]'
# 10 000 integrity steps over NFS (each a few round trips to ganesha): the three local modes run
# 30 000, and the whole suite must stay under 25 minutes on CI.
step "NFS backend host mount against nfs-ganesha (POSIX, integrity, stress, SIGKILL)" tools/host/test-host-mount.sh --modes nfs \
  --integrity-steps 10000
step "NFS backend over NFSv4.1 (our XDR, a session per queue) host mount against nfs-ganesha (POSIX, integrity, stress, SIGKILL)" \
  tools/host/test-host-mount.sh --modes nfs4 --integrity-steps 10000
step "NFS backend over NFSv4.0 (SETCLIENTID, RENEW, an open-owner per slot with its seqids) host mount against nfs-ganesha (POSIX, integrity, stress, SIGKILL)" \
  tools/host/test-host-mount.sh --modes nfs40 --integrity-steps 10000
step "backend conformance suite against the NFS backend and a real nfs-ganesha (NFSv3, NFSv4.1 and NFSv4.0)" tools/test-conformance-nfs.sh
step "the key-value backend's wire (RESP) and its Redis functions (atomic changes, the consistency check and its negative control) against a real redis-server" tools/test-kv-redis.sh
step "key-value backend host mount against redis-server (POSIX, integrity, stress with a second engine, SIGKILL, store check)" \
  tools/host/test-host-mount.sh --modes kv --integrity-steps 10000
step "key-value backend SIGKILLed mid-change 100 times (the server too every 25th): the store stays whole, and the check can fail" \
  tools/host/test-kv-atomicity.sh --rounds 100
step "redis-server killed, restarted and stalled under load: fsync'ed data kept, EIO within the timeout, the other device serves" \
  tools/host/test-kv-faults.sh
step "guests store files through the key-value backend (6.1, redis-server crash between boots, reboot, 6.12 multi-queue)" \
  tools/guest/test-passthrough.sh --kv
step "guests store files through the NFS backend (6.1, reboot, 6.12 multi-queue)" tools/guest/test-passthrough.sh --nfs
step "guests store files through the NFS backend over NFSv4.1 (6.1, reboot, 6.12 multi-queue)" tools/guest/test-passthrough.sh --nfs4
step "guests store files through the NFS backend over NFSv4.0 (6.1, reboot, 6.12 multi-queue)" tools/guest/test-passthrough.sh --nfs40
step "one guest, the same fio jobs through the engine's NFSv4.1 backend and through the guest's own kernel NFSv4.1 client (guest CPU per I/O reported, not gated; every job's I/O reached the server both ways)" \
  tools/guest/bench-nfs-client.sh --ios 512
step "two engines on one NFSv3 export: started at once both serve, files cross both ways, a change seen within the cache time, hidden files kept; control: a .dpfs-hidden that is a file stops the start" \
  tools/host/test-nfs-engines.sh --rounds 6
step "two engines on one export over NFSv4.1 (two clients, a session per queue each): the same checks" \
  tools/host/test-nfs-engines.sh --rounds 6 --version 4.1
step "two engines on one export over NFSv4.0 (two clients by SETCLIENTID): the same checks" \
  tools/host/test-nfs-engines.sh --rounds 6 --version 4.0
step "POSIX locks over NFSv4.1 (LOCK, LOCKT, LOCKU): conflicts, GETLK's holder, SETLKW woken by unlock and by close, an interrupted SETLKW, across two engines and within one; lost across a Graceless restart, reclaimed across one with a grace period; controls: without the reclaim, and over NFSv3, the checks fail" \
  tools/host/test-nfs4-locks.sh
step "POSIX locks over NFSv4.0 (opens by the name a file was last found under, after a VERIFY of its fileid; an open-owner and lock-owner per pair with their seqids): the same checks, lost across a Graceless restart, reclaimed across one with a grace period; controls: without the reclaim, and over NFSv3, the checks fail" \
  tools/host/test-nfs4-locks.sh --version 4.0
step "NFSv4.1 client layer (our XDR over libnfs's transport) against nfs-ganesha: session, a file's whole life three times, the kept file on disk; controls: a changed byte, a version not spoken" \
  tools/host/test-nfs4-session.sh
step "NFS server killed and restarted under load" tools/host/test-nfs-faults.sh
step "NFSv4.1: server killed, restarted and stalled under load (the engine makes its client and sessions again): fsync'ed data kept, EIO within the timeout" \
  tools/host/test-nfs-faults.sh --version 4.1
step "NFSv4.1 with a 15 s grace period and a 10 s lease: the same faults; requests refused for GRACE go again within their timeout" \
  env DPFS_NFS_GRACE=15 DPFS_NFS_LEASE=10 tools/host/test-nfs-faults.sh --version 4.1
step "NFSv4.0: server killed, restarted and stalled under load (STALE_CLIENTID: the client made again by SETCLIENTID): fsync'ed data kept, EIO within the timeout" \
  tools/host/test-nfs-faults.sh --version 4.0
step "NFSv4.0 with a 15 s grace period and a 10 s lease (a 4.0 client holds grace for all of it): the same faults" \
  env DPFS_NFS_GRACE=15 DPFS_NFS_LEASE=10 tools/host/test-nfs-faults.sh --version 4.0
step "NFSv4.1 lease: an open file reads after 30 s idle (10 s lease, idle queues renew), 64 open/close loops with no SEQUENCE refused; control: without renewals the client expires" \
  tools/host/test-nfs4-lease.sh
step "NFSv4.0 lease: a file made after 30 s idle (RENEW kept the client), 64 loops each making and removing files with no BAD_SEQID; control: without RENEW the client expires" \
  tools/host/test-nfs4-lease.sh --version 4.0
step "NFS server crashed for real (ext4 shut down unflushed): every fsync succeeds, nothing lost, writes resent" \
  tools/host/test-nfs-crash.sh
step "control: the same crash without the write journal loses data (the check must fail)" \
  bash -c 'tools/host/test-nfs-crash.sh --journal-mb 0; [ $? = 1 ]'
step "NFSv4.1: the server crashed for real: the client made again, 128 writes resent from the journal, every fsync succeeds, nothing lost" \
  tools/host/test-nfs-crash.sh --version 4.1
step "control: the same NFSv4.1 crash without the write journal loses data (the check must fail)" \
  bash -c 'tools/host/test-nfs-crash.sh --version 4.1 --journal-mb 0; [ $? = 1 ]'
step "NFSv4.0: the server crashed for real: the client made again, the journal's writes resent, every fsync succeeds, nothing lost" \
  tools/host/test-nfs-crash.sh --version 4.0
step "NFS crash through FUSE-over-io_uring (a queue per CPU): no byte lost behind a successful fsync" \
  tools/host/test-nfs-crash.sh --transport uring --no-silent-loss
step "NFS server that lies (bad handles, names, counts, targets, endless listing)" tools/host/test-nfs-hostile.sh
step "NFSv4.1 server that lies (the same lies, an attribute not asked for, a result for another operation, SEQUENCE of another session)" \
  tools/host/test-nfs-hostile.sh --version 4.1
step "NFSv4.0 server that lies (the same lies; OPEN refusing a new owner's first seqid, OPEN_CONFIRM refused)" \
  tools/host/test-nfs-hostile.sh --version 4.0
step "dpfs-bench core smoke run" .build/release/dpfs-bench core --requests 20000 --warmup 2000 --batches 16 --depths 16
step "dpfs-bench vhost-user smoke run (in-process engine)" .build/release/dpfs-bench vhost-user --in-process-engine \
  --requests 20000 --warmup 2000 --operations getattr statfs read write --depths 1 16
echo "checks: $passed passed, $failed failed"
