# Sourced by the scripts that start a server for the tests (tools/nfs-server.sh,
# tools/redis-server.sh), which keep configuration, data and sockets in a state directory.
# private_state_dir DIR: DIR exists, is ours, is no symbolic link, and only we can use it (0700).
# Someone else's directory, or a link planted at the path, is refused: the server would run with
# what it holds.
private_state_dir() {
  local dir=$1
  mkdir -p "$(dirname "$dir")"
  mkdir -m 0700 "$dir" 2>/dev/null || true
  if [ -L "$dir" ] || [ ! -d "$dir" ] || [ "$(stat -c %u "$dir")" != "$(id -u)" ]; then
    echo "refusing $dir: not a directory of this user (a symbolic link, or someone else's)" >&2
    exit 1
  fi
  chmod 0700 "$dir"
}
