#!/usr/bin/env bash
# Model-check Specs/slot-ring.pml (slot table + completion ring) with spin.
#
# Runs the correct model (safety + liveness), the FAULTY_BACKEND variant
# (duplicate tokens must be detected, never applied), and deliberately broken
# MUTANT_* variants that spin MUST reject.  If a mutant passes, the model can
# no longer catch that bug, and this script fails.
#
# Usage: tools/check-spin-model.sh        (from any directory)
#   SPIN_JOBS=n       checks run in parallel (default: min(2, nproc))
#   SPIN_MEMLIM_MB=m  memory limit per pan run in MB (default 4096)
# Needs: spin, gcc.  Exit status 0 iff every check behaved as required.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="Specs/slot-ring.pml"

if ! command -v spin >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "spin not found: installing the Debian package 'spin'" >&2
    apt-get install -y spin >/dev/null 2>&1 ||
      { apt-get update >/dev/null 2>&1 && apt-get install -y spin >/dev/null 2>&1; } ||
      { echo "error: could not install spin (apt-get install -y spin)" >&2; exit 2; }
  else
    echo "error: spin not found (Debian/Ubuntu: apt-get install spin)" >&2
    exit 2
  fi
fi
command -v gcc >/dev/null 2>&1 || { echo "error: gcc not found" >&2; exit 2; }
[ -f "$MODEL" ] || { echo "error: $MODEL not found" >&2; exit 2; }

# The engine's ring sizing, read from the code (PollerConfiguration.completionRingCapacity), so the
# "engine sizing" checks model the ring the engine builds, and this script stops when the rule
# changes instead of checking a ring the engine no longer has.
ring_factor=$(sed -n 's/.*completionRingCapacity: Int { max(2, \([0-9][0-9]*\) \* slotCount) }.*/\1/p' Sources/DPFSCore/Poller.swift)
[ -n "$ring_factor" ] || {
  echo "error: PollerConfiguration.completionRingCapacity is no longer max(2, K * slotCount): update the engine-sizing checks" >&2
  exit 2
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/spin-slot-ring.XXXXXX")"
cleanup() {
  local pids
  pids="$(jobs -p)"
  [ -z "$pids" ] || kill $pids 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# If a run would need more memory than this (MB), pan stops and says so
# instead of being OOM-killed.  The biggest run below needs about 2 GB.
MEMLIM_MB="${SPIN_MEMLIM_MB:-4096}"
PAN_DEPTH=100000
JOBS="${SPIN_JOBS:-$(nproc 2>/dev/null || echo 1)}"
[ "${SPIN_JOBS:-}" ] || [ "$JOBS" -le 2 ] || JOBS=2

# run_one N NAME MODE EXPECT PATTERN DEFINES...   (runs in the background)
#   MODE    safety   : gcc -DSAFETY -DNOCLAIM; pan checks assertions + invalid end states
#           liveness : gcc -DNFAIR=3;        pan -a -f (acceptance cycles, weak fairness)
#           unfair   : as liveness, but without -f
#   EXPECT  pass     : pan must report "errors: 0" on a complete search
#           fail     : pan must report "errors: [1-9]" and its output must match PATTERN
# Writes WORK/N.line (the report line), then WORK/N.done ("ok" or "FAILED").
run_one() {
  local n="$1" name="$2" mode="$3" expect="$4" pattern="$5"
  shift 5
  local defs=("$@")
  local dir="$WORK/$n"
  mkdir -p "$dir"
  # Work on a copy: spin writes pan.* into the cwd, and pan writes its .trail
  # next to the model, so nothing is ever written into the work tree.
  cp "$MODEL" "$dir/slot-ring.pml"

  local cflags=(-O2 -w -DCOLLAPSE "-DMEMLIM=$MEMLIM_MB") runflags=("-m$PAN_DEPTH")
  case "$mode" in
    safety)   cflags+=(-DSAFETY -DNOCLAIM) ;;
    liveness) cflags+=(-DNFAIR=3); runflags+=(-a -f -N live) ;;
    unfair)   cflags+=(-DNFAIR=3); runflags+=(-a -N live) ;;
    *) echo "internal error: mode $mode" >&2; exit 2 ;;
  esac

  local t0 t1 secs out="$dir/pan.out" verdict="" detail=""
  t0=$(date +%s%N)
  if ! (cd "$dir" && spin -a "${defs[@]}" slot-ring.pml >spin.out 2>&1); then
    verdict="FAILED"; detail="spin -a failed: $(tail -n 3 "$dir/spin.out" | tr '\n' ' ')"
  elif ! (cd "$dir" && gcc "${cflags[@]}" -o pan pan.c >gcc.out 2>&1); then
    verdict="FAILED"; detail="gcc failed: $(tail -n 3 "$dir/gcc.out" | tr '\n' ' ')"
  else
    (cd "$dir" && ./pan "${runflags[@]}" >"$out" 2>&1) || true
  fi
  t1=$(date +%s%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')

  if [ -z "$verdict" ]; then
    local errors states incomplete="" hit
    errors=$(sed -n 's/.*errors: \([0-9][0-9]*\).*/\1/p' "$out" | tail -n 1)
    states=$(awk '/states, stored/ { print $1 }' "$out" | tail -n 1)
    incomplete=$(grep -m1 -E 'max search depth too small|MEMLIM|out of memory|aborted' "$out" || true)
    hit=$(grep -m1 -E '^pan:[0-9]+:' "$out" | sed -e 's/^pan:[0-9]*: *//' -e 's/ *(at depth [0-9]*)//' || true)
    if [ -z "$errors" ]; then
      verdict="FAILED"; detail="no 'errors:' line in pan output: $(tail -n 3 "$out" | tr '\n' ' ')"
    elif [ "$expect" = pass ]; then
      if [ "$errors" = 0 ] && [ -z "$incomplete" ]; then
        verdict="ok"; detail="states=$states, ${secs}s"
      elif [ "$errors" != 0 ]; then
        verdict="FAILED"; detail="errors: $errors -- $hit"
      else
        verdict="FAILED"; detail="search incomplete -- $incomplete"
      fi
    else
      if [ "$errors" -gt 0 ] && grep -qE "$pattern" "$out"; then
        verdict="ok"; detail="caught: $hit; states=$states, ${secs}s"
      elif [ "$errors" -gt 0 ]; then
        verdict="FAILED"; detail="an error, but not the expected /$pattern/: $hit"
      else
        verdict="FAILED"; detail="NOT caught (errors: 0): the model cannot see this bug"
      fi
    fi
  fi

  echo "spin: $name ... $verdict ($detail)" >"$WORK/$n.line"
  echo "$verdict" >"$WORK/$n.tmp" && mv "$WORK/$n.tmp" "$WORK/$n.done"
}

passed=0
failed=0
n=0
printed=0

# Print, in order, every finished check that has not been printed yet.
flush() {
  while [ "$printed" -lt "$n" ] && [ -f "$WORK/$((printed + 1)).done" ]; do
    printed=$((printed + 1))
    cat "$WORK/$printed.line"
    if [ "$(cat "$WORK/$printed.done")" = ok ]; then
      passed=$((passed + 1))
    else
      failed=$((failed + 1))
    fi
  done
}

# check NAME MODE EXPECT PATTERN DEFINES...: start it once a job slot is free.
check() {
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.2; flush; done
  n=$((n + 1))
  echo "$1" >"$WORK/$n.name"
  run_one "$n" "$@" &
  flush
}

# -- the correct model ------------------------------------------------------
# Properties 1, 2 (no overwrite, legitimate push never FULL) and 3 are checked
# by assertions, together with invalid end states.  3 slots / ring of 4 is the
# reference configuration; 4 slots / ring of 4 is the engine's own sizing
# (capacity == slotCount).  Property 4 (every fetched request is eventually
# completed) is the ltl formula, checked under weak fairness.  The two longest
# runs come first, so that they overlap when checks run in parallel.
check "safety (FAULTY_BACKEND: doubled token, 5 requests)"   safety   pass "" -DFAULTY_BACKEND -DMAXREQ=5
check "liveness (FAULTY_BACKEND, weak fairness, 4 requests)" liveness pass "" -DFAULTY_BACKEND -DMAXREQ=4
check "safety (correct model, 3 slots, C=4, 6 requests)"     safety   pass "" -DMAXREQ=6
check "safety (engine sizing: 4 slots, C=$((ring_factor * 4)), 5 requests)" safety pass "" -DNSLOTS=4 -DC=$((ring_factor * 4)) -DMAXREQ=5
check "safety (engine sizing, FAULTY_BACKEND: 2 slots, C=$((ring_factor * 2)), 5 requests)" safety pass "" \
      -DFAULTY_BACKEND -DNSLOTS=2 -DC=$((ring_factor * 2)) -DMAXREQ=5
check "liveness (correct model, weak fairness, 5 requests)"  liveness pass "" -DMAXREQ=5

# -- mutants: spin must find the bug ----------------------------------------
# (a) poller applies backendDone without the generation/state check
check "mutant (a) no token check + FAULTY_BACKEND"   safety   fail 'assertion violated +!\(completedGen\[' \
      -DFAULTY_BACKEND -DMUTANT_NO_TOKEN_CHECK
# (b) push claims a cell without the sequence check / CAS
check "mutant (b) push without sequence check/CAS"   safety   fail 'assertion violated +!\(occupied\[' \
      -DMUTANT_PUSH_NO_SEQCHECK
# (c) poller checks state but not generation (ABA on slot reuse)
check "mutant (c) no generation check + FAULTY_BACKEND" safety fail 'assertion violated replyWritten\[' \
      -DFAULTY_BACKEND -DMUTANT_NO_GEN_CHECK
# (d) pop trusts enqueuePosition instead of the published cell sequence
check "mutant (d) pop without sequence check"        safety   fail 'assertion violated occupied\[' \
      -DMUTANT_POP_NO_SEQCHECK
# (e) ring smaller than the number of slots: a legitimate push can find it FULL
check "mutant (e) ring capacity 2 < 3 slots"         safety   fail 'assertion violated +!\(pushFoundFull\)' \
      -DC=2
# (f) poller drops valid completions: safe, but must violate liveness
check "mutant (f) dropped completions (liveness)"    liveness fail 'acceptance cycle' \
      -DMUTANT_DROP_COMPLETION
# Without weak fairness, a spinning poller may starve the backends forever, so
# the correct model must FAIL liveness under pan -a alone.  This shows that -f
# is needed and that the liveness check is not vacuous.
check "liveness without fairness (must starve)"      unfair   fail 'acceptance cycle' \
      -DMAXREQ=5

# -- a known limit of the engine's sizing (kept so the model keeps showing it) --
# With capacity == slotCount there is no room for a doubled token.  Once a
# duplicate sits in the ring, a LEGITIMATE push can find the ring full (push
# returns false).  Backends must retry a failed push, or the ring needs slack.
check "limit: doubled token + C == slotCount (2) fills the ring" safety fail 'assertion violated +!\(pushFoundFull\)' \
      -DFAULTY_BACKEND -DNSLOTS=2 -DC=2 -DMAXREQ=5

wait || true
flush
# A check whose background job died without reporting counts as failed.
while [ "$printed" -lt "$n" ]; do
  printed=$((printed + 1))
  if [ -f "$WORK/$printed.done" ]; then
    cat "$WORK/$printed.line"
    if [ "$(cat "$WORK/$printed.done")" = ok ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  else
    echo "spin: $(cat "$WORK/$printed.name") ... FAILED (the check did not finish)"
    failed=$((failed + 1))
  fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
