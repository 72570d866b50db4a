"""Volume directories inside a filesystem, through the metadata engine (controller side).

Layout and invariants:
- A dynamic volume is a top-level directory `/<dir>` (see `volume_id.dir_name`) carrying the
  xattr MARKER = JSON {"name": <CSI name>, "context": <mount settings it was created with>,
  "source": {"snapshot"|"volume": <id>} for a volume made from a content source,
  "import": <masked source URL> for one made by importing a bucket's objects}.
  Only directories with the marker are volumes: ListVolumes skips everything else and
  DeleteVolume refuses to remove an unmarked one. ("context" is absent in markers written
  before it was kept; such volumes accept any settings on a repeated CreateVolume.)
- Its capacity is the directory quota's `max_bytes` (0 = unlimited), its `maxInodes`
  mutable parameter the quota's `max_inodes` (0 = unlimited); with both 0 there is no quota.
- Creation is atomic: the directory is built as `/.csi-creating-<dir>` (marker, quota) and
  renamed into place with RENAME_NOREPLACE, so a crash leaves either nothing visible or a
  complete volume; a retry adopts a leftover `.csi-creating-` directory when it is what the
  retry would build (an empty one for a plain volume, one whose marker names the same
  source for a clone), and removes it otherwise.
- A volume from a content source is a writable clone (fusecache.meta.clone: shared data,
  no object copied) of the source's tree made as the `.csi-creating-` directory itself;
  the clone is linked only once complete, and its marker is written after it, so a marked
  leftover is a finished clone.
- A volume with `importSource` (imports.py) is the `.csi-creating-` directory, marked first
  with its name and source, filled by the importer, then linked. An import that fails is
  removed; a leftover of a driver that died halfway is resumed by the retry (the importer
  skips the names already there).
- Deletion drops the quota, then removes the tree with `clone.remove_tree` (batched,
  deepest first, read-only snapshot trees a user cut inside the volume included; files
  bypass the trash). The marked root goes last, so a retry after a crash finds the volume
  and continues where it stopped. The slices freed reach the engine's garbage list; a slice
  another tree still shares (a clone's, a snapshot's) stays.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fusecache.errors import FsError
from fusecache.meta import clone as tree
from fusecache.meta.base import RENAME_NOREPLACE, Meta
from fusecache.meta.redis import RedisMeta
from fusecache.types import ROOT_INO, Attr

log = logging.getLogger(__name__)

MARKER = b"trusted.csi.fusecache.io"
CREATING_PREFIX = ".csi-creating-"
DIR_MODE = 0o040777  # a pod may run as any uid; the volume root is world-writable like a fresh PV


@dataclass(frozen=True)
class ContentSource:
    """What a volume was made from: kind "snapshot" or "volume", and that one's CSI id."""

    kind: str
    id: str

    def to_json(self) -> dict[str, str]:
        return {self.kind: self.id}

    @classmethod
    def from_json(cls, data: object) -> ContentSource | None:
        if not isinstance(data, dict) or len(data) != 1:
            return None
        [(kind, source_id)] = data.items()
        return cls(str(kind), str(source_id)) if kind in ("snapshot", "volume") else None


@dataclass(frozen=True)
class VolumeDir:
    dir: str
    ino: int
    name: str  # CSI name from the marker; "" when the directory is not a CSI volume
    capacity: int  # quota bytes, 0 = unlimited
    max_inodes: int = 0
    context: dict[str, str] | None = None  # volume context recorded at creation, if any
    source: ContentSource | None = None  # content source it was cloned from, if any
    imported: str | None = None  # the (masked) bucket URL it was imported from, if any

    @property
    def is_volume(self) -> bool:
        return bool(self.name)


def _lookup(meta: Meta, parent: int, name: str) -> Attr | None:
    try:
        return meta.lookup(parent, name.encode())
    except FsError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


@dataclass(frozen=True)
class _Marker:
    name: str = ""  # "" when unmarked (or unreadable)
    context: dict[str, str] | None = None
    source: ContentSource | None = None
    imported: str | None = None


def _marker(meta: Meta, ino: int) -> _Marker:
    """What the marker records; an empty _Marker when there is none."""
    try:
        raw = meta.getxattr(ino, MARKER)
    except FsError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOENT):
            return _Marker()
        raise
    try:
        data = json.loads(raw)
        context = data.get("context")
        return _Marker(str(data["name"]),
                       {str(k): str(v) for k, v in context.items()} if context is not None else None,
                       ContentSource.from_json(data.get("source")),
                       str(data["import"]) if data.get("import") else None)
    except (ValueError, KeyError, TypeError, AttributeError):
        return _Marker()


def _describe(meta: Meta, dir_name: str, attr: Attr) -> VolumeDir:
    if not attr.is_dir:
        return VolumeDir(dir_name, attr.ino, "", 0)
    quota = meta.get_quota(attr.ino)
    marker = _marker(meta, attr.ino)
    return VolumeDir(dir_name, attr.ino, marker.name, quota.max_bytes if quota else 0,
                     quota.max_inodes if quota else 0, marker.context, marker.source, marker.imported)


def find(meta: Meta, dir_name: str) -> VolumeDir | None:
    """The top-level entry `dir_name`, or None when there is none."""
    attr = _lookup(meta, ROOT_INO, dir_name)
    return None if attr is None else _describe(meta, dir_name, attr)


def tree_engine(meta: Meta) -> RedisMeta:
    """The engine as the one clones and whole-tree removals run on (the only engine)."""
    if not isinstance(meta, RedisMeta):
        raise TypeError(f"clones need the Redis metadata engine, not {type(meta).__name__}")
    return meta


def used_bytes(meta: Meta, ino: int) -> int:
    """Bytes stored below directory `ino`: its quota's usage, else a walk (a volume
    without a quota has no usage counter)."""
    quota = meta.get_quota(ino)
    if quota is not None:
        return quota.used_bytes
    return tree_engine(meta)._subtree_usage(ino)[0]


def _marker_json(csi_name: str, context: dict[str, str] | None, source: ContentSource | None,
                 imported: str | None = None) -> bytes:
    data: dict[str, object] = {"name": csi_name, "created": round(time.time()), "context": context or {}}
    if source is not None:
        data["source"] = source.to_json()
    if imported is not None:
        data["import"] = imported
    return json.dumps(data).encode()


def _discard(meta: Meta, name: str) -> None:
    """Remove a leftover staging entry (a clone's tree may be large: batched removal)."""
    try:
        attr = meta.lookup(ROOT_INO, name.encode())
        if attr.is_dir:
            _drop_quota(meta, attr.ino)  # the tree removal leaves quota records alone
        tree.remove_tree(tree_engine(meta), ROOT_INO, name.encode())
    except FsError as exc:
        if exc.errno != errno.ENOENT:
            raise


def _finish(meta: Meta, staging: str, dir_name: str, attr: Attr, csi_name: str, capacity: int,
            max_inodes: int, context: dict[str, str] | None, source: ContentSource | None,
            imported: str | None = None) -> VolumeDir:
    _set_limits(meta, attr.ino, capacity, max_inodes)  # also replaces an earlier attempt's
    meta.rename(ROOT_INO, staging.encode(), ROOT_INO, dir_name.encode(), RENAME_NOREPLACE)
    return VolumeDir(dir_name, attr.ino, csi_name, capacity, max_inodes, dict(context or {}), source, imported)


def _adoptable(meta: Meta, attr: Attr, csi_name: str) -> bool:
    """Is a leftover staging entry one a plain create may finish: an empty directory,
    unmarked or marked as this very volume without a source?"""
    if not attr.is_dir or meta.readdir(attr.ino):
        return False
    marker = _marker(meta, attr.ino)
    return marker.source is None and marker.imported is None and marker.name in ("", csi_name)


def _make_staging(meta: Meta, staging: str) -> Attr:
    """The staging directory, made (or found, if another call made it meanwhile)."""
    try:
        return meta.mkdir(ROOT_INO, staging.encode(), DIR_MODE, 0, 0)
    except FsError as exc:
        if exc.errno != errno.EEXIST:
            raise
        return meta.lookup(ROOT_INO, staging.encode())


def create(meta: Meta, dir_name: str, csi_name: str, capacity: int,
           context: dict[str, str] | None = None, max_inodes: int = 0) -> VolumeDir:
    """Create volume `/<dir_name>`; raises FsError(EEXIST) if it appeared meanwhile."""
    staging = CREATING_PREFIX + dir_name
    attr = _lookup(meta, ROOT_INO, staging)
    if attr is not None and not _adoptable(meta, attr, csi_name):
        _discard(meta, staging)  # e.g. a clone left by a CreateVolume with a content source
        attr = None
    if attr is None:
        attr = _make_staging(meta, staging)
    meta.setxattr(attr.ino, MARKER, _marker_json(csi_name, context, None))
    return _finish(meta, staging, dir_name, attr, csi_name, capacity, max_inodes, context, None)


def create_from(meta: Meta, dir_name: str, csi_name: str, capacity: int, context: dict[str, str] | None,
                source: ContentSource, source_ino: int, max_inodes: int = 0) -> VolumeDir:
    """Create volume `/<dir_name>` as a writable clone of directory `source_ino` (a
    volume's, or a snapshot's frozen tree); FsError(EEXIST) if it appeared meanwhile."""
    staging = CREATING_PREFIX + dir_name
    attr = _lookup(meta, ROOT_INO, staging)
    if attr is not None:
        marker = _marker(meta, attr.ino)
        if not (attr.is_dir and marker.name == csi_name and marker.source == source):
            _discard(meta, staging)  # not the clone this call makes: start over
            attr = None
    if attr is None:
        # A clone of the same source cut short by a crash is resumed by clone() itself.
        attr = tree.clone(tree_engine(meta), source_ino, ROOT_INO, staging.encode(), read_only=False)
        # The copy carries the source's xattrs, its volume marker included: replace it.
        meta.setxattr(attr.ino, MARKER, _marker_json(csi_name, context, source))
    return _finish(meta, staging, dir_name, attr, csi_name, capacity, max_inodes, context, source)


def create_imported(meta: Meta, dir_name: str, csi_name: str, capacity: int, context: dict[str, str] | None,
                    imported: str, fill: Callable[[str, int], None], max_inodes: int = 0) -> VolumeDir:
    """Create volume `/<dir_name>` holding an import: `fill(path, ino)` imports into the
    staging directory (path from the root) before it is linked. A failure removes the
    directory; FsError(EEXIST) if the volume appeared meanwhile."""
    staging = CREATING_PREFIX + dir_name
    attr = _lookup(meta, ROOT_INO, staging)
    if attr is not None:
        marker = _marker(meta, attr.ino)
        if not (attr.is_dir and marker.name == csi_name and marker.imported == imported
                and marker.source is None):
            _discard(meta, staging)  # not the import this call makes: start over
            attr = None
        else:
            log.info("resuming the import of %s into volume %r", imported, csi_name)
    if attr is None:
        attr = _make_staging(meta, staging)
    # Marked before the import: a leftover of a driver that died is then recognised.
    meta.setxattr(attr.ino, MARKER, _marker_json(csi_name, context, None, imported))
    try:
        fill("/" + staging, attr.ino)
    except BaseException:
        try:  # an error answered leaves nothing behind; the next call starts over
            _discard(meta, staging)
        except Exception as exc:
            log.warning("removing the unfinished import /%s failed: %s", staging, exc)
        raise
    return _finish(meta, staging, dir_name, attr, csi_name, capacity, max_inodes, context, None, imported)


def _drop_quota(meta: Meta, ino: int) -> None:
    if meta.get_quota(ino) is not None:
        meta.del_quota(ino)


def _set_limits(meta: Meta, ino: int, capacity: int, max_inodes: int) -> None:
    """The quota of directory `ino`: these limits (usage counted from what it holds), or
    none when both are 0 (unlimited)."""
    if capacity or max_inodes:
        meta.set_quota(ino, capacity, max_inodes)
    else:
        _drop_quota(meta, ino)


def set_capacity(meta: Meta, volume: VolumeDir, capacity: int) -> None:
    _set_limits(meta, volume.ino, capacity, volume.max_inodes)


def set_max_inodes(meta: Meta, volume: VolumeDir, max_inodes: int) -> None:
    _set_limits(meta, volume.ino, volume.capacity, max_inodes)


def delete(meta: Meta, dir_name: str) -> bool:
    """Remove `/<dir_name>` and everything below it, frozen trees included; False if it was
    already gone."""
    attr = _lookup(meta, ROOT_INO, dir_name)
    if attr is None:
        return False
    if attr.is_dir:
        _drop_quota(meta, attr.ino)  # remove_tree leaves quota records alone
    try:
        tree.remove_tree(tree_engine(meta), ROOT_INO, dir_name.encode())
    except FsError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return False  # removed meanwhile by another delete
    return True


def list_volumes(meta: Meta, after: str = "") -> Iterator[VolumeDir]:
    """Volumes in directory-name order, starting after `after`."""
    entries = sorted((e for e in meta.readdir(ROOT_INO) if e.attr.is_dir), key=lambda e: e.name)
    for entry in entries:
        name = entry.name.decode(errors="replace")
        if name.startswith(".") or (after and name <= after):
            continue
        volume = _describe(meta, name, entry.attr)
        if volume.is_volume:
            yield volume
