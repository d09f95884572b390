#!/usr/bin/env bash
# test-metrics.sh — dpfs-engine's /metrics, scraped while it serves (issue 11):
#   1. an engine with two devices from one TOML file ([engine] metrics_address) serves /metrics;
#      promtool check metrics (Debian's prometheus package) accepts every scrape;
#   2. the counters match what the load generator sent: READ and WRITE requests and their bytes
#      exactly, LOOKUPs of a missing name as ENOENT errors by opcode and by errno, and the other
#      device, which was sent nothing, shows nothing;
#   3. the latency histograms counted every READ and WRITE (fetch to reply);
#   4. only /metrics is served (404), HEAD has no body, a flood of request bytes is cut off;
#   5. controls: promtool must reject the scrape with a counter renamed off its _total, and a
#      count the load did not cause must fail the comparison.
# Exit status: the number of failed checks.
#   tools/host/test-metrics.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
command -v promtool >/dev/null || { echo "test-metrics: promtool missing (tools/install-dependencies.sh installs prometheus)"; exit 1; }
swift build -c release --product dpfs-engine >/dev/null && swift build -c release --product dpfs-bench >/dev/null || exit 1
engine=.build/release/dpfs-engine
bench=.build/release/dpfs-bench
work=$(mktemp -d /tmp/dpfs-metrics.XXXXXX)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
failures=0
ok() { echo "RESULT $1-ok"; }
bad() { echo "RESULT $1-FAILED: $2"; failures=$((failures + 1)); }
requests=3000 warmup=100

mkdir -p "$work/share"
cat >"$work/engine.toml" <<EOF
[engine]
metrics_address = '127.0.0.1:0'   # a literal string (TOMLKit reads all of TOML); port 0: the kernel picks, the log says which

[[device]]
name = "tenant-a"
socket = "$work/a.sock"
backend = "passthrough"
shared_dir = "$work/share"

[[device]]
name = "tenant-b"
socket = "$work/b.sock"
backend = "null"
EOF
$engine --config "$work/engine.toml" >"$work/engine.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "ready" "$work/engine.log" && break; sleep 0.05; done
url=$(grep -o 'http://127.0.0.1:[0-9]*/metrics' "$work/engine.log" | head -1)
[ -n "$url" ] || { echo "no metrics address in the log:"; cat "$work/engine.log"; exit 1; }

scrape() { python3 -c 'import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$url" >"$1"; }
promcheck() {
  local name=$1 file=$2 out
  if out=$(promtool check metrics <"$file" 2>&1) && [ -z "$out" ]; then ok "promtool-$name"; else bad "promtool-$name" "$out"; fi
}

scrape "$work/before.txt" && promcheck before "$work/before.txt"
$bench vhost-user --socket "$work/a.sock" --operations read-file write-file --requests $requests --warmup $warmup --depths 1 4 \
  >"$work/bench.log" 2>&1 || bad load "$(tail -3 "$work/bench.log")"
scrape "$work/middle.txt"
$bench vhost-user --socket "$work/a.sock" --operations lookup --requests 500 --warmup 0 --depths 1 >"$work/lookup.log" 2>&1 || true
echo "lookup run:"; tail -2 "$work/lookup.log"
scrape "$work/after.txt" && promcheck after "$work/after.txt"

# compare NAME EXPRESSION: evaluates EXPRESSION over the two scrapes (before b, after a; per-series
# deltas by d('family', label=value...)) and passes when it is true.
# holds EXPRESSION [BEFORE AFTER]: the scrapes compared (default: before and after the whole load).
holds() {
  python3 - "${2:-$work/before.txt}" "${3:-$work/after.txt}" "$1" "$requests" "$warmup" <<'PY'
import re, sys
def load(path):
    series = {}
    for line in open(path):
        if line.startswith('#') or not line.strip():
            continue
        m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line.strip())
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ''))
        series.setdefault(m.group(1), []).append((labels, float(m.group(4))))
    return series
b, a = load(sys.argv[1]), load(sys.argv[2])
requests, warmup = int(sys.argv[4]), int(sys.argv[5])
def total(scrape, family, **want):
    return sum(v for labels, v in scrape.get(family, []) if all(labels.get(k) == w for k, w in want.items()))
def d(family, **want):
    return total(a, family, **want) - total(b, family, **want)
sent = 2 * (requests + warmup)       # two depths per operation
ok = eval(sys.argv[3])
if not ok:
    print(f"  {sys.argv[3]}: false; READ {d('dpfs_opcode_requests_total', device='tenant-a', opcode='READ')}, "
          f"WRITE {d('dpfs_opcode_requests_total', device='tenant-a', opcode='WRITE')}, sent {sent}")
sys.exit(0 if ok else 1)
PY
}
compare() { local name=$1; shift; if holds "$@"; then ok "$name"; else bad "$name" "see above"; fi; }
compare reads-counted "d('dpfs_opcode_requests_total', device='tenant-a', opcode='READ') == sent"
compare read-bytes "d('dpfs_read_bytes_total', device='tenant-a') == sent * 4096"
# WRITEs: the measured ones, plus the file the first run creates (its size in 4 KiB writes).
compare writes-counted "d('dpfs_opcode_requests_total', device='tenant-a', opcode='WRITE') >= sent"
compare written-bytes "d('dpfs_written_bytes_total', device='tenant-a') == 4096 * d('dpfs_opcode_requests_total', device='tenant-a', opcode='WRITE')"
# The LOOKUPs of a missing name alone (the first run's own set-up looked its file up before creating it).
compare lookup-errors "d('dpfs_opcode_errors_total', device='tenant-a', opcode='LOOKUP') == 500" "$work/middle.txt"
compare errno-enoent "d('dpfs_errno_errors_total', device='tenant-a', errno='ENOENT') == 500" "$work/middle.txt"
compare replies "d('dpfs_replies_total', device='tenant-a') + d('dpfs_opcode_requests_total', device='tenant-a', opcode='FORGET') + d('dpfs_opcode_requests_total', device='tenant-a', opcode='BATCH_FORGET') == d('dpfs_queue_requests_total', device='tenant-a')"
compare read-latency "d('dpfs_request_duration_seconds_count', device='tenant-a', **{'class': 'read'}) == sent"
compare latency-buckets "total(a, 'dpfs_request_duration_seconds_bucket', device='tenant-a', le='+Inf', **{'class': 'read'}) == total(a, 'dpfs_request_duration_seconds_count', device='tenant-a', **{'class': 'read'})"
compare other-device-idle "total(a, 'dpfs_queue_requests_total', device='tenant-b') == 0 and total(a, 'dpfs_device_info', device='tenant-b', backend='null') == 1"
compare connections "d('dpfs_frontend_connections_total', device='tenant-a') == 2"
# Control: a comparison the load did not cause must fail (the checker can say no).
if holds "d('dpfs_opcode_requests_total', device='tenant-a', opcode='READ') == sent + 1" >/dev/null; then
  bad control-wrong-count "a wrong expected count passed"
else
  ok control-wrong-count
fi
sed 's/dpfs_replies_total/dpfs_replies/' "$work/after.txt" >"$work/broken.txt"
if promtool check metrics <"$work/broken.txt" >/dev/null 2>&1 && [ -z "$(promtool check metrics <"$work/broken.txt" 2>&1)" ]; then
  bad control-promtool "promtool accepted a counter without _total"
else
  ok control-promtool
fi

# Only /metrics; HEAD without a body; a request head that never ends is cut off.
status=$(python3 - "$url" <<'PY'
import socket, sys, urllib.request, urllib.error
url = sys.argv[1]
host, port = url.split('/')[2].split(':')
out = []
try:
    urllib.request.urlopen(url.replace('/metrics', '/other'), timeout=5)
    out.append('200')
except urllib.error.HTTPError as e:
    out.append(str(e.code))
r = urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=5)
out.append(f"{r.status}:{len(r.read())}")
s = socket.create_connection((host, int(port)), timeout=10)
try:
    s.sendall(b'GET /metrics HTTP/1.0\r\n' + b'X: ' + b'a' * 8000)
    out.append(s.recv(100).split(b'\r\n')[0].decode() or 'closed')
except (ConnectionResetError, BrokenPipeError):
    out.append('reset')
print(' '.join(out))
PY
)
case $status in
  "404 200:0 HTTP/1.0 400 Bad Request"|"404 200:0 reset") ok http-edges ;;
  *) bad http-edges "$status" ;;
esac
scrape "$work/last.txt" && promcheck still-serving "$work/last.txt"

kill -TERM $pid; wait $pid 2>/dev/null; pid=
grep -q "scrape(s) served" "$work/engine.log" && ok stop-report || bad stop-report "$(tail -3 "$work/engine.log")"
echo "test-metrics: $failures failure(s)"
exit $failures
