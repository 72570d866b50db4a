"""`fusecache import META_URL SOURCE DEST_DIR`: objects that already live in a bucket (or
files in a local directory) appear as files under DEST_DIR, without copying any data.

Each object becomes a file whose chunks are external slices naming one version (ETag) of
the object; reads fetch ranges of it from the source and cache them like any block.
Prefixes become directories; sizes and mtimes come from the listing.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import time
from dataclasses import dataclass, field

from ..errors import CliError, FsError, MetaError, ObjectStoreError
from ..layout import MAX_EXT_SIZE
from ..meta.base import MAX_NAME
from ..meta.codec import pack_time
from ..meta.external import ExternalObject, register_source, reserve_numbers
from ..meta.redis import RedisMeta
from ..object.base import ObjectInfo, ObjectStore
from ..types import ROOT_INO, TRASH_NAME
from ..units import format_size
from .common import connect_meta, load_volume, redis_engine
from .progress import ScanProgress
from .secrets import mask_url

DESCRIPTION = """\
Make the objects under SOURCE appear as files under DEST_DIR in the volume, in seconds and
without copying any data: reads fetch from SOURCE and are cached like any other data, and
warmup fills the cache ahead of a job. Prefixes become directories; sizes and mtimes come
from the listing. Files can be written, truncated, renamed and deleted like any other:
nothing is ever written to or deleted from SOURCE. If an object changes at SOURCE, its file
reads fail with EIO (never a mix of old and new bytes) until it is imported again.

SOURCE is an S3 bucket URL with an optional prefix, http(s)://host:port/bucket/prefix, with
its credentials in env SOURCE_ACCESS_KEY and SOURCE_SECRET_KEY (kept in the volume's
metadata, masked everywhere), or a local directory. DEST_DIR is a directory of the volume,
from its root (made if missing).
"""

BATCH = 500  # files per IMPORT_FILES call
_URL = re.compile(r"^https?://")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="show a bucket's objects as files, copying nothing", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("source", metavar="SOURCE", help="http(s)://host:port/bucket[/prefix], or a local directory")
    p.add_argument("dest", metavar="DEST_DIR", help="directory in the volume, from its root, e.g. /train")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


@dataclass
class Summary:
    files: int = 0
    bytes: int = 0
    directories: int = 0
    existing: int = 0  # names already in the volume (a rerun)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _source(text: str) -> tuple[str, str, str, str]:
    """(storage, bucket, access key, secret key) of SOURCE."""
    if _URL.match(text):
        return "s3", text.rstrip("/"), os.environ.get("SOURCE_ACCESS_KEY", ""), os.environ.get("SOURCE_SECRET_KEY", "")
    if re.match(r"^[a-z][a-z0-9+.-]*://", text):
        raise CliError(f"SOURCE {text!r}: give an http(s):// bucket URL or a local directory", 2)
    if not os.path.isdir(text):
        raise CliError(f"SOURCE {text} is not a directory (nor an http(s):// bucket URL)")
    return "file", os.path.realpath(text), "", ""


def _refuse_own_store(storage: str, bucket: str, settings: object) -> None:
    """A source inside the volume's own objects would let the volume read (and its
    collector reason about) its own blocks as foreign data."""
    own_storage, own_bucket, name = (getattr(settings, a) for a in ("storage", "bucket", "name"))
    if storage != own_storage:
        return
    if storage == "file":
        own = os.path.realpath(own_bucket)
        if bucket == own or bucket.startswith(own + os.sep) or own.startswith(bucket + os.sep):
            raise CliError(f"SOURCE {bucket} overlaps the volume's own store {own}", 2)
        return
    from ..object.s3 import parse_bucket_url

    src, mine = parse_bucket_url(bucket), parse_bucket_url(own_bucket)
    if (src.endpoint, src.bucket) == (mine.endpoint, mine.bucket):
        ours = mine.prefix + name + "/"
        if src.prefix.startswith(ours) or ours.startswith(src.prefix):
            raise CliError(f"SOURCE {mask_url(bucket)} overlaps the volume's own objects ({ours} in the same "
                           "bucket)", 2)


def _parts(key: str) -> list[bytes] | str:
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
    def __init__(self, meta: RedisMeta, store: ObjectStore, source: int, dest: int, progress: ScanProgress) -> None:
        self.meta = meta
        self.store = store
        self.source = source
        self.dest = dest
        self.progress = progress
        self.summary = Summary()
        self._dirs: dict[tuple[bytes, ...], int | None] = {(): dest}  # None: a file is there
        self._pending: list[tuple[int, bytes, ObjectInfo]] = []
        self._pending_names: set[tuple[int, bytes]] = set()

    def run(self) -> Summary:
        for n, info in enumerate(self.store.list_all(""), 1):
            self._add(info)
            self.progress("listing and importing objects", n, None)
        self._flush()
        return self.summary

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

    def _add(self, info: ObjectInfo) -> None:
        parts = _parts(info.key)
        if isinstance(parts, str):
            self.summary.skip(parts)
            return
        if info.key.endswith("/"):
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
            args: list[object] = [now]
            for i, (parent, name, info) in enumerate(self._pending):
                obj = ExternalObject(first + i, self.source, info.key, info.etag, info.size)
                args += [parent, name, self.meta._new_ino(), pack_time(int(info.mtime * 1e9)), info.size,
                         obj.number, obj.record()]
            res = self.meta._run("IMPORT_FILES", [self.meta._p + "ext"], args)
            if res[0] == -2:  # a reserved inode number is taken: take new ones
                self.meta._skip_taken_inodes()
                continue
            break
        created, existing = int(res[1]), int(res[2])
        self.summary.files += created
        self.summary.existing += existing
        self.summary.bytes += int(res[3])
        self._pending.clear()
        self._pending_names.clear()


def _dest_dir(meta: RedisMeta, path: str) -> int:
    """The inode of DEST_DIR, made (with its parents) if missing."""
    ino = ROOT_INO
    parts = [p for p in path.split("/") if p]
    if parts and parts[0].encode() == TRASH_NAME:
        raise CliError("DEST_DIR cannot be in the trash", 2)
    for part in parts:
        try:
            attr = meta.lookup(ino, part.encode())
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            attr = meta.mkdir(ino, part.encode(), 0o755, 0, 0)
        if not attr.is_dir:
            raise CliError(f"DEST_DIR {path} exists and is not a directory")
        ino = attr.ino
    return ino


def run(args: argparse.Namespace) -> int:
    from ..object import create_store

    storage, bucket, access_key, secret_key = _source(args.source)
    meta = redis_engine(connect_meta(args.meta_url), "import")
    store: ObjectStore | None = None
    progress = ScanProgress(enabled=not args.quiet)
    started = time.monotonic()
    shown = mask_url(bucket)
    try:
        settings = load_volume(meta)
        _refuse_own_store(storage, bucket, settings)
        try:
            store = create_store(storage, bucket, access_key, secret_key, fail_fast=True) if storage == "s3" \
                else create_store(storage, bucket)
            if not store.list("", "", 1):
                raise CliError(f"SOURCE {shown} has no objects")
        except ObjectStoreError as exc:
            raise CliError(f"SOURCE {shown}: {exc}") from None
        dest = _dest_dir(meta, args.dest)
        src = register_source(meta, storage, bucket, access_key, secret_key)
        try:
            summary = Importer(meta, store, src.number, dest, progress).run()
        except ObjectStoreError as exc:
            raise CliError(f"listing SOURCE {shown} failed: {exc}; run the same import again to finish it") from None
    except FsError as exc:
        raise CliError(f"import into {args.dest}: {exc.detail or os.strerror(exc.errno)}") from None
    except MetaError as exc:
        raise CliError(str(exc)) from None
    finally:
        progress.done()
        if store is not None:
            store.close()
        meta.shutdown()
    skipped = sum(summary.skipped.values())
    print(f"imported {summary.files} objects ({format_size(summary.bytes)}) from {shown} into {args.dest}: "
          f"{summary.directories} directories made, {summary.existing} already there, {skipped} skipped; "
          f"no data copied ({time.monotonic() - started:.1f} s)")
    for reason, count in sorted(summary.skipped.items()):
        print(f"  skipped {count}: {reason}")
    return 0
