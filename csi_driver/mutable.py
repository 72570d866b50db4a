"""Mutable parameters of a volume: CreateVolume's and ControllerModifyVolume's
`mutable_parameters` (in Kubernetes, the `parameters` of a VolumeAttributesClass).

    maxInodes   the inode limit of the volume's directory quota: how many files, directories
                and symlinks the volume may hold ("0": no limit). A limit at or below what the
                volume already holds is accepted: creating entries then fails with EDQUOT
                until enough are deleted, as with a byte quota.

They are part of the directory quota, which the metadata engine keeps and checks on every
create, whichever client asks: a change needs nothing on the nodes (no remount, and
NodeGetVolumeStats reads the quota afresh each time), so ControllerModifyVolume is the
whole of it. The byte limit is the volume's capacity, changed by ControllerExpandVolume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import invalid

MAX_INODES = "maxInodes"
KEYS = frozenset({MAX_INODES})
# The engine's scripts compare limits as Lua numbers (doubles): exact up to 2**53.
INODE_LIMIT_MAX = 1 << 53


@dataclass(frozen=True)
class MutableParameters:
    """What a request asks to set; None for a key it does not name (left as it is: the spec
    forbids changing a volume on the absence of a key)."""

    max_inodes: int | None = None

    def conflicts(self, max_inodes: int) -> list[str]:
        """The keys whose requested value differs from a volume's (`max_inodes` of its quota)."""
        return [MAX_INODES] if self.max_inodes is not None and self.max_inodes != max_inodes else []


def parse(parameters: Mapping[str, str]) -> MutableParameters:
    """Validate `parameters`; INVALID_ARGUMENT for an unknown key or a bad value."""
    unknown = sorted(key for key in parameters if key not in KEYS)
    if unknown:
        raise invalid(f"unknown mutable parameters {unknown}; known: {sorted(KEYS)}")
    max_inodes = None
    if MAX_INODES in parameters:
        raw = parameters[MAX_INODES].strip()
        if not raw.isascii() or not raw.isdigit():
            raise invalid(f"{MAX_INODES} must be a whole number of inodes (0: no limit), not {raw!r}")
        max_inodes = int(raw)
        if max_inodes > INODE_LIMIT_MAX:
            raise invalid(f"{MAX_INODES} must be at most {INODE_LIMIT_MAX}")
    return MutableParameters(max_inodes)
