"""Volume directories inside a filesystem, through the metadata engine (controller side).

Layout and invariants:
- A dynamic volume is a top-level directory `/<dir>` (see `volume_id.dir_name`) carrying the
  xattr MARKER = JSON {"name": <CSI name>, "context": <mount settings it was created with>}.
  Only directories with the marker are volumes: ListVolumes skips everything else and
  DeleteVolume refuses to remove an unmarked one. ("context" is absent in markers written
  before it was kept; such volumes accept any settings on a repeated CreateVolume.)
- Its capacity is the directory quota's `max_bytes` (0 = no quota, unlimited).
- Creation is atomic: the directory is built as `/.csi-creating-<dir>` (marker, quota) and
  renamed into place with RENAME_NOREPLACE, so a crash leaves either nothing visible or a
  complete volume; a retry adopts a leftover `.csi-creating-` directory.
- Deletion removes the tree bottom-up; a retry after a crash continues where it stopped
  (the engine frees data objects of unlinked files itself).
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

from fusecache.errors import FsError
from fusecache.meta.base import RENAME_NOREPLACE, Meta
from fusecache.types import ROOT_INO, Attr

MARKER = b"trusted.csi.fusecache.io"
CREATING_PREFIX = ".csi-creating-"
DIR_MODE = 0o040777  # a pod may run as any uid; the volume root is world-writable like a fresh PV


@dataclass(frozen=True)
class VolumeDir:
    dir: str
    ino: int
    name: str  # CSI name from the marker; "" when the directory is not a CSI volume
    capacity: int  # quota bytes, 0 = unlimited
    max_inodes: int = 0
    context: dict[str, str] | None = None  # volume context recorded at creation, if any

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


def _marker(meta: Meta, ino: int) -> tuple[str, dict[str, str] | None]:
    """(CSI name, recorded volume context) from the marker; ("", None) when unmarked."""
    try:
        raw = meta.getxattr(ino, MARKER)
    except FsError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOENT):
            return "", None
        raise
    try:
        data = json.loads(raw)
        context = data.get("context")
        return str(data["name"]), {str(k): str(v) for k, v in context.items()} if context is not None else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", None


def _describe(meta: Meta, dir_name: str, attr: Attr) -> VolumeDir:
    if not attr.is_dir:
        return VolumeDir(dir_name, attr.ino, "", 0)
    quota = meta.get_quota(attr.ino)
    name, context = _marker(meta, attr.ino)
    return VolumeDir(dir_name, attr.ino, name, quota.max_bytes if quota else 0,
                     quota.max_inodes if quota else 0, context)


def find(meta: Meta, dir_name: str) -> VolumeDir | None:
    """The top-level entry `dir_name`, or None when there is none."""
    attr = _lookup(meta, ROOT_INO, dir_name)
    return None if attr is None else _describe(meta, dir_name, attr)


def create(meta: Meta, dir_name: str, csi_name: str, capacity: int,
           context: dict[str, str] | None = None) -> VolumeDir:
    """Create volume `/<dir_name>`; raises FsError(EEXIST) if it appeared meanwhile."""
    staging = CREATING_PREFIX + dir_name
    attr = _lookup(meta, ROOT_INO, staging)
    if attr is None:
        try:
            attr = meta.mkdir(ROOT_INO, staging.encode(), DIR_MODE, 0, 0)
        except FsError as exc:
            if exc.errno != errno.EEXIST:
                raise
            attr = meta.lookup(ROOT_INO, staging.encode())
    marker = json.dumps({"name": csi_name, "created": round(time.time()), "context": context or {}}).encode()
    meta.setxattr(attr.ino, MARKER, marker)
    if capacity:
        meta.set_quota(attr.ino, capacity, 0)
    else:
        _drop_quota(meta, attr.ino)  # a leftover from an earlier attempt with a size
    meta.rename(ROOT_INO, staging.encode(), ROOT_INO, dir_name.encode(), RENAME_NOREPLACE)
    return VolumeDir(dir_name, attr.ino, csi_name, capacity, context=dict(context or {}))


def _drop_quota(meta: Meta, ino: int) -> None:
    if meta.get_quota(ino) is not None:
        meta.del_quota(ino)


def set_capacity(meta: Meta, volume: VolumeDir, capacity: int) -> None:
    meta.set_quota(volume.ino, capacity, volume.max_inodes)


def delete(meta: Meta, dir_name: str) -> bool:
    """Remove `/<dir_name>` and everything below it; False if it was already gone."""
    attr = _lookup(meta, ROOT_INO, dir_name)
    if attr is None:
        return False
    remove_tree(meta, ROOT_INO, dir_name.encode(), attr)
    return True


def remove_tree(meta: Meta, parent: int, name: bytes, attr: Attr) -> None:
    """Depth-first removal without recursion (trees can be deep). Entries that vanish
    meanwhile (another delete of the same volume after a crash) are fine. Files bypass the
    trash: deleting a volume is the reclaim policy's decision, not a mistake to undo (and
    the freed data still waits out the garbage delay)."""
    if not attr.is_dir:
        _ignore_enoent(meta.unlink, parent, name, False)
        return
    # (parent ino, name, ino, children already pushed)
    stack: list[tuple[int, bytes, int, bool]] = [(parent, name, attr.ino, False)]
    while stack:
        dir_parent, dir_name, ino, expanded = stack.pop()
        if expanded:
            if dir_parent == parent and dir_name == name:
                _ignore_enoent(_drop_quota, meta, ino)
            _ignore_enoent(meta.rmdir, dir_parent, dir_name)
            continue
        stack.append((dir_parent, dir_name, ino, True))
        try:
            entries = meta.readdir(ino)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                stack.pop()
                continue
            raise
        for entry in entries:
            if entry.attr.is_dir:
                stack.append((ino, entry.name, entry.attr.ino, False))
            else:
                _ignore_enoent(meta.unlink, ino, entry.name, False)


def _ignore_enoent(func: object, *args: object) -> None:
    try:
        func(*args)  # type: ignore[operator]
    except FsError as exc:
        if exc.errno != errno.ENOENT:
            raise


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
