"""scripts/quickstart.sh: a mount whose hints use absolute paths, and `--stop`, which
unmounts and stops the redis-server the script started. The package install (setup.sh)
is replaced by a stub and the venv's `fusecache` by this checkout's: the test is about
the script, not pip."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.fuse.helpers import is_mounted
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_start_hints_and_stop(tmp_path: Path) -> None:
    repo, home, cwd = tmp_path / "repo", tmp_path / "home", tmp_path / "cwd"
    (repo / "scripts").mkdir(parents=True)
    (repo / ".venv" / "bin").mkdir(parents=True)
    home.mkdir()
    cwd.mkdir()
    shutil.copy(ROOT / "scripts" / "quickstart.sh", repo / "scripts")
    (repo / "scripts" / "setup.sh").write_text("#!/bin/sh\necho 'setup: done'\n")
    (repo / ".venv" / "bin" / "fusecache").write_text(
        f"#!/bin/sh\nexec env PYTHONPATH={ROOT} {sys.executable} -m fusecache.cli.main \"$@\"\n")
    for script in (repo / "scripts" / "setup.sh", repo / ".venv" / "bin" / "fusecache"):
        script.chmod(0o755)
    port = free_port()
    env = {**os.environ, "HOME": str(home), "FUSECACHE_REDIS_PORT": str(port)}
    mnt = cwd / "mnt"
    pidfile = home / ".fusecache" / "redis" / "redis.pid"
    try:
        # A relative mount point is the caller's directory, not the checkout's.
        started = subprocess.run([str(repo / "scripts" / "quickstart.sh"), "mnt"], cwd=cwd, env=env,
                                 capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        assert is_mounted(mnt)
        hints = [line for line in started.stdout.splitlines() if line.startswith("  ")]
        assert any(f"{repo}/.venv/bin/fusecache umount {mnt}" in line for line in hints), started.stdout
        assert any(f"{repo}/scripts/quickstart.sh --stop" in line for line in hints), started.stdout
        redis_pid = int(pidfile.read_text())

        stopped = subprocess.run([str(repo / "scripts" / "quickstart.sh"), "--stop"], cwd=cwd, env=env,
                                 capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert not is_mounted(mnt)
        assert not Path(f"/proc/{redis_pid}").exists()
        assert "stopped redis-server" in stopped.stdout
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)  # the redis-server this test's script started
        except (OSError, ValueError):
            pass
