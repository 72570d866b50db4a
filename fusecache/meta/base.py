"""The metadata engine interface.

Every method is synchronous and blocking (engines talk to a server); the VFS calls them
from worker threads, never on the trio loop. Failures of the namespace are raised as
`FsError(errno)`; an unreachable or broken engine raises `MetaError` (the VFS maps it to
EIO). Engines must be thread-safe: many worker threads call one instance concurrently.

Names are `bytes`. Permission checks on mode bits are the kernel's job (the volume is
mounted with `default_permissions`); engines check structure: existence, types,
emptiness, name length, volume capacity/inode limits and directory quotas.

Consistency rule: every method that changes more than one key does so atomically, so a
client killed at any instant leaves a consistent namespace. Data objects referenced by a
slice are uploaded *before* `write()` commits that slice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..types import Attr, DirEntry, Quota, SessionInfo, SetAttr, Slice, StatFs, VolumeSettings

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
MAX_NAME = 255
MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 65536


class GarbageBatch(list[tuple[int, int]]):
    """What `take_garbage` hands out: (slice_id, slice_size) items, and `released`, the
    chunks of deleted files the same call let go without freeing any slice (clones still
    hold them). A collector goes on while either is non-zero."""

    def __init__(self, items: list[tuple[int, int]] = (), released: int = 0) -> None:  # type: ignore[assignment]
        super().__init__(items)
        self.released = released

    @property
    def more(self) -> bool:
        """Whether a collector should ask again."""
        return bool(self) or self.released > 0


class Meta(ABC):
    """A volume's namespace and the chunk → slice maps of its files."""

    trash_days: int = 0  # from the volume settings (format/load): 0 = no trash

    # -- volume ---------------------------------------------------------------------------
    @abstractmethod
    def format(self, settings: VolumeSettings, force: bool = False) -> None:
        """Create the volume (root directory, counters, settings). Raises FsError(EEXIST)
        if a volume already exists here and `force` is false; with `force` only the
        settings are replaced, data is kept."""

    @abstractmethod
    def load(self) -> VolumeSettings:
        """The volume's settings; raises MetaError if the volume was never formatted."""

    @abstractmethod
    def statfs(self, ino: int = 1) -> StatFs:
        """Space and inodes of the volume (or of the quota of `ino`'s subtree, when the
        nearest directory quota at or above `ino` is tighter)."""

    @abstractmethod
    def shutdown(self) -> None:
        """Release connections."""

    # -- sessions (one per mounted client) ------------------------------------------------
    @abstractmethod
    def new_session(self, host: str, pid: int, mountpoint: str, version: str, origin: str = "") -> int: ...

    @abstractmethod
    def heartbeat(self, sid: int, in_use: int = 0) -> None:
        """The session is alive. `in_use`: the lowest slice id it may still commit (0:
        unknown); objects of such slices are off limits to `fusecache gc`."""

    @abstractmethod
    def close_session(self, sid: int) -> None:
        """End a session: files it kept alive after unlink (open but nlink 0) are freed."""

    @abstractmethod
    def list_sessions(self) -> list[SessionInfo]: ...

    @abstractmethod
    def clean_stale_sessions(self, max_age: float) -> int:
        """Close sessions whose heartbeat is older than `max_age` seconds (crashed
        clients). Returns how many were closed."""

    # -- namespace ------------------------------------------------------------------------
    @abstractmethod
    def lookup(self, parent: int, name: bytes) -> Attr: ...

    @abstractmethod
    def getattr(self, ino: int) -> Attr: ...

    @abstractmethod
    def setattr(self, ino: int, changes: SetAttr) -> Attr:
        """chmod/chown/utimens/truncate. ctime is always set to now; truncation also sets
        mtime. Shrinking releases the data beyond the new size; growing leaves a hole."""

    @abstractmethod
    def mknod(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0) -> Attr:
        """Create a file, fifo, socket or device node (mode carries the S_IFMT type).
        Directories are created with mkdir, symlinks with symlink."""

    @abstractmethod
    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr: ...

    @abstractmethod
    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr: ...

    @abstractmethod
    def readlink(self, ino: int) -> bytes: ...

    @abstractmethod
    def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        """Hard link; EPERM for directories."""

    @abstractmethod
    def unlink(self, parent: int, name: bytes, trash: bool = True) -> None:
        """Remove a non-directory entry. When the last link goes the inode moves to the
        volume's trash (if it keeps one and `trash` is true); otherwise it is freed, unless
        a live session (any client) holds it open: then it is freed on the last close
        anywhere, or when the last such session ends."""

    @abstractmethod
    def rmdir(self, parent: int, name: bytes) -> None: ...

    @abstractmethod
    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0) -> None:
        """POSIX rename, plus RENAME_NOREPLACE (EEXIST if the target exists) and
        RENAME_EXCHANGE (swap two existing entries)."""

    @abstractmethod
    def readdir(self, ino: int) -> list[DirEntry]:
        """All entries of a directory, without "." and "..", with their attributes."""

    @abstractmethod
    def dir_names(self, ino: int) -> list[tuple[bytes, int]]:
        """All (name, inode) pairs of a directory, without "." and "..", in readdir's order:
        a listing without attributes, for a caller that holds most of them already."""

    # -- open files -----------------------------------------------------------------------
    @abstractmethod
    def open(self, ino: int, known: Attr | None = None) -> Attr:
        """Note that this session holds `ino` open, where every client's unlink sees it;
        returns fresh attributes (or `known`, attributes the caller has just received,
        e.g. from a create, saving a round trip)."""

    @abstractmethod
    def release(self, ino: int) -> None:
        """The session closed `ino` once; after the last release an unlinked inode that no
        other session holds is freed (possibly a little later, see flush_releases)."""

    def create_held(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        """A regular file created and held open by this session (a FUSE create): `open`
        of it right after needs no round trip."""
        return self.mknod(parent, name, mode, uid, gid)

    # Optional non-blocking shortcuts, safe to call on an event loop: they never wait and
    # never do I/O. False/None means "not done; make the blocking call instead".
    def open_nowait(self, ino: int) -> object:
        """Count an open of `ino` without waiting: True (fetch attributes as usual), a
        request that notes the open and returns attributes (engine-specific, see
        RedisMeta), or None: make the blocking `open` call."""
        return None

    def opened(self, ino: int, ok: bool) -> None:  # noqa: B027 - optional hook
        """The request an `open_nowait` returned has ended (engines with such requests)."""

    def release_nowait(self, ino: int) -> bool:
        """`release(ino)` if that needs no waiting."""
        return False

    def flush_releases(self, min_age: float = 0.0) -> int:
        """Finish releases of files closed `min_age` seconds ago (engines that note opens
        on the server do it in batches); returns how many were finished."""
        return 0

    def try_lease(self, name: str, seconds: float) -> bool:
        """Whether this client should do the volume-wide chore `name` now."""
        return True

    # -- file data ------------------------------------------------------------------------
    @abstractmethod
    def read(self, ino: int, chunk_index: int) -> list[Slice]:
        """The slices of one chunk in commit order (later slices cover earlier ones)."""

    @abstractmethod
    def reserve_slice_ids(self, count: int) -> int:
        """Reserve `count` consecutive slice ids; returns the first. Ids are never reused."""

    @abstractmethod
    def write(self, ino: int, chunk_index: int, piece: Slice, mtime_ns: int) -> Attr:
        """Commit a slice to a chunk and grow the file length to cover it. Checks the volume
        capacity (ENOSPC) and directory quotas (EDQUOT) when the file grows."""

    @abstractmethod
    def compact(self, ino: int, chunk_index: int, old: list[Slice], new: Slice) -> bool:
        """Replace `old` (which must still be the first len(old) slices of the chunk) by
        `new`. Returns False, changing nothing, if the chunk changed meanwhile."""

    # -- garbage: objects no slice references any more ------------------------------------
    @abstractmethod
    def take_garbage(self, limit: int) -> GarbageBatch:
        """Up to `limit` (slice_id, slice_size) whose objects must be deleted: slices
        dropped at least the volume's garbage delay ago. Taken items are hidden from other
        callers for a while and stay queued until `ack_garbage`, so a crash between the two
        only repeats deletes."""

    @abstractmethod
    def ack_garbage(self, items: list[tuple[int, int]]) -> None: ...

    # -- extended attributes --------------------------------------------------------------
    @abstractmethod
    def getxattr(self, ino: int, name: bytes) -> bytes:
        """ENODATA if absent."""

    @abstractmethod
    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        """XATTR_CREATE: EEXIST if present; XATTR_REPLACE: ENODATA if absent."""

    @abstractmethod
    def listxattr(self, ino: int) -> list[bytes]: ...

    @abstractmethod
    def removexattr(self, ino: int, name: bytes) -> None:
        """ENODATA if absent."""

    # -- directory quotas -----------------------------------------------------------------
    @abstractmethod
    def set_quota(self, ino: int, max_bytes: int, max_inodes: int) -> None:
        """Limit the subtree under directory `ino` (0 = unlimited). Usage is counted from
        the subtree's current content."""

    @abstractmethod
    def get_quota(self, ino: int) -> Quota | None: ...

    @abstractmethod
    def del_quota(self, ino: int) -> None: ...
