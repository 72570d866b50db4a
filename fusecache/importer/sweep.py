"""`import --update --delete`: after a run has listed the source, the files it imported
earlier whose objects are no longer there go, as an unlink would take them (to the trash
when the volume keeps one). Only files still unchanged in the volume are deleted; a file
written, truncated or made by someone else since is never touched. Directories the sweep
empties go too; nothing at the source is ever deleted.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass

from ..errors import FsError
from ..meta.codec import pack_time
from ..meta.redis import RedisMeta
from .tree import Progress

BATCH = 500  # files per DELETE_GONE call


@dataclass
class Swept:
    deleted: int = 0
    directories: int = 0


def delete_gone(meta: RedisMeta, dest: int, source: int, seen: str, progress: Progress) -> Swept:
    swept = Swept()
    looked = 0
    origin_key = meta._p + "extino"

    def sweep(dir_ino: int) -> bool:
        """Sweep one directory and those below it; whether this one lost entries and is
        now empty."""
        nonlocal looked
        entries = meta.readdir(dir_ino)
        files = [(e.name, e.attr.ino) for e in entries if e.attr.is_file]
        emptied_below = 0
        for e in entries:
            if e.attr.is_dir and sweep(e.attr.ino):
                try:
                    meta.rmdir(dir_ino, e.name)
                    swept.directories += 1
                    emptied_below += 1
                except FsError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.ENOENT, errno.EROFS):
                        raise
        deleted = 0
        for start in range(0, len(files), BATCH):
            batch = files[start:start + BATCH]
            # Only files imported at all are candidates; the script checks the rest.
            origins = meta._call(meta._r.hmget, origin_key, [str(ino) for _, ino in batch])
            candidates = [(name, ino) for (name, ino), o in zip(batch, origins, strict=True) if o is not None]
            if candidates:
                args: list[object] = [dir_ino, pack_time(time.time_ns()), meta._trash_hour(), source]
                for name, ino in candidates:
                    args += [name, ino]
                res = meta._run("DELETE_GONE", [meta._dk(dir_ino), seen], args)
                deleted += int(res[1])
            looked += len(batch)
            progress("looking for files gone from the source", looked, None)
        swept.deleted += deleted
        gone = deleted + emptied_below
        return gone > 0 and gone == len(entries)

    sweep(dest)
    return swept
