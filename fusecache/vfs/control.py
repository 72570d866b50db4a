"""The control channel of a mount: virtual extended attributes under `fusecache.`.

Commands such as `fusecache warmup`, `stats` and `info` talk to the client that serves a
path by reading a virtual xattr of that path. Through the kernel, this works from any shell
that sees the mount (a pod with a bind mount of it included), needs no socket or extra
permission beyond read access to the file, and works on read-only mounts (a getxattr
is not a write). The names (none is listed by listxattr, none can be set):

    fusecache.info                  a file's chunks, slices and objects (JSON)
    fusecache.stats                 the client's cache and traffic figures (JSON; any path)
    fusecache.warmup[:OFF:LEN]      load the file's blocks (or those of a byte range) into the cache
    fusecache.cached[:OFF:LEN]      how much of it is cached, without loading anything
    fusecache.evict[:OFF:LEN]       drop its clean blocks from the cache
    fusecache.warmup-dir:START:COUNT:MAX   the same three, on a directory, for its regular
    fusecache.cached-dir:START:COUNT:MAX   files of at most MAX bytes among entries START to
    fusecache.evict-dir:START:COUNT:MAX    START+COUNT of its listing (not recursive)

The file commands answer `BLOCKS BYTES DONE_BLOCKS DONE_BYTES` (decimal, space separated):
the blocks the range needs and, of those, how many were fetched / are cached / were evicted.
The directory commands put `FILES FILE_BYTES` (the files handled and their sizes) in front.
One directory command does the work of hundreds of file commands: the client reads the
slice lists of the whole batch at once and keeps many fetches in flight, which is what
makes warming a tree of small files fast. A listing is read once and kept for the
following ranges of the same walk (DIR_LISTING_TTL); a file created meanwhile may be
missed, as by any walk of a changing tree.
The answer stays under 128 bytes on purpose: CPython's os.getxattr first tries a 128-byte
buffer, and a longer answer would make it ask twice, running the command twice.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from ..errors import FsError

PREFIX = b"fusecache."
INFO = b"fusecache.info"
STATS = b"fusecache.stats"
BLOCK_COMMANDS = ("warmup", "cached", "evict")
DIR_SUFFIX = "-dir"
DIR_LISTING_TTL = 30.0  # seconds a directory listing serves the ranges of one walk


@dataclass(frozen=True)
class BlockCommand:
    """A warmup/cached/evict request on a byte range of a file (length -1: to the end)."""

    op: str
    offset: int = 0
    length: int = -1


def is_control(name: bytes) -> bool:
    return name.startswith(PREFIX)


def _command_text(name: bytes) -> str | None:
    """The part of a control name after `fusecache.`, or None if it is not ASCII."""
    try:
        return name[len(PREFIX):].decode("ascii")
    except UnicodeDecodeError:
        return None


def parse_block_command(name: bytes) -> BlockCommand | None:
    """`fusecache.warmup`, `fusecache.cached:0:67108864`, ... or None for other names."""
    text = _command_text(name)
    if text is None:
        return None
    op, _, rest = text.partition(":")
    if op not in BLOCK_COMMANDS:
        return None
    if not rest:
        return BlockCommand(op)
    off_text, sep, len_text = rest.partition(":")
    if not sep or not off_text.isdigit() or not len_text.isdigit():
        raise FsError(errno.EINVAL, f"bad range in {text!r}")
    return BlockCommand(op, int(off_text), int(len_text))


@dataclass(frozen=True)
class DirCommand:
    """warmup/cached/evict on the small regular files of a range of a directory's entries."""

    op: str
    start: int
    count: int
    max_size: int


def parse_dir_command(name: bytes) -> DirCommand | None:
    """`fusecache.warmup-dir:0:256:67108864`, ... or None for other names."""
    text = _command_text(name)
    if text is None:
        return None
    head, _, rest = text.partition(":")
    op = head.removesuffix(DIR_SUFFIX)
    if op == head or op not in BLOCK_COMMANDS:
        return None
    fields = rest.split(":")
    if len(fields) != 3 or not all(f.isdigit() for f in fields):
        raise FsError(errno.EINVAL, f"bad range in {text!r}")
    start, count, max_size = (int(f) for f in fields)
    return DirCommand(op, start, count, max_size)


def dir_command_name(op: str, start: int, count: int, max_size: int) -> str:
    return f"{PREFIX.decode()}{op}{DIR_SUFFIX}:{start}:{count}:{max_size}"


def format_dir_answer(files: int, file_bytes: int, blocks: int, nbytes: int, done_blocks: int,
                      done_bytes: int) -> bytes:
    return f"{files} {file_bytes} {blocks} {nbytes} {done_blocks} {done_bytes}".encode()


def parse_dir_answer(raw: bytes) -> tuple[int, int, int, int, int, int]:
    """The client side of `format_dir_answer`."""
    files, file_bytes, blocks, nbytes, done_blocks, done_bytes = (int(x) for x in raw.split())
    return files, file_bytes, blocks, nbytes, done_blocks, done_bytes


def format_answer(blocks: int, nbytes: int, done_blocks: int, done_bytes: int) -> bytes:
    return f"{blocks} {nbytes} {done_blocks} {done_bytes}".encode()


def parse_answer(raw: bytes) -> tuple[int, int, int, int]:
    """The client side of `format_answer`."""
    blocks, nbytes, done_blocks, done_bytes = (int(x) for x in raw.split())
    return blocks, nbytes, done_blocks, done_bytes
