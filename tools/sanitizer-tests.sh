#!/usr/bin/env bash
# sanitizer-tests.sh SANITIZER SCRATCH FILTER — `swift test --sanitize=SANITIZER` on the tests FILTER
# selects, and proof that it ran them: every alternative of FILTER (a|b|c) must name at least one
# test of the suite, and the run must report exactly as many tests as the suite's list has matches.
# A renamed test then fails this step instead of silently dropping out of the sanitized run.
# Uses the debug build's test list (tools/test.sh runs `swift test` before this).
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# = 3 ] || { echo "usage: $0 thread|address SCRATCH_PATH FILTER" >&2; exit 2; }
sanitizer=$1 scratch=$2 filter=$3

list=$(swift test list --skip-build 2>/dev/null) || list=$(swift test list 2>/dev/null) || { echo "sanitizer-tests: cannot list the tests"; exit 2; }
missing=0
IFS='|' read -r -a alternatives <<<"$filter"
for alternative in "${alternatives[@]}"; do
  if ! grep -qE "$alternative" <<<"$list"; then
    echo "sanitizer-tests: '$alternative' selects no test (renamed or removed?)"
    missing=$((missing + 1))
  fi
done
[ $missing = 0 ] || exit 1
expected=$(grep -cE "$filter" <<<"$list")
echo "sanitizer-tests: $expected tests selected by $filter"

output=$(mktemp)
trap 'rm -f "$output"' EXIT
env ASAN_OPTIONS="${ASAN_OPTIONS:-}" swift test --sanitize="$sanitizer" --scratch-path "$scratch" --filter "$filter" 2>&1 | tee "$output"
status=${PIPESTATUS[0]}
[ "$status" = 0 ] || exit "$status"
ran=$(sed -n 's/.*Test run with \([0-9][0-9]*\) tests\{0,1\} .*passed.*/\1/p' "$output" | tail -1)
if [ "${ran:-0}" != "$expected" ]; then
  echo "sanitizer-tests: the $sanitizer run reported ${ran:-no} tests, the list selects $expected"
  exit 1
fi
echo "sanitizer-tests: $ran of $expected selected tests ran under the $sanitizer sanitizer"
