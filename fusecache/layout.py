"""Pure arithmetic of the data layout: file → chunks → slices → blocks → object keys.

A file is cut at fixed CHUNK_SIZE boundaries into chunks. Each write lands in one chunk as a
slice: an immutable object written once under a fresh id, split into blocks of at most
`block_size` bytes, each stored as its own object. Object names carry the block's length,
so a reader never needs a HEAD request.
"""

from __future__ import annotations

from collections.abc import Iterator

CHUNK_SIZE = 64 << 20
MAX_FILE_SIZE = 1 << 60


def chunk_span(offset: int, length: int) -> Iterator[tuple[int, int, int]]:
    """Split a file range into (chunk_index, offset_in_chunk, length) pieces."""
    end = offset + length
    while offset < end:
        index, pos = divmod(offset, CHUNK_SIZE)
        n = min(CHUNK_SIZE - pos, end - offset)
        yield index, pos, n
        offset += n


def block_count(slice_size: int, block_size: int) -> int:
    return (slice_size + block_size - 1) // block_size


def block_len(slice_size: int, block_size: int, index: int) -> int:
    return min(block_size, slice_size - index * block_size)


def block_key(volume: str, slice_id: int, index: int, length: int) -> str:
    """Object key of one block. The top level spreads keys over 256 prefixes
    (object stores partition by key prefix), and the name carries the block length."""
    return f"{volume}/blocks/{slice_id % 256:02x}/{slice_id // 1024}/{slice_id}_{index}_{length}"


def slice_keys(volume: str, slice_id: int, slice_size: int, block_size: int) -> list[str]:
    return [
        block_key(volume, slice_id, i, block_len(slice_size, block_size, i))
        for i in range(block_count(slice_size, block_size))
    ]


# -- external slices: data that stays in a bucket the volume imported (cli/import) ---------
# An imported object's chunk i is a slice with an id at or above EXT_BASE that names the
# object's registry number and the chunk: it has no objects in the volume's own store.
# Ids stay below 2**53, exact in the Lua scripts' doubles.
EXT_BASE = 1 << 52
EXT_CHUNK_BITS = 12  # chunks per object: 4096 x 64 MiB = 256 GiB at most
MAX_EXT_OBJECTS = 1 << (52 - EXT_CHUNK_BITS)
MAX_EXT_SIZE = CHUNK_SIZE << EXT_CHUNK_BITS


def is_external(slice_id: int) -> bool:
    return slice_id >= EXT_BASE


def external_id(objno: int, chunk: int) -> int:
    return EXT_BASE + (objno << EXT_CHUNK_BITS) + chunk


def external_parts(slice_id: int) -> tuple[int, int]:
    """(registry number, chunk index) of an external slice id."""
    rest = slice_id - EXT_BASE
    return rest >> EXT_CHUNK_BITS, rest & ((1 << EXT_CHUNK_BITS) - 1)


def external_block_key(volume: str, slice_id: int, index: int, length: int) -> str:
    """Cache key of one block of an external slice. A registry number names one version
    (ETag) of one source object for good: an object changed at the source is imported
    again under a new number, so cached blocks of two versions never meet."""
    objno, chunk = external_parts(slice_id)
    return f"{volume}/ext/{objno % 256:02x}/{objno}/{chunk}_{index}_{length}"


def parse_external_key(key: str) -> tuple[int, int, int, int] | None:
    """(registry number, chunk, block index, length) of an external block key, else None."""
    parts = key.split("/")
    if len(parts) < 5 or parts[-4] != "ext":
        return None
    try:
        objno = int(parts[-2])
        chunk, index, length = (int(x) for x in parts[-1].split("_"))
    except ValueError:
        return None
    return objno, chunk, index, length
