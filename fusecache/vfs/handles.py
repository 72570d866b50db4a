"""Per-client state of open files and directories."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..chunk.writer import FileWriter
from ..types import Attr, DirEntry, Slice


@dataclass
class OpenInode:
    """A file this client holds open through one or more handles."""

    ino: int
    attr: Attr
    opens: int = 0
    writer: FileWriter | None = None
    slices: dict[int, list[Slice]] = field(default_factory=dict)  # chunk index → slices
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
