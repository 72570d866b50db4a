"""Lazy import (`fusecache import --lazy`): DEST_DIR is only marked, and each directory's
entries are listed from the source the first time someone looks into it (lookup or
readdir on a mount), one level at a time. A huge bucket is then usable at once.

A directory's fill makes its files (IMPORT_FILES) and its subdirectories, each marked
unfilled with its own prefix in the same script (LAZY_DIRS), and clears its own mark last.
A fill cut short (a crash, a lost reply) is finished by the next one: names already there
are kept. Two clients filling one directory at once make each name once.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Callable

from ..errors import FsError, ObjectStoreError
from ..meta.codec import pack_time
from ..meta.redis import RedisMeta
from ..object.base import ObjectInfo, ObjectStore
from .tree import BATCH, Importer, key_parts

log = logging.getLogger(__name__)


def _lazy_key(meta: RedisMeta) -> str:
    return meta._p + "lazy"


def mark_unfilled(meta: RedisMeta, dir_ino: int, source: int, prefix: str) -> None:
    """Mark a directory as a lazy import of `prefix` (relative to the source's URL)."""
    meta._run("MARK_UNFILLED", [_lazy_key(meta)], [dir_ino, json.dumps({"src": source, "prefix": prefix})])


def _quiet(_phase: str, _done: int, _total: int | None = None) -> None:
    return None


class LazyFiller:
    """Fills unfilled directories for a mount; `store_for(source number)` gives the
    source's store (the mount's external reader keeps one per source)."""

    def __init__(self, meta: RedisMeta, store_for: Callable[[int], ObjectStore]) -> None:
        self.meta = meta
        self.store_for = store_for

    def fill(self, dir_ino: int) -> None:
        """List the directory's level at its source and make its entries. Raises FsError
        (EIO when the source cannot be listed)."""
        rec = self.meta._call(self.meta._r.hget, _lazy_key(self.meta), str(dir_ino))
        if rec is None:  # filled meanwhile (or a clone of an unfilled one): only the mark is left
            self.meta._run("MARK_UNFILLED", [_lazy_key(self.meta)], [dir_ino, ""])
            return
        got = json.loads(rec)
        source, prefix = int(got["src"]), str(got["prefix"])
        store = self.store_for(source)
        files = Importer(self.meta, store, source, dir_ino, _quiet)
        dirs: list[str] = []
        try:
            for item in store.list_level(prefix):
                if isinstance(item, str):
                    dirs.append(item)
                else:
                    self._file(files, item, prefix)
        except ObjectStoreError as exc:
            log.error("listing %r at import source %s failed: %s", prefix, store.describe(), exc)
            raise FsError(errno.EIO, f"cannot list the import source: {exc}") from None
        files.flush()
        for start in range(0, len(dirs), BATCH):
            self._dirs(dir_ino, source, prefix, dirs[start:start + BATCH])
        self.meta._run("MARK_UNFILLED", [_lazy_key(self.meta)], [dir_ino, ""])

    @staticmethod
    def _file(files: Importer, info: ObjectInfo, prefix: str) -> None:
        # The key relative to this level names the file; the record keeps the whole key.
        files.add(info, info.key[len(prefix):])

    def _dirs(self, parent: int, source: int, prefix: str, subs: list[str]) -> None:
        while True:
            args: list[object] = [parent, pack_time(time.time_ns())]
            for sub in subs:
                parts = key_parts(sub[len(prefix):])
                if isinstance(parts, str) or len(parts) != 1:
                    continue  # an unusable name (counted by a full import's summary)
                args += [parts[0], self.meta._new_ino(), json.dumps({"src": source, "prefix": sub})]
            res = self.meta._run("LAZY_DIRS", [_lazy_key(self.meta)], args)
            if res[0] == -2:  # a reserved inode number is taken: take new ones
                self.meta._skip_taken_inodes()
                continue
            return
