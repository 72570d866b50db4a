#!/usr/bin/env bash
# Install everything fusecache needs on a fresh Debian/Ubuntu machine: system packages
# (fuse3, libfuse3-dev, redis-server), a virtualenv in .venv, and the package itself.
# Usage: scripts/setup.sh [--test]   (--test also installs the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_apt=()
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
[ -e /usr/include/fuse3/fuse_lowlevel.h ] || need_apt+=(libfuse3-dev)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v gcc >/dev/null || need_apt+=(gcc)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
python3 -c 'import sysconfig, os; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null \
  || need_apt+=(python3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# A redis-server started by the package would be a process nobody asked for here.
if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then :; fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# pip's own notices stay in a log, shown only if the install fails: what the scripts
# print afterwards (where the volume is, how to stop it) must not be buried.
LOG=.venv/setup.log
target="."
[ "${1:-}" = "--test" ] && target=".[test]"
if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e "$target"; } >"$LOG" 2>&1; then
  cat "$LOG" >&2
  echo "setup: pip install failed (log: $PWD/$LOG)" >&2
  exit 1
fi
echo "setup: done ($PWD/.venv ready)"
