"""Emptying the trash: hour directories older than the volume's `trash_days` go for good.

Files enter the trash in the unlink and rename scripts (lua.drop_link); this module only
takes them out. It uses the plain Meta interface: unlinking an entry of the trash deletes
it for good (an inode still open somewhere is kept for its openers, as for any unlink).
Several clients may purge at once (`mount` takes a lease so that usually one does);
entries that vanish meanwhile are fine.
"""

from __future__ import annotations

import calendar
import errno
import logging
import time

from ..errors import FsError
from ..types import TRASH_INO
from .base import Meta

log = logging.getLogger(__name__)

HOUR_FORMAT = "%Y-%m-%d-%H"


def hour_start(name: bytes) -> float | None:
    """The UTC start of a trash hour directory's hour, or None if `name` is not one."""
    try:
        return float(calendar.timegm(time.strptime(name.decode(), HOUR_FORMAT)))
    except (ValueError, UnicodeDecodeError):
        return None


def purge_expired(meta: Meta, days: float, now: float | None = None) -> tuple[int, int]:
    """Delete the trash's hour directories whose every file was trashed more than `days`
    ago, with their files. Returns (files deleted, directories removed)."""
    if days <= 0:
        return 0, 0
    cutoff = (time.time() if now is None else now) - days * 86400
    try:
        hours = meta.readdir(TRASH_INO)
    except FsError as exc:
        if exc.errno == errno.ENOENT:
            return 0, 0  # no trash yet
        raise
    files = dirs = 0
    for hour in hours:
        start = hour_start(hour.name)
        if start is None or start + 3600 > cutoff or not hour.attr.is_dir:
            continue
        for entry in _entries(meta, hour.attr.ino):
            if _quietly(meta.unlink, hour.attr.ino, entry):
                files += 1
        if _quietly(meta.rmdir, TRASH_INO, hour.name):
            dirs += 1
    if files or dirs:
        log.info("trash: %d files older than %g days deleted", files, days)
    return files, dirs


def _entries(meta: Meta, ino: int) -> list[bytes]:
    try:
        return [e.name for e in meta.readdir(ino)]
    except FsError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise


def _quietly(fn: object, *args: object) -> bool:
    """Call; False if the entry was gone already (or, for rmdir, not empty any more)."""
    try:
        fn(*args)  # type: ignore[operator]
        return True
    except FsError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTEMPTY):
            return False
        raise
