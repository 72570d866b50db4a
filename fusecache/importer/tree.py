"""Making the files of an import: objects listed at a source become files under a
directory of the volume, whose chunks are external slices naming one version of each
object (lua_import.py). Prefixes become directories; sizes and mtimes come from the listing.
"""

from __future__ import annotations

import errno
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from ..errors import FsError
from ..layout import MAX_EXT_SIZE
from ..meta.base import MAX_NAME
from ..meta.codec import pack_time
from ..meta.external import ExternalObject, reserve_numbers
from ..meta.redis import RedisMeta
from ..object.base import ObjectInfo, ObjectStore
from ..types import ROOT_INO, TRASH_NAME
from ..units import format_size
from .source import SourceError

BATCH = 500  # files per IMPORT_FILES call
LISTERS = 8  # prefixes listed at once
MAX_SPLIT_DEPTH = 4  # levels walked from the top to find prefixes to list in parallel
QUEUE_LIMIT = 10_000  # listed objects waiting to be made (bounds memory)

Progress = Callable[[str, int, int | None], None]  # (phase, done, total or None)


@dataclass
class Summary:
    files: int = 0
    bytes: int = 0
    directories: int = 0
    existing: int = 0  # names already held by other files (or, without update, by any file)
    unchanged: int = 0  # update: the same version is already there
    refreshed: int = 0  # update: a new version replaced an unchanged file's data
    changed_kept: int = 0  # update: files changed in the volume since, kept as they are
    deleted: int = 0  # delete: files whose object is gone from the source
    directories_deleted: int = 0  # delete: directories that emptied
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def key_parts(key: str) -> list[bytes] | str:
    """The path components of a key, or why it cannot be a file name."""
    parts = key.split("/")
    if key.endswith("/"):
        parts = parts[:-1]  # a directory marker
    out = []
    for part in parts:
        raw = part.encode("utf-8", "surrogateescape")
        if not raw or part in (".", "..") or b"\0" in raw:
            return "unusable names (empty, '.', '..')"
        if len(raw) > MAX_NAME:
            return "names longer than 255 bytes"
        out.append(raw)
    return out


class Importer:
    """Lists the source and makes its files, BATCH per script call. With `update`, files
    that still hold an older version of their object, unchanged in the volume, get the
    new one; `seen` (a runtime set key) collects the registry numbers found, for --delete."""

    def __init__(self, meta: RedisMeta, store: ObjectStore, source: int, dest: int, progress: Progress,
                 update: bool = False, seen: str = "") -> None:
        self.meta = meta
        self.update = update
        self.seen = seen
        self.store = store
        self.source = source
        self.dest = dest
        self.progress = progress
        self.summary = Summary()
        self._dirs: dict[tuple[bytes, ...], int | None] = {(): dest}  # None: a file is there
        self._pending: list[tuple[int, bytes, ObjectInfo]] = []
        self._pending_names: set[tuple[int, bytes]] = set()
        self._listed = 0

    def run(self, parallel: int = LISTERS) -> Summary:
        """List the source, `parallel` prefixes at a time, and make its files. Objects at
        the top levels are made first, so a key that is both an object and a prefix meets
        the object's file, as in key order."""
        prefixes = self._top_levels(parallel)
        if prefixes:
            self._list_in_parallel(prefixes, parallel)
        self._flush()
        return self.summary

    def _take(self, info: ObjectInfo) -> None:
        self._listed += 1
        self._add(info)
        self.progress("listing and importing objects", self._listed, None)

    def _top_levels(self, parallel: int) -> list[str]:
        """Walk levels from the top (objects made as met) until there are enough prefixes
        to list in parallel, or the levels run out; the prefixes left to list."""
        prefixes = [""]
        for _ in range(MAX_SPLIT_DEPTH):
            deeper: list[str] = []
            for prefix in prefixes:
                for item in self.store.list_level(prefix):
                    if isinstance(item, str):
                        deeper.append(item)
                    else:
                        self._take(item)
            prefixes = deeper
            if len(prefixes) >= parallel or not prefixes:
                break
        return prefixes

    def _list_in_parallel(self, prefixes: list[str], parallel: int) -> None:
        """Listers fill a bounded queue; this thread makes the files (metadata calls stay
        on one thread, in batches)."""
        found: queue.Queue[ObjectInfo | BaseException | None] = queue.Queue(QUEUE_LIMIT)
        stop = threading.Event()

        def lister(prefix: str) -> None:
            try:
                for info in self.store.list_all(prefix):
                    if stop.is_set():
                        return
                    found.put(info)
            except BaseException as exc:
                found.put(exc)

        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="import-list") as pool:
            futures = [pool.submit(lister, prefix) for prefix in prefixes]
            done = threading.Thread(target=lambda: (wait(futures), found.put(None)), daemon=True)
            done.start()
            try:
                while (item := found.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    self._take(item)
            finally:
                stop.set()
                while done.is_alive():  # let blocked listers finish their put
                    try:
                        found.get(timeout=0.1)
                    except queue.Empty:
                        pass

    def _dir(self, path: tuple[bytes, ...]) -> int | None:
        """The directory for `path` under DEST_DIR (made if missing); None if a file holds
        one of its names."""
        if path in self._dirs:
            return self._dirs[path]
        parent = self._dir(path[:-1])
        ino: int | None = None
        if parent is not None and (parent, path[-1]) not in self._pending_names:
            try:
                ino = self.meta.mkdir(parent, path[-1], 0o755, 0, 0).ino
                self.summary.directories += 1
            except FsError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                found = self.meta.lookup(parent, path[-1])
                ino = found.ino if found.is_dir else None
        self._dirs[path] = ino
        return ino

    def add(self, info: ObjectInfo, name: str | None = None) -> None:
        """Queue one listed object; `name` is its path under DEST_DIR if not its key."""
        self._add(info, name)

    def flush(self) -> None:
        self._flush()

    def _add(self, info: ObjectInfo, name: str | None = None) -> None:
        parts = key_parts(info.key if name is None else name)
        if isinstance(parts, str):
            self.summary.skip(parts)
            return
        if (info.key if name is None else name).endswith("/"):
            if self._dir(tuple(parts)) is None:
                self.summary.skip("keys that are both an object and a prefix")
            return
        if info.size > MAX_EXT_SIZE:
            self.summary.skip(f"objects over {format_size(MAX_EXT_SIZE)}")
            return
        parent = self._dir(tuple(parts[:-1]))
        if parent is None:
            self.summary.skip("keys that are both an object and a prefix")
            return
        self._pending.append((parent, parts[-1], info))
        self._pending_names.add((parent, parts[-1]))
        if len(self._pending) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        first = reserve_numbers(self.meta, len(self._pending))
        now = pack_time(time.time_ns())
        while True:
            args: list[object] = [now, int(self.update), int(bool(self.seen)), self.source]
            for i, (parent, name, info) in enumerate(self._pending):
                obj = ExternalObject(first + i, self.source, info.key, info.etag, info.size)
                args += [parent, name, self.meta._new_ino(), pack_time(int(info.mtime * 1e9)), info.size,
                         obj.number, obj.record()]
            res = self.meta._run("IMPORT_FILES", [self.meta._p + "ext", self.seen or self.meta._p + "ext"], args)
            if res[0] == -2:  # a reserved inode number is taken: take new ones
                self.meta._skip_taken_inodes()
                continue
            break
        self.summary.files += int(res[1])
        self.summary.existing += int(res[2])
        self.summary.bytes += int(res[3])
        self.summary.unchanged += int(res[4])
        self.summary.refreshed += int(res[5])
        self.summary.changed_kept += int(res[6])
        self._pending.clear()
        self._pending_names.clear()




def dest_dir(meta: RedisMeta, path: str) -> int:
    """The inode of DEST_DIR, made (with its parents) if missing."""
    ino = ROOT_INO
    parts = [p for p in path.split("/") if p]
    if parts and parts[0].encode() == TRASH_NAME:
        raise SourceError("DEST_DIR cannot be in the trash")
    for part in parts:
        try:
            attr = meta.lookup(ino, part.encode())
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            attr = meta.mkdir(ino, part.encode(), 0o755, 0, 0)
        if not attr.is_dir:
            raise SourceError(f"DEST_DIR {path} exists and is not a directory")
        ino = attr.ino
    return ino
