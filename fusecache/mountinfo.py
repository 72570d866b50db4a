"""/proc/self/mountinfo, parsed: what is mounted where, from which superblock and subtree.

Parsing the table (instead of stat-ing paths) keeps working when a FUSE client died: a
dead mount still has its line here while every stat of it fails with ENOTCONN. The fields
that matter:
- `dev` (major:minor) names the superblock: a bind mount of a FUSE mount shares its dev,
  and a remounted client gets a new one, so a bind left over from a dead client is found by
  comparing devs;
- `root` is the subtree a bind mount shows ("/pvc-1" for a bind of <mnt>/pvc-1).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

FUSECACHE_FSTYPE = "fuse.fusecache"
_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in paths as \ooo octal.
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    dev: str
    root: str
    mountpoint: str
    options: frozenset[str]
    fstype: str
    source: str

    @property
    def readonly(self) -> bool:
        return "ro" in self.options

    @property
    def is_fusecache(self) -> bool:
        return self.fstype == FUSECACHE_FSTYPE


def parse_line(line: str) -> Mount | None:
    left, sep, right = line.rstrip("\n").partition(" - ")
    fields, tail = left.split(" "), right.split(" ")
    if not sep or len(fields) < 6 or len(tail) < 2:
        return None
    return Mount(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        dev=fields[2],
        root=_unescape(fields[3]),
        mountpoint=_unescape(fields[4]),
        options=frozenset(fields[5].split(",")),
        fstype=tail[0],
        source=_unescape(tail[1]),
    )


def read_mounts(table: str = "/proc/self/mountinfo") -> list[Mount]:
    with open(table, encoding="utf-8", errors="surrogateescape") as f:
        return [m for m in map(parse_line, f) if m is not None]


def mounts_at(path: str, table: str = "/proc/self/mountinfo") -> list[Mount]:
    """Mounts whose mountpoint is exactly `path`, bottom first (the last one is visible)."""
    path = os.path.normpath(os.path.abspath(path))
    return [m for m in read_mounts(table) if m.mountpoint == path]


def top_mount(path: str) -> Mount | None:
    stack = mounts_at(path)
    return stack[-1] if stack else None


def is_mounted(path: str) -> bool:
    return top_mount(path) is not None


def owning_mount(path: str) -> Mount | None:
    """The mount that contains `path` (the longest mountpoint prefix of its real path)."""
    path = os.path.realpath(path)
    best: Mount | None = None
    for m in read_mounts():
        mp = m.mountpoint
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (
            best is None or len(mp) >= len(best.mountpoint)
        ):
            best = m
    return best


def mounts_under(directory: str) -> list[Mount]:
    """Mounts strictly inside `directory`."""
    prefix = os.path.normpath(os.path.abspath(directory)).rstrip("/") + "/"
    return [m for m in read_mounts() if m.mountpoint.startswith(prefix)]
