"""Snapshots of volumes inside a filesystem, through the metadata engine (controller side).

Layout and invariants:
- Snapshots live in AREA = `/.csi-snapshots`, a dot name: ListVolumes skips it, and no
  volume id can name it (volume_id's directories never start with a dot).
- A snapshot is `/.csi-snapshots/<dir>` (`volume_id.dir_name` of the snapshot's CSI name):
  a writable *wrapper* directory carrying the xattr MARKER = JSON {"name": <CSI name>,
  "source": <source volume id>, "created_ns": <cut time>, "size": <bytes>}, with DATA
  inside it, the read-only (frozen) clone of the source volume's directory. The wrapper
  exists because a frozen inode takes no xattr at all, and because the frozen tree carries
  the copied xattrs of its source, its volume marker included, which must not be read as
  this snapshot's.
- Creation is atomic: the wrapper is built as `/.csi-snapshots/.csi-creating-<dir>` and
  renamed into place with RENAME_NOREPLACE only once its clone is whole and its marker
  written, so ListSnapshots never shows a half snapshot. A retry adopts the leftover
  wrapper: a clone cut short in it is resumed by clone() (same source, parent and name);
  a finished clone of an attempt that never answered is cut again, since its time and
  size were never reported.
- Deletion is one `clone.remove_tree` of the wrapper, frozen tree included; slices the
  source or restored volumes still share stay theirs (reference counts).
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from fusecache.errors import FsError
from fusecache.meta import clone as tree
from fusecache.meta.base import RENAME_NOREPLACE, Meta
from fusecache.types import ROOT_INO, Attr

from .errors import invalid
from .settings import KUBERNETES_PREFIXES
from .volumes import CREATING_PREFIX, MARKER, tree_engine, used_bytes

AREA = b".csi-snapshots"
DATA = b"data"
AREA_MODE = 0o040700  # only the controller (root) needs to see inside


@dataclass(frozen=True)
class SnapshotDir:
    dir: str
    ino: int  # the wrapper directory
    name: str  # CSI name from the marker; "" when the directory is not a snapshot
    source: str = ""  # source volume id
    created_ns: int = 0
    size: int = 0

    @property
    def is_snapshot(self) -> bool:
        return bool(self.name)


def check_parameters(parameters: Mapping[str, str]) -> None:
    """CreateSnapshot takes no parameters of its own; Kubernetes' keys (the snapshotter's
    --extra-create-metadata) are fine."""
    unknown = sorted(key for key in parameters if not key.startswith(KUBERNETES_PREFIXES))
    if unknown:
        raise invalid(f"unknown snapshot parameters {unknown}: none are supported")


def _lookup(meta: Meta, parent: int, name: bytes) -> Attr | None:
    try:
        return meta.lookup(parent, name)
    except FsError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def _area(meta: Meta, create: bool) -> int | None:
    """The snapshot area's inode; None when there is none (and `create` is false)."""
    attr = _lookup(meta, ROOT_INO, AREA)
    if attr is None and create:
        try:
            attr = meta.mkdir(ROOT_INO, AREA, AREA_MODE, 0, 0)
        except FsError as exc:
            if exc.errno != errno.EEXIST:
                raise
            attr = meta.lookup(ROOT_INO, AREA)  # made by a concurrent CreateSnapshot
    return None if attr is None else attr.ino


def _describe(meta: Meta, dir_name: str, attr: Attr) -> SnapshotDir:
    if not attr.is_dir:
        return SnapshotDir(dir_name, attr.ino, "")
    try:
        data = json.loads(meta.getxattr(attr.ino, MARKER))
        return SnapshotDir(dir_name, attr.ino, str(data["name"]), str(data["source"]), int(data["created_ns"]),
                           int(data["size"]))
    except FsError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOENT):
            return SnapshotDir(dir_name, attr.ino, "")
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        return SnapshotDir(dir_name, attr.ino, "")


def find(meta: Meta, dir_name: str) -> SnapshotDir | None:
    """The entry `dir_name` of the snapshot area, or None when there is none."""
    area = _area(meta, create=False)
    attr = None if area is None else _lookup(meta, area, dir_name.encode())
    return None if attr is None else _describe(meta, dir_name, attr)


def data_ino(meta: Meta, snapshot: SnapshotDir) -> int:
    """The root of the snapshot's frozen tree; FsError(ENOENT) if it is gone."""
    return meta.lookup(snapshot.ino, DATA).ino


def create(meta: Meta, dir_name: str, csi_name: str, source_id: str, source_ino: int) -> SnapshotDir:
    """Cut snapshot `dir_name` of the volume directory `source_ino`; FsError(EEXIST) if a
    snapshot of that directory name appeared meanwhile."""
    engine = tree_engine(meta)
    area = _area(meta, create=True)
    assert area is not None
    staging = (CREATING_PREFIX + dir_name).encode()
    wrapper = _lookup(meta, area, staging)
    if wrapper is not None and not wrapper.is_dir:
        tree.remove_tree(engine, area, staging)
        wrapper = None
    if wrapper is None:
        try:
            wrapper = meta.mkdir(area, staging, AREA_MODE, 0, 0)
        except FsError as exc:
            if exc.errno != errno.EEXIST:
                raise
            wrapper = meta.lookup(area, staging)
    elif _lookup(meta, wrapper.ino, DATA) is not None:
        tree.remove_tree(engine, wrapper.ino, DATA)  # finished by an attempt that never answered
    # The cut's time and size are taken just before the copy starts; each file is copied
    # atomically, as it is at some instant of the clone.
    created_ns = time.time_ns()
    size = used_bytes(meta, source_ino)
    tree.clone(engine, source_ino, wrapper.ino, DATA, read_only=True)
    marker = {"name": csi_name, "source": source_id, "created_ns": created_ns, "size": size}
    meta.setxattr(wrapper.ino, MARKER, json.dumps(marker).encode())
    meta.rename(area, staging, area, dir_name.encode(), RENAME_NOREPLACE)
    return SnapshotDir(dir_name, wrapper.ino, csi_name, source_id, created_ns, size)


def delete(meta: Meta, dir_name: str) -> bool:
    """Remove snapshot `dir_name` (wrapper and frozen tree); False if it was already gone."""
    area = _area(meta, create=False)
    if area is None:
        return False
    try:
        tree.remove_tree(tree_engine(meta), area, dir_name.encode())
    except FsError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def list_snapshots(meta: Meta, after: str = "") -> Iterator[SnapshotDir]:
    """Snapshots in directory-name order, starting after `after`; never one being cut."""
    area = _area(meta, create=False)
    if area is None:
        return
    entries = sorted((e for e in meta.readdir(area) if e.attr.is_dir), key=lambda e: e.name)
    for entry in entries:
        name = entry.name.decode(errors="replace")
        if name.startswith(".") or (after and name <= after):
            continue  # dot names: wrappers still being built (CREATING_PREFIX)
        snapshot = _describe(meta, name, entry.attr)
        if snapshot.is_snapshot:
            yield snapshot
