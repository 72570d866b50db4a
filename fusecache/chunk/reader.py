"""Async reads of file data: slices → blocks, with single-flight block loads.

Concurrent readers of the same missing block (two handles, or a read racing its own
readahead) wait for one load instead of fetching the block twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ..layout import chunk_span
from ..types import Slice
from ..workers import Workers
from .slices import segments
from .store import ChunkStore

BlockId = tuple[int, int, int]  # (slice id, slice size, block index)
SliceSource = Callable[[int], Awaitable[list[Slice]]]  # chunk index → slices


class _Load:
    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None


class BlockLoader:
    def __init__(self, chunks: ChunkStore, workers: Workers) -> None:
        self.chunks = chunks
        self.workers = workers
        self._inflight: dict[BlockId, _Load] = {}
        self.fetches = 0

    def is_loading(self, block: BlockId) -> bool:
        return block in self._inflight

    async def load(self, block: BlockId) -> bytes:
        pending = self._inflight.get(block)
        if pending is not None:
            await pending.done.wait()
            if pending.error is not None:
                raise pending.error
            assert pending.data is not None
            return pending.data
        pending = self._inflight[block] = _Load()
        try:
            pending.data = await self.workers.io(self.chunks.load_block, *block)
            return pending.data
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            del self._inflight[block]
            pending.done.set()


async def read_file_range(
    loader: BlockLoader, slices_of: SliceSource, offset: int, size: int
) -> bytes:
    """Bytes [offset, offset+size) of a file (the caller clamps to the file length)."""
    block_size = loader.chunks.block_size
    # Plan every piece first, then load all blocks concurrently.
    plan: list[tuple[int, int, BlockId | None, int]] = []  # (out pos, length, block, off in block)
    out_pos = 0
    for index, pos, n in chunk_span(offset, size):
        for seg in segments(await slices_of(index), pos, n):
            if seg.id == 0:
                plan.append((out_pos, seg.length, None, 0))
                out_pos += seg.length
                continue
            soff, left = seg.off, seg.length
            while left > 0:
                bidx, boff = divmod(soff, block_size)
                take = min(left, block_size - boff)
                plan.append((out_pos, take, (seg.id, seg.size, bidx), boff))
                out_pos += take
                soff += take
                left -= take
    blocks: dict[BlockId, bytes] = {}
    wanted = {p[2] for p in plan if p[2] is not None}
    if len(wanted) == 1:
        (only,) = wanted
        blocks[only] = await loader.load(only)
    elif wanted:
        async def fetch(block: BlockId) -> None:
            blocks[block] = await loader.load(block)

        async with trio.open_nursery() as nursery:
            for block in wanted:
                nursery.start_soon(fetch, block)
    if len(plan) == 1 and plan[0][2] is not None:
        _, length, block, boff = plan[0]
        return blocks[block][boff : boff + length]
    out = bytearray(size)
    for opos, length, block, boff in plan:
        if block is not None:
            out[opos : opos + length] = memoryview(blocks[block])[boff : boff + length]
    return bytes(out)


async def blocks_in_range(slices_of: SliceSource, block_size: int, offset: int, size: int) -> list[BlockId]:
    """The blocks a file range needs, in file order (used by readahead and warmup)."""
    seen: dict[BlockId, None] = {}
    for index, pos, n in chunk_span(offset, size):
        for seg in segments(await slices_of(index), pos, n):
            if seg.id == 0:
                continue
            first = seg.off // block_size
            last = (seg.off + seg.length - 1) // block_size
            for bidx in range(first, last + 1):
                seen[(seg.id, seg.size, bidx)] = None
    return list(seen)
