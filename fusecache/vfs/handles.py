"""Per-client state of open files and directories."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..chunk.writer import FileWriter
from ..types import Attr, DirEntry, Slice


class SliceCache:
    """Slice lists of an open file's chunks, each kept at most `ttl` seconds.

    The bound matters for safety: another client may compact or truncate a chunk, and the
    slices it dropped keep their objects only for the volume's garbage delay. A list older
    than that could name deleted objects, so `ttl` is kept well below the delay (Vfs)."""

    def __init__(self, ttl: float = 10.0) -> None:
        self.ttl = ttl
        self._lists: dict[int, tuple[float, list[Slice]]] = {}

    def get(self, index: int) -> list[Slice] | None:
        found = self._lists.get(index)
        if found is None:
            return None
        if time.monotonic() - found[0] > self.ttl:
            del self._lists[index]
            return None
        return found[1]

    def put(self, index: int, slices: list[Slice]) -> None:
        if self.ttl > 0:
            self._lists[index] = (time.monotonic(), slices)

    def pop(self, index: int) -> None:
        self._lists.pop(index, None)

    def clear(self) -> None:
        self._lists.clear()


@dataclass
class OpenInode:
    """A file this client holds open through one or more handles."""

    ino: int
    attr: Attr
    opens: int = 0
    writer: FileWriter | None = None
    slices: SliceCache = field(default_factory=SliceCache)  # chunk index → slices
    # The kernel asks for security.capability before every write (to drop file capabilities);
    # answering from memory while the file is open saves a metadata round trip per write.
    capability: bytes | None = None
    capability_known: bool = False

    @property
    def size(self) -> int:
        """The length readers see: committed length, or more if writes are still buffered."""
        if self.writer is not None:
            return max(self.attr.size, self.writer.end)
        return self.attr.size


@dataclass
class FileHandle:
    fh: int
    ino: int
    flags: int
    keep_cache: bool = False  # the kernel may keep the file's page cache (unchanged since cached)
    next_offset: int = 0  # where a sequential reader would read next
    sequential: int = 0  # consecutive sequential reads seen
    readahead_to: int = 0  # file offset up to which blocks were prefetched
    readahead_blocks: int = 0  # current readahead window, grows while the reader keeps up
    readahead_grow_at: int = 0  # reaching this offset widens the window


@dataclass
class DirHandle:
    fh: int
    ino: int
    entries: list[DirEntry]
