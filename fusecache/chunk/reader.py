"""Async reads of file data: slices → blocks, with single-flight block loads.

Concurrent readers of the same missing block (two handles, or a read racing its own
readahead) wait for one load instead of fetching the block twice.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import NamedTuple

import trio

from ..errors import FsError
from ..layout import CHUNK_SIZE, chunk_span
from ..types import Slice
from ..workers import Workers
from .slices import piece_at, segments
from .store import BlockMissing, Buffer, ChunkStore

# Reads up to this size that the cache can serve without a disk wait are done on the event
# loop: the hop to a worker thread and back costs more than the read itself.
ON_LOOP_MAX = 256 << 10


class BlockId(NamedTuple):
    """One block of a slice object, and the checksum its bytes must have (0: unknown)."""

    slice_id: int
    size: int  # of the slice object
    index: int
    hash: int = 0

    @property
    def where(self) -> tuple[int, int, int]:
        """(slice id, slice size, index): what names the block's object."""
        return self.slice_id, self.size, self.index


SliceSource = Callable[[int], Awaitable[list[Slice]]]  # chunk index → slices


class _Load:
    __slots__ = ("data", "done", "error", "waited")

    def __init__(self, waited: bool = True) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None
        self.waited = waited  # whether a missing object was waited for (see ChunkStore)


class BlockLoader:
    """Loads blocks through the chunk store, once per block at a time (single-flight).

    It also keeps the blocks it returned most recently (`recent_bytes` of them): the kernel
    asks for a block in several requests of up to 1 MiB, and without this each request of
    an SSD-cached block would read and checksum the whole cache file again. Blocks are
    immutable, so a remembered block is never stale.
    """

    def __init__(self, chunks: ChunkStore, workers: Workers, recent_bytes: int = 64 << 20,
                 slots: int = 64) -> None:
        self.chunks = chunks
        self.workers = workers
        # Block loads in flight at once: each holds up to a block in memory (memory.py).
        self._slots = trio.CapacityLimiter(max(1, slots))
        self._inflight: dict[BlockId, _Load] = {}
        self._recent: OrderedDict[BlockId, bytes] = OrderedDict()
        self._recent_bytes = recent_bytes
        self._recent_used = 0
        self.fetches = 0  # loads started (cache or store)
        self.recent_hits = 0

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def is_loading(self, block: BlockId) -> bool:
        return block in self._inflight

    def is_ready(self, block: BlockId) -> bool:
        """Whether the block is loading or was just loaded (a prefetch would add nothing)."""
        return block in self._inflight or block in self._recent

    def forget(self, blocks: Iterable[BlockId]) -> None:
        for block in blocks:
            data = self._recent.pop(block, None)
            if data is not None:
                self._recent_used -= len(data)

    async def load(self, block: BlockId, *, keep: bool = True, wait_missing: bool = True) -> bytes:
        """The block's bytes. `keep=False` (warmup): do not remember it for readers.
        `wait_missing=False`: a missing object is BlockMissing at once (see ChunkStore)."""
        data = self._recent.get(block)
        if data is not None:
            self._recent.move_to_end(block)
            self.recent_hits += 1
            return data
        return await self._load_once(block, keep, wait_missing)

    async def load_range(self, block: BlockId, offset: int, length: int, *, wait_missing: bool = True) -> Buffer:
        """Bytes [offset, offset+length) of the block, for a random reader: from a block
        held in memory, else a ranged read of the cache (only the pages needed), else the
        whole block from the store (then remembered like `load`)."""
        data = self._recent.get(block)
        if data is not None:
            self._recent.move_to_end(block)
            self.recent_hits += 1
            return memoryview(data)[offset : offset + length]
        loading = block in self._inflight
        if not loading and length <= ON_LOOP_MAX:
            part = self.chunks.try_range(*block.where, offset, length)
            if part is not None:
                return part  # from memory or the page cache: no thread hop
        if loading or not self.chunks.is_cached(*block.where):
            # A miss fetches the whole block once, however many readers want parts of it.
            data = await self._load_once(block, True, wait_missing)
            return memoryview(data)[offset : offset + length]
        self.fetches += 1
        async with self._slots:
            part, whole = await self.workers.io(self.chunks.load_range, *block, offset, length, wait_missing)
        if whole is not None:
            self._remember(block, whole)
        return part

    async def _load_once(self, block: BlockId, keep: bool, wait_missing: bool = True, fill: bool = False) -> bytes:
        while (pending := self._inflight.get(block)) is not None:
            await pending.done.wait()
            if pending.error is None:
                assert pending.data is not None
                return pending.data
            if not (wait_missing and isinstance(pending.error, BlockMissing) and not pending.waited):
                raise pending.error
            # That load gave up on a missing object at once; this caller waits for it.
        if not fill and block.size <= ON_LOOP_MAX and (data := self.chunks.try_range(*block.where, 0, -1)) is not None:
            whole = bytes(data)  # a small file's block, from memory or the page cache
            if keep:
                self._remember(block, whole)
            return whole
        pending = self._inflight[block] = _Load(wait_missing)
        self.fetches += 1
        try:
            async with self._slots:
                if self.chunks.async_fetch and (fill or not self.chunks.is_cached(*block.where)):
                    # Not cached: fetch on the loop (no thread hand-off per GET), then admit.
                    if not fill:
                        self.chunks.count_miss()
                    data = await self.chunks.fetch_async(*block, wait_missing)
                    await self.workers.io(self.chunks.admit, *block.where, data)
                    pending.data = data
                else:
                    pending.data = await self.workers.io(self.chunks.load_block, *block, wait_missing, not fill)
            if keep:
                self._remember(block, pending.data)
            return pending.data
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            del self._inflight[block]
            pending.done.set()

    async def warm(self, block: BlockId) -> bool:
        """Make sure the block is in the cache; True if it had to be fetched (or loaded)."""
        if self.chunks.is_cached(*block.where):
            return False
        # Not from `recent`: it must reach the cache. Not through the cache either: it was
        # just seen missing, and a warmup fetch is not a reader's miss.
        await self._load_once(block, keep=False, fill=True)
        return True

    def _remember(self, block: BlockId, data: bytes) -> None:
        if len(data) > self._recent_bytes:
            return
        old = self._recent.pop(block, None)
        if old is not None:
            self._recent_used -= len(old)
        self._recent[block] = data
        self._recent_used += len(data)
        while self._recent_used > self._recent_bytes:
            _, dropped = self._recent.popitem(last=False)
            self._recent_used -= len(dropped)


async def read_file_range(
    loader: BlockLoader, slices_of: SliceSource, offset: int, size: int, *, view: bool = False,
    wait_missing: bool = True, ranged: bool = False,
) -> bytes | memoryview:
    """Bytes [offset, offset+size) of a file (the caller clamps to the file length).

    `view`: a range inside one block may come back as a memoryview of the block, saving a
    copy (the FUSE reply takes any buffer); otherwise the result is always bytes.
    `wait_missing`: see BlockLoader.load.
    `ranged`: a random reader: blocks not in memory are read only as far as the range
    needs (BlockLoader.load_range) instead of whole."""
    block_size = loader.chunks.block_size
    slices: list[Slice] | None = None  # the slice list of a range inside one chunk
    index, pos = divmod(offset, CHUNK_SIZE)
    if pos + size <= CHUNK_SIZE:
        slices = await slices_of(index)
        piece = piece_at(slices, pos, size)
        if piece is not None and piece.id != 0:
            # One piece of one slice: most reads. Straight to its block, without a plan.
            bidx, boff = divmod(piece.off + pos - piece.pos, block_size)
            if boff + size <= block_size:
                block = BlockId(piece.id, piece.size, bidx, piece.block_hash(bidx))
                if ranged and not loader.is_ready(block):
                    part = await loader.load_range(block, boff, size, wait_missing=wait_missing)
                else:
                    part = memoryview(await loader.load(block, wait_missing=wait_missing))[boff : boff + size]
                return part if view else bytes(part)
    # Plan every piece first, then load all blocks concurrently.
    plan: list[tuple[int, int, BlockId | None, int]] = []  # (out pos, length, block, off in block)
    out_pos = 0
    for index, pos, n in chunk_span(offset, size):
        for seg in segments(slices if slices is not None else await slices_of(index), pos, n):
            if seg.id == 0:
                plan.append((out_pos, seg.length, None, 0))
                out_pos += seg.length
                continue
            soff, left = seg.off, seg.length
            while left > 0:
                bidx, boff = divmod(soff, block_size)
                take = min(left, block_size - boff)
                plan.append((out_pos, take, BlockId(seg.id, seg.size, bidx, seg.block_hash(bidx)), boff))
                out_pos += take
                soff += take
                left -= take
    # Per block, the span of it the plan needs: a random reader loads only that much.
    spans: dict[BlockId, tuple[int, int]] = {}
    for _, length, block, boff in plan:
        if block is not None:
            lo, hi = spans.get(block, (boff, boff + length))
            spans[block] = (min(lo, boff), max(hi, boff + length))
    got: dict[BlockId, tuple[int, Buffer]] = {}  # block → (offset in block of the data, data)

    async def fetch(block: BlockId) -> None:
        lo, hi = spans[block]
        if ranged and not loader.is_ready(block):
            got[block] = (lo, await loader.load_range(block, lo, hi - lo, wait_missing=wait_missing))
        else:
            got[block] = (0, await loader.load(block, wait_missing=wait_missing))

    if len(spans) == 1:
        await fetch(next(iter(spans)))
    elif spans:
        await for_each(fetch, spans)
    if len(plan) == 1 and plan[0][2] is not None:
        _, length, block, boff = plan[0]
        at, data = got[block]
        piece = memoryview(data)[boff - at : boff - at + length]
        return piece if view else bytes(piece)
    out = bytearray(size)
    for opos, length, block, boff in plan:
        if block is not None:
            at, data = got[block]
            out[opos : opos + length] = memoryview(data)[boff - at : boff - at + length]
    return bytes(out)


async def for_each(fn: Callable[[BlockId], Awaitable[None]], blocks: Iterable[BlockId]) -> None:
    """Run `fn` on every block concurrently; a failure surfaces as one error (first_error),
    not as the nursery's exception group, so callers can tell a missing block apart."""
    try:
        async with trio.open_nursery() as nursery:
            for block in blocks:
                nursery.start_soon(fn, block)
    except BaseExceptionGroup as group:
        raise first_error(group) from None


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The error a caller should see of several concurrent block loads: a missing block
    first (the caller may recover by reading the slice list again), else any FsError."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    for kind in (BlockMissing, FsError):
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return leaves[0]


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
                seen[BlockId(seg.id, seg.size, bidx, seg.block_hash(bidx))] = None
    return list(seen)
