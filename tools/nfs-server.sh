#!/usr/bin/env bash
# A real NFS server on loopback for the NFS backend's tests, benchmarks and demo: rpcbind and
# nfs-ganesha (FSAL_VFS) exporting one local directory over NFSv3 and NFSv4 on 127.0.0.1.
#
#   tools/nfs-server.sh start [EXPORT_DIR]   installs what is missing, starts both, waits until
#                                            ganesha answers; prints the two URLs the engine takes
#   tools/nfs-server.sh stop                 stops ganesha (rpcbind stays: other users may need it)
#   tools/nfs-server.sh kill                 SIGKILL ganesha (the fault tests' server crash)
#   tools/nfs-server.sh restart              start ganesha again with the same export
#   tools/nfs-server.sh pause | resume       SIGSTOP / SIGCONT ganesha (a stalled server: its sockets
#                                            stay open, nothing is answered)
#   tools/nfs-server.sh status               exit 0 when our ganesha listens on its port
#
# Ports: free ones picked at start (kept in $DPFS_NFS_STATE/ports for restart), unless
# DPFS_NFS_PORT / DPFS_MOUNT_PORT name them; "started" means the ganesha process this script
# started listens on both (ss), not that something answers on a well-known port.
#
# Needs root (ganesha's FSAL_VFS opens files by handle). Everything lives under $DPFS_NFS_STATE
# (default /tmp/dpfs-nfs): config, log, pid file, recovery directory. The export defaults to
# $DPFS_NFS_STATE/export. $DPFS_NFS_STATE is made 0700, and one that exists is used only when it is
# a directory of this user and no symbolic link: ganesha runs as root with the configuration kept
# there, so nobody else may write it. Facts behind the settings: rpcbind must run first (ganesha exits if it cannot register), Debian's plugin directory is not the
# compiled-in default, Graceless skips the 90 s grace period, numeric owners keep uids intact on v4.
set -euo pipefail
. "$(dirname "$0")/lib/private-state-dir.sh"

state=${DPFS_NFS_STATE:-/tmp/dpfs-nfs}
command=${1:-}
nfs_port= mount_port=
[ -f "$state/ports" ] && read -r nfs_port mount_port <"$state/ports"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# listening_pid PORT PID: that process listens on 127.0.0.1:PORT.
listening_pid() { ss -H -ltnp "( sport = :$1 )" 2>/dev/null | grep -q "pid=$2,"; }

install_packages() {
  local missing=()
  for package in nfs-ganesha nfs-ganesha-vfs rpcbind; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
  fi
  # The packages' own services would hold the ports this script binds.
  systemctl stop nfs-ganesha 2>/dev/null || true
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_rpcbind() {
  if ! port_open 111; then
    # -f: stay in the foreground (we background it), -w: warm start is not needed.
    mkdir -p /run/rpcbind
    # Detached, with no descriptor of the caller's: a caller reading this script's output
    # through a pipe must see end-of-file when the script ends, not when the daemon does.
    setsid rpcbind -f </dev/null >/dev/null 2>&1 &
    for _ in $(seq 50); do port_open 111 && break; sleep 0.1; done
    port_open 111 || { echo "rpcbind did not start" >&2; exit 1; }
  fi
}


write_config() {
  local export_dir=$1
  # DPFS_NFS_GRACE=S: a grace period of S seconds after each (re)start, as a production server
  # has (default: Graceless, no grace period); DPFS_NFS_LEASE=S: the NFSv4 lease (ganesha's 60 s).
  local v4_timing="Graceless = true;"
  [ -n "${DPFS_NFS_GRACE:-}" ] && v4_timing="Graceless = false; Grace_Period = $DPFS_NFS_GRACE;"
  [ -n "${DPFS_NFS_LEASE:-}" ] && v4_timing="$v4_timing Lease_Lifetime = $DPFS_NFS_LEASE;"
  mkdir -p -m 0700 "$state/recovery"
  mkdir -p "$export_dir"
  cat >"$state/ganesha.conf" <<EOF
NFS_CORE_PARAM {
  Bind_addr = 127.0.0.1; NFS_Port = $nfs_port; MNT_Port = $mount_port; Protocols = 3, 4;
  Enable_NLM = false; Enable_UDP = false; Enable_RQUOTA = false;
  Plugins_Dir = "/usr/lib/x86_64-linux-gnu/ganesha";
}
NFSv4 { $v4_timing Minor_Versions = 0, 1, 2; RecoveryRoot = "$state/recovery"; Only_Numeric_Owners = true; }
EXPORT {
  Export_Id = 1; Path = "$export_dir"; Pseudo = "/export"; Access_Type = RW;
  Squash = No_Root_Squash; SecType = sys; Protocols = 3, 4; Transports = TCP;
  FSAL { Name = VFS; }
}
LOG { Default_Log_Level = EVENT; }
EOF
  echo "$export_dir" >"$state/export-path"
}

start_ganesha() {
  rm -f "$state/ganesha.pid"
  setsid ganesha.nfsd -F -f "$state/ganesha.conf" -L "$state/ganesha.log" -p "$state/ganesha.pid" \
    </dev/null >>"$state/ganesha.out" 2>&1 &
  local pid=$!
  echo $pid >"$state/ganesha.pid"
  for _ in $(seq 150); do
    listening_pid "$nfs_port" "$pid" && listening_pid "$mount_port" "$pid" && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "ganesha (pid $pid) does not listen on ports $nfs_port and $mount_port; its log:" >&2
  tail -20 "$state/ganesha.log" >&2 || true
  exit 1
}

stop_ganesha() {
  local signal=$1
  [ -f "$state/ganesha.pid" ] || return 0
  local pid
  pid=$(cat "$state/ganesha.pid")
  kill "-$signal" "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$state/ganesha.pid"
}

case "$command" in
  start)
    install_packages
    private_state_dir "$state"
    export_dir=$(realpath -m "${2:-$state/export}")
    stop_ganesha TERM
    nfs_port=${DPFS_NFS_PORT:-$(free_port)}
    mount_port=${DPFS_MOUNT_PORT:-$(free_port)}
    while [ "$mount_port" = "$nfs_port" ]; do mount_port=$(free_port); done
    echo "$nfs_port $mount_port" >"$state/ports"
    start_rpcbind
    write_config "$export_dir"
    start_ganesha
    echo "nfs://127.0.0.1$export_dir?version=3&nfsport=$nfs_port&mountport=$mount_port"
    echo "nfs://127.0.0.1/export?version=4&nfsport=$nfs_port"
    ;;
  stop) stop_ganesha TERM ;;
  kill) stop_ganesha KILL ;;
  restart)
    [ -f "$state/ganesha.conf" ] || { echo "no server was started (run: $0 start)" >&2; exit 1; }
    stop_ganesha TERM
    start_rpcbind
    start_ganesha
    ;;
  status) [ -f "$state/ganesha.pid" ] && listening_pid "$nfs_port" "$(cat "$state/ganesha.pid")" ;;
  pause|resume)
    [ -f "$state/ganesha.pid" ] || { echo "no server is running" >&2; exit 1; }
    kill "-$([ "$command" = pause ] && echo STOP || echo CONT)" "$(cat "$state/ganesha.pid")"
    ;;
  *) echo "usage: $0 start [EXPORT_DIR] | stop | kill | restart | pause | resume | status" >&2; exit 2 ;;
esac
