#!/usr/bin/env bash
# One command from a fresh Debian/Ubuntu machine to a mounted fusecache volume on
# embedded defaults: a private redis-server on 127.0.0.1:6389 keeping its data in
# ~/.fusecache/redis, objects in the local directory ~/.fusecache/objects.
# Usage: scripts/quickstart.sh [MOUNTPOINT]          (default: ~/fusecache)
#        scripts/quickstart.sh --stop [MOUNTPOINT]   unmount, and stop the redis-server
#                                                    this script started (data is kept)
set -euo pipefail

STOP=0
if [ "${1:-}" = "--stop" ]; then STOP=1; shift; fi
STATE="$HOME/.fusecache"
# The mount point is made absolute before the cd below, so a relative one means the
# caller's directory; --stop without one unmounts what the last start mounted.
if [ -n "${1:-}" ]; then
  MNT="$(realpath -m -- "$1")"
elif [ $STOP -eq 1 ] && [ -s "$STATE/quickstart.mnt" ]; then
  MNT="$(cat "$STATE/quickstart.mnt")"
else
  MNT="$HOME/fusecache"
fi
cd "$(dirname "$0")/.."
ROOT="$PWD"
PORT="${FUSECACHE_REDIS_PORT:-6389}"
META="redis://127.0.0.1:$PORT/1"
FC="$ROOT/.venv/bin/fusecache"
PIDFILE="$STATE/redis/redis.pid"

if [ $STOP -eq 1 ]; then
  if mountpoint -q "$MNT"; then
    "$FC" umount "$MNT"
    echo "unmounted $MNT"
  else
    echo "$MNT is not mounted"
  fi
  # Only the redis-server this script started (its pid file, and its command line names
  # our port): never another Redis that happens to listen there.
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "redis-server.*:$PORT"; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "stopped redis-server (pid $pid); the volume's data stays in $STATE"
  else
    echo "no redis-server started by quickstart is running"
  fi
  exit 0
fi

scripts/setup.sh
mkdir -p "$STATE/redis" "$STATE/objects" "$MNT"

if ! redis-cli -p "$PORT" ping >/dev/null 2>&1; then
  redis-server --port "$PORT" --bind 127.0.0.1 --dir "$STATE/redis" --appendonly yes --appendfsync always \
    --daemonize yes --pidfile "$PIDFILE" --logfile "$STATE/redis/redis.log"
  for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
if ! "$FC" status "$META" >/dev/null 2>&1; then
  "$FC" format "$META" myvol --storage file --bucket "$STATE/objects"
fi
if ! mountpoint -q "$MNT"; then
  "$FC" mount "$META" "$MNT" -d
fi
echo "$MNT" >"$STATE/quickstart.mnt"
echo
echo "fusecache volume 'myvol' is mounted at $MNT"
echo "  try:      cp -r /usr/share/doc/bash $MNT/ && ls -l $MNT/bash"
echo "  status:   $FC status $META"
echo "  unmount:  $FC umount $MNT"
STOP_CMD="$ROOT/scripts/quickstart.sh --stop"
[ "$PORT" = 6389 ] || STOP_CMD="FUSECACHE_REDIS_PORT=$PORT $STOP_CMD"
echo "  stop:     $STOP_CMD   (unmounts and stops the redis-server)"
