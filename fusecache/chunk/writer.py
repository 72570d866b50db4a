"""Async buffered writes: file writes → slices → blocks uploaded in the background.

Rules (they are what keeps data safe):
1. A slice is contiguous bytes of one chunk under a fresh id. A write that does not
   continue an open slice starts a new one; a full block is uploaded at once, concurrently
   with further writes; a slice's tail block is uploaded when the slice is finished.
2. A finished slice is committed to metadata only after all its blocks are stored, and
   slices of one file commit in the order they were started (a newer slice must land after
   the older one it may overlap, or reads would resolve the overlap wrongly).
3. A failed upload or commit poisons the writer: the next write/flush returns an error.
   The objects of the slice are deleted only when the commit is *known* not to have
   happened: an upload failed (no commit was tried) or metadata refused it with an errno
   (ENOSPC, EDQUOT, ENOENT...). EIO means the outcome is unknown (the metadata server
   stopped answering, a reply was lost): the commit may have gone through, so the objects
   stay; if it did not, `fusecache gc` finds them as leaked.
4. `flush()` returns once every byte written before it is committed.
5. Every block's checksum (computed at upload) is committed with the slice, so a reader
   can verify what the object store returns.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable

import trio

from ..errors import FsError
from ..layout import CHUNK_SIZE, chunk_span
from ..types import Slice
from ..workers import Workers
from .store import ChunkStore

log = logging.getLogger(__name__)

Commit = Callable[[int, Slice], Awaitable[None]]  # (chunk index, slice) → metadata write


class SliceIds:
    """Hands out slice ids reserved from metadata in batches (one round trip per batch)."""

    def __init__(self, reserve: Callable[[int], Awaitable[int]], batch: int = 128) -> None:
        self._reserve = reserve
        self._batch = batch
        self._next = 0
        self._end = 0
        self._lock = trio.Lock()
        self._unsettled: set[int] = set()  # handed out, neither committed nor given up yet

    async def next(self) -> int:
        async with self._lock:
            if self._next >= self._end:
                self._next = await self._reserve(self._batch)
                self._end = self._next + self._batch
            sid = self._next
            self._next += 1
            self._unsettled.add(sid)
            return sid

    def settle(self, slice_id: int) -> None:
        """The slice was committed, or will never be: its objects are no longer ours alone."""
        self._unsettled.discard(slice_id)

    def lowest_in_use(self) -> int:
        """The lowest slice id this client may still commit (0 before the first reservation):
        every id it hands out later is higher."""
        return min(self._unsettled, default=self._next)


class _OpenSlice:
    def __init__(self, chunk_index: int, pos: int, slice_id: int, previous: _OpenSlice | None) -> None:
        self.chunk_index = chunk_index
        self.pos = pos
        self.id = slice_id
        self.length = 0
        self.buf = bytearray()  # bytes of the block being filled
        self.next_block = 0
        self.uploads = 0
        self.hashes: dict[int, int] = {}  # block index -> checksum
        self.uploaded = trio.Event()
        self.uploaded.set()
        self.error: BaseException | None = None
        self.committed = trio.Event()
        self.previous = previous
        self.last_write = time.monotonic()

    @property
    def end(self) -> int:
        return self.pos + self.length


class FileWriter:
    def __init__(
        self,
        ino: int,
        chunks: ChunkStore,
        workers: Workers,
        ids: SliceIds,
        commit: Commit,
        nursery: trio.Nursery,
        upload_slots: trio.CapacityLimiter,
    ) -> None:
        self.ino = ino
        self.chunks = chunks
        self.workers = workers
        self.ids = ids
        self.commit = commit
        self.nursery = nursery
        self.upload_slots = upload_slots
        self.open: dict[int, _OpenSlice] = {}
        self.last: _OpenSlice | None = None  # the most recently started slice
        self.error: FsError | None = None
        self.end = 0  # highest file offset written through this writer
        self._lock = trio.Lock()

    @property
    def dirty(self) -> bool:
        return bool(self.open) or (self.last is not None and not self.last.committed.is_set())

    def _check(self) -> None:
        if self.error is not None:
            raise FsError(self.error.errno, self.error.detail)

    async def write(self, offset: int, data: bytes) -> None:
        async with self._lock:
            self._check()
            view = memoryview(data)
            done = 0
            for index, pos, n in chunk_span(offset, len(data)):
                piece = view[done : done + n]
                done += n
                current = self.open.get(index)
                if current is None or current.end != pos:
                    if current is not None:
                        await self._finish(current)
                    current = _OpenSlice(index, pos, await self.ids.next(), self.last)
                    self.open[index] = current
                    self.last = current
                await self._append(current, piece)
                if current.end == CHUNK_SIZE:
                    await self._finish(current)
            self.end = max(self.end, offset + len(data))

    async def _append(self, s: _OpenSlice, data: memoryview) -> None:
        block_size = self.chunks.block_size
        s.last_write = time.monotonic()
        while data:
            room = block_size - len(s.buf)
            s.buf += data[:room]
            s.length += min(room, len(data))
            data = data[room:]
            if len(s.buf) == block_size:
                await self._upload(s, bytes(s.buf))
                s.buf = bytearray()

    async def _upload(self, s: _OpenSlice, block: bytes) -> None:
        index = s.next_block
        s.next_block += 1
        token = object()
        await self.upload_slots.acquire_on_behalf_of(token)  # bounds buffered memory
        if s.uploads == 0:
            s.uploaded = trio.Event()
        s.uploads += 1
        self.nursery.start_soon(self._upload_task, s, index, block, token)

    async def _upload_task(self, s: _OpenSlice, index: int, block: bytes, token: object) -> None:
        uncached = False
        try:
            try:
                s.hashes[index], uncached = await self.workers.io(self.chunks.store_block, s.id, index, block)
            except Exception as exc:
                log.error("upload of slice %d block %d failed: %s", s.id, index, exc)
                s.error = exc
            finally:
                s.uploads -= 1
                if s.uploads == 0:
                    s.uploaded.set()  # the commit (and so the close) goes on meanwhile
            if uncached:
                await self.workers.io(self.chunks.keep_written, s.id, index, block)
        finally:
            self.upload_slots.release_on_behalf_of(token)  # the block's memory is free now

    async def _finish(self, s: _OpenSlice) -> None:
        """Upload the tail, then commit in the background (in start order)."""
        del self.open[s.chunk_index]
        if s.buf:
            await self._upload(s, bytes(s.buf))
            s.buf = bytearray()
        self.nursery.start_soon(self._commit_task, s)

    async def _commit_task(self, s: _OpenSlice) -> None:
        try:
            await s.uploaded.wait()
            if s.previous is not None:
                await s.previous.committed.wait()
                s.previous = None  # let the chain be collected
            known_failed = True  # nothing reached metadata
            if s.error is None and self.error is None:
                piece = Slice(s.pos, s.id, s.length, 0, s.length, tuple(s.hashes[i] for i in range(s.next_block)))
                try:
                    await self.commit(s.chunk_index, piece)
                    return
                except FsError as exc:
                    s.error = exc
                    known_failed = exc.errno != errno.EIO
                except Exception as exc:
                    log.error("commit of slice %d of inode %d failed: %s", s.id, self.ino, exc)
                    s.error = exc
                    known_failed = False
            err = s.error if isinstance(s.error, FsError) else FsError(errno.EIO, "write failed")
            if self.error is None:
                self.error = err
            if known_failed:
                self.nursery.start_soon(self._discard, s)
            else:
                log.warning("slice %d of inode %d: commit outcome unknown; its objects are kept", s.id, self.ino)
        finally:
            self.ids.settle(s.id)
            s.committed.set()

    async def _discard(self, s: _OpenSlice) -> None:
        """Delete the objects of a slice that will never be committed."""
        try:
            await self.workers.io(self.chunks.remove_slice, s.id, s.length)
        except Exception as exc:
            log.warning("cannot delete objects of failed slice %d: %s", s.id, exc)

    async def flush(self) -> None:
        """Commit everything written so far; raise the writer's error if any."""
        async with self._lock:
            for s in list(self.open.values()):
                await self._finish(s)
            last = self.last
        if last is not None:
            await last.committed.wait()
        self._check()

    async def finish_idle(self, idle: float) -> None:
        """Finish slices not written to for `idle` seconds (bounds data lost on a crash)."""
        now = time.monotonic()
        async with self._lock:
            for s in list(self.open.values()):
                if now - s.last_write >= idle:
                    await self._finish(s)
