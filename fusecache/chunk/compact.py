"""Compaction: rewrite a chunk whose slice list grew long as one slice.

Overwrites add slices; without compaction a chunk written over and over would keep every
old slice (objects never freed) and every read would resolve a longer list. The new slice
holds the chunk's visible bytes (inner holes as zeros, outer holes dropped). It is uploaded
first, always straight to the object store (never staged by writeback); `Meta.compact`
then swaps it in only if the chunk still starts with the slices we read, and queues the old
ones as delayed garbage. If the chunk changed meanwhile the new objects are deleted and
nothing else happens.
"""

from __future__ import annotations

import logging

from ..meta.base import Meta
from ..types import Slice
from ..workers import Workers
from .reader import BlockLoader, read_file_range
from .slices import visible
from .store import ChunkStore

log = logging.getLogger(__name__)

COMPACT_AT = 16  # slices in one chunk


async def compact_chunk(
    meta: Meta, chunks: ChunkStore, loader: BlockLoader, workers: Workers, ino: int, index: int, new_id: int
) -> bool:
    slices = await workers.meta(meta.read, ino, index)
    data_pieces = [p for p in visible(slices) if p.id != 0]
    if len(slices) < 2 or not data_pieces:
        return False
    start, end = data_pieces[0].pos, data_pieces[-1].end

    async def current(_: int) -> list[Slice]:
        return slices

    # Read through the chunk as if it were a file holding only this chunk.
    data = await read_file_range(loader, current, start, end - start)
    block_size = chunks.block_size
    hashes = []
    for i in range(0, len(data), block_size):
        # durable: rewritten data goes to the object store even under writeback, since the
        # old slices it replaces will be deleted from there.
        hashes.append(await workers.io(lambda i=i: chunks.upload_block(new_id, i // block_size,
                                                                       data[i : i + block_size], durable=True)))
    new = Slice(start, new_id, len(data), 0, len(data), tuple(hashes))
    # An exception here (metadata unreachable) leaves the new objects in place: the swap may
    # have happened. Only a refusal (the chunk changed) is known to leave them unused.
    if await workers.meta(meta.compact, ino, index, slices, new):
        log.debug("inode %d chunk %d: %d slices compacted into slice %d", ino, index, len(slices), new_id)
        return True
    await workers.io(chunks.remove_slice, new_id, len(data))
    return False
