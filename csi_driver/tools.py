"""Running the `fusecache` command line (format, mount, umount) from the driver."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence

from .logs import scrub

# Without an installed console script (a development checkout), run the CLI module itself.
_FALLBACK = [sys.executable, "-P", "-m", "fusecache.cli.main"]


def fusecache_command(configured: str = "") -> list[str]:
    """argv prefix that runs the fusecache CLI: `configured` (shell words), else `fusecache`
    on PATH, else the module under this interpreter."""
    if configured:
        return shlex.split(configured)
    found = shutil.which("fusecache")
    return [found] if found else list(_FALLBACK)


class CliFailed(Exception):
    """A fusecache command failed; the message holds its (scrubbed) stderr tail."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        tail = scrub(stderr.strip())[-2000:]
        super().__init__(f"`fusecache {' '.join(args)}` exited with {returncode}: {tail}")
        self.returncode = returncode
        self.stderr = tail


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("META_PASSWORD", "ACCESS_KEY", "SECRET_KEY")}
    env.update(extra)
    return env


def run_cli(command: Sequence[str], args: Sequence[str], env: Mapping[str, str], timeout: float) -> str:
    """Run `command + args` to completion; returns stdout, raises CliFailed."""
    try:
        proc = subprocess.run([*command, *args], env=child_env(env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CliFailed(args, -1, f"timed out after {timeout}s") from exc
    if proc.returncode != 0:
        raise CliFailed(args, proc.returncode, proc.stderr)
    return proc.stdout
