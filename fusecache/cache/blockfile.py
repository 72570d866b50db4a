"""On-disk format of one cached block, and the names of cache files.

A cache file is a fixed header, the key, then the block bytes:

    offset  size  field
    0       4     magic b"FCB1"
    4       2     format version (1), little-endian
    6       2     key length K in bytes (UTF-8)
    8       8     data length N
    16      8     xxh3_64 of the data
    24      K     the object key
    24+K    N     the data

A file is valid only if the magic, version and key match, its size is exactly
24 + K + N, and the checksum matches: a truncated, extended, misplaced or bit-flipped file
is rejected as a whole, never partly served.

File names are `<quoted key>.<generation>`: the key percent-encoded into one path
component (so the index can be rebuilt from a directory listing, without opening files)
plus a generation unique to each write, so that a late unlink of an evicted copy can never
remove a newer copy of the same key.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote

import xxhash

MAGIC = b"FCB1"
VERSION = 1
HEADER = struct.Struct("<4sHHQQ")
MAX_NAME = 240  # stay below NAME_MAX (255) with room for the ".tmp" suffix

Buffer = bytes | bytearray | memoryview


class CorruptBlock(Exception):
    """A cache file is not a valid copy of the requested block."""


def checksum(data: Buffer) -> int:
    return xxhash.xxh3_64_intdigest(data)


def file_size(key: str, data_len: int) -> int:
    return HEADER.size + len(key.encode()) + data_len


def shard(key: str) -> str:
    """The 2-hex-digit subdirectory of a key (spreads files over 256 directories)."""
    return f"{xxhash.xxh32_intdigest(key.encode()) & 0xFF:02x}"


class Generations:
    """Unique, increasing write generations: nanosecond clock, bumped past the last one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns())
            return self._last


def file_name(key: str, generation: int) -> str | None:
    """The cache file name of a key, or None if the key is too long to be one path component."""
    if not key:
        return None
    name = f"{quote(key, safe='')}.{generation:x}"
    return name if len(name) <= MAX_NAME else None


def parse_file_name(name: str) -> tuple[str, int] | None:
    """(key, generation) of a cache file name, or None for a name we did not write."""
    quoted, dot, gen = name.rpartition(".")
    if not dot or not quoted:
        return None
    try:
        return unquote(quoted, errors="strict"), int(gen, 16)
    except ValueError:
        return None


def _write_all(fd: int, data: Buffer) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_block(tmp_dir: Path, final: Path, key: str, data: Buffer, *, durable: bool) -> None:
    """Write a cache file under a temporary name, then rename it to `final`.

    A crash leaves either no file under `final` or a complete one (plus possibly a stray
    temporary file, which start-up removes). With `durable`, the data and the directory
    entry are fsync'ed before returning, so the file survives a power loss.
    """
    key_b = key.encode()
    header = HEADER.pack(MAGIC, VERSION, len(key_b), len(data), checksum(data))
    tmp = tmp_dir / f"{final.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            _write_all(fd, header + key_b)
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(final.parent)


def read_block(path: Path, key: str, *, verify: bool) -> bytes:
    """The block stored in `path`; CorruptBlock if the file is not a valid copy of `key`.

    OSError (including FileNotFoundError) passes through to the caller.
    """
    key_b = key.encode()
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        head = _read_exact(f, HEADER.size + len(key_b))
        if len(head) < HEADER.size:
            raise CorruptBlock(f"short header ({len(head)} bytes)")
        magic, version, key_len, data_len, digest = HEADER.unpack_from(head)
        if magic != MAGIC or version != VERSION:
            raise CorruptBlock("bad magic or version")
        if key_len != len(key_b) or head[HEADER.size:] != key_b:
            raise CorruptBlock("key mismatch")
        if size != HEADER.size + key_len + data_len:
            raise CorruptBlock(f"file is {size} bytes, header says {HEADER.size + key_len + data_len}")
        data = _read_exact(f, data_len)
    if len(data) != data_len:
        raise CorruptBlock(f"short data ({len(data)} of {data_len} bytes)")
    if verify and checksum(data) != digest:
        raise CorruptBlock("checksum mismatch")
    return data


def _read_exact(f: io.FileIO, n: int) -> bytes:
    """Read n bytes, or fewer at EOF (one raw read may return less than asked)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)
