"""Volume ids of dynamically provisioned volumes, and the directory a CSI name maps to.

A dynamic volume id is `fc1:<fs tag>:<dir>`, a snapshot id `fc1s:<fs tag>:<dir>`:
- `fs tag` is the filesystem's uuid (32 hex digits), so a DeleteVolume or NodeStage whose
  secrets name a *different* filesystem is refused instead of touching another volume that
  happens to have a directory of the same name;
- `dir` is the volume's top-level directory in that filesystem (for a snapshot: its
  directory in the snapshot area, see snapshots.py), derived from the CSI name alone (so
  CreateVolume and CreateSnapshot are idempotent without any lookup table).

No secret and no server address is encoded: ids are visible in PV objects and events. At
most 5 + 32 + 1 + 63 = 101 bytes, inside the spec's 128-byte limit. Any other id (a static
PV's volumeHandle) is not parsed: its directory comes from the `subdir` volume attribute.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

PREFIX = "fc1"
SNAPSHOT_PREFIX = "fc1s"  # never a volume id: `fc1:` must be followed by the fs tag
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_DIR = r"(?P<dir>[A-Za-z0-9][A-Za-z0-9._-]{0,62})"
_ID = re.compile(rf"{PREFIX}:(?P<fs>[0-9a-f]{{32}}):{_DIR}")
_SNAPSHOT_ID = re.compile(rf"{SNAPSHOT_PREFIX}:(?P<fs>[0-9a-f]{{32}}):{_DIR}")


def dir_name(csi_name: str) -> str:
    """The directory for CSI volume `csi_name`: the name itself when it is short and plain
    (Kubernetes' `pvc-<uuid>` always is), else a readable prefix plus a hash of the name."""
    if _SAFE_NAME.fullmatch(csi_name):
        return csi_name
    digest = hashlib.sha256(csi_name.encode()).hexdigest()[:16]
    prefix = _UNSAFE_CHARS.sub("-", csi_name)[:40].lstrip(".-_") or "vol"
    return f"{prefix}-{digest}"


def fs_tag(fs_uuid: str) -> str:
    """32 hex digits naming a filesystem: its uuid without dashes, or a hash of a non-uuid."""
    plain = fs_uuid.replace("-", "").lower()
    if _HEX32.fullmatch(plain):
        return plain
    return hashlib.sha256(fs_uuid.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class DynamicId:
    fs: str  # fs_tag of the filesystem
    dir: str  # top-level directory of the volume

    def __str__(self) -> str:
        return f"{PREFIX}:{self.fs}:{self.dir}"

    @property
    def path(self) -> str:
        return "/" + self.dir


def make_id(fs_uuid: str, csi_name: str) -> DynamicId:
    return DynamicId(fs_tag(fs_uuid), dir_name(csi_name))


def parse_id(volume_id: str) -> DynamicId | None:
    """The parts of a dynamic volume id, or None for anything else."""
    match = _ID.fullmatch(volume_id)
    if match is None:
        return None
    return DynamicId(match["fs"], match["dir"])


@dataclass(frozen=True)
class SnapshotId:
    fs: str  # fs_tag of the filesystem
    dir: str  # directory of the snapshot in the filesystem's snapshot area

    def __str__(self) -> str:
        return f"{SNAPSHOT_PREFIX}:{self.fs}:{self.dir}"


def make_snapshot_id(fs_uuid: str, csi_name: str) -> SnapshotId:
    return SnapshotId(fs_tag(fs_uuid), dir_name(csi_name))


def parse_snapshot_id(snapshot_id: str) -> SnapshotId | None:
    """The parts of a snapshot id of this driver, or None for anything else."""
    match = _SNAPSHOT_ID.fullmatch(snapshot_id)
    if match is None:
        return None
    return SnapshotId(match["fs"], match["dir"])
