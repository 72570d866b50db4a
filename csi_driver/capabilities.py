"""What volumes of this driver can be: mounted filesystems, any access mode, bind-mount flags.

A fusecache volume is a directory of a shared POSIX filesystem, so every node can read and
write it at once (all MULTI_NODE modes work); it is never a block device. On one node all
the pods of a volume go through one FUSE client, so any number of them may write it
(SINGLE_NODE_MULTI_WRITER); SINGLE_NODE_SINGLE_WRITER (one workload) is kept by the node
refusing a second target path (manager.publish).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._proto import csi_pb2 as pb
from .errors import invalid

AccessMode = pb.VolumeCapability.AccessMode

SUPPORTED_MODES = frozenset({
    AccessMode.SINGLE_NODE_WRITER,
    AccessMode.SINGLE_NODE_READER_ONLY,
    AccessMode.MULTI_NODE_READER_ONLY,
    AccessMode.MULTI_NODE_SINGLE_WRITER,
    AccessMode.MULTI_NODE_MULTI_WRITER,
    AccessMode.SINGLE_NODE_SINGLE_WRITER,
    AccessMode.SINGLE_NODE_MULTI_WRITER,
})
# Published at one target path at a time (the spec: "a single workload on a single node").
ONE_TARGET_MODES = frozenset({AccessMode.SINGLE_NODE_SINGLE_WRITER})
READ_ONLY_MODES = frozenset({AccessMode.SINGLE_NODE_READER_ONLY, AccessMode.MULTI_NODE_READER_ONLY})
FS_TYPES = frozenset({"", "fusecache", "fuse.fusecache"})

# Flags a bind mount can carry (per-mount flags of mount(2)); name -> (set, clear).
MOUNT_FLAGS: dict[str, tuple[str, str]] = {
    "ro": ("ro", "rw"), "rw": ("rw", "ro"),
    "nosuid": ("nosuid", "suid"), "suid": ("suid", "nosuid"),
    "nodev": ("nodev", "dev"), "dev": ("dev", "nodev"),
    "noexec": ("noexec", "exec"), "exec": ("exec", "noexec"),
    "noatime": ("noatime", ""), "relatime": ("relatime", ""), "strictatime": ("strictatime", ""),
    "nodiratime": ("nodiratime", "diratime"), "diratime": ("diratime", "nodiratime"),
}


@dataclass(frozen=True)
class MountRequest:
    """What a Stage/Publish call asks for, validated."""

    readonly: bool
    flags: tuple[str, ...]  # bind-mount flags, in request order
    mode: int = 0  # the access mode


def check_capability(cap: pb.VolumeCapability, what: str = "volume_capability") -> MountRequest:
    """Validate one capability; raises INVALID_ARGUMENT saying what is unsupported."""
    problem = capability_problem(cap)
    if problem:
        raise invalid(f"{what}: {problem}")
    flags = tuple(cap.mount.mount_flags)
    return MountRequest(readonly=cap.access_mode.mode in READ_ONLY_MODES or "ro" in flags, flags=flags,
                        mode=cap.access_mode.mode)


def capability_problem(cap: pb.VolumeCapability) -> str:
    """Why this driver cannot serve `cap`, or '' when it can."""
    if not cap.HasField("access_mode"):
        return "access_mode is required"
    mode = cap.access_mode.mode
    if mode == AccessMode.UNKNOWN:
        return "access_mode is required"
    if mode not in SUPPORTED_MODES:
        known = mode in AccessMode.Mode.values()
        return f"access mode {AccessMode.Mode.Name(mode) if known else mode} is not supported"
    kind = cap.WhichOneof("access_type")
    if kind is None:
        return "access_type (mount) is required"
    if kind == "block":
        return "block volumes are not supported: fusecache volumes are filesystems"
    if cap.mount.fs_type not in FS_TYPES:
        return f"fs_type {cap.mount.fs_type!r} is not supported (leave it empty or use 'fusecache')"
    unknown = [flag for flag in cap.mount.mount_flags if flag not in MOUNT_FLAGS]
    if unknown:
        return (f"mount flags {unknown} are not supported; bind mounts take {sorted(MOUNT_FLAGS)}, "
                "FUSE options go in the 'fuseOptions' volume attribute")
    return ""


def check_capabilities(caps: Iterable[pb.VolumeCapability]) -> None:
    listed = list(caps)
    if not listed:
        raise invalid("volume_capabilities is required")
    for cap in listed:
        check_capability(cap, "volume_capabilities")


def require(value: object, field: str) -> None:
    """INVALID_ARGUMENT when a required field is empty (proto3 has no 'unset' for scalars)."""
    if not value:
        raise invalid(f"{field} is required")


def require_capability(request: object, field: str = "volume_capability") -> pb.VolumeCapability:
    if not request.HasField(field):  # type: ignore[attr-defined]
        raise invalid(f"{field} is required")
    return getattr(request, field)
