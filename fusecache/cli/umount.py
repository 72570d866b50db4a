"""`fusecache umount MOUNTPOINT [--lazy]`: unmount a fusecache volume."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time

from ..errors import CliError
from .mountinfo import FSTYPE, mount_entry


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("umount", help="unmount a volume", description=__doc__)
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-l", "--lazy", action="store_true", help="detach now, finish when no longer busy")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.mountpoint)
    entry = mount_entry(path)
    if entry is None:
        raise CliError(f"{path} is not mounted")
    if entry.fstype != FSTYPE:
        raise CliError(f"{path} is not a fusecache mount (it is {entry.fstype})")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise CliError("fusermount3 not found (install the fuse3 package)")
    cmd = [tool, "-u", *(["-z"] if args.lazy else []), path]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unknown error"
        if "busy" in reason.lower():
            raise CliError(f"{path} is busy (files are open); close them or use --lazy")
        raise CliError(f"cannot unmount {path}: {reason}")
    deadline = time.monotonic() + 10
    while mount_entry(path) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0
