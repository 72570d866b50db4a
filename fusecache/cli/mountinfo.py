"""Reading /proc/self/mountinfo: which paths are mounted, and by whom."""

from __future__ import annotations

import os
from dataclasses import dataclass

FSTYPE = "fuse.fusecache"


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    root: str
    device: str = ""  # "major:minor"


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")


def mounts() -> list[MountEntry]:
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rest = right.split()
            if len(fields) < 5 or len(rest) < 2:
                continue
            out.append(MountEntry(_unescape(fields[4]), rest[0], _unescape(rest[1]), _unescape(fields[3]), fields[2]))
    return out


def mount_entry(path: str) -> MountEntry | None:
    """The mount whose mountpoint is exactly `path` (the last one, if stacked)."""
    path = os.path.abspath(path)
    found = None
    for entry in mounts():
        if entry.mountpoint == path:
            found = entry
    return found


def is_mounted(path: str) -> bool:
    return mount_entry(path) is not None


def owning_mount(path: str) -> MountEntry | None:
    """The mount that contains `path` (longest mountpoint prefix)."""
    path = os.path.realpath(path)
    best: MountEntry | None = None
    for entry in mounts():
        mp = entry.mountpoint
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (
            best is None or len(mp) >= len(best.mountpoint)
        ):
            best = entry
    return best
