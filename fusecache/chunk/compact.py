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
from collections.abc import Callable

import trio

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
    if len(slices) < 2 or not any(p.id != 0 for p in visible(slices)):
        return False
    if await rewrite_chunk(meta, chunks, loader, workers, ino, index, slices, new_id) is not None:
        log.debug("inode %d chunk %d: %d slices compacted into slice %d", ino, index, len(slices), new_id)
        return True
    return False


async def rewrite_chunk(
    meta: Meta, chunks: ChunkStore, loader: BlockLoader, workers: Workers, ino: int, index: int,
    slices: list[Slice], new_id: int, on_block: Callable[[int], None] | None = None,
) -> Slice | None:
    """Swap `slices` (the chunk's whole list as just read) for one new owned slice `new_id`
    of their visible bytes; returns it. None if the chunk changed meanwhile (the new objects
    are then deleted). Also used by `import --copy`, on a chunk that holds one external slice: the
    bytes then come from the source and end up in the volume's own store.

    Streams block by block, so a rewrite holds one block in memory, not a chunk."""
    data_pieces = [p for p in visible(slices) if p.id != 0]
    if not data_pieces:  # only holes left (all data truncated away): one hole replaces them
        end = max(s.end for s in slices)
        hole = Slice(0, 0, end, 0, end)
        return hole if await workers.meta(meta.compact, ino, index, slices, hole) else None
    start, end = data_pieces[0].pos, data_pieces[-1].end

    async def current(_: int) -> list[Slice]:
        return slices

    block_size = chunks.block_size
    hashes = []
    try:
        for pos in range(start, end, block_size):
            n = min(block_size, end - pos)
            # Read through the chunk as if it were a file holding only this chunk.
            data = bytes(await read_file_range(loader, current, pos, n))
            # durable: rewritten data goes to the object store even under writeback, since the
            # old slices it replaces will be deleted from there.
            hashes.append(await workers.io(lambda i=len(hashes), d=data: chunks.upload_block(
                new_id, i, d, durable=True)))
            if on_block is not None:
                on_block(n)
    except BaseException:
        # Nothing names the new objects yet (the swap was never asked for): free them.
        with trio.CancelScope(shield=True):
            try:
                await workers.io(chunks.remove_slice, new_id, end - start)
            except Exception as exc:  # left for gc: a leak, never a hole
                log.warning("cannot delete the unused objects of slice %d: %s", new_id, exc)
        raise
    new = Slice(start, new_id, end - start, 0, end - start, tuple(hashes))
    # An exception here (metadata unreachable) leaves the new objects in place: the swap may
    # have happened. Only a refusal (the chunk changed) is known to leave them unused.
    if await workers.meta(meta.compact, ino, index, slices, new):
        return new
    await workers.io(chunks.remove_slice, new_id, end - start)
    return None
