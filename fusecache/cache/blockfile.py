"""On-disk format of one cached block, and the names of cache files.

A cache file (format 2) is a fixed header, the key, a table of page checksums, then the
block bytes:

    offset  size  field
    0       4     magic b"FCB2"
    4       2     format version (2), little-endian
    6       2     key length K in bytes (UTF-8)
    8       8     data length N
    16      4     page size P (16 KiB; files with any power of two from 4 KiB to 1 MiB are read)
    20      4     0 (reserved)
    24      8     xxh3_64 of bytes 0-23, the key and the page table
    32      K     the object key
    32+K    8*n   xxh3_64 of each of the n = ceil(N/P) pages of the data
    32+K+8n N     the data

Checksums cover pages, not the whole block, so a small read costs what it reads: it
preads the header and the pages it needs and verifies only those. A file is valid only if
the magic, version and key match, the header checksum matches, its size is exactly what
the header says, and every page served matches its checksum: a truncated, extended,
misplaced or bit-flipped file is never partly served wrong (a damaged page is an error for
whoever reads it, and the tier drops the file). Format 1 files (one checksum over the
whole block, from earlier versions) are still read, whole.

File names are `<quoted key>.<generation>`: the key percent-encoded into one path
component (so the index can be rebuilt from a directory listing, without opening files)
plus a generation unique to each write, so that a late unlink of an evicted copy can never
remove a newer copy of the same key.
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import struct
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote

import xxhash

MAGIC = b"FCB2"
VERSION = 2
HEADER = struct.Struct("<4sHHQII")  # then the header checksum (Q)
HEAD_SIZE = HEADER.size + 8
# A random 4 KiB read preads and hashes a whole page: 16 KiB costs a third of what 64 KiB
# did (measured: 3 against 10 us of pread on pages in the page cache), and a 4 MiB block's
# table is still only 2 KiB. Files written with another page size (64 KiB before) still read.
PAGE = 16 << 10
READ_PAGES = frozenset(1 << n for n in range(12, 21))
V1_MAGIC, V1_HEADER = b"FCB1", struct.Struct("<4sHHQQ")
_HASH = struct.Struct("<Q")
MAX_NAME = 240  # stay below NAME_MAX (255) with room for the ".tmp" suffix

Buffer = bytes | bytearray | memoryview


class CorruptBlock(Exception):
    """A cache file is not a valid copy of the requested block."""


def checksum(data: Buffer) -> int:
    return xxhash.xxh3_64_intdigest(data)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_SYS_OPENAT2 = 437  # the same number on every Linux architecture (added in 5.6)
_RESOLVE_CACHED = 0x20  # Linux 5.12: fail with EAGAIN instead of reading the disk for the path
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_cached_open_works = sys.platform == "linux"


def open_cached(path: Path) -> int:
    """Open a file for reading only if its path is in the kernel's lookup caches (openat2
    with RESOLVE_CACHED), so that an event loop may call it: BlockingIOError if the open
    would wait for the disk, or where the kernel cannot promise that (then for good)."""
    global _cached_open_works
    if not _cached_open_works:
        raise BlockingIOError(errno.EAGAIN, "no cached open on this kernel")
    how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC, 0, _RESOLVE_CACHED)
    # syscall() is variadic: every argument gets its full C width, or a register's upper
    # half could carry garbage into the kernel's size_t.
    fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_long(_AT_FDCWD), ctypes.c_char_p(os.fsencode(path)),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd >= 0:
        return int(fd)
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EPERM):  # an old kernel, or a filter refusing it
        _cached_open_works = False
        err = errno.EAGAIN
    if err == errno.EAGAIN:
        raise BlockingIOError(err, "path not in the lookup cache")
    raise OSError(err, os.strerror(err), str(path))


def pages(data_len: int, page: int = PAGE) -> int:
    return -(-data_len // page)


def file_size(key: str, data_len: int) -> int:
    return HEAD_SIZE + len(key.encode()) + 8 * pages(data_len) + data_len


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
    head = _header(key.encode(), data)
    tmp = tmp_dir / f"{final.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            _write_all(fd, head)
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


def _header(key_b: bytes, data: Buffer) -> bytes:
    view = memoryview(data).cast("B")
    table = b"".join(_HASH.pack(checksum(view[i : i + PAGE])) for i in range(0, len(view), PAGE))
    fixed = HEADER.pack(MAGIC, VERSION, len(key_b), len(view), PAGE, 0)
    return fixed + _HASH.pack(checksum(fixed + key_b + table)) + key_b + table


class _Layout:
    """What the head of a format-2 file says: where the data is, and its page checksums."""

    __slots__ = ("data_len", "data_off", "page", "table")

    def __init__(self, data_len: int, data_off: int, table: bytes, page: int = PAGE) -> None:
        self.data_len, self.data_off, self.table, self.page = data_len, data_off, table, page

    def page_hash(self, page: int) -> int:
        return int(_HASH.unpack_from(self.table, 8 * page)[0])


def _pread_nowait(fd: int, length: int, offset: int, size: int) -> bytes:
    """pread from the page cache only: BlockingIOError unless every byte asked for (up to
    the file's `size`) is there."""
    want = max(0, min(length, size - offset))
    buf = bytearray(want)
    if want and os.preadv(fd, [buf], offset, os.RWF_NOWAIT) != want:
        raise BlockingIOError(errno.EAGAIN, "not all in the page cache")
    return bytes(buf)


def _read_layout(fd: int, key_b: bytes, size: int, nowait: bool = False) -> _Layout | None:
    """Parse and check a file's head; None if it is a format-1 file."""
    guess = HEAD_SIZE + len(key_b) + 8 * ((4 << 20) // PAGE)  # a table of up to 4 MiB: one pread
    head = _pread_nowait(fd, guess, 0, size) if nowait else os.pread(fd, guess, 0)
    if head[:4] == V1_MAGIC:
        return None
    if len(head) < HEAD_SIZE:
        raise CorruptBlock(f"short header ({len(head)} bytes)")
    magic, version, key_len, data_len, page, _ = HEADER.unpack_from(head)
    if magic != MAGIC or version != VERSION or page not in READ_PAGES:
        raise CorruptBlock("bad magic, version or page size")
    if key_len != len(key_b):
        raise CorruptBlock("key mismatch")
    table_len = 8 * pages(data_len, page)
    data_off = HEAD_SIZE + key_len + table_len
    if size != data_off + data_len:
        raise CorruptBlock(f"file is {size} bytes, header says {data_off + data_len}")
    if len(head) < data_off:
        more = data_off - len(head)
        head += _pread_nowait(fd, more, len(head), size) if nowait else os.pread(fd, more, len(head))
        if len(head) < data_off:
            raise CorruptBlock("short page table")
    fixed, key_got = head[: HEADER.size], head[HEAD_SIZE : HEAD_SIZE + key_len]
    table = head[HEAD_SIZE + key_len : data_off]
    if key_got != key_b:
        raise CorruptBlock("key mismatch")
    if _HASH.unpack_from(head, HEADER.size)[0] != checksum(fixed + key_b + table):
        raise CorruptBlock("header checksum mismatch")
    return _Layout(data_len, data_off, table, page)


class OpenBlock:
    """A cache file opened and checked once, for many ranged reads (see read_pages).
    None as layout: a format-1 file, which is only read whole."""

    __slots__ = ("fd", "layout")

    def __init__(self, fd: int, layout: _Layout | None) -> None:
        self.fd, self.layout = fd, layout

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:  # a tier dropped without close() does not leak descriptors
        self.close()


def open_block(path: Path, key: str, *, nowait: bool = False) -> OpenBlock:
    """Open a cache file and check its head; CorruptBlock if it is not a copy of `key`.
    `nowait`: only if neither the path nor the head needs the disk (see open_cached,
    RWF_NOWAIT); BlockingIOError otherwise, so the caller can do it on a thread."""
    fd = open_cached(path) if nowait else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return OpenBlock(fd, _read_layout(fd, key.encode(), os.fstat(fd).st_size, nowait))
    except BaseException:
        os.close(fd)
        raise


def read_block(path: Path, key: str, *, verify: bool) -> bytes:
    """The block stored in `path`; CorruptBlock if the file is not a valid copy of `key`.

    OSError (including FileNotFoundError) passes through to the caller.
    """
    data = read_range(path, key, 0, -1, verify=verify)
    return data if isinstance(data, bytes) else bytes(data)


def read_range(path: Path, key: str, offset: int, length: int, *, verify: bool) -> Buffer:
    """Bytes [offset, offset+length) of the block in `path` (length -1: to its end),
    reading and verifying only the pages they lie in. CorruptBlock if the file is not a
    valid copy of `key`, or a page read fails its checksum; short at the block's end."""
    block = open_block(path, key)
    try:
        if block.layout is None:
            with io.FileIO(block.fd, "r", closefd=False) as f:
                data = _read_v1(f, key.encode(), os.fstat(block.fd).st_size, verify)
            return data[offset : offset + length] if length >= 0 else data[offset:]
        return read_pages(block, offset, length, verify=verify)
    finally:
        block.close()


def read_pages(block: OpenBlock, offset: int, length: int, *, verify: bool, nowait: bool = False) -> Buffer:
    """Bytes [offset, offset+length) of an open format-2 block (length -1: to its end).
    `nowait`: only from the page cache (RWF_NOWAIT); BlockingIOError if reading them would
    wait for the disk, so the caller can do it on a thread instead."""
    layout = block.layout
    assert layout is not None
    end = layout.data_len if length < 0 else min(layout.data_len, offset + length)
    if offset >= end:
        return b""
    page_size = layout.page
    first, last = offset // page_size, (end - 1) // page_size
    start = first * page_size
    span = min(layout.data_len, (last + 1) * page_size) - start
    if nowait:
        buf = bytearray(span)
        if os.preadv(block.fd, [buf], layout.data_off + start, os.RWF_NOWAIT) != span:
            raise BlockingIOError(errno.EAGAIN, "not all in the page cache")
        data: bytes | bytearray = buf
    else:
        data = _pread_exact(block.fd, span, layout.data_off + start)
    if len(data) != span:
        raise CorruptBlock(f"short data ({len(data)} of {span} bytes)")
    if verify:
        view = memoryview(data)
        for page in range(first, last + 1):
            at = (page - first) * page_size
            if checksum(view[at : at + page_size]) != layout.page_hash(page):
                raise CorruptBlock(f"checksum mismatch in page {page}")
    if offset == start and end - start == span:
        return data
    return memoryview(data)[offset - start : end - start]


def _pread_exact(fd: int, n: int, at: int) -> bytes:
    data = os.pread(fd, n, at)
    if len(data) == n or not data:
        return data
    parts, got = [data], len(data)
    while got < n and (more := os.pread(fd, n - got, at + got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _read_v1(f: io.FileIO, key_b: bytes, size: int, verify: bool) -> bytes:
    head = _read_exact(f, V1_HEADER.size + len(key_b))
    if len(head) < V1_HEADER.size:
        raise CorruptBlock(f"short header ({len(head)} bytes)")
    magic, version, key_len, data_len, digest = V1_HEADER.unpack_from(head)
    if magic != V1_MAGIC or version != 1:
        raise CorruptBlock("bad magic or version")
    if key_len != len(key_b) or head[V1_HEADER.size:] != key_b:
        raise CorruptBlock("key mismatch")
    if size != V1_HEADER.size + key_len + data_len:
        raise CorruptBlock(f"file is {size} bytes, header says {V1_HEADER.size + key_len + data_len}")
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
