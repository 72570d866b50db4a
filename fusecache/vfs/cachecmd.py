"""The cache commands of the control channel (control.py): warmup, cached and evict.

A file command covers a byte range of one file. A directory command covers the small
regular files among a range of a directory's entries: it reads all their slice lists at
once (pipelined on the metadata connection) and then keeps many fetches in flight, so
warming a tree of small files costs one request from the CLI per batch of files instead of
one per file, and the object store sees as many GETs at once as the memory plan allows.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import trio

from ..chunk.reader import BlockId, BlockLoader, blocks_in_range, for_each
from ..chunk.store import ChunkStore
from ..layout import block_len
from ..meta.aio import FastCalls
from ..types import DirEntry, Slice
from ..workers import Workers
from . import control

# A block of a small file holds a fraction of a full block's memory, so warmup may keep
# this many times more of them in flight within the same memory.
SMALL_BLOCK_SHARE = 8
LISTINGS_KEPT = 4  # directory listings kept for the ranges of concurrent walks
MAX_DIR_BATCH = 4096  # entries one directory command handles at most


class RangeTotals(NamedTuple):
    blocks: int
    nbytes: int
    done_blocks: int
    done_bytes: int


class CacheCommands:
    def __init__(self, fast: FastCalls, chunks: ChunkStore, loader: BlockLoader, workers: Workers,
                 list_dir: Callable[[int], Awaitable[list[DirEntry]]], warmup_slots: int,
                 on_warmed: Callable[[int, int], None]) -> None:
        self.fast = fast
        self.chunks = chunks
        self.loader = loader
        self.workers = workers
        self._list_dir = list_dir
        self._on_warmed = on_warmed  # (blocks, bytes) fetched into the cache
        slots = max(1, warmup_slots)
        self._slots = trio.CapacityLimiter(slots)
        self._small_slots = trio.CapacityLimiter(slots * SMALL_BLOCK_SHARE)
        self._listings: OrderedDict[int, tuple[float, list[DirEntry]]] = OrderedDict()

    async def file(self, ino: int, command: control.BlockCommand) -> bytes:
        if command.length < 0:
            attr = await self.fast.getattr(ino)
            end = attr.size if attr.is_file else 0
        else:
            # An explicit range (what the CLI sends) needs no attributes: past the end of the
            # file, or in a directory, there are no slices and so no blocks.
            end = command.offset + command.length
        blocks = await self._blocks(ino, command.offset, end)
        return control.format_answer(*await self._apply(command.op, blocks))

    async def directory(self, ino: int, command: control.DirCommand) -> bytes:
        listing = await self._listing(ino, fresh=command.start == 0)
        chosen = [e.attr for e in listing[command.start : command.start + min(command.count, MAX_DIR_BATCH)]
                  if e.attr.is_file and e.attr.size <= command.max_size]
        per_file: dict[int, list[BlockId]] = {}

        async def blocks_of(ino: int, size: int) -> None:
            per_file[ino] = await self._blocks(ino, 0, size)

        async with trio.open_nursery() as nursery:
            for attr in chosen:
                if attr.size:
                    nursery.start_soon(blocks_of, attr.ino, attr.size)
        blocks = list(dict.fromkeys(b for found in per_file.values() for b in found))
        totals = await self._apply(command.op, blocks)
        return control.format_dir_answer(len(chosen), sum(a.size for a in chosen), *totals)

    async def _listing(self, ino: int, fresh: bool) -> list[DirEntry]:
        """The directory's entries, as listed at most DIR_LISTING_TTL ago (a walk's first
        range lists it anew), so that the ranges of one walk index the same listing."""
        kept = self._listings.get(ino)
        if kept is not None and not fresh and time.monotonic() - kept[0] < control.DIR_LISTING_TTL:
            self._listings.move_to_end(ino)
            return kept[1]
        entries = await self._list_dir(ino)
        self._listings[ino] = (time.monotonic(), entries)
        while len(self._listings) > LISTINGS_KEPT:
            self._listings.popitem(last=False)
        return entries

    async def _blocks(self, ino: int, offset: int, end: int) -> list[BlockId]:
        if end <= offset:
            return []
        chunk_slices: dict[int, list[Slice]] = {}

        async def slices_of(index: int) -> list[Slice]:
            if index not in chunk_slices:  # fresh from metadata: not the open-file cache
                chunk_slices[index] = await self.fast.read(ino, index)
            return chunk_slices[index]

        return await blocks_in_range(slices_of, self.chunks.block_size, offset, end - offset)

    def _size(self, block: BlockId) -> int:
        return block_len(block.size, self.chunks.block_size, block.index)

    async def _apply(self, op: str, blocks: list[BlockId]) -> RangeTotals:
        total = sum(self._size(b) for b in blocks)
        if op == "cached":
            done = [b for b in blocks if self.chunks.is_cached(*b.where)]
            return RangeTotals(len(blocks), total, len(done), sum(self._size(b) for b in done))
        if op == "evict":
            keys = [self.chunks.key(*b.where) for b in blocks]
            self.loader.forget(blocks)
            evicted = await self.workers.io(self.chunks.evict, keys)
            return RangeTotals(len(blocks), total, evicted, 0)
        done: list[BlockId] = []
        small = self.chunks.block_size // SMALL_BLOCK_SHARE

        async def warm(block: BlockId) -> None:
            async with self._small_slots if self._size(block) <= small else self._slots:
                if await self.loader.warm(block):
                    done.append(block)

        await for_each(warm, blocks)
        done_bytes = sum(self._size(b) for b in done)
        self._on_warmed(len(done), done_bytes)
        return RangeTotals(len(blocks), total, len(done), done_bytes)
