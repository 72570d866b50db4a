"""Filesystem semantics on top of the metadata engine and the chunk layer.

No pyfuse3 here: `fuse/ops.py` adapts these methods to the kernel protocol. Inode numbers
are the volume's own; a mount of a subdirectory maps its root in `fuse/ops.py`.

Consistency model (close-to-open): `open` fetches fresh attributes and drops this
client's cached slice lists of the file, and `flush` (every close) commits all buffered
writes, so a reader that opens after a writer closed sees the writer's data. The kernel's
page cache of a file is kept across opens only while the file's (mtime, ctime, size) are
those this client saw when it last let the kernel cache it; any change, by any client, makes
the next open drop it.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, TypeVar

import trio

from ..chunk.compact import COMPACT_AT, compact_chunk
from ..chunk.reader import BlockLoader, SliceSource, blocks_in_range, read_file_range
from ..chunk.store import BlockMissing, ChunkStore
from ..chunk.writer import FileWriter, SliceIds
from ..errors import FsError, MetaError, UnfilledDir
from ..meta.aio import FastCalls
from ..meta.base import MAX_NAME, MAX_XATTR_NAME, MAX_XATTR_VALUE, Meta
from ..types import Attr, DirEntry, SetAttr, Slice, StatFs, VolumeSettings
from ..workers import Workers
from . import control
from .cachecmd import CacheCommands
from .handles import DirHandle, FileHandle, OpenInode, SliceCache

log = logging.getLogger(__name__)
T = TypeVar("T")

INFO_XATTR = control.INFO  # virtual, read-only: a file's chunks/slices/objects as JSON
CAPABILITY_XATTR = b"security.capability"
# Reads this close to where the last one ended still count as sequential: the kernel sends
# reads of up to 1 MiB, and concurrent ones may arrive slightly out of order.
SEQUENTIAL_SLACK = 1 << 20
PAGE_VERSIONS = 1 << 16  # files whose page-cache version is remembered
SLICE_TTL = 10.0  # longest an open file's slice list is reused (less with a short garbage delay)
RELEASE_LINGER = 1.0  # seconds a closed file stays noted open, so a quick reopen is free
BUILT_LISTINGS = 256  # directories whose last opendir listing is kept for reuse


@dataclass(frozen=True)
class Ctx:
    uid: int
    gid: int
    pid: int = 0


@dataclass(frozen=True)
class VfsOptions:
    read_only: bool = False
    readahead_blocks: int = 4  # most blocks prefetched ahead of a sequential reader (0 = off)
    upload_slots: int = 32  # blocks being uploaded at once (bounds buffered memory)
    idle_flush: float = 5.0  # seconds after which an idle open slice is committed
    warmup_slots: int = 16  # blocks loaded at once by warmup requests
    readahead_slots: int = 0  # readahead loads at once (0: twice readahead_blocks)
    read_slots: int = 64  # block loads in flight for readers (bounds their memory)
    recent_blocks: int = 0  # blocks kept for readers (0: room for two readahead windows)
    keep_page_cache: bool = True  # let unchanged files keep the kernel page cache across opens


# Engine calls after which nothing the metadata cache holds is outdated (they read, or touch
# only open-file notes and garbage; an inode freed at a release is announced by Redis, and
# its name went at the unlink). Every other call drops the cache when it ends.
CACHE_SAFE_CALLS = frozenset({"lookup", "getattr", "read", "readdir", "dir_names", "readlink", "statfs", "getxattr",
                              "listxattr", "take_garbage", "ack_garbage", "release", "flush_releases",
                              "current_attrs"})


@dataclass
class Counters:
    """Request figures of this client, for `fusecache stats` (updated on the trio thread)."""

    lookups: int = 0  # lookup and getattr requests that reached this client
    getattrs: int = 0
    opens: int = 0
    keep_cache_opens: int = 0  # opens that let the kernel keep the file's page cache
    reads: int = 0  # FUSE read requests
    read_bytes: int = 0
    readahead_blocks: int = 0  # blocks prefetched for sequential readers
    warmup_blocks: int = 0  # blocks loaded into the cache by warmup requests
    warmup_bytes: int = 0
    cache_commands: int = 0  # warmup / cached / evict requests of the control channel
    slice_rereads: int = 0  # reads that found a block gone and read the slice list again
    ranged_reads: int = 0  # reads of a random reader, served by reading only the pages needed
    reused_listings: int = 0  # opendirs of an unchanged directory that reused its last listing


class Vfs:
    def __init__(
        self,
        meta: Meta,
        chunks: ChunkStore,
        settings: VolumeSettings,
        workers: Workers,
        options: VfsOptions | None = None,
    ) -> None:
        self.meta = meta
        self.chunks = chunks
        self.settings = settings
        self.workers = workers
        self.options = options or VfsOptions()
        block = chunks.block_size
        # Room for a readahead window being consumed while the next one is fetched.
        recent = self.options.recent_blocks or max(4, 2 * (self.options.readahead_blocks + 1))
        self.loader = BlockLoader(chunks, workers, recent_bytes=recent * block, slots=self.options.read_slots)
        self.counters = Counters()
        self.about: dict[str, Any] = {}  # static facts for stats (volume, pid, mountpoint), set by mount
        self._page_versions: OrderedDict[int, tuple[int, int, int]] = OrderedDict()
        self.ids = SliceIds(lambda n: self._meta(meta.reserve_slice_ids, n))
        # Cached slice lists must be long gone before a slice dropped by another client
        # loses its objects (the volume's garbage delay, docs/data-safety.md).
        self.slice_ttl = min(SLICE_TTL, settings.garbage_delay / 4)
        # The hottest calls (lookup, getattr, slice lists, file create/unlink) skip the
        # thread hand-off.
        self.fast = FastCalls.for_engine(meta, self._meta)
        self.files: dict[int, OpenInode] = {}
        self.handles: dict[int, FileHandle] = {}
        self.dirs: dict[int, DirHandle] = {}
        # dir → (entries, its attributes, its parent's, the listing built of them) at its last opendir
        self._built_listings: dict[int, tuple[list[DirEntry], Attr, Attr, list[DirEntry]]] = {}
        self._fh = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        # Sections that layers above add to `stats()` (the FUSE adapter's kernel cache).
        self.stat_sources: dict[str, Callable[[], dict[str, Any]]] = {}
        self._upload_slots = trio.CapacityLimiter(self.options.upload_slots)
        self._readahead_slots = trio.CapacityLimiter(
            max(1, self.options.readahead_slots or 2 * self.options.readahead_blocks))
        self.cache_commands = CacheCommands(
            self.fast, chunks, self.loader, workers, self._walk_listing, self.options.warmup_slots, self._warmed)
        self._commits: dict[tuple[int, int], int] = {}  # commits per chunk since its last compaction check
        # Bumped around every change of slices this client makes (a write's commit, a
        # truncation): an open only trusts a slice list that no such change may predate.
        self._slice_changes = 0
        self._compacting: set[tuple[int, int]] = set()
        self._compact_slots = trio.CapacityLimiter(2)  # a compaction holds up to a chunk in memory
        # Lists an unfilled directory of a lazy import (importer/lazy.py; set by mount).
        self.fill_dir: Callable[[int], None] | None = None
        self._filling: dict[int, trio.Event] = {}
        self._fill_slots = trio.CapacityLimiter(4)

    def start(self, nursery: trio.Nursery) -> None:
        """Attach the nursery that runs background uploads, commits and prefetches."""
        self._nursery = nursery
        self.fast.start(nursery)

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "Vfs.start() was not called"
        return self._nursery

    async def _meta(self, fn: Callable[..., T], *args: object) -> T:
        t0 = perf_counter()
        try:
            return await self.workers.meta(fn, *args)
        except FsError:
            raise
        except MetaError as exc:
            log.error("metadata engine failed: %s", exc)
            raise FsError(errno.EIO, str(exc)) from None
        except Exception as exc:  # e.g. redis connection errors after the engine's retries
            log.error("metadata call %s failed: %s: %s", getattr(fn, "__name__", fn), type(exc).__name__, exc)
            raise FsError(errno.EIO, "metadata engine error") from None
        finally:
            self.fast.latency.observe("thread", perf_counter() - t0)
            if getattr(fn, "__name__", "") not in CACHE_SAFE_CALLS:
                self.fast.cache.reset()  # our own change: drop what it may outdate at once

    def _writable(self) -> None:
        if self.options.read_only:
            raise FsError(errno.EROFS)

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > MAX_NAME:
            raise FsError(errno.ENAMETOOLONG)
        if not name or b"/" in name or b"\0" in name:
            raise FsError(errno.EINVAL)

    def _merge(self, attr: Attr) -> Attr:
        """Attributes as this client sees them: buffered writes may make the file longer."""
        state = self.files.get(attr.ino)
        if state is not None:
            state.attr = attr
            if state.writer is not None and state.writer.end > attr.size:
                return attr.with_(size=state.writer.end)
        return attr

    # -- namespace ------------------------------------------------------------------------
    async def lookup(self, parent: int, name: bytes) -> Attr:
        if len(name) > MAX_NAME:
            raise FsError(errno.ENAMETOOLONG)
        self.counters.lookups += 1
        try:
            return self._merge(await self.fast.lookup(parent, name))
        except UnfilledDir:
            # A miss in a lazily imported directory not listed yet (the lookup said so, no
            # extra round trip): list it, look again.
            if self.fill_dir is None:
                raise
        await self._fill(parent)
        return self._merge(await self.fast.lookup(parent, name))

    async def _walk_listing(self, ino: int) -> list[DirEntry]:
        """A directory's entries for a tree walk (warmup), listing a lazy import's
        directory from its source first if it was never listed."""
        if self.fill_dir is not None and (await self.fast.getattr(ino)).unfilled:
            await self._fill(ino)
        return await self._meta(self.meta.readdir, ino)

    async def _fill(self, ino: int) -> None:
        """List a lazily imported directory's entries from its source. One fill per
        directory at a time in this client; a second caller waits for the first."""
        assert self.fill_dir is not None
        running = self._filling.get(ino)
        if running is not None:
            await running.wait()
            return
        done = self._filling[ino] = trio.Event()
        try:
            await trio.to_thread.run_sync(self.fill_dir, ino, limiter=self._fill_slots)
        finally:
            del self._filling[ino]
            done.set()
            self.fast.cache.reset()  # our own change: drop what it outdates before its notices come

    async def getattr(self, ino: int) -> Attr:
        self.counters.getattrs += 1
        return self._merge(await self.fast.getattr(ino))

    async def setattr(self, ino: int, changes: SetAttr) -> Attr:
        self._writable()
        state = self.files.get(ino)
        if changes.size is not None and state is not None:
            if state.writer is not None:
                await state.writer.flush()
            state.slices.clear()
        self._slice_changes += 1
        attr = await self._meta(self.meta.setattr, ino, changes)
        self._slice_changes += 1
        if changes.size is not None and state is not None:
            if state.writer is not None:
                state.writer.end = 0  # committed; the metadata length is the truth now
            state.slices.clear()
        return self._merge(attr)

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Ctx) -> Attr:
        self._writable()
        self._check_name(name)
        if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            raise FsError(errno.EINVAL)
        if stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFREG
        return await self._meta(self.meta.mknod, parent, name, mode, ctx.uid, ctx.gid, rdev)

    async def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx) -> Attr:
        self._writable()
        self._check_name(name)
        return await self._meta(self.meta.mkdir, parent, name, mode & 0o7777, ctx.uid, ctx.gid)

    async def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx) -> Attr:
        self._writable()
        self._check_name(name)
        if not target or len(target) > 4096:
            raise FsError(errno.ENAMETOOLONG if target else errno.ENOENT)
        return await self._meta(self.meta.symlink, parent, name, target, ctx.uid, ctx.gid)

    async def readlink(self, ino: int) -> bytes:
        return await self._meta(self.meta.readlink, ino)

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        self._writable()
        self._check_name(new_name)
        return self._merge(await self._meta(self.meta.link, ino, new_parent, new_name))

    async def unlink(self, parent: int, name: bytes) -> None:
        self._writable()
        await self.fast.unlink(parent, name)

    async def rmdir(self, parent: int, name: bytes) -> None:
        self._writable()
        await self._meta(self.meta.rmdir, parent, name)

    async def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        self._writable()
        self._check_name(new_name)
        await self._meta(self.meta.rename, parent, name, new_parent, new_name, flags)

    async def statfs(self, ino: int) -> StatFs:
        return await self._meta(self.meta.statfs, ino)

    # -- directories ----------------------------------------------------------------------
    async def opendir(self, ino: int) -> int:
        attr = await self.fast.getattr(ino)
        if not attr.is_dir:
            raise FsError(errno.ENOTDIR)
        if attr.unfilled and self.fill_dir is not None:
            await self._fill(ino)
            attr = await self.fast.getattr(ino)
        entries = await self.fast.readdir(ino)
        parent = await self.fast.getattr(attr.parent or ino) if attr.parent != ino else attr
        built = self._built_listings.get(ino)
        if built is not None and built[0] is entries and built[1] is attr and built[2] is parent:
            listing = built[3]  # unchanged: the same list, so the FUSE layer reuses its replies
            self.counters.reused_listings += 1
        else:
            listing = [DirEntry(b".", attr), DirEntry(b"..", parent), *entries]
            if len(self._built_listings) >= BUILT_LISTINGS:
                self._built_listings.clear()
            self._built_listings[ino] = (entries, attr, parent, listing)
        fh = next(self._fh)
        self.dirs[fh] = DirHandle(fh, ino, listing)
        return fh

    def readdir(self, fh: int, start: int) -> list[DirEntry]:
        return self.dir_entries(fh)[start:]

    def dir_entries(self, fh: int) -> list[DirEntry]:
        """The whole listing of an open directory, as read at opendir (do not modify)."""
        handle = self.dirs.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        return handle.entries

    def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    # -- files ----------------------------------------------------------------------------
    async def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: Ctx) -> tuple[int, Attr]:
        self._writable()
        self._check_name(name)
        try:
            attr = await self.fast.create(parent, name, stat.S_IFREG | (mode & 0o7777), ctx.uid, ctx.gid)
        except FsError as exc:
            # Another client created it since the kernel's lookup: O_CREAT without O_EXCL
            # opens the existing file, as POSIX says.
            if exc.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            attr = await self.fast.lookup(parent, name)
            if attr.is_dir:
                raise FsError(errno.EISDIR) from None
            fh = await self.open(attr.ino, flags, attr)  # truncates with O_TRUNC
            return fh, self.files[attr.ino].attr
        fh = await self.open(attr.ino, flags & ~os.O_TRUNC, attr)  # new and empty: nothing to cut
        # A file this call created has no extended attributes: the kernel's question about
        # security.capability before the first write needs no round trip.
        state = self.files[attr.ino]
        state.capability, state.capability_known = None, True
        return fh, attr

    async def open(self, ino: int, flags: int, known: Attr | None = None) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            self._writable()
        changes = self._slice_changes
        attr, first_chunk = await self.fast.open(ino, known)
        if attr.frozen and flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            await self._release_meta(ino)  # a snapshot's file: refused before any write is taken
            raise FsError(errno.EROFS)
        if changes != self._slice_changes:
            first_chunk = None  # this client changed some file meanwhile: the list may predate it
        if flags & os.O_TRUNC and attr.is_file:
            first_chunk = None
            # With atomic O_TRUNC (libfuse's default) the kernel sends no setattr: the open
            # itself must truncate, and like any truncation it sets mtime and ctime.
            try:
                attr = await self.setattr(ino, SetAttr(size=0))  # commits this client's writes first
            except BaseException:
                await self._release_meta(ino)
                raise
        state = self.files.get(ino)
        if state is None:
            state = self.files[ino] = OpenInode(ino, attr, slices=SliceCache(self.slice_ttl))
        elif (attr.mtime_ns, attr.size) != (state.attr.mtime_ns, state.attr.size):
            state.slices.clear()  # changed elsewhere since we last looked
        if not state.opens:
            state.slices.clear()
        if first_chunk is not None and not (state.writer is not None and state.writer.dirty):
            state.slices.put(0, first_chunk)  # as fresh as a read now: saves its round trip
        state.attr = attr
        state.opens += 1
        fh = next(self._fh)
        handle = self.handles[fh] = FileHandle(fh, ino, flags)
        handle.keep_cache = self._page_cache_valid(ino, attr)
        self.counters.opens += 1
        self.counters.keep_cache_opens += handle.keep_cache
        return fh

    def keeps_cache(self, fh: int) -> bool:
        """Whether the kernel may keep its page cache of the file opened as `fh`."""
        handle = self.handles.get(fh)
        return handle is not None and handle.keep_cache

    def _page_cache_valid(self, ino: int, attr: Attr) -> bool:
        """True if the file is unchanged since this client last let the kernel cache it.

        Otherwise the open goes without keep_cache, which makes the kernel drop the file's
        pages, and the current version is remembered for the next open. A version is taken
        at open, before any read of this open: pages cached later hold data at least that
        new, and a newer version only causes one extra invalidation.
        """
        if not self.options.keep_page_cache:
            return False
        # ctime too: a tool may set mtime back (rsync -t, touch -r) after changing the data,
        # but nobody can set ctime, and every write moves it.
        version = (attr.mtime_ns, attr.ctime_ns, attr.size)
        if self._page_versions.get(ino) == version:
            self._page_versions.move_to_end(ino)
            return True
        self._page_versions[ino] = version
        self._page_versions.move_to_end(ino)
        if len(self._page_versions) > PAGE_VERSIONS:
            self._page_versions.popitem(last=False)
        return False

    def _handle(self, fh: int) -> tuple[FileHandle, OpenInode]:
        handle = self.handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        return handle, self.files[handle.ino]

    async def _slices(self, state: OpenInode, index: int) -> list[Slice]:
        cached = state.slices.get(index)
        if cached is None:
            cached = await self.fast.read(state.ino, index)
            state.slices.put(index, cached)
            if len(cached) >= COMPACT_AT:
                self._schedule_compaction(state.ino, index)
        return cached

    def _slice_source(self, state: OpenInode) -> SliceSource:
        """The open file's slice lists by chunk index, as the chunk reader asks for them."""
        async def slices_of(index: int) -> list[Slice]:
            return await self._slices(state, index)
        return slices_of

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        handle, state = self._handle(fh)
        if state.writer is not None and state.writer.dirty:
            await state.writer.flush()  # read what was written, from committed slices
        end = min(offset + size, state.size)
        self.counters.reads += 1
        if end <= offset:
            return b""

        slices_of = self._slice_source(state)
        due = self._sequential(handle, offset, end)
        if due and self.options.readahead_blocks:
            self._readahead(handle, state, end)
        # Not yet a sequential reader (a jump, or one read that happens to land next to the
        # last): read only the pages asked for. A random reader lands within the slack of
        # its previous read now and then; loading the whole block for that costs more
        # than all its other reads.
        ranged = not due
        self.counters.ranged_reads += ranged
        try:
            data = await read_file_range(self.loader, slices_of, offset, end - offset, view=True,
                                         wait_missing=False, ranged=ranged)
        except BlockMissing as exc:
            # The slice list may be stale: another client compacted or truncated the chunk
            # and its old objects are gone. Read it again once before reporting EIO (this
            # time waiting for a block a writeback client may not have uploaded yet).
            log.info("inode %d: %s; reading its slice list again", state.ino, exc.detail)
            self.counters.slice_rereads += 1
            state.slices.clear()
            data = await read_file_range(self.loader, slices_of, offset, end - offset, view=True,
                                         ranged=ranged)
        self.counters.read_bytes += len(data)
        return data

    @staticmethod
    def _sequential(handle: FileHandle, offset: int, end: int) -> bool:
        """Track the handle's access pattern; True when readahead is due.

        A reader is sequential after two reads in a row that continue where the previous
        one ended (within SEQUENTIAL_SLACK), or from its first read at offset 0. Any jump
        resets the pattern and the readahead window, so random access never triggers it.
        """
        if abs(offset - handle.next_offset) <= SEQUENTIAL_SLACK:
            handle.sequential += 1
            handle.next_offset = max(handle.next_offset, end)
        else:
            handle.sequential = 0
            handle.readahead_to = handle.readahead_blocks = handle.readahead_grow_at = 0
            handle.next_offset = end
        return handle.sequential >= 2 or (handle.sequential == 1 and offset == 0)

    def _readahead(self, handle: FileHandle, state: OpenInode, end: int) -> None:
        """Prefetch the blocks after a sequential reader's position, once each.

        The window starts at one block and doubles, up to `readahead_blocks`, each time the
        reader reaches the start of the previous window: a reader that stops early (a
        header, a short file) costs at most one extra block.
        """
        block = self.chunks.block_size
        if end >= handle.readahead_grow_at:
            handle.readahead_blocks = min(max(1, 2 * handle.readahead_blocks), self.options.readahead_blocks)
        start = max(end, handle.readahead_to)
        stop = min(end + handle.readahead_blocks * block, state.size)
        if stop <= start or (stop - start < block // 2 and stop < state.size):
            return  # nothing due yet, or not a worthwhile stretch
        handle.readahead_grow_at = start
        handle.readahead_to = stop
        self.nursery.start_soon(self._prefetch, state, start, stop - start)

    async def _prefetch(self, state: OpenInode, offset: int, size: int) -> None:
        slices_of = self._slice_source(state)
        try:
            blocks = await blocks_in_range(slices_of, self.chunks.block_size, offset, size)
            async with trio.open_nursery() as nursery:
                for block in blocks:
                    if not self.loader.is_ready(block):
                        nursery.start_soon(self._prefetch_block, block)
        except FsError as exc:
            log.debug("readahead of inode %d stopped: %s", state.ino, exc)

    async def _prefetch_block(self, block: tuple[int, int, int]) -> None:
        async with self._readahead_slots:
            if self.loader.is_ready(block):
                return  # the reader got there first
            self.counters.readahead_blocks += 1
            try:
                await self.loader.load(block, wait_missing=False)
            except FsError:
                pass  # the reader will hit (and report) the same error if it gets there

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        self._writable()
        _, state = self._handle(fh)
        if state.writer is None:
            state.writer = FileWriter(
                state.ino, self.chunks, self.workers, self.ids,
                lambda index, piece, ino=state.ino: self._commit(ino, index, piece),
                self.nursery, self._upload_slots,
            )
        await state.writer.write(offset, data)
        return len(data)

    async def _commit(self, ino: int, index: int, piece: Slice) -> None:
        self._slice_changes += 1
        attr = await self.fast.write(ino, index, piece, time.time_ns())
        self._slice_changes += 1
        state = self.files.get(ino)
        if state is not None:
            state.slices.pop(index)
            state.attr = attr
        key = (ino, index)
        self._commits[key] = self._commits.get(key, 0) + 1
        if self._commits[key] >= COMPACT_AT:
            self._commits.pop(key)
            self._schedule_compaction(ino, index)

    def _schedule_compaction(self, ino: int, index: int) -> None:
        if self.options.read_only or (ino, index) in self._compacting:
            return
        self._compacting.add((ino, index))
        self.nursery.start_soon(self._compact, ino, index)

    async def _compact(self, ino: int, index: int) -> None:
        try:
            async with self._compact_slots:
                new_id = await self.ids.next()
                try:
                    done = await compact_chunk(self.meta, self.chunks, self.loader, self.workers, ino, index, new_id)
                finally:
                    self.ids.settle(new_id)
                if done:
                    state = self.files.get(ino)
                    if state is not None:
                        state.slices.pop(index)
        except FsError as exc:
            log.warning("compaction of inode %d chunk %d failed: %s", ino, index, exc)
        except Exception:
            log.exception("compaction of inode %d chunk %d failed", ino, index)
        finally:
            self._compacting.discard((ino, index))

    async def flush(self, fh: int) -> None:
        _, state = self._handle(fh)
        if state.writer is not None:
            await state.writer.flush()

    async def fsync(self, fh: int) -> None:
        await self.flush(fh)

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        state = self.files[handle.ino]
        state.opens -= 1
        try:
            if state.opens == 0 and state.writer is not None:
                try:
                    await state.writer.flush()
                except FsError as exc:
                    log.error("data of inode %d written before close was lost: %s", handle.ino, exc)
        finally:
            if state.opens == 0:
                del self.files[handle.ino]
            await self._release_meta(handle.ino)

    async def _release_meta(self, ino: int) -> None:
        if not self.meta.release_nowait(ino):
            await self._meta(self.meta.release, ino)

    async def flush_releases(self, linger: float = RELEASE_LINGER) -> int:
        """Drop the open notes of files closed `linger` seconds ago (frees those unlinked
        meanwhile that no other client holds)."""
        total = 0
        while (done := await self._meta(self.meta.flush_releases, linger)) > 0:
            total += done
        return total

    async def flush_idle(self) -> None:
        for state in list(self.files.values()):
            if state.writer is not None:
                await state.writer.finish_idle(self.options.idle_flush)

    async def flush_all(self) -> None:
        for state in list(self.files.values()):
            if state.writer is not None:
                try:
                    await state.writer.flush()
                except FsError as exc:
                    log.error("unmount: data of inode %d could not be written: %s", state.ino, exc)

    # -- extended attributes --------------------------------------------------------------
    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        if not name:
            raise FsError(errno.EINVAL)
        if len(name) > MAX_XATTR_NAME:
            raise FsError(errno.ERANGE)

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        self._check_xattr_name(name)
        if control.is_control(name):
            return await self._control(ino, name)
        state = self.files.get(ino) if name == CAPABILITY_XATTR else None
        if state is None:
            return await self._meta(self.meta.getxattr, ino, name)
        if not state.capability_known:
            try:
                state.capability = await self._meta(self.meta.getxattr, ino, name)
            except FsError as exc:
                if exc.errno != errno.ENODATA:
                    raise
                state.capability = None
            state.capability_known = True
        if state.capability is None:
            raise FsError(errno.ENODATA)
        return state.capability

    def _forget_xattr(self, ino: int, name: bytes) -> None:
        state = self.files.get(ino)
        if state is not None and name == CAPABILITY_XATTR:
            state.capability_known = False

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self._writable()
        self._check_xattr_name(name)
        if control.is_control(name):
            raise FsError(errno.EPERM)
        if len(value) > MAX_XATTR_VALUE:
            raise FsError(errno.E2BIG)
        self._forget_xattr(ino, name)
        await self._meta(self.meta.setxattr, ino, name, value, flags)

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self._meta(self.meta.listxattr, ino)

    async def removexattr(self, ino: int, name: bytes) -> None:
        self._writable()
        self._check_xattr_name(name)
        if control.is_control(name):
            raise FsError(errno.EPERM)
        self._forget_xattr(ino, name)
        await self._meta(self.meta.removexattr, ino, name)

    # -- control channel (virtual xattrs, see control.py) ----------------------------------
    async def _control(self, ino: int, name: bytes) -> bytes:
        if name == control.INFO:
            return await self._info(ino)
        if name == control.STATS:
            return json.dumps(self.stats()).encode()
        command = control.parse_block_command(name)
        if command is not None:
            self.counters.cache_commands += 1
            return await self.cache_commands.file(ino, command)
        dir_command = control.parse_dir_command(name)
        if dir_command is not None:
            self.counters.cache_commands += 1
            return await self.cache_commands.directory(ino, dir_command)
        raise FsError(errno.ENODATA)

    def _warmed(self, blocks: int, nbytes: int) -> None:
        self.counters.warmup_blocks += blocks
        self.counters.warmup_bytes += nbytes

    def stats(self) -> dict[str, Any]:
        """Everything `fusecache stats` and the Prometheus exporter show (JSON-ready)."""
        pending_blocks, pending_bytes = self.chunks.pending_uploads()
        uploader = self.chunks.uploader
        c = self.counters
        return {
            **self.about,
            "block_size": self.chunks.block_size,
            "writeback": self.chunks.writeback,
            "readahead_max_blocks": self.options.readahead_blocks,
            "cache": self.chunks.cache_stats(),
            "store": self.chunks.counters.snapshot(),
            # Latency histograms: object store requests by method, metadata calls by path
            # (on the event loop or in a worker thread).
            "store_requests": latency.snapshot() if (latency := getattr(self.chunks.store, "latency", None)) else {},
            "meta_requests": self.fast.latency.snapshot(),
            "inflight_fetches": self.loader.inflight,
            "meta_cache": {
                "live": self.fast.cache.live, "entries": self.fast.cache.size, "hits": self.fast.cache.hits,
                "notices": self.fast.feed.notices if self.fast.feed is not None else 0,
            },
            "uploads": {
                "pending_blocks": pending_blocks,
                "pending_bytes": pending_bytes,
                "uploaded_blocks": uploader.uploaded_blocks if uploader else 0,
                "uploaded_bytes": uploader.uploaded_bytes if uploader else 0,
                "failed_attempts": uploader.failed_attempts if uploader else 0,
            },
            "fuse": {
                "lookups": c.lookups, "getattrs": c.getattrs,
                "opens": c.opens, "keep_cache_opens": c.keep_cache_opens, "reads": c.reads,
                "read_bytes": c.read_bytes, "readahead_blocks": c.readahead_blocks,
                "recent_block_hits": self.loader.recent_hits, "slice_rereads": c.slice_rereads,
                "ranged_reads": c.ranged_reads, "reused_listings": c.reused_listings,
            },
            "warmup": {"blocks": c.warmup_blocks, "bytes": c.warmup_bytes, "requests": c.cache_commands},
            **{name: source() for name, source in self.stat_sources.items()},
        }

    async def _info(self, ino: int) -> bytes:
        """What `fusecache info` shows: inode, size, and every chunk's slices and objects."""
        from ..layout import CHUNK_SIZE, slice_keys

        attr = await self.fast.getattr(ino)
        chunks = []
        if attr.is_file:
            for index in range((attr.size + CHUNK_SIZE - 1) // CHUNK_SIZE):
                slices = await self.fast.read(ino, index)
                if not slices:
                    continue
                chunks.append({
                    "index": index,
                    "slices": [
                        {
                            "id": s.id, "pos": s.pos, "size": s.size, "off": s.off, "len": s.length,
                            "objects": slice_keys(self.chunks.volume, s.id, s.size, self.chunks.block_size)
                            if s.id else [],
                        }
                        for s in slices
                    ],
                })
        doc = {"inode": ino, "size": attr.size, "mode": oct(attr.mode), "nlink": attr.nlink, "chunks": chunks}
        return json.dumps(doc).encode()

    # -- background duties ----------------------------------------------------------------
    async def collect_garbage(self, batch: int = 100) -> int:
        """Delete objects no slice references any more. Returns how many slices went (or
        1 when none did but deleted files were released, so that the caller goes on)."""
        items = await self._meta(self.meta.take_garbage, batch)
        if not items:
            return 1 if items.more else 0

        async def remove(slice_id: int, size: int) -> None:
            await self.workers.io(self.chunks.remove_slice, slice_id, size)

        async with trio.open_nursery() as nursery:
            for slice_id, size in items:
                nursery.start_soon(remove, slice_id, size)
        await self._meta(self.meta.ack_garbage, items)
        return len(items)
