"""Binary encodings of metadata values, shared by the Python side and the Lua scripts.

Attributes are one fixed-size little-endian record so that a getattr is one GET and one
`struct.unpack`, and Lua can patch single fields in place (see `lua.py`, which uses the
same offsets). Timestamps are opaque to Lua: it only ever copies 8-byte values packed
here, because Lua numbers are doubles and would round nanosecond timestamps.
"""

from __future__ import annotations

import struct

from ..types import Attr, Slice

# mode, uid, gid, nlink, size, rdev, atime_ns, mtime_ns, ctime_ns, parent
ATTR = struct.Struct("<IIIIQIqqqQ")
ATTR_OFFSETS = {
    "mode": 0,
    "uid": 4,
    "gid": 8,
    "nlink": 12,
    "size": 16,
    "rdev": 24,
    "atime": 28,
    "mtime": 36,
    "ctime": 44,
    "parent": 52,
}
ATTR_SIZE = ATTR.size  # 60
# Bit 16 of the stored mode, above every S_IFMT and permission bit: the inode belongs to a
# read-only snapshot (Attr.frozen). Lua masks it out of types and entries.
FROZEN_BIT = 1 << 16
# Bit 17: a directory of a lazy import whose entries are not listed from the source yet
# (Attr.unfilled; the source and prefix are in {P}lazy, see lua_import.py).
UNFILLED_BIT = 1 << 17
_MODE_BITS = FROZEN_BIT - 1

# pos, id, size, off, length — one element of a chunk's slice list, followed by the
# slice's block checksums (8 bytes each; Lua only reads the fixed part).
SLICE = struct.Struct("<IQIII")
SLICE_SIZE = SLICE.size  # 24
# A garbage item is bytes 4..16 of a packed slice: the id and the slice object size.
GARBAGE = struct.Struct("<QI")

_TIME = struct.Struct("<q")

# Largest file length the Lua scripts can do exact arithmetic on (Lua numbers are doubles).
MAX_EXACT_SIZE = 1 << 53


def pack_attr(a: Attr) -> bytes:
    mode = a.mode | (FROZEN_BIT if a.frozen else 0) | (UNFILLED_BIT if a.unfilled else 0)
    return ATTR.pack(mode, a.uid, a.gid, a.nlink, a.size, a.rdev, a.atime_ns, a.mtime_ns, a.ctime_ns, a.parent)


def unpack_attr(ino: int, raw: bytes) -> Attr:
    mode, *rest = ATTR.unpack(raw)
    if mode > _MODE_BITS:
        return Attr(ino, mode & _MODE_BITS, *rest, frozen=bool(mode & FROZEN_BIT),
                    unfilled=bool(mode & UNFILLED_BIT))
    return Attr(ino, mode, *rest)


def pack_time(ns: int) -> bytes:
    return _TIME.pack(ns)


def pack_slice(s: Slice) -> bytes:
    head = SLICE.pack(s.pos, s.id, s.size, s.off, s.length)
    if not s.hashes:
        return head
    return head + struct.pack(f"<{len(s.hashes)}Q", *s.hashes)


def unpack_slice(raw: bytes) -> Slice:
    """A slice list element: the fixed record, then one xxh3-64 per block (if recorded)."""
    if len(raw) == SLICE_SIZE:
        return Slice(*SLICE.unpack(raw))
    count = (len(raw) - SLICE_SIZE) // 8
    return Slice(*SLICE.unpack_from(raw), hashes=struct.unpack_from(f"<{count}Q", raw, SLICE_SIZE))


def pack_garbage(slice_id: int, size: int) -> bytes:
    return GARBAGE.pack(slice_id, size)


def unpack_garbage(raw: bytes) -> tuple[int, int]:
    slice_id, size = GARBAGE.unpack(raw)
    return slice_id, size


def pack_entry(mode: int, ino: int) -> bytes:
    """A directory entry: one byte of file type (S_IFMT >> 12), then the decimal inode
    number, which Lua appends to a key prefix without any number conversion."""
    return bytes((mode >> 12,)) + str(ino).encode()


def entry_ino(raw: bytes) -> int:
    return int(raw[1:])


def entry_type(raw: bytes) -> int:
    return raw[0] << 12
