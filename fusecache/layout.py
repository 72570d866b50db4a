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
