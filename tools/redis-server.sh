#!/usr/bin/env bash
# A real Redis server on loopback for the key-value backend's tests, benchmarks and demo: Debian's
# redis-server listening on 127.0.0.1 and on a unix socket, with the append-only file on and
# fsynced before every reply (`appendfsync always`: an acknowledged write survives the server's
# restart), and no RDB snapshots.
#
#   tools/redis-server.sh start      installs what is missing, starts the server, waits until it
#                                    answers PING; prints the two URLs the engine takes
#   tools/redis-server.sh stop       SHUTDOWN (the server fsyncs and exits)
#   tools/redis-server.sh kill       SIGKILL (a crash: what the AOF holds is all that survives)
#   tools/redis-server.sh restart    start again on the same port, socket and data
#   tools/redis-server.sh pause      SIGSTOP (a stalled server: connections stay open, nothing is answered)
#   tools/redis-server.sh resume     SIGCONT
#   tools/redis-server.sh status     exit 0 when our server answers PING
#
# Everything lives under $DPFS_REDIS_STATE (default /tmp/dpfs-redis, made 0700, refused when it is a
# symbolic link or someone else's): the data directory with the AOF, the log, the pid, the port,
# the socket (mode 0700: only this user reaches it). The port is a free one picked at the first
# start, unless DPFS_REDIS_PORT names it. Facts behind the flags (Redis 7.0.15, Debian 12): the
# data directory must exist before the start; a server answers -LOADING until its AOF is read, so
# "started" means PING answered PONG; Debian's package starts its own server on 6379, which is
# stopped so it cannot be mistaken for ours.
set -euo pipefail
. "$(dirname "$0")/lib/private-state-dir.sh"

state=${DPFS_REDIS_STATE:-/tmp/dpfs-redis}
command=${1:-}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

install_packages() {
  if ! dpkg-query -W -f='${Status}' redis-server 2>/dev/null | grep -q "install ok installed"; then
    echo "installing: redis-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q redis-server
  fi
  # The package's own server (init script; no systemd on these machines) is not ours.
  /etc/init.d/redis-server stop >/dev/null 2>&1 || true
}

answers() { [ "$(redis-cli -s "$state/redis.sock" ping 2>/dev/null)" = PONG ]; }

start() {
  install_packages
  private_state_dir "$state"
  mkdir -p -m 0700 "$state/data"
  local port=${DPFS_REDIS_PORT:-}
  [ -n "$port" ] || { [ -f "$state/port" ] && port=$(cat "$state/port"); } || true
  [ -n "$port" ] || port=$(free_port)
  echo "$port" >"$state/port"
  if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
    echo "redis-server already runs (pid $(cat "$state/pid"))" >&2
  else
    rm -f "$state/redis.sock"
    # Detached, with no descriptor of the caller's (a caller reading our output through a pipe
    # must see end-of-file when this script ends, not when the server does).
    setsid redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes \
      --unixsocket "$state/redis.sock" --unixsocketperm 700 \
      --dir "$state/data" --appendonly yes --appendfsync always --no-appendfsync-on-rewrite no \
      --save '' --daemonize no --logfile "$state/redis.log" </dev/null >/dev/null 2>&1 &
    echo $! >"$state/pid"
  fi
  for _ in $(seq 100); do answers && break; sleep 0.1; done
  answers || { echo "redis-server did not answer PING; its log:" >&2; tail -20 "$state/redis.log" >&2; exit 1; }
  echo "redis://127.0.0.1:$port/0"
  echo "unix://$state/redis.sock"
}

stop() {
  [ -f "$state/pid" ] || return 0
  local pid
  pid=$(cat "$state/pid")
  redis-cli -s "$state/redis.sock" shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$state/pid"
}

case "$command" in
  start | restart) start ;;
  stop) stop ;;
  kill)
    [ -f "$state/pid" ] && kill -9 "$(cat "$state/pid")" 2>/dev/null || true
    rm -f "$state/pid"
    ;;
  pause) kill -STOP "$(cat "$state/pid")" ;;
  resume) kill -CONT "$(cat "$state/pid")" ;;
  status) answers ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
