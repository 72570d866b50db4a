"""Reading /proc/self/mountinfo: which paths are mounted, and by whom."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from typing import Any

from ..errors import CliError

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


def read_client_json(path: str, xattr: str, what: str, follow_symlinks: bool = True) -> Any:
    """A virtual xattr answered, as JSON, by the fusecache client serving `path`.

    CliError (one readable line) when the path is missing, not on a fusecache mount, or
    its client is not running."""
    if not os.path.lexists(path):
        raise CliError(f"{path}: no such file or directory")
    entry = owning_mount(path)
    if entry is None or entry.fstype != FSTYPE:
        raise CliError(f"{path} is not inside a fusecache mount")
    try:
        raw = os.getxattr(path, xattr, follow_symlinks=follow_symlinks)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise CliError(f"{path}: the fusecache client of this mount is not running") from None
        raise CliError(f"{path}: cannot read {what}: {exc.strerror}") from None
    return json.loads(raw)
