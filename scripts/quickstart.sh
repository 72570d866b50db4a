#!/usr/bin/env bash
# One command from a fresh Debian/Ubuntu machine to a mounted fusecache volume on
# embedded defaults: a private redis-server on 127.0.0.1:6389 keeping its data in
# ~/.fusecache/redis, objects in the local directory ~/.fusecache/objects.
# Usage: scripts/quickstart.sh [MOUNTPOINT]   (default: ~/fusecache)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

MNT="${1:-$HOME/fusecache}"
STATE="$HOME/.fusecache"
PORT="${FUSECACHE_REDIS_PORT:-6389}"
META="redis://127.0.0.1:$PORT/1"
FC=.venv/bin/fusecache
mkdir -p "$STATE/redis" "$STATE/objects" "$MNT"

if ! redis-cli -p "$PORT" ping >/dev/null 2>&1; then
  redis-server --port "$PORT" --bind 127.0.0.1 --dir "$STATE/redis" --appendonly yes --appendfsync always \
    --daemonize yes --pidfile "$STATE/redis/redis.pid" --logfile "$STATE/redis/redis.log"
  for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
if ! $FC status "$META" >/dev/null 2>&1; then
  $FC format "$META" myvol --storage file --bucket "$STATE/objects"
fi
if ! mountpoint -q "$MNT"; then
  $FC mount "$META" "$MNT" -d
fi
echo
echo "fusecache volume 'myvol' is mounted at $MNT"
echo "  try:      cp -r /usr/share/doc/bash $MNT/ && ls -l $MNT/bash"
echo "  status:   $FC status $META"
echo "  unmount:  $FC umount $MNT"
