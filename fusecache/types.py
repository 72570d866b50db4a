"""Value types passed between layers. All frozen: a value never changes under a reader."""

from __future__ import annotations

import json
import stat
from dataclasses import asdict, dataclass, field, replace

ROOT_INO = 1
# The volume's trash directory, `.trash` at the root (found by lookup, never listed). A fixed
# number far above any counter-allocated inode, and below 2**53 so Lua handles it exactly.
TRASH_INO = 1 << 52
TRASH_NAME = b".trash"

# File types as stored in metadata (the S_IFMT bits of st_mode).
TYPE_FILE = stat.S_IFREG
TYPE_DIR = stat.S_IFDIR
TYPE_SYMLINK = stat.S_IFLNK
TYPE_FIFO = stat.S_IFIFO
TYPE_SOCK = stat.S_IFSOCK
TYPE_CHR = stat.S_IFCHR
TYPE_BLK = stat.S_IFBLK


@dataclass(frozen=True, slots=True)
class Attr:
    """Attributes of one inode. Times are integer nanoseconds since the epoch."""

    ino: int
    mode: int  # S_IFMT type bits | permission bits
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    size: int = 0
    rdev: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    parent: int = 0  # directories only: the parent inode, so ".." needs no lookup
    frozen: bool = False  # part of a read-only snapshot: no change through any mount (EROFS)
    unfilled: bool = False  # a lazily imported directory whose entries are not listed yet

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def with_(self, **changes: int | bool) -> Attr:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class SetAttr:
    """The fields a setattr call changes; None means "leave as is"."""

    mode: int | None = None  # permission bits only (type bits are ignored)
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    atime_now: bool = False
    mtime_now: bool = False


@dataclass(frozen=True, slots=True)
class Slice:
    """A run of bytes of one chunk, backed by (part of) an immutable slice object.

    `id` names the slice object (0 means a hole: reads as zeros). The slice object holds
    `size` bytes; this reference uses `length` bytes of it starting at `off`, placed at
    `pos` within the chunk.
    """

    pos: int
    id: int
    size: int
    off: int
    length: int
    # xxh3-64 of each block of the slice object, computed at upload; a block fetched from the
    # object store must match. Empty for holes and for slices written before checksums.
    hashes: tuple[int, ...] = ()

    @property
    def end(self) -> int:
        return self.pos + self.length

    def block_hash(self, index: int) -> int:
        """The expected checksum of block `index` (0: none recorded)."""
        return self.hashes[index] if index < len(self.hashes) else 0


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: bytes
    attr: Attr


@dataclass(frozen=True, slots=True)
class StatFs:
    total_bytes: int
    avail_bytes: int
    used_inodes: int
    avail_inodes: int


@dataclass(frozen=True, slots=True)
class Quota:
    """A directory quota. 0 means "no limit" for that dimension."""

    max_bytes: int = 0
    max_inodes: int = 0
    used_bytes: int = 0
    used_inodes: int = 0


@dataclass(frozen=True, slots=True)
class SessionInfo:
    sid: int
    host: str
    pid: int
    mountpoint: str
    version: str
    started: float
    heartbeat: float = 0.0
    origin: str = ""  # boot id and pid namespace of the client's machine (see cli/mount.py)


@dataclass(frozen=True)
class VolumeSettings:
    """What `format` records for a volume; `mount` needs nothing else but the META_URL."""

    name: str
    uuid: str
    storage: str  # "s3" | "file"
    bucket: str  # S3 endpoint URL with bucket path, or a local directory
    access_key: str = ""
    secret_key: str = ""
    block_size: int = 4 << 20
    capacity: int = 0  # bytes; 0 = unlimited
    inodes: int = 0  # 0 = unlimited
    created: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)
    trash_days: int = 1  # unlinked files wait this long in /.trash (0: no trash)
    garbage_delay: float = 300.0  # seconds a dropped slice keeps its objects (see docs/data-safety.md)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> VolumeSettings:
        return cls(**json.loads(text))

    def masked(self) -> dict[str, object]:
        """The settings safe to print: secrets replaced."""
        out = asdict(self)
        for key in ("access_key", "secret_key"):
            if out[key]:
                out[key] = "****"
        return out
