"""`fusecache umount MOUNTPOINT [--lazy] [--clean-cache]`: unmount a fusecache volume.

`--clean-cache` also deletes the volume's blocks from the client's SSD cache directories
(only this volume's: every volume has its own subdirectory there). The client is asked for
its directories before the unmount; after it, the command waits for the client to exit (it
first finishes uploading writeback blocks and releases its directories), then cleans.
Staged blocks that could still not be uploaded are kept for the next mount.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from typing import Any

from ..errors import CliError
from ..mountinfo import FUSECACHE_FSTYPE, top_mount

CLIENT_EXIT_TIMEOUT = 300.0  # seconds to wait for the client to finish its uploads and exit


DESCRIPTION = """\
Unmount a fusecache volume. If files are still open it refuses and says so (--lazy
detaches at once and finishes once they are closed).

--clean-cache also deletes the volume's blocks from the client's disk cache directories
(only this volume's: each volume has its own folder there). The command waits for the
client to finish uploading blocks written with --writeback; blocks that could still not
be uploaded are kept for the next mount.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("umount", help="unmount a volume", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-l", "--lazy", action="store_true", help="detach now, finish when no longer busy")
    p.add_argument("--clean-cache", action="store_true",
                   help="also delete this volume's blocks from the client's cache directories")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.mountpoint)
    entry = top_mount(path)
    if entry is None:
        raise CliError(f"{path} is not mounted")
    if entry.fstype != FUSECACHE_FSTYPE:
        raise CliError(f"{path} is not a fusecache mount (it is {entry.fstype})")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise CliError("fusermount3 not found (install the fuse3 package)")
    client = _client_stats(path) if args.clean_cache else None
    cmd = [tool, "-u", *(["-z"] if args.lazy else []), path]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unknown error"
        if "busy" in reason.lower():
            raise CliError(f"{path} is busy (files are open); close them or use --lazy")
        raise CliError(f"cannot unmount {path}: {reason}")
    deadline = time.monotonic() + 10
    while top_mount(path) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    if client is not None:
        _clean_cache(client)
    return 0


def _client_stats(path: str) -> dict[str, Any]:
    from .stats import read_stats

    try:
        return read_stats(path)
    except CliError as exc:
        raise CliError(f"--clean-cache: cannot ask the client which cache directories it uses ({exc.message}); "
                       "nothing was unmounted") from None


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, and not ours to signal
        time.sleep(0.1)
    return False


def _clean_cache(client: dict[str, Any]) -> None:
    from ..cache import TierConfig, TieredCache

    tiers = [TierConfig("ssd", max(1, t["quota"]), tuple(t["paths"]))
             for t in (client.get("cache") or {}).get("tiers", []) if t["medium"] == "ssd"]
    if not tiers:
        return  # memory only: the client's exit freed it
    pid = int(client["pid"])
    if not _wait_exit(pid, CLIENT_EXIT_TIMEOUT):
        raise CliError(f"unmounted, but the client (pid {pid}) is still running (uploading staged blocks?); "
                       "its cache was not cleaned")
    cache = TieredCache.open(tiers, client["uuid"])
    try:
        kept = cache.clean()
    finally:
        cache.close()
    dirs = ", ".join(os.path.join(p, client["uuid"]) for t in tiers for p in t.paths)
    print(f"removed the cached blocks of volume {client.get('volume', '?')} from {dirs}")
    if kept:
        print(f"kept {kept} staged blocks that were never uploaded; the next mount of the volume uploads them")
